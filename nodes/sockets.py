"""What travels on our sockets, and the conversions between ComfyUI's own layouts and the core's.

Images, masks and latents use ComfyUI's types and layouts, so our nodes connect to its Load Image, Save Image,
resize and mask nodes: IMAGE float [B, H, W, C] in 0..1, MASK [B, H, W], LATENT {"samples": [B, 16, 1, h, w]}
holding the VAE's un-normalised latents as ComfyUI stores them. Models and conditioning are our own types."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from ..qwenimage_core.lora import apply_loras, default_mode
from . import host

MODEL = "QWENIMAGE_MODEL"
TEXT_ENCODER = "QWENIMAGE_TEXT_ENCODER"
VAE = "QWENIMAGE_VAE"
CONDITIONING = "QWENIMAGE_CONDITIONING"


@dataclass(frozen=True)
class QwenModel:
    """The diffusion model plus the LoRAs chained onto it. The cached base weights are never changed for good:
    LoRAs are applied when a sampler runs and swapped when a graph asks for a different set."""
    transformer: torch.nn.Module
    loras: tuple = ()  # ((path, strength), ...)

    def with_lora(self, path: str, strength: float) -> "QwenModel":
        return replace(self, loras=self.loras + ((path, float(strength)),))

    @contextlib.contextmanager
    def patched(self):
        t = host.on_device(self.transformer)  # back from CPU memory if ComfyUI needed the room
        applied = getattr(t, "_node_loras", ((), None))
        if applied[0] != self.loras:
            if applied[1] is not None:
                applied[1].remove()
            t._node_loras = ((), None)
            if self.loras:
                t._node_loras = (self.loras, apply_loras(t, list(self.loras), default_mode(t)))
        yield t


def image_to_pixels(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> VAE input [B, 3, 1, H, W] in [-1, 1] (alpha dropped)."""
    return image[..., :3].permute(0, 3, 1, 2)[:, :, None].float() * 2.0 - 1.0


def pixels_to_image(pixels: torch.Tensor) -> torch.Tensor:
    """VAE output [B, 3, (1,) H, W] in [-1, 1] -> IMAGE [B, H, W, 3] in 0..1."""
    x = pixels[:, :, 0] if pixels.dim() == 5 else pixels
    return (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def image_to_pil(image: torch.Tensor) -> list[Image.Image]:
    """IMAGE -> PIL images, rounded to 8 bits (what the file the user loaded held)."""
    a = (image[..., :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(x) for x in a]


def latent_samples(latent: dict, what: str = "latent") -> torch.Tensor:
    """A LATENT's samples as [B, 16, 1, h, w]; 4-D latents (ComfyUI's image models) get their frame axis."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError(f"{what}: not a LATENT (a dict with 'samples')")
    z = latent["samples"]
    if z.dim() == 4:
        z = z[:, :, None]
    if z.dim() != 5 or z.shape[1] != 16 or z.shape[2] != 1:
        raise ValueError(f"{what}: samples of shape {list(z.shape)} are not Qwen-Image latents [B, 16, 1, h, w]; "
                         "use the Qwen-Image latent and VAE nodes")
    if z.shape[-1] % 2 or z.shape[-2] % 2:
        raise ValueError(f"{what}: {z.shape[-1] * 8}x{z.shape[-2] * 8} pixels is not a multiple of 16 on both sides")
    return z


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """MASK [H, W] or [B, H, W] -> [B, 1, H, W]."""
    m = mask.float()
    return m.reshape(-1, 1, *m.shape[-2:])
