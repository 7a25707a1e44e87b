"""How close a generated image is to a ground-truth image (reconstruction, novel-view synthesis, edits with a known
result): PSNR and SSIM (eval/image_metrics.py), and LPIPS when its weights are given (objectives/perceptual.py:
VGG16 features + LPIPS's lin layers from one safetensors file; no torchvision, nothing downloaded).

The target is metadata["target"] (a path or a PIL image). The generated image is resized (Lanczos) to the target's
size when they differ: the ground truth fixes the resolution the numbers are measured at. PSNR of identical images
is infinite; it is reported as PSNR_CAP = 100 dB, which keeps means and JSON finite. Differences almost that small
are capped too (one 8-bit level off in one pixel of a 512x512 image is ~102 dB): 100 means identical in practice.
A missing or unreadable target is a recorded failure for that image (`fn.failures`), not a stopped evaluation."""
from __future__ import annotations

import math

from .base import RewardError, register

PSNR_CAP = 100.0


def _unit(image, size=None):
    """PIL -> [1, 3, H, W] float64 in [0, 1], resized (Lanczos) to `size` = (w, h) when given and different."""
    import numpy as np
    import torch
    from PIL import Image

    image = image.convert("RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), resample=Image.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.float64) / 255.0).permute(2, 0, 1)[None]


class EditFidelity:
    """psnr (dB, capped), ssim, and lpips (lower is closer) when `lpips_weights` names a safetensors file.
    `reward` picks the metric `__call__` returns (ssim by default: in [0, 1], higher is better)."""

    def __init__(self, lpips_weights: str | None = None, reward: str = "ssim", device: str = "cpu"):
        from ..objectives.perceptual import PerceptualLoss

        self.lpips = PerceptualLoss.from_file(lpips_weights).to(device) if lpips_weights else None
        names = ["psnr", "ssim"] + (["lpips"] if self.lpips is not None else [])
        if reward not in names:
            raise ValueError(f"edit_fidelity: reward {reward!r} is not one of {names}")
        self.reward, self.device = reward, device
        self.failures: dict[int, str] = {}

    def metrics(self, images, prompts, metadata) -> dict[str, list[float | None]]:
        self.failures = {}
        names = ["psnr", "ssim"] + (["lpips"] if self.lpips is not None else [])
        out = {n: [] for n in names}
        for i, (image, meta) in enumerate(zip(images, metadata)):
            try:
                values = self.compare(image, self.target(meta or {}))
            except (ValueError, FileNotFoundError) as e:
                self.failures[i] = str(e)
                values = dict.fromkeys(names)
            for n in names:
                out[n].append(values[n])
        return out

    @staticmethod
    def target(meta: dict):
        from ...qwenimage_core.images import load_image

        target = meta.get("target")
        if target is None:
            raise ValueError("no ground-truth image (metadata 'target')")
        return target if hasattr(target, "convert") else load_image(target, "target image")

    def compare(self, image, target) -> dict[str, float]:
        import torch

        from ..eval.image_metrics import psnr, ssim

        t = _unit(target)
        x = _unit(image, target.size)
        p = float(psnr(x, t)[0])
        values = {"psnr": PSNR_CAP if math.isinf(p) else min(p, PSNR_CAP), "ssim": float(ssim(x, t)[0])}
        if self.lpips is not None:
            with torch.no_grad():
                values["lpips"] = float(self.lpips((x * 2 - 1).float().to(self.device),
                                                   (t * 2 - 1).float().to(self.device))[0])
        return values

    def __call__(self, images, prompts, metadata):
        values = self.metrics(images, prompts, metadata)[self.reward]
        if self.failures:
            i, reason = next(iter(self.failures.items()))
            raise RewardError(f"scorer 'edit_fidelity': image {i}: {reason}")
        return values


@register("edit_fidelity")
def edit_fidelity(**options):
    """PSNR / SSIM (/ LPIPS with lpips_weights=) against metadata["target"]."""
    return EditFidelity(**options)
