"""Image quality metrics for reconstruction and evaluation: PSNR and SSIM on images in [0, 1], per image.

Both take (B, C, H, W) float tensors (or (C, H, W)) and return one value per image. SSIM is Wang et al. (2004):
an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, 'valid' filtering, averaged
over channels and positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _batched(x: torch.Tensor) -> torch.Tensor:
    return (x[None] if x.ndim == 3 else x).double()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / MSE) in dB per image; inf for identical images."""
    mse = ((_batched(a) - _batched(b)) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)  # mse 0 -> inf


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11) -> torch.Tensor:
    """Structural similarity per image (1.0 for identical images). Images smaller than the window use a window
    of their smaller side."""
    a, b = _batched(a), _batched(b)
    c = a.shape[1]
    size = min(window, *a.shape[-2:])
    w = _gaussian_window(size).to(a.device).expand(c, 1, size, size)

    def blur(t):
        return F.conv2d(t, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)
