"""JPEG (in)compressibility: the size of the image saved as JPEG, the classic RL-for-diffusion sanity reward
(DDPO, Flow-GRPO). Flat, simple images compress well; detailed, noisy ones do not. Needs no model.

Flow-GRPO's form: size in kB at quality 95; compressibility = -kB / 500, incompressibility = kB."""
from __future__ import annotations

import io

from .base import register


def jpeg_kb(image, quality: int = 95) -> float:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.tell() / 1000


@register("jpeg_compressibility")
def jpeg_compressibility(quality: int = 95, scale: float = 1 / 500):
    """-scale * kB: higher for images that compress better."""
    return lambda images, prompts, metadata: [-scale * jpeg_kb(im, quality) for im in images]


@register("jpeg_incompressibility")
def jpeg_incompressibility(quality: int = 95, scale: float = 1.0):
    """scale * kB: higher for images that compress worse (more detail, or noise)."""
    return lambda images, prompts, metadata: [scale * jpeg_kb(im, quality) for im in images]
