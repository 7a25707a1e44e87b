"""The Qwen-Image 2.1 VAE (diffusers `AutoencoderKLQwenImage21`): RGBA in and out, 64 latent channels, 16x down
(four 2x levels of five), Wan-2.2-style residual levels (a parameter-free shortcut around each level: channel
averaging down, channel duplication up) and a wider decoder (its own base width). Its "causal 3-D" convolutions
are Conv2d with 4-D weights; the `time_conv` of the temporal levels is there for the weights only (a first frame
skips it, as in the 20B VAE).

Built from the 20B VAE's pieces (vae.py: RMS norms, residual, attention and middle blocks with 2-D convolutions,
resampling, the posterior, running, tiling); what is new is written here once: the residual levels, the config,
the latent statistics' arithmetic and the file layouts. Tiling lays and blends tiles as diffusers does, so a
tiled decode equals the reference's.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from .vae import (_BLOCKS, _RESIDUAL, _TOP, FAMILIES, LATENT_STATS_KEY, Decoder, DiffusersConfig, Encoder, MidBlock,
                  QwenImageVAE, Resample, ResidualBlock, RMSNorm, _inverse, _rename, _stats_fields, check_sizes,
                  save_vae, vae_family, vae_file_names, vae_folder_sources)
from .weights import CheckpointError, SafetensorsFile, assign_weights, check_config_fits, save_file_atomic

LATENTS_MEAN = (0.5126, 0.7721, -0.0631, 1.3506, -0.7855, -2.1025, -0.3458, 1.3722, 1.8873, -1.7177, -0.6510,
                0.2732, 0.7562, -0.6163, -1.0277, 3.8363, 2.0210, 0.0472, 0.9320, 2.0087, 2.4954, -0.1391,
                -1.4249, 1.8464, -0.5236, 1.2826, 3.7046, -1.3035, 2.7286, -1.4518, -1.9036, -1.9955, -0.0342,
                -1.0265, -0.7636, 3.0555, 0.0746, -3.0751, -0.1076, 1.7376, -1.0914, -1.9435, -0.2784, -1.3680,
                0.4809, -0.4433, 0.3764, 0.5729, -2.0595, 1.0960, -1.3260, -2.0211, -5.0179, 0.5275, 4.0162,
                1.8505, 0.3026, 1.9373, 1.4937, 0.2632, 0.5547, -1.7121, -0.1562, 0.0304)
LATENTS_STD = (3.2001, 3.2936, 3.4321, 3.0091, 3.1061, 4.0379, 4.0705, 3.7910, 3.0785, 3.6500, 3.9308, 3.0904,
               2.8778, 3.7675, 3.7320, 5.0756, 3.2864, 4.0397, 3.1317, 4.0443, 2.9249, 3.9454, 3.0988, 4.2489,
               3.4896, 3.8513, 3.9323, 3.4719, 3.7498, 4.2830, 3.5694, 4.2467, 3.9037, 3.2947, 5.0770, 3.5075,
               3.2700, 3.4767, 2.8063, 5.1125, 3.5327, 4.7833, 3.1286, 4.1819, 3.8527, 3.8312, 3.5605, 4.3875,
               3.9624, 4.0168, 3.5643, 4.0550, 5.5614, 4.2963, 4.4080, 3.4959, 3.8747, 3.7608, 3.5735, 3.1490,
               3.7662, 3.6746, 3.4563, 3.8161)


@dataclass(frozen=True)
class VAE21Config(DiffusersConfig):
    """Field names are those of the diffusers config.json (typo included). Only the residual, unpatchified
    architecture of 2.1 is built; `attn_scales` is kept for the file (the residual levels have no attention)."""
    CLASS_NAME: ClassVar[str] = "AutoencoderKLQwenImage21"
    base_dim: int = 96
    decoder_base_dim: int | None = 144  # None: base_dim
    z_dim: int = 64
    dim_mult: tuple[int, ...] = (1, 2, 4, 8, 8)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True, True)  # sic
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = LATENTS_MEAN
    latents_std: tuple[float, ...] = LATENTS_STD
    is_residual: bool = True
    in_channels: int = 4
    out_channels: int = 4
    patch_size: int | None = None
    scale_factor_temporal: int | None = 8
    scale_factor_spatial: int | None = 16

    def __post_init__(self):
        if self.decoder_base_dim is None:
            object.__setattr__(self, "decoder_base_dim", self.base_dim)
        check_sizes(self, ("base_dim", "decoder_base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"))
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.is_residual or self.patch_size not in (None, 1):
            raise ValueError(f"is_residual = {self.is_residual}, patch_size = {self.patch_size}: the 2.1 VAE is "
                             "residual and unpatchified (a Wan VAE is loaded with load_vae)")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temperal_downsample {self.temperal_downsample} needs one entry per downsampling "
                             f"(len(dim_mult) - 1 = {len(self.dim_mult) - 1})")
        if not len(self.latents_mean) == len(self.latents_std) == self.z_dim:
            raise ValueError(f"latents_mean and latents_std need z_dim = {self.z_dim} entries")

    @classmethod
    def tiny(cls, **kw) -> "VAE21Config":
        """Official depth (16x down, temporal flags, RGBA) at a few channels, every shortcut kind exercised: CPU
        tests. z_dim 8, not 4: a 4-channel input is what the reference takes for latents."""
        return cls(**{"base_dim": 4, "decoder_base_dim": 6, "z_dim": 8, "dim_mult": (1, 2, 2, 4, 4),
                      "num_res_blocks": 1, "latents_mean": tuple(0.1 * i - 0.3 for i in range(8)),
                      "latents_std": tuple(0.5 + 0.25 * i for i in range(8)), **kw})


# ----------------------------------------------------------------------------------- latent normalisation

def _mean_std(z: torch.Tensor, config: VAE21Config):
    shape = (1, config.z_dim) + (1,) * (z.ndim - 2)
    return (torch.tensor(v).view(shape).to(z.device, z.dtype) for v in (config.latents_mean, config.latents_std))


def normalize_latents21(z: torch.Tensor, config: VAE21Config | None = None) -> torch.Tensor:
    """VAE latents -> the transformer's space: (z - mean) / std, as the 2.1 pipeline encodes references."""
    mean, std = _mean_std(z, config or VAE21Config())
    return (z - mean) / std


