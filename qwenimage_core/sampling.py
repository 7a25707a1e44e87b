"""The denoising loop: Euler steps of the flow ODE with true classifier-free guidance.

One function serves every pipeline (text-to-image, image-to-image, inpainting, edits), the graph nodes and the
trainer's validation, so all of them produce the same image for the same inputs. Operations follow the
reference pipelines (diffusers QwenImage*Pipeline) op for op, so outputs match them for the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .schedules import euler_step, pipeline_model_timestep


class Interrupted(Exception):
    """Raised out of `denoise` when its `interrupt` check says stop (between steps, nothing half-written)."""


@dataclass
class Conditioning:
    """Prompt states for the transformer: embeds [B, L, 3584] and mask [B, L] (1 = token, 0 = padding); for an
    edit, also the reference images' latents (`pipeline.EditReferences`) the prompt was encoded with."""
    embeds: torch.Tensor
    mask: Optional[torch.Tensor] = None
    references: Optional[object] = None

    def to(self, device=None, dtype=None) -> "Conditioning":
        return Conditioning(self.embeds.to(device=device, dtype=dtype),
                            None if self.mask is None else self.mask.to(device=device), self.references)

    def repeat(self, n: int) -> "Conditioning":
        """Each prompt n times in a row (num_images_per_prompt), as the reference repeats them."""
        if n == 1:
            return self
        e = self.embeds.repeat_interleave(n, dim=0)
        return Conditioning(e, None if self.mask is None else self.mask.repeat_interleave(n, dim=0), self.references)


@dataclass
class InpaintState:
    """What inpainting keeps: the clean image tokens, where to keep them (mask 0 = keep, 1 = repaint) and the noise
    they are re-noised with at every step, all packed [B, S, 64]."""
    image_tokens: torch.Tensor
    mask_tokens: torch.Tensor
    noise: torch.Tensor


StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]  # (step, total, latents, denoised x0)
Step = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (i, x, v, s, s') -> x'



def guided_velocity(cond_v: torch.Tensor, uncond_v: torch.Tensor, scale: float) -> torch.Tensor:
    """True CFG, then rescale each token's velocity to the norm of the conditional one (keeps the image from
    over-saturating at high scales, as the reference does)."""
    combined = uncond_v + scale * (cond_v - uncond_v)
    return combined * (torch.norm(cond_v, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """The flow-matching forward process: x_sigma = sigma * noise + (1 - sigma) * x0."""
    return sigma * noise + (1.0 - sigma) * x0


def predict_velocity(transformer, latents: torch.Tensor, sigma, cond: Conditioning, *, img_shapes,
                     uncond: Optional[Conditioning] = None, cfg: float = 1.0,
                     reference_tokens: Optional[torch.Tensor] = None, extra: Optional[dict] = None) -> torch.Tensor:
    """The model's velocity for packed latents [B, S, 64] at noise level `sigma` (a scalar), with true CFG when
    `uncond` is given and cfg > 1: the one prediction the sampler and RL training (which needs it with gradients,
    for the same numbers the sampler saw) share."""
    t = pipeline_model_timestep(sigma * 1000, latents.shape[0], latents.dtype)
    x = latents if reference_tokens is None else torch.cat([latents, reference_tokens], dim=1)

    def velocity(c: Conditioning) -> torch.Tensor:
        v = transformer(hidden_states=x, encoder_hidden_states=c.embeds, encoder_hidden_states_mask=c.mask,
                        timestep=t, img_shapes=img_shapes, **(extra or {}))
        return v[:, :latents.shape[1]]

    v = velocity(cond)
    if uncond is not None and cfg > 1.0:
        v = guided_velocity(v, velocity(uncond), cfg)
    return v


def denoise(
    transformer,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Conditioning,
    *,
    img_shapes,
    uncond: Optional[Conditioning] = None,
    cfg: float = 1.0,
    reference_tokens: Optional[torch.Tensor] = None,
    inpaint: Optional[InpaintState] = None,
    callback: Optional[StepCallback] = None,
    interrupt: Optional[Callable[[], bool]] = None,
    extra: Optional[dict] = None,
    step: Optional[Step] = None,
) -> torch.Tensor:
    """Integrate packed latents [B, S, 64] from sigmas[0] down to sigmas[-1] (normally 0).

    reference_tokens [B, S_ref, 64]: edit references, joined after the noisy tokens and never updated; img_shapes
    describes both. CFG runs when `uncond` is given and cfg > 1. `callback(step, total, latents, x0)` runs after
    each step (x0 = the current estimate of the clean latents, for previews); `interrupt()` is checked before
    each step and raises Interrupted. `extra` passes model arguments through (e.g. additional_t_cond). `step(i,
    latents, v, sigma, sigma_next)` replaces the Euler step (RL's stochastic step, which records what it took)."""
    total = len(sigmas) - 1
    for i in range(total):
        if interrupt is not None and interrupt():
            raise Interrupted(f"interrupted before step {i + 1} of {total}")
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        v = predict_velocity(transformer, latents, sigma, cond, img_shapes=img_shapes, uncond=uncond, cfg=cfg,
                             reference_tokens=reference_tokens, extra=extra)
        new = euler_step(latents, v, sigma, sigma_next) if step is None else step(i, latents, v, sigma, sigma_next)
        if inpaint is not None:
            keep = inpaint.image_tokens
            if i < total - 1:
                keep = add_noise(keep, inpaint.noise, sigma_next)
            new = (1 - inpaint.mask_tokens) * keep + inpaint.mask_tokens * new
        if callback is not None:
            callback(i, total, new, latents - sigma * v)
        latents = new
    return latents
