"""Pixels in and out: PIL images to VAE input tensors and back, and inpainting masks, as the reference pipelines
prepare them (Lanczos resampling, [-1, 1] range, masks binarised at 0.5)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # annotations only
    import torch

# torch is imported by the two functions that make tensors: the file helpers below (not_regular, write_atomic,
# ASPECT_PRESETS) are used by `qwenimage --help` and curation's workers, which need no torch.

MULTIPLE = 16  # 8x VAE compression x 2x2 patches


def check_size(width: int, height: int, what: str = "image") -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, (int, np.integer)) or v < MULTIPLE or v % MULTIPLE:
            lower = max(MULTIPLE, int(v) // MULTIPLE * MULTIPLE) if isinstance(v, (int, float)) else MULTIPLE
            raise ValueError(f"{what} {name} {v!r} is not a multiple of {MULTIPLE} pixels (8x VAE x 2x2 patches); "
                             f"use {lower} or {lower + MULTIPLE}")


def calculate_dimensions(target_area: float, ratio: float) -> tuple[int, int]:
    """(width, height) of about `target_area` pixels at aspect `ratio` = w/h, each rounded to a multiple of 32:
    the reference pipelines' `calculate_dimensions` (edit outputs, reference latents, vision-tower images)."""
    width = math.sqrt(target_area * ratio)
    height = width / ratio
    return int(round(width / 32) * 32), int(round(height / 32) * 32)


def to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """RGB PIL image -> [1, 3, height, width] float32 in [-1, 1], resized with Lanczos when the size differs."""
    import torch

    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.LANCZOS)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    return x * 2.0 - 1.0


def mask_to_tensor(mask: Image.Image, width: int, height: int) -> torch.Tensor:
    """Mask image -> [1, 1, height, width] of 0 (keep) and 1 (repaint): resized, then grey, then binarised at 0.5."""
    import torch

    if mask.size != (width, height):
        mask = mask.resize((width, height), resample=Image.LANCZOS)
    m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    return (m >= 0.5).float()


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> PIL images (clamped, rounded to 8 bits)."""
    x = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in (x * 255).round().astype("uint8")]


# The official text-to-image sizes (width, height) per aspect ratio, from the Qwen-Image model card.
ASPECT_PRESETS = {
    "1:1": (1328, 1328), "16:9": (1664, 928), "9:16": (928, 1664), "4:3": (1472, 1104), "3:4": (1104, 1472),
    "3:2": (1584, 1056), "2:3": (1056, 1584),
}


def load_image(path, what: str = "image") -> Image.Image:
    """Open an image file fully (so a bad file fails here, naming it, not halfway through a run). Only regular
    files are opened: a FIFO named x.png would block forever."""
    import os
    import stat

    if isinstance(path, (str, os.PathLike)) and os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{what} {path}: not a regular file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except Exception as e:  # PIL raises several types for broken files
        raise ValueError(f"{what} {path}: not a readable image ({e})") from e


def thumbnail_uri(image: Image.Image, side: int, quality: int = 80) -> str:
    """A JPEG data URI of `image` shrunk to fit side x side: pictures inside an HTML report that needs no files
    beside it (curation's and evaluation's reports)."""
    import base64
    import io

    im = image.convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def not_regular(path, max_bytes: int | None = None) -> str | None:
    """Why `path` must not be opened as an input file, or None. A FIFO named x.png blocks open() forever, a symlink
    to /dev/zero named .jpg never ends, a folder fails late: every place that lists inputs (the trainer's data,
    curation, synthesis backgrounds, evaluation data) asks this first. `max_bytes` caps the size."""
    import os
    import stat

    try:
        st = os.stat(path)  # follows links: what a read would open
    except FileNotFoundError:
        return None  # reported as "file not found" by the caller
    except OSError as e:
        return f"cannot stat ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        return f"{kind}, not a regular file; not opened"
    if max_bytes is not None and st.st_size > max_bytes:
        return f"{st.st_size:,} bytes, over the {max_bytes:,}-byte limit; not read"
    return None


def create_temp(folder, suffix: str = "") -> tuple[int, str]:
    """(fd, path) of a new temporary file in `folder`, open for writing, with the mode a plain open() gives
    (0666 less the umask: 0644 under umask 022, as ComfyUI's outputs). tempfile.mkstemp makes 0600, which the
    rename into place would keep."""
    import os
    import secrets

    while True:
        path = os.path.join(os.fspath(folder), f".tmp-{secrets.token_hex(8)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue


def write_atomic(path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` through a temporary file in the same folder, renamed into place: a
    reader never sees half a file, and a failed write leaves the old one (and no temporary) behind."""
    import os

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = create_temp(folder, ".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_png(image: Image.Image, path, text: dict[str, str]) -> None:
    """Write a PNG with `text` in its tEXt chunks, atomically: a temporary file in the same folder renamed into
    place, so an interrupted save never leaves a truncated picture under the final name."""
    import os

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_text(k, v)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = create_temp(folder, ".png")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
