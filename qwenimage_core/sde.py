"""A stochastic step of the flow sampler with the log-probability of the step it took: what RL on flow models
(Flow-GRPO and its successors) optimises, next to the ODE's Euler step (`schedules.euler_step`).

Both kinds turn one Euler step x' = x + (sigma' - sigma) v into a Gaussian step x' ~ N(mean, std^2) with the same
marginals as the ODE; noise_level = 0 is the Euler step exactly.

  * "sde" (Flow-GRPO, arXiv 2505.05470): the reverse SDE of the flow. With dt = sigma' - sigma < 0 and
    s_t = noise_level * sqrt(sigma / (1 - sigma)),
        mean = x (1 + s_t^2 dt / (2 sigma)) + v (1 + s_t^2 (1 - sigma) / (2 sigma)) dt,   std = s_t sqrt(-dt).
  * "cps" (Coefficients-Preserving Sampling, arXiv 2509.05952): keeps the coefficients of the clean image and
    the noise what the schedule says, so samples carry no excess noise. With x0 = x - sigma v, x1 = x + (1-sigma) v
    and std = sigma' sin(noise_level pi / 2),
        mean = (1 - sigma') x0 + sqrt(sigma'^2 - std^2) x1.

Everything is float32 (Flow-GRPO: bf16 log-probs overflow). The log-probability is that of N(mean, std^2) at the
step taken, averaged over the latent's elements (as Flow-GRPO does, so its "sde" clip ranges carry over). For
"cps" Flow-GRPO scores -(x' - mean)^2 alone (no variance, no constants); we keep the true Gaussian, so the ratio
is a likelihood ratio there too, but Flow-GRPO's CPS clip ranges do not carry over."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("sde", "cps")


@dataclass
class SDEStep:
    prev: torch.Tensor              # the latents at sigma' (drawn, or the ones given), float32
    mean: torch.Tensor              # the Gaussian step's mean, float32
    std: torch.Tensor               # its standard deviation (0-dim); 0 for a deterministic (ODE) step
    log_prob: torch.Tensor | None   # [B]: mean over elements of log N(prev; mean, std^2); None when std = 0


def step_std(sigma, sigma_next, noise_level: float, kind: str = "sde", sigma_max: float | None = None) -> torch.Tensor:
    """The step's standard deviation. At sigma = 1 the "sde" scale sqrt(sigma / (1 - sigma)) is infinite;
    Flow-GRPO evaluates it at `sigma_max` (the schedule's second sigma) instead."""
    s, s_next = (torch.as_tensor(v, dtype=torch.float32) for v in (sigma, sigma_next))
    if kind == "cps":
        return s_next * math.sin(noise_level * math.pi / 2)
    if kind != "sde":
        raise ValueError(f"SDE kind {kind!r} is not one of {', '.join(KINDS)}")
    if float(s) >= 1 and sigma_max is None:
        raise ValueError("an 'sde' step from sigma = 1 needs sigma_max (the schedule's second sigma)")
    base = torch.as_tensor(sigma_max, dtype=torch.float32) if float(s) >= 1 else s
    scale = torch.sqrt(s / (1 - base)) * noise_level
    return scale * torch.sqrt(s - s_next)


def step_mean(x, v, sigma, sigma_next, std, kind: str = "sde") -> torch.Tensor:
    """The Gaussian step's mean for velocity v at latents x (float32); std from `step_std`."""
    x, v = x.float(), v.float()
    s, s_next = (torch.as_tensor(t, dtype=torch.float32, device=x.device) for t in (sigma, sigma_next))
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    if kind == "cps":
        x0, x1 = x - s * v, x + (1 - s) * v
        return (1 - s_next) * x0 + torch.sqrt((s_next ** 2 - std ** 2).clamp(min=0)) * x1
    dt = s_next - s
    var_t = std ** 2 / (-dt) if float(dt) < 0 else torch.zeros_like(std)  # s_t^2, the SDE's diffusion squared
    return x * (1 + var_t / (2 * s) * dt) + v * (1 + var_t * (1 - s) / (2 * s)) * dt


def gaussian_log_prob(x, mean, std) -> torch.Tensor:
    """log N(x; mean, std^2) per element, averaged over all but the batch dimension: [B]."""
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    lp = -((x.float() - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).mean(1)


def sde_step(x, v, sigma, sigma_next, *, noise_level: float, kind: str = "sde", sigma_max: float | None = None,
             noise: torch.Tensor | None = None, prev: torch.Tensor | None = None) -> SDEStep:
    """One stochastic step from x (at sigma) with velocity v. Give `noise` (standard normal, x's shape) to draw
    the step, or `prev` to score a step already taken (training: the same Gaussian under the current policy)."""
    std = step_std(sigma, sigma_next, noise_level, kind, sigma_max).to(x.device)
    mean = step_mean(x, v, sigma, sigma_next, std, kind)
    if prev is None:
        prev = mean if noise is None else mean + std * noise.float()
    prev = prev.float()
    log_prob = gaussian_log_prob(prev, mean, std) if float(std) > 0 else None
    return SDEStep(prev, mean, std, log_prob)


def step_kl(mean, mean_ref, std) -> torch.Tensor:
    """KL(N(mean, std^2) || N(mean_ref, std^2)) in closed form, per element averaged: [B]. (Flow-GRPO's code
    divides by the SDE's s_t^2 instead of std^2 = s_t^2 |dt|, so its beta is ours times |dt|.)"""
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    return ((mean.float() - mean_ref.float()) ** 2).flatten(1).mean(1) / (2 * std ** 2)