def denormalize_latents21(z: torch.Tensor, config: VAE21Config | None = None) -> torch.Tensor:
    """The transformer's latents -> the VAE's: z * std + mean, as the 2.1 pipeline decodes."""
    mean, std = _mean_std(z, config or VAE21Config())
    return z * std + mean


# ------------------------------------------------------------------------------------------------- layers

def conv2d(cin, cout, k=3):
    """The reference's 'causal 3-D' convolution of this VAE: a same-padded Conv2d (4-D weights)."""
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def _time_conv(cin, cout):
    return nn.Conv2d(cin, cout, 1)


class AvgDown(nn.Module):
    """The shortcut around a down level: each fs x fs block to fs*fs channels per input channel (and, on a
    temporal level, as many zeros first: the reference pads its one frame to two in front), then the mean over
    groups of consecutive channels down to the output width."""

    def __init__(self, cin, cout, ft, fs):
        super().__init__()
        if cin * ft * fs * fs % cout:
            raise ValueError(f"{cin} channels x {ft * fs * fs} do not average down to {cout}")
        self.cout, self.ft, self.fs, self.group = cout, ft, fs, cin * ft * fs * fs // cout

    def forward(self, x):
        b, c, h, w = x.shape
        fs = self.fs
        x = x.reshape(b, c, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 2, 4)  # (b, c, fs, fs, h', w')
        if self.ft == 2:
            x = torch.stack([torch.zeros_like(x), x], dim=2)
        return x.reshape(b, self.cout, self.group, h // fs, w // fs).mean(2)


class DupUp(nn.Module):
    """The shortcut around an up level: each input channel repeated to fill cout x ft x fs x fs channels, those
    of the last frame (a first chunk keeps only it) laid out as fs x fs blocks; indexed, not materialised."""

    def __init__(self, cin, cout, ft, fs):
        super().__init__()
        if cout * ft * fs * fs % cin:
            raise ValueError(f"{cin} channels do not duplicate up to {cout} x {ft * fs * fs}")
        self.cout, self.ft, self.fs, self.repeats = cout, ft, fs, cout * ft * fs * fs // cin

    def forward(self, x):
        b, c, h, w = x.shape
        fs = self.fs
        index = torch.arange(self.cout * self.ft * fs * fs, device=x.device).view(self.cout, self.ft, -1)[:, -1]
        x = x[:, index.reshape(-1) // self.repeats].view(b, self.cout, fs, fs, h, w)
        return x.permute(0, 1, 4, 2, 5, 3).reshape(b, self.cout, h * fs, w * fs)


class ResidualDownBlock(nn.Module):
    def __init__(self, cin, cout, num_res_blocks, temporal, down, dropout=0.0):
        super().__init__()
        self.avg_shortcut = AvgDown(cin, cout, 2 if temporal else 1, 2 if down else 1)
        self.resnets = nn.ModuleList(ResidualBlock(cin if i == 0 else cout, cout, dropout, conv2d)
                                     for i in range(num_res_blocks))
        mode = "downsample3d" if temporal else "downsample2d"
        self.downsampler = Resample(cout, mode, time_conv=_time_conv) if down else None

    def forward(self, x):
        h = x
        for r in self.resnets:
            h = r(h)
        if self.downsampler is not None:
            h = self.downsampler(h)
        return h.add_(self.avg_shortcut(x))


class ResidualUpBlock(nn.Module):
    def __init__(self, cin, cout, num_res_blocks, temporal, up, dropout=0.0):
        super().__init__()
        self.avg_shortcut = DupUp(cin, cout, 2 if temporal else 1, 2) if up else None
        self.resnets = nn.ModuleList(ResidualBlock(cin if i == 0 else cout, cout, dropout, conv2d)
                                     for i in range(num_res_blocks + 1))
        mode = "upsample3d" if temporal else "upsample2d"
        self.upsampler = Resample(cout, mode, out_dim=cout, time_conv=_time_conv) if up else None

    def forward(self, x):
        h = x
        for r in self.resnets:
            h = r(h)
        if self.upsampler is None:
            return h
        return self.upsampler(h).add_(self.avg_shortcut(x))


class Encoder21(Encoder):
    """Built with residual levels; run as the 20B encoder (conv_in, levels, middle, norm, SiLU, conv_out)."""

    def __init__(self, c: VAE21Config):
        nn.Module.__init__(self)
        dims = [c.base_dim * m for m in (1, *c.dim_mult)]
        last = len(c.dim_mult) - 1
        self.conv_in = conv2d(c.in_channels, dims[0])
        self.down_blocks = nn.ModuleList(
            ResidualDownBlock(cin, cout, c.num_res_blocks, i < last and c.temperal_downsample[i], i < last, c.dropout)
            for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])))
        self.mid_block = MidBlock(dims[-1], c.dropout, conv2d)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = conv2d(dims[-1], c.z_dim * 2)


