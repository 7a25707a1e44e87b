"""Flow-matching noise schedules, the Euler step, initial noise and latent patch packing for Qwen-Image.

Conventions (rectified flow, as in the Qwen-Image report): x_sigma = (1 - sigma) * x_0 + sigma * noise, the
transformer predicts the velocity v = noise - x_0, and sampling walks sigma from 1 down to 0 with
x <- x + (sigma_next - sigma) * v. A schedule here is a float32 tensor of N + 1 sigmas ending in 0.

Two schedules:
  * `official_sigmas`: what diffusers' QwenImagePipeline runs with the released scheduler config
    (resolution-dependent exponential time shift, then a stretch so the last non-zero sigma is 0.02).
    The numerics follow the reference op for op in float32, so sigmas are bit-identical.
  * `fixed_shift_sigmas`: what ComfyUI runs with ModelSamplingAuraFlow(shift) + the "simple" scheduler
    (sigma(t) = s t / (1 + (s - 1) t) on ComfyUI's 1000-entry table), bit-identical to ComfyUI's.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
import torch

LATENT_CHANNELS = 16     # Qwen-Image VAE z_dim
VAE_SCALE = 8            # VAE spatial compression
PATCH = 2                # transformer patch size: a token is a 2x2 patch of latents, 16 * 4 = 64 features
PIXEL_MULTIPLE = VAE_SCALE * PATCH

_META_FIELDS = {"_class_name", "_diffusers_version", "_name_or_path", "_commit_hash", "_use_default_values"}
# Options of diffusers' FlowMatchEulerDiscreteScheduler we do not implement; accepted in a config only when off.
_UNSUPPORTED_FLAGS = ("invert_sigmas", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                      "stochastic_sampling")

Seed = Union[int, torch.Generator]


@dataclass(frozen=True)
class ScheduleConfig:
    """The scheduler config of the Qwen-Image release (diffusers `scheduler/scheduler_config.json`); field names
    are diffusers' so that file reads straight in. Defaults are the official values."""
    num_train_timesteps: int = 1000
    shift: float = 1.0                  # static shift, used only when use_dynamic_shifting is off
    use_dynamic_shifting: bool = True   # shift by mu, which grows with the image's token count
    base_shift: float = 0.5             # mu at base_image_seq_len tokens
    max_shift: float = 0.9              # mu at max_image_seq_len tokens (linear in between and beyond)
    base_image_seq_len: int = 256
    max_image_seq_len: int = 8192
    shift_terminal: float | None = 0.02  # the last non-zero sigma after stretching; None/0: no stretch
    time_shift_type: str = "exponential"
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type {self.time_shift_type!r} must be 'exponential' or 'linear'")
        if self.shift_terminal is not None and not 0 <= self.shift_terminal < 1:
            raise ValueError(f"shift_terminal {self.shift_terminal} must be in [0, 1)")

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(k for k in d if k not in names and k not in _META_FIELDS and k not in _UNSUPPORTED_FLAGS)
        if unknown:
            raise ValueError(f"unknown scheduler config field(s): {', '.join(unknown)}")
        on = [k for k in _UNSUPPORTED_FLAGS if d.get(k)]
        if on:
            raise ValueError(f"scheduler option(s) not supported: {', '.join(on)}")
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k in _META_FIELDS})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ScheduleConfig":
        """Read a `scheduler_config.json`, a folder holding one, or a diffusers model folder (scheduler/...)."""
        path = os.fspath(path)
        for cand in (path, os.path.join(path, "scheduler_config.json"),
                     os.path.join(path, "scheduler", "scheduler_config.json")):
            if os.path.isfile(cand):
                from .checkpoint import read_json  # the loaders' bounded JSON reader

                return cls.from_dict(read_json(cand))
        raise FileNotFoundError(f"no scheduler_config.json at {path} (nor in it, nor in its scheduler/ folder)")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {"_class_name": "FlowMatchEulerDiscreteScheduler", **d}


