"""Live sampler previews as ComfyUI sends them: binary websocket frames holding a JPEG, only when asked.

As in ComfyUI, the server's `--preview-method` (default "none") says whether a run sends previews, and a prompt's
`extra_data.preview_method` overrides it ("default" = the server's; the frontend sends its "Live preview method"
setting there). "auto" and "latent2rgb" both give the sampler's latent preview (three latent channels, no VAE
run); "taesd", which the frontend may ask for, falls back to it as ComfyUI does when it has no TAESD decoder.
API clients that ask for nothing therefore get no binary frames, only the saved images through /history + /view."""
from __future__ import annotations

import json
import struct
from io import BytesIO

PREVIEW_MAX = 512
SERVER_METHODS = ("none", "auto", "latent2rgb")
PER_PROMPT_METHODS = ("default",) + SERVER_METHODS + ("taesd",)


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


def previews_wanted(server_method: str, extra_data: dict) -> bool:
    """Whether a run sends previews: the prompt's own method, else (absent or "default") the server's."""
    method = (extra_data or {}).get("preview_method") or "default"
    if method == "default":
        method = server_method
    return method != "none"


def preview_frame(image, node_id, prompt_id, with_metadata: bool):
    """(event type, payload) of one preview: with the node and prompt named when the client supports that."""
    from PIL import Image, ImageOps

    image = image.convert("RGB")
    if max(image.size) > PREVIEW_MAX:  # shrink only (ComfyUI's contain() also blows small previews up)
        image = ImageOps.contain(image, (PREVIEW_MAX, PREVIEW_MAX), Image.BILINEAR)
    buf = BytesIO()
    image.save(buf, format="JPEG", quality=95)
    jpeg = buf.getvalue()
    if with_metadata:
        meta = json.dumps({"node_id": node_id, "display_node_id": node_id, "real_node_id": node_id,
                           "parent_node_id": None, "prompt_id": prompt_id, "image_type": "image/jpeg"}).encode()
        return BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA, struct.pack(">I", len(meta)) + meta + jpeg
    return BinaryEventTypes.PREVIEW_IMAGE, struct.pack(">I", 1) + jpeg