class Decoder21(Decoder):
    """Built with residual levels at decoder_base_dim; run as the 20B decoder."""

    def __init__(self, c: VAE21Config):
        nn.Module.__init__(self)
        mult, last = c.dim_mult, len(c.dim_mult) - 1
        dims = [c.decoder_base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = c.temperal_downsample[::-1]
        self.conv_in = conv2d(c.z_dim, dims[0])
        self.mid_block = MidBlock(dims[0], c.dropout, conv2d)
        self.up_blocks = nn.ModuleList(
            ResidualUpBlock(cin, cout, c.num_res_blocks, i < last and temporal_up[i], i < last, c.dropout)
            for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])))
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = conv2d(dims[-1], c.out_channels)


class QwenImage21VAE(QwenImageVAE):
    """encode: RGBA images in [-1, 1] (sides multiples of 16) -> DiagonalGaussian over (B, 64, h/16, w/16);
    decode: latents -> RGBA images in [-1, 1]. 4-D or 5-D (one frame), tiling, training forward: as the 20B VAE."""

    tiles_as_diffusers = True  # tiled decode/encode equal the reference's

    def __init__(self, config: VAE21Config | None = None):
        nn.Module.__init__(self)  # the 20B's builder replaced; its running (encode, decode, tiling) inherited
        self.config = c = config or VAE21Config()
        self.encoder = Encoder21(c)
        self.quant_conv = conv2d(c.z_dim * 2, c.z_dim * 2, 1)
        self.post_quant_conv = conv2d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder21(c)
        self.scale_factor = 2 ** (len(c.dim_mult) - 1)
        self.tiling = None

    def encode(self, x: torch.Tensor):
        if x.ndim in (4, 5) and x.shape[1] != self.config.in_channels:
            raise ValueError(f"the 2.1 VAE encodes {self.config.in_channels}-channel (RGBA) images, got {x.shape[1]} "
                             "channels (an RGB image takes an opaque alpha channel)")
        return super().encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim in (4, 5) and z.shape[1] != self.config.z_dim:
            raise ValueError(f"the 2.1 VAE decodes {self.config.z_dim}-channel latents, got {z.shape[1]} channels "
                             "(16: the 20B model's latents)")
        return super().decode(z)

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return normalize_latents21(z, self.config)

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return denormalize_latents21(z, self.config)


# ------------------------------------------------------------------------------------------ ComfyUI names