def _check_pixels(height: int, width: int) -> None:
    # The VAE halves three times and the transformer packs 2x2, so a pixel side must be a multiple of 16.
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0 or v % PIXEL_MULTIPLE:
            raise ValueError(f"{name} {v!r} must be a positive multiple of {PIXEL_MULTIPLE} pixels "
                             f"(8x VAE compression x 2x2 patches)")


def image_seq_len(height: int, width: int) -> int:
    """Number of image tokens for an H x W pixel image: (H/16) * (W/16), the length the shift depends on."""
    _check_pixels(height, width)
    return (height // PIXEL_MULTIPLE) * (width // PIXEL_MULTIPLE)


def calculate_shift(image_seq_len: int, cfg: ScheduleConfig = ScheduleConfig()) -> float:
    """mu: the line through (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift), in Python floats
    in the reference's order of operations (not clamped: longer sequences extrapolate)."""
    slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
    intercept = cfg.base_shift - slope * cfg.base_image_seq_len
    return image_seq_len * slope + intercept


def exponential_time_shift(t, mu: float):
    """The resolution shift of a noise level t in (0, 1]: exp(mu) / (exp(mu) + (1/t - 1)). (shift_sigmas below
    computes the same in float32 numpy, op for op as the reference, for bit-exact inference schedules.)"""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def static_time_shift(t, shift: float):
    """A fixed shift s of a noise level t: s t / (1 + (s - 1) t) (s > 1 spends more time at high noise)."""
    return shift * t / (1 + (shift - 1) * t)


def shift_sigmas(base_sigmas, mu: float | None = None, cfg: ScheduleConfig = ScheduleConfig()) -> torch.Tensor:
    """Apply the config's time shift and terminal stretch to `base_sigmas` (descending, in (0, 1]) and append 0:
    the same computation as FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=..., mu=...).

    Every step runs in float32 numpy as the reference does (Python scalars are cast to float32 first), so the
    result is bit-identical to diffusers'."""
    f32 = np.float32
    t = np.array(base_sigmas).astype(f32)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"base sigmas must be a non-empty 1-D sequence, got shape {t.shape}")
    if cfg.use_dynamic_shifting:
        if mu is None:
            raise ValueError("mu is required when use_dynamic_shifting is on (see calculate_shift)")
        # Resolution shift on the noise-to-signal ratio (1 - t) / t: it is divided by exp(mu) (or mu); the
        # reference raises it to the power 1.0 first, which is exact, so it is left out.
        ratio = f32(1) / t - f32(1)
        k = f32(math.exp(mu) if cfg.time_shift_type == "exponential" else mu)
        sig = k / (k + ratio)
    else:
        # Static shift s t / (1 + (s - 1) t); (s - 1) is taken in double before the cast, as in the reference.
        sig = f32(cfg.shift) * t / (f32(1) + f32(cfg.shift - 1) * t)
    if cfg.shift_terminal:
        # Stretch 1 - sigma so the last sigma lands exactly on shift_terminal, keeping sigma_0 = 1.
        one_minus = f32(1) - sig
        # A schedule whose last sigma is 1 (a single step from pure noise) has nothing to stretch; the
        # reference divides 0 by 0 there and returns NaN. We keep the unstretched sigmas instead.
        if one_minus[-1] != 0:
            scale = one_minus[-1] / f32(1 - cfg.shift_terminal)
            sig = f32(1) - one_minus / scale
    sig = torch.from_numpy(np.ascontiguousarray(sig, dtype=f32))
    return torch.cat([sig, sig.new_zeros(1)])


def official_sigmas(num_steps: int, image_seq_len: int, cfg: ScheduleConfig = ScheduleConfig()) -> torch.Tensor:
    """The QwenImagePipeline schedule: N linearly spaced sigmas 1 .. 1/N, shifted for `image_seq_len` tokens
    (see `image_seq_len`), stretched to end at shift_terminal, then 0. float32, length N + 1.

    One deliberate difference: for N = 1 diffusers returns [nan, 0] (0/0 in the stretch); this returns [1, 0]."""
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps {num_steps!r} must be a positive integer")
    base = np.linspace(1.0, 1 / num_steps, num_steps)  # float64, as the pipeline builds it
    return shift_sigmas(base, calculate_shift(image_seq_len, cfg), cfg)


