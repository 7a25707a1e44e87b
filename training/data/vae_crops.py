"""VAE training data: the dataset layer's images (captions not needed), random square crops for training and
centre crops of held-out images for PSNR/SSIM.

A crop's place is drawn from its sample's own generator (seeded by the run's seed, the step and the sample's place
in the global batch), so a resumed run crops exactly as the uninterrupted one."""
from __future__ import annotations

import random

import torch

from ...qwenimage_core.images import load_image, to_tensor
from .dataset import load_samples


def load_pixels(path: str, min_side: int) -> torch.Tensor:
    """[3, H, W] in [-1, 1]; scaled up (Lanczos, aspect kept) when the shorter side is under `min_side`."""
    im = load_image(path).convert("RGB")
    w, h = im.size
    s = max(1.0, min_side / min(w, h))
    return to_tensor(im, max(min_side, round(w * s)), max(min_side, round(h * s)))[0]


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


class ImageCrops:
    """Training samples as random `crop` x `crop` crops; one size, so the bucket sampler makes plain batches."""

    def __init__(self, samples, crop: int):
        self.samples, self.crop = samples, crop
        self.sizes = [(crop, crop)] * len(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, indices, generators) -> dict:
        crops = []
        for i, g in zip(indices, generators):
            x = load_pixels(self.samples[i].image, self.crop)
            top = int(torch.randint(0, x.shape[-2] - self.crop + 1, (), generator=g))
            left = int(torch.randint(0, x.shape[-1] - self.crop + 1, (), generator=g))
            crops.append(x[:, top:top + self.crop, left:left + self.crop])
        return {"images": torch.stack(crops)}


def vae_samples(cfg, path: str = ""):
    """(training samples, held-out samples) of a VAE run: `vae.eval_data` when set, else `vae.holdout` images of
    the data chosen by the seed (and left out of training). Captions are read if present, never required."""
    load = dict(kind=cfg.data.kind, on_error=cfg.data.on_error, min_size=cfg.data.min_size, captions=False)
    samples = load_samples(path or cfg.data.path, **load)
    if cfg.vae.eval_data:
        return samples, load_samples(cfg.vae.eval_data, **load)
    n = min(cfg.vae.holdout, len(samples) - 1)
    held = set(random.Random(cfg.train.seed).sample(range(len(samples)), n)) if n > 0 else set()
    return [s for i, s in enumerate(samples) if i not in held], [samples[i] for i in sorted(held)]


def eval_images(samples, size: int) -> torch.Tensor:
    """Centre crops [N, 3, size, size] in [-1, 1] of the held-out images."""
    if not samples:
        return torch.zeros(0, 3, size, size)
    return torch.stack([center_crop(load_pixels(s.image, size), size) for s in samples])