# Comfy-Org's qwen_image_2.1_vae file keeps the original Wan-2.2 names: each level a `downsamples`/`upsamples`
# Sequential inside the flat list of levels (residual blocks, then the resampler), and its causal convolutions
# 5-D with a temporal kernel of 1 (_Conv5d). The block and leaf renames are the 20B VAE's (vae.py).
_LEVEL = re.compile(r"(encoder|decoder)\.(?:down|up)samples\.(\d+)\.(?:down|up)samples\.(\d+)\.(.+)")


def comfy21_to_diffusers(key: str, num_res_blocks: int = 2) -> str:
    """One ComfyUI 2.1 VAE key -> its diffusers name: in level i, the encoder's blocks 0..n-1 are residual and
    block n the downsampler; the decoder's 0..n residual and n+1 the upsampler (n = num_res_blocks)."""
    if key.split(".")[0] in _TOP:
        return _rename(key, _TOP)
    if m := _LEVEL.fullmatch(key):
        side, level, r, leaf = m[1], m[2], int(m[3]), m[4]
        last = num_res_blocks if side == "encoder" else num_res_blocks + 1
        kind, block = ("down_blocks", "downsampler") if side == "encoder" else ("up_blocks", "upsampler")
        return f"{side}.{kind}.{level}." + (block if r == last else f"resnets.{r}") + "." + _rename(leaf, _RESIDUAL)
    if m := re.fullmatch(r"(encoder|decoder)\.(conv1|head\.\d|middle\.\d)\.(.+)", key):
        return f"{m[1]}.{_BLOCKS[m[2]]}.{_rename(m[3], _RESIDUAL)}"
    return key


def diffusers_to_comfy21(key: str, num_res_blocks: int = 2) -> str:
    """The inverse of comfy21_to_diffusers."""
    if key.split(".")[0] in _TOP.values():
        return _rename(key, _inverse(_TOP))
    m = re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(resnets\.\d+|downsampler|upsampler)\.(.+)", key)
    if m:
        side, kind, level, block, leaf = m.groups()
        r = int(block.split(".")[1]) if block.startswith("resnets.") else num_res_blocks + (kind == "up")
        return f"{side}.{kind}samples.{level}.{kind}samples.{r}.{_rename(leaf, _inverse(_RESIDUAL))}"
    if m := re.fullmatch(r"(encoder|decoder)\.(conv_in|norm_out|conv_out|mid_block\.\w+\.\d)\.(.+)", key):
        return f"{m[1]}.{_inverse(_BLOCKS)[m[2]]}.{_rename(m[3], _inverse(_RESIDUAL))}"
    return key


def _comfy21_num_res_blocks(names) -> int:
    """From the decoder's first level: its upsampler follows num_res_blocks + 1 residual blocks."""
    pattern = re.compile(r"decoder\.upsamples\.0\.upsamples\.(\d+)\.resample\.1\.weight")
    ups = [int(m[1]) for k in names if (m := pattern.fullmatch(k))]
    return ups[0] - 1 if ups else 2


def _is_conv5d(name: str) -> bool:
    """The diffusers names whose Conv2d is a causal 3-D convolution (5-D) in the ComfyUI file: every `*conv*`
    (not the resamplers' inner `resample.1`, nor the attention's `to_qkv` / `proj`)."""
    return name.endswith(".weight") and "conv" in name.rsplit(".", 2)[-2]


class _Conv5d:
    """A ComfyUI file seen with the model's 4-D shapes: a 5-D weight with a temporal kernel of 1 is read as its
    one slice (any other is left as stored, for the shape check to name)."""

    def __init__(self, f: SafetensorsFile):
        self.f, self.path = f, f.path

    @staticmethod
    def _flat(shape):
        return len(shape) == 5 and shape[2] == 1

    def shape(self, key):
        s = tuple(self.f.shape(key))
        return s[:2] + s[3:] if self._flat(s) else s

    def get(self, key):
        t = self.f.get(key)
        return t[:, :, 0] if self._flat(t.shape) else t

    def done_with(self, tensor):
        self.f.done_with(tensor)


def _check_family(path, shapes) -> None:
    family = vae_family(shapes)
    if family != "qwen-image-2.1":
        what = FAMILIES.get(family, "no VAE we know (no 'encoder.conv_in.weight' nor 'encoder.conv1.weight')")
        raise CheckpointError(f"{path}: not a Qwen-Image 2.1 VAE: this is {what}")


# ------------------------------------------------------------------------------------------------ loading

