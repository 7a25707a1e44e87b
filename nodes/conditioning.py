"""Prompt encoding nodes: a text prompt, and an edit instruction with its 1 to 3 reference images. A negative
prompt is its own encode node, wired to the sampler's negative input."""
from __future__ import annotations

import torch

from ..qwenimage_core.pipeline import encode_references
from ..qwenimage_core.sampling import Conditioning
from ..qwenimage_core.schedules import unpack_latents
from ..qwenimage_core.vae import denormalize_latents
from . import host
from .sockets import CONDITIONING, TEXT_ENCODER, VAE, image_to_pil

CATEGORY = "Qwen-Image/conditioning"
EDIT_TEMPLATES = {"edit_plus (Edit-2509/2511)": "edit_plus", "edit (Qwen-Image-Edit)": "edit"}


@torch.no_grad()
def _encode(text_encoder, text: str, template: str, images=None) -> Conditioning:
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    # host.check_interrupt raises (ComfyUI's own exception inside ComfyUI) when Cancel was pressed: the encoder
    # checks it before each layer, so a long instruction stops as promptly as sampling does
    embeds, mask = host.on_device(text_encoder).encode([text], images=images, template=template,
                                                       interrupt=host.check_interrupt)
    return Conditioning(embeds.float().cpu(), None if mask is None else mask.cpu())


class QwenImageTextEncode:
    DESCRIPTION = "Encode a prompt with Qwen2.5-VL for text-to-image (use a second one for the negative prompt)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": (TEXT_ENCODER, {"tooltip": "The Qwen2.5-VL text encoder"}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                "tooltip": "The prompt; Qwen-Image renders quoted text in many languages well"}),
        }}

    RETURN_TYPES = (CONDITIONING,)
    RETURN_NAMES = ("conditioning",)
    OUTPUT_TOOLTIPS = ("The prompt's states for the sampler's positive or negative input",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, text_encoder, text):
        return (_encode(text_encoder, text, "t2i"),)


class QwenImageEditEncode:
    DESCRIPTION = ("Encode an edit instruction with its reference images (1 for Qwen-Image-Edit, 1 to 3 for "
                   "Edit-2509/2511). Gives the conditioning (prompt, images and their latents) and a latent of "
                   "the default output size, about a megapixel at the last image's aspect.")

    @classmethod
    def INPUT_TYPES(cls):
        img = "A reference image ({}); any size, it is resized to about a megapixel"
        return {"required": {
            "text_encoder": (TEXT_ENCODER, {"tooltip": "The Qwen2.5-VL text encoder"}),
            "vae": (VAE, {"tooltip": "The VAE that encodes the reference images"}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                  "tooltip": "The edit instruction (or, in a second node, the negative prompt)"}),
            "image1": ("IMAGE", {"tooltip": img.format("required")}),
            "template": (list(EDIT_TEMPLATES), {"default": next(iter(EDIT_TEMPLATES)),
                                                "tooltip": "Which edit model the graph uses: its prompt format"}),
        }, "optional": {
            "image2": ("IMAGE", {"tooltip": img.format("optional, Edit-2509/2511 only")}),
            "image3": ("IMAGE", {"tooltip": img.format("optional, Edit-2509/2511 only")}),
        }}

    RETURN_TYPES = (CONDITIONING, "LATENT")
    RETURN_NAMES = ("conditioning", "latent")
    OUTPUT_TOOLTIPS = ("The instruction and references, for the sampler",
                       "The last reference's latents at the default output size (connect to the sampler)")
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    @torch.no_grad()
    def encode(self, text_encoder, vae, prompt, image1, template, image2=None, image3=None):
        if template not in EDIT_TEMPLATES:
            raise ValueError(f"template {template!r}: one of {', '.join(EDIT_TEMPLATES)}")
        tmpl = EDIT_TEMPLATES[template]
        images = [image_to_pil(x[:1])[0] for x in (image1, image2, image3) if x is not None]
        if tmpl == "edit" and len(images) != 1:
            raise ValueError(f"Qwen-Image-Edit takes exactly 1 reference image, got {len(images)}; use the "
                             "edit_plus template with an Edit-2509/2511 model for several")
        refs = encode_references(host.on_device(vae), images, tmpl)
        cond = _encode(text_encoder, prompt, tmpl, refs.vision)
        cond.references = refs
        _, h, w = refs.shapes[-1]
        last = unpack_latents(refs.tokens[:, -h * w:], h * 2, w * 2)
        return (cond, {"samples": denormalize_latents(last)})


NODES = {c.__name__: c for c in (QwenImageTextEncode, QwenImageEditEncode)}
DISPLAY = {"QwenImageTextEncode": "Qwen-Image Text Encode", "QwenImageEditEncode": "Qwen-Image Edit Encode"}
