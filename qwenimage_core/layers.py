"""Building blocks of the MMDiT: norms, timestep embedding, AdaLN modulation, feed-forward.

Module and parameter names follow the diffusers layout of the official checkpoints, so weights load by name."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """RMS norm with a learned scale; statistics in float32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        x = x * rms
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Parameter-free LayerNorm: AdaLN supplies the scale and shift."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def timestep_sinusoids(t: torch.Tensor, dim: int = 256, scale: float = 1000.0, max_period: float = 10000.0,
                       fp32_freqs: bool = False):
    """Sinusoidal embedding of sigma in [0, 1] (scaled to [0, 1000]), cosines first. The 20B model rounds the
    frequencies to t's dtype, as trained; 2.1 (`fp32_freqs`) scales sigma first and keeps them in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    if fp32_freqs:
        return _cos_sin((t.float() * scale)[:, None] * freqs[None])
    return _cos_sin((t[:, None].float() * freqs.to(t.dtype)[None]) * scale)


def _cos_sin(args: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, in_dim: int, dim: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim, bias=bias)
        self.linear_2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepConditioning(nn.Module):
    """temb = MLP(sinusoids(sigma)), plus a learned embedding of a binary condition for the Layered model.
    2.1: no biases, float32 frequencies."""

    def __init__(self, dim: int, additional_t_cond: bool = False, bias: bool = True, fp32_freqs: bool = False):
        super().__init__()
        self.fp32_freqs = fp32_freqs
        self.timestep_embedder = TimestepEmbedder(256, dim, bias)
        if additional_t_cond:
            self.addition_t_embedding = nn.Embedding(2, dim)

    def forward(self, sigma: torch.Tensor, dtype: torch.dtype, additional_t_cond: torch.Tensor | None = None):
        temb = self.timestep_embedder(timestep_sinusoids(sigma, fp32_freqs=self.fp32_freqs).to(dtype))
        if hasattr(self, "addition_t_embedding"):
            if additional_t_cond is None:
                raise ValueError("this model (use_additional_t_cond) needs additional_t_cond")
            temb = temb + self.addition_t_embedding(additional_t_cond).to(dtype)
        return temb


def modulation(dim: int, parts: int = 6, bias: bool = True) -> nn.Sequential:
    """AdaLN modulation: SiLU(temb) -> shift, scale, gate for attention and for the MLP (6 x dim); 2.1 has no
    shift (4 x dim, no bias)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, parts * dim, bias=bias))


def modulate(x: torch.Tensor, params: torch.Tensor, index: torch.Tensor | None = None):
    """x * (1 + scale) + shift, and the gate. params [B, 3*dim], or [2B, 3*dim] when `index` [B, L] picks per token
    between the first half (the noisy target, index 0) and the second (zero-timestep references, index 1)."""
    shift, scale, gate = params.chunk(3, dim=-1)
    if index is None:
        shift, scale, gate = shift[:, None], scale[:, None], gate[:, None]
    else:
        pick = (index == 0)[..., None]
        shift, scale, gate = (torch.where(pick, p[: len(p) // 2, None], p[len(p) // 2:, None]) for p in (shift, scale, gate))
    return x * (1 + scale) + shift, gate


class _GeluProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """GELU(tanh) MLP with 4x expansion; `net.1` is the (inference-free) dropout slot of the checkpoint layout."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([_GeluProj(dim, mult * dim), nn.Identity(), nn.Linear(mult * dim, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class AdaLNOut(nn.Module):
    """Continuous AdaLN before the output projection: LayerNorm(x) * (1 + scale) + shift, scale first."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x, temb):
        scale, shift = self.linear(F.silu(temb).to(x.dtype)).chunk(2, dim=1)
        return layer_norm(x) * (1 + scale)[:, None] + shift[:, None]