def infer_vae21_config(shapes: dict[str, tuple], **fields) -> VAE21Config:
    """The architecture from diffusers-named 4-D weight shapes (latent statistics: the official ones, or `fields`)."""
    def need(k):
        if k not in shapes:
            raise CheckpointError(f"not a Qwen-Image 2.1 VAE: no {k!r}")
        return shapes[k]

    base = need("encoder.conv_in.weight")[0]
    levels = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down_blocks.")})
    mult = tuple(need(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] // base for i in levels)
    num_res = len({k.split(".")[4] for k in shapes if k.startswith("encoder.down_blocks.0.resnets.")})
    temporal = tuple(f"encoder.down_blocks.{i}.downsampler.time_conv.weight" in shapes for i in levels[:-1])
    return VAE21Config(base_dim=base, decoder_base_dim=need("decoder.conv_out.weight")[1],
                       z_dim=need("post_quant_conv.weight")[0], dim_mult=mult, num_res_blocks=num_res,
                       temperal_downsample=temporal, in_channels=need("encoder.conv_in.weight")[1],
                       out_channels=need("decoder.conv_out.weight")[0], **fields)


def vae21_sources(path, config: VAE21Config | None = None) -> tuple[VAE21Config, dict]:
    """(config, {diffusers name: (file, key)}) for a diffusers folder or a single file (diffusers or ComfyUI
    names, bare or under `vae.` / `first_stage_model.`); another family's VAE is an error naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return vae_folder_sources(path, config, VAE21Config, _check_family)
    f, names, prefix = vae_file_names(path, _check_family)
    if "encoder.conv1.weight" in names:
        nrb = _comfy21_num_res_blocks(names)
        names = {comfy21_to_diffusers(n, nrb): k for n, k in names.items()}
    view = _Conv5d(f)
    sources = {n: (view, k) for n, k in names.items()}
    if config is None:
        stats = f.metadata_json(LATENT_STATS_KEY)
        try:
            config = infer_vae21_config({n: view.shape(k) for n, k in names.items()},
                                        **({} if stats is None else _stats_fields(stats)))
        except (CheckpointError, ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: {e}{' under ' + prefix if prefix else ''}") from None
    return config, sources


def check_vae21_config(config: VAE21Config, sources: dict) -> None:
    """The config (config.json or the caller's) against the weights' shapes, before building."""
    c = config
    dims = [("encoder.conv_in.weight", 0, "base_dim", c.base_dim),
            ("encoder.conv_in.weight", 1, "in_channels", c.in_channels),
            ("decoder.conv_out.weight", 0, "out_channels", c.out_channels),
            ("decoder.conv_out.weight", 1, "decoder_base_dim", c.decoder_base_dim),
            ("post_quant_conv.weight", 0, "z_dim", c.z_dim)]
    dims += [(f"encoder.down_blocks.{i}.resnets.0.conv1.weight", 0, f"base_dim x dim_mult[{i}]", c.base_dim * m)
             for i, m in enumerate(c.dim_mult)]
    check_config_fits("VAE", sources, dims=dims, counts=[
        ("encoder.down_blocks.", "len(dim_mult)", len(c.dim_mult)),
        ("decoder.up_blocks.0.resnets.", "num_res_blocks + 1", c.num_res_blocks + 1)])


def load_vae21(path, device=None, dtype=None, config: VAE21Config | None = None) -> QwenImage21VAE:
    """Load the 2.1 VAE from a diffusers model folder (or its vae/ folder), a diffusers-named single file, or
    Comfy-Org's single file (qwen_image_2.1_vae_bf16.safetensors), bare or inside a full checkpoint. As load_vae:
    built on the meta device, each tensor assigned in `dtype` (default: as stored) on `device`; eval mode."""
    config, sources = vae21_sources(path, config)
    check_vae21_config(config, sources)
    with torch.device("meta"):
        model = QwenImage21VAE(config)
    assign_weights(model, sources, dtype=dtype, device=device, what="Qwen-Image 2.1 VAE")
    return model.eval().requires_grad_(False)


save_vae21 = save_vae  # the diffusers layout: config.json (the config says AutoencoderKLQwenImage21) + weights


def save_comfyui_vae21(model: QwenImage21VAE, path) -> None:
    """Write Comfy-Org's single-file layout (Wan-2.2 names, 5-D causal convolutions), atomically; latent
    statistics other than the official ones go in the metadata, where our loader finds them."""
    c, nrb = model.config, model.config.num_res_blocks
    state = {diffusers_to_comfy21(k, nrb): (v[:, :, None] if _is_conv5d(k) else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    meta = {"format": "pt"}
    if (tuple(c.latents_mean), tuple(c.latents_std)) != (LATENTS_MEAN, LATENTS_STD):
        meta[LATENT_STATS_KEY] = json.dumps({"mean": list(c.latents_mean), "std": list(c.latents_std)})
    save_file_atomic(state, os.fspath(path), meta)
