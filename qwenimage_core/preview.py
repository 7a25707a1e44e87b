"""Live sampler previews of the transformer's (normalised) latents. For the official Qwen-Image VAE (Wan 2.1's)
a linear map to RGB, no VAE run, as ComfyUI's latent2rgb previews with its Wan 2.1 factors. A VAE that ships
its own latent statistics (the demo's, trained from scratch) has a latent space of its own that no linear map
renders (a least-squares fit on the demo VAE is off by 44/255 on average), so its previews are decoded by it."""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

# Wan 2.1 latent space (ComfyUI's comfy/latent_formats.py, Wan21): rgb in [-1, 1] = z @ WAN21_RGB + WAN21_BIAS for
# latents normalised with the official statistics.
WAN21_RGB = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)
WAN21_BIAS = (-0.1835, -0.0868, -0.3360)


def _pil(rgb01: torch.Tensor, max_side: int, upscale: int) -> Image.Image:
    """[h, w, 3] in 0..1 -> PIL, blown up `upscale` times at most while its longer side stays within max_side."""
    im = Image.fromarray((rgb01.clamp(0, 1) * 255).round().byte().cpu().numpy())
    scale = max(1, min(upscale, max_side // max(im.size)))
    return im.resize((im.width * scale, im.height * scale), Image.BILINEAR) if scale > 1 else im


def latent2rgb(latents: torch.Tensor, max_side: int = 512) -> Image.Image:
    """The first image of normalised latents [B, 16, (1,) h, w] through the Wan 2.1 factors, one pixel per latent
    (upscaled up to 8x, the VAE's block)."""
    z = latents[0].float()
    z = z[:, 0] if z.dim() == 4 else z
    rgb = z.permute(1, 2, 0) @ torch.tensor(WAN21_RGB) + torch.tensor(WAN21_BIAS)
    return _pil((rgb + 1) / 2, max_side, 8)


def has_own_statistics(vae) -> bool:
    from .vae import VAEConfig

    official = VAEConfig()
    return (tuple(vae.config.latents_mean), tuple(vae.config.latents_std)) != (official.latents_mean,
                                                                                official.latents_std)


def previewer(vae=None, max_side: int = 512) -> Callable[[torch.Tensor], Image.Image]:
    """latents -> preview image for the latent space of `vae` (None: the official one)."""
    if vae is None or not has_own_statistics(vae):
        return lambda latents: latent2rgb(latents, max_side)

    @torch.no_grad()
    def decode(latents):
        z = vae.denormalize_latents(latents[:1].to(vae.device, torch.float32)).to(vae.dtype)
        z = z if z.dim() == 5 else z[:, :, None]
        return _pil((vae.decode(z)[0, :, 0].float().permute(1, 2, 0) + 1) / 2, max_side, 1)

    return decode