def sigmas_to_timesteps(sigmas: torch.Tensor, cfg: ScheduleConfig = ScheduleConfig()) -> torch.Tensor:
    """The scheduler's `timesteps` (length N): sigma * num_train_timesteps in float32, the final 0 dropped."""
    return sigmas[:-1] * cfg.num_train_timesteps


def pipeline_model_timestep(timestep: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """The `timestep` argument QwenImagePipeline gives the transformer: t.expand(B).to(latents dtype) / 1000.

    In float32 that is the sigma to within an ulp; in bfloat16 t is rounded to 8 significant bits before the
    division (t = 766.7 becomes 768, so sigma 0.7667 reaches the model as 0.7695). Use this for exact
    parity with the reference pipeline, the sigma itself otherwise."""
    t = torch.as_tensor(timestep, dtype=torch.float32)
    return t.expand(batch).to(dtype) / 1000


def _time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    # ComfyUI's time_snr_shift: sigma = s t / (1 + (s - 1) t), i.e. the noise-to-signal odds scaled by s.
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def comfy_sigma_table(shift: float, multiplier: float = 1.0, timesteps: int = 1000) -> torch.Tensor:
    """ModelSamplingDiscreteFlow's `sigmas` buffer: sigma((k / T) * multiplier) for k = 1..T, ascending, float32,
    with sigma(x) = time_snr_shift(shift, x / multiplier). ComfyUI sets multiplier 1.0 for Qwen-Image and in
    ModelSamplingAuraFlow, 1000 in ModelSamplingSD3; the ops are ComfyUI's torch float32 ops, in its order."""
    x = (torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier
    return _time_snr_shift(shift, x / multiplier)


def fixed_shift_sigmas(num_steps: int, shift: float = 3.1, multiplier: float = 1.0,
                       timesteps: int = 1000) -> torch.Tensor:
    """ComfyUI's "simple" scheduler over a flow model with a fixed shift (ModelSamplingAuraFlow(shift), the
    Qwen-Image template uses 3.1): float32, length N + 1, ending in 0, bit-identical to ComfyUI.

    "simple" does not evaluate sigma(t) on a linspace; it picks entries of the 1000-entry table
    (`comfy_sigma_table`), stepping back from the last by len/N with truncation: for x in 0..N-1 it takes
    table[-(1 + int(x * (1000 / N)))]. The pick uses that float expression, so where x * (1000 / N) rounds just
    below an integer (N = 38, x = 19 gives 499.99999999999994) the pick is one entry higher than exact
    arithmetic gives; ComfyUI users get that, so we do too. The first sigma is sigma(1) (1.0 up to float32
    rounding of s / s); intermediate sigmas lie on the 1/1000 grid of t."""
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps {num_steps!r} must be a positive integer")
    table = comfy_sigma_table(shift, multiplier, timesteps)
    stride = len(table) / num_steps
    picks = [float(table[-(1 + int(x * stride))]) for x in range(num_steps)]
    return torch.tensor(picks + [0.0], dtype=torch.float32)


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One Euler step of the flow ODE: x + (sigma_next - sigma) * v, as FlowMatchEulerDiscreteScheduler.step.

    Reproduced op for op: x is upcast to float32, dt is a float32 0-dim tensor on v's device (sigma_next - sigma
    in float32), the product dt * v takes v's dtype (so for bf16 v both dt and the product are rounded to
    bf16), the sum is float32, and the result is cast to v's dtype. sigma, sigma_next: scalars (floats or
    0-dim tensors, e.g. entries of a schedule)."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=velocity.device)
    s_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=velocity.device)
    if s.ndim or s_next.ndim:
        raise ValueError("euler_step takes scalar sigmas; per-sample sigmas would change the reference's numerics")
    dt = s_next - s
    return (x.to(torch.float32) + dt * velocity).to(velocity.dtype)


