"""Flow matching, the report's pretraining and SFT objective: x_t = (1 - sigma) x0 + sigma eps, the model
predicts the velocity eps - x0, at noise levels drawn by one of four schemes, with an optional loss weighting."""
from __future__ import annotations

import math

import torch

from ...qwenimage_core.sampling import add_noise
from ...qwenimage_core.schedules import (ScheduleConfig, calculate_shift, exponential_time_shift, image_seq_len,
                                         pack_latents, static_time_shift)
from .base import Objective


def sample_sigmas(scheme: str, u: torch.Tensor, *, height: int, width: int, logit_mean=0.0, logit_std=1.0,
                  shift=3.0, normal: torch.Tensor | None = None) -> torch.Tensor:
    """Noise levels in (0, 1) for training. uniform: u; logit_normal: sigmoid(N(mean, std)) (SD3, favours the
    middle); shift: u pushed towards noise as a fixed shift s does at inference, s*u / (1 + (s-1)*u);
    dynamic: the exponential shift inference uses for this resolution (mu from the token count)."""
    if scheme == "uniform":
        return u
    if scheme == "logit_normal":
        return torch.sigmoid(logit_mean + logit_std * normal)
    if scheme == "shift":
        return static_time_shift(u, shift)
    if scheme == "dynamic":
        return exponential_time_shift(u, calculate_shift(image_seq_len(height, width), ScheduleConfig()))
    raise ValueError(f"unknown timestep scheme {scheme!r}")


def loss_weight(scheme: str, sigma: torch.Tensor) -> torch.Tensor:
    """none: 1; cosmap: SD3's 2 / (pi (1 - 2s + 2s^2)); sigma_sqrt: 1 / s^2, clipped (the velocity target's
    weighting towards clean samples)."""
    if scheme == "none":
        return torch.ones_like(sigma)
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma ** 2))
    if scheme == "sigma_sqrt":
        return (sigma ** -2).clamp(max=100.0)
    raise ValueError(f"unknown loss weighting {scheme!r}")


class FlowMatching(Objective):
    """x_t = (1 - sigma) x0 + sigma eps; the model predicts the velocity eps - x0 (the report's objective)."""

    def __init__(self, timesteps="logit_normal", logit_mean=0.0, logit_std=1.0, shift=3.0, weighting="none"):
        self.timesteps, self.weighting = timesteps, weighting
        self.logit_mean, self.logit_std, self.shift = logit_mean, logit_std, shift

    @classmethod
    def from_config(cls, c) -> "FlowMatching":
        return cls(c.timesteps, c.logit_mean, c.logit_std, c.shift, c.weighting)

    def noise(self, x0: torch.Tensor, generators) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps, sigma) per sample, each drawn from the sample's own generator."""
        eps, sig = [], []
        h, w = x0.shape[-2] * 8, x0.shape[-1] * 8
        for g in generators:
            eps.append(torch.randn(x0.shape[1:], generator=g))
            u = torch.rand((), generator=g).clamp(1e-5, 1 - 1e-5)
            n = torch.randn((), generator=g)
            sig.append(sample_sigmas(self.timesteps, u, height=h, width=w, logit_mean=self.logit_mean,
                                     logit_std=self.logit_std, shift=self.shift, normal=n))
        return torch.stack(eps).to(x0), torch.stack(sig).to(x0)

    def loss(self, model, batch, generators):
        x0 = batch["latents"]                                    # [B, 16, 1, h, w], normalised
        eps, sigma = self.noise(x0, generators)
        err = velocity_error(model, x0, eps, sigma, batch["embeds"], batch["mask"], batch.get("references"))
        return err * loss_weight(self.weighting, sigma.float()), {"sigma": sigma.mean().item()}


def velocity_error(model, x0, eps, sigma, embeds, mask, references=None) -> torch.Tensor:
    """Per-sample mean squared error [B] of the predicted velocity against eps - x0 at x_t (float32)."""
    xt = add_noise(x0, eps, sigma.view(-1, 1, 1, 1, 1))
    target = pack_latents(eps - x0)
    b, _, _, h, w = x0.shape
    tokens = pack_latents(xt)
    shapes = [(1, h // 2, w // 2)]
    for ref in references or []:                                 # edit triples: reference tokens after the target's
        tokens = torch.cat([tokens, pack_latents(ref.to(x0))], dim=1)
        shapes.append((1, ref.shape[-2] // 2, ref.shape[-1] // 2))
    pred = model(hidden_states=tokens, encoder_hidden_states=embeds, encoder_hidden_states_mask=mask,
                 timestep=sigma, img_shapes=[shapes] * b)
    pred = pred[:, :target.shape[1]].float()
    return ((pred - target.float()) ** 2).mean(dim=(1, 2))
