"""VAE decode and encode between ComfyUI's IMAGE and LATENT, with optional tiling for large images."""
from __future__ import annotations

import contextlib

import torch

from ..qwenimage_core.images import check_size
from ..qwenimage_core.preview import has_own_statistics
from ..qwenimage_core.vae import denormalize_latents, normalize_latents
from . import host
from .sockets import VAE, image_to_pixels, latent_samples, pixels_to_image

CATEGORY = "Qwen-Image/vae"


def _tiling_inputs():
    return {
        "tiled": ("BOOLEAN", {"default": False, "tooltip": "Work in overlapping tiles: far less memory for large "
                                                           "images, seams blended"}),
        "tile_size": ("INT", {"default": 256, "min": 64, "max": 4096, "step": 32,
                              "tooltip": "Tile side in pixels (tiled only)"}),
        "overlap": ("INT", {"default": 64, "min": 0, "max": 1024, "step": 32,
                            "tooltip": "Overlap between tiles in pixels (tiled only); must be below tile_size"}),
    }


@contextlib.contextmanager
def _tiling(vae, tiled: bool, tile_size: int, overlap: int):
    """Tiling for this node only: the VAE is cached and shared, so its previous setting is restored after."""
    before = vae.tiling
    if tiled:
        if overlap >= tile_size:
            raise ValueError(f"overlap {overlap} must be smaller than tile_size {tile_size}")
        vae.enable_tiling(tile_size, overlap)
    else:
        vae.disable_tiling()
    try:
        yield vae
    finally:
        vae.tiling = before


def from_graph(z: torch.Tensor, vae) -> torch.Tensor:
    """Graph latents -> this VAE's own. A LATENT in the graph holds latents un-normalised with the official
    statistics (as ComfyUI stores them, and as the sampler reads and writes them); a VAE that ships its own
    statistics (the demo's) maps them through the transformer's normalised space onto its own."""
    return denormalize_latents(normalize_latents(z.float()), vae.config) if has_own_statistics(vae) else z


def to_graph(z: torch.Tensor, vae) -> torch.Tensor:
    """This VAE's own latents -> graph latents (the inverse of from_graph)."""
    return denormalize_latents(normalize_latents(z.float(), vae.config)) if has_own_statistics(vae) else z


class QwenImageVAEDecode:
    DESCRIPTION = "Decode Qwen-Image latents to images."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE, {"tooltip": "The Qwen-Image VAE"}),
            "samples": ("LATENT", {"tooltip": "The latents to decode (from the sampler)"}),
            **_tiling_inputs(),
        }}

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The decoded images",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY

    @torch.no_grad()
    def decode(self, vae, samples, tiled, tile_size, overlap):
        vae = host.on_device(vae)
        z = latent_samples(samples, "samples")
        with _tiling(vae, tiled, tile_size, overlap):
            pixels = vae.decode(from_graph(z, vae).to(vae.device, vae.dtype))
        return (pixels_to_image(pixels),)


class QwenImageVAEEncode:
    DESCRIPTION = ("Encode images to Qwen-Image latents (for image-to-image and inpainting). Sides must be "
                   "multiples of 16: resize or crop first.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": (VAE, {"tooltip": "The Qwen-Image VAE"}),
            "pixels": ("IMAGE", {"tooltip": "The images to encode; width and height multiples of 16"}),
            **_tiling_inputs(),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The images' latents (the posterior's mode)",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    @torch.no_grad()
    def encode(self, vae, pixels, tiled, tile_size, overlap):
        if pixels.dim() != 4:
            raise ValueError(f"pixels: expected an IMAGE [B, H, W, C], got shape {list(pixels.shape)}")
        vae = host.on_device(vae)
        check_size(int(pixels.shape[2]), int(pixels.shape[1]), "image")
        with _tiling(vae, tiled, tile_size, overlap):
            z = vae.encode(image_to_pixels(pixels).to(vae.device, vae.dtype)).mode()
        return ({"samples": to_graph(z.float().cpu(), vae)},)


NODES = {c.__name__: c for c in (QwenImageVAEDecode, QwenImageVAEEncode)}
DISPLAY = {"QwenImageVAEDecode": "Qwen-Image VAE Decode", "QwenImageVAEEncode": "Qwen-Image VAE Encode"}