def initial_noise(batch: int, height: int, width: int, seed: Seed | Sequence[Seed], *,
                  device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                  channels: int = LATENT_CHANNELS) -> torch.Tensor:
    """Starting noise [B, 16, 1, H/8, W/8] for an H x W pixel image (pixels, multiples of 16).

    Convention: an int seed s means torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) drawn in
    float32 on the CPU, then moved to `device` and cast to `dtype`, so a seed gives the same image on every
    device. That equals diffusers' randn_tensor with the same CPU generator for float32, bfloat16 and float16
    (torch draws those in float32 and rounds), not for float64. The pipeline draws [B, 1, 16, h, w]; with a
    frame axis of 1 the memory order, and so the packed tokens, are the same.

    - one int or Generator: a single stream over the whole batch. Item 0 equals the batch-1 noise of that seed,
      item k continues the stream, so it depends on the batch size before it.
    - a list (one int or Generator per item): each item is drawn alone as batch 1, so any item can be
      reproduced by itself (diffusers' list-of-generators behaviour).
    A Generator is used as given, and draws on its own device."""
    _check_pixels(height, width)
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch {batch!r} must be a positive integer")
    shape = (channels, 1, height // VAE_SCALE, width // VAE_SCALE)

    def draw(s: Seed, n: int) -> torch.Tensor:
        if isinstance(s, torch.Generator):
            g = s
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool):
            g = torch.Generator("cpu").manual_seed(int(s))
        else:
            raise TypeError(f"seed must be an int or a torch.Generator, got {type(s).__name__}")
        return torch.randn((n, *shape), generator=g, device=g.device, dtype=torch.float32)

    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ValueError(f"{len(seed)} seeds given for a batch of {batch}; give one per item or a single seed")
        noise = torch.cat([draw(s, 1).cpu() for s in seed])
    else:
        noise = draw(seed, batch)
    return noise.to(device=device if device is not None else noise.device, dtype=dtype)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, 1, h, w] (or [B, C, h, w]) latents -> [B, (h/2)(w/2), 4C] tokens, row-major over 2x2 patches.
    A token's features are channel-major: index c * 4 + dy * 2 + dx (as QwenImagePipeline._pack_latents)."""
    if latents.ndim == 5:
        if latents.shape[2] != 1:
            raise ValueError(f"pack_latents takes one frame, got {latents.shape[2]} (shape {tuple(latents.shape)})")
    elif latents.ndim != 4:
        raise ValueError(f"pack_latents takes [B, C, 1, h, w] or [B, C, h, w], got shape {tuple(latents.shape)}")
    b, c, h, w = latents.shape[0], latents.shape[1], latents.shape[-2], latents.shape[-1]
    if h % PATCH or w % PATCH:
        raise ValueError(f"latent height {h} and width {w} must be even to pack into 2x2 patches")
    x = latents.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of pack_latents: [B, (h/2)(w/2), 4C] -> [B, C, 1, h, w]; height, width are in latents (pixels / 8)."""
    if tokens.ndim != 3:
        raise ValueError(f"unpack_latents takes [B, tokens, features], got shape {tuple(tokens.shape)}")
    b, n, f = tokens.shape
    if height % PATCH or width % PATCH:
        raise ValueError(f"latent height {height} and width {width} must be even to unpack 2x2 patches")
    if n != (height // PATCH) * (width // PATCH) or f % (PATCH * PATCH):
        raise ValueError(f"{n} tokens of {f} features do not make a {height} x {width} latent of 2x2 patches")
    c = f // (PATCH * PATCH)
    x = tokens.reshape(b, height // PATCH, width // PATCH, c, PATCH, PATCH)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, 1, height, width)
