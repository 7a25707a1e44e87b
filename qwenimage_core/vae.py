"""The Qwen-Image VAE: the Wan-2.1 architecture (causal 3-D convolutions, RMS norms, residual blocks, a middle
attention block, 2x spatial resampling; 16 latent channels, 8x down), run on single images.

Parameters keep the reference's names and 5-D Conv3d shapes (diffusers `AutoencoderKLQwenImage`), so diffusers
and ComfyUI/Wan files load as they are. The compute is 2-D: a causal convolution pads time on the left with two
zero frames, so on one frame only the last temporal slice of each kernel ever meets data; and the reference's
feature cache skips the temporal resamplers (`time_conv`) on a first chunk. That is the reference's arithmetic
minus the video machinery: no 3-D convolutions over zeros, no cache, no per-frame loop.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import _write_json, component_folder, folder_sources
from .weights import CheckpointError, SafetensorsFile, assign_weights, check_config_fits, save_file_atomic

LATENT_STATS_KEY = "qwenimage_latent_stats"  # single files: {"mean": [...], "std": [...]}
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916)


class DiffusersConfig:
    """A frozen config dataclass read from and written as a diffusers config.json under CLASS_NAME."""
    CLASS_NAME: ClassVar[str] = ""

    @classmethod
    def from_diffusers(cls, d: dict):
        """From a diffusers config.json; keys we do not use (_class_name, _diffusers_version...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        return {"_class_name": self.CLASS_NAME, **d}

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class VAEConfig(DiffusersConfig):
    """Field names are those of the diffusers config.json (typo included), so configs read and write as they are."""
    CLASS_NAME: ClassVar[str] = "AutoencoderKLQwenImage"
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # sic
    dropout: float = 0.0
    input_channels: int = 3
    latents_mean: tuple[float, ...] = LATENTS_MEAN
    latents_std: tuple[float, ...] = LATENTS_STD

    def __post_init__(self):
        check_sizes(self, ("base_dim", "z_dim", "num_res_blocks", "input_channels"))
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"temperal_downsample {self.temperal_downsample} needs one entry per downsampling "
                             f"(len(dim_mult) - 1 = {len(self.dim_mult) - 1})")
        if not len(self.latents_mean) == len(self.latents_std) == self.z_dim:
            raise ValueError(f"latents_mean and latents_std need z_dim = {self.z_dim} entries")

    @classmethod
    def tiny(cls, **kw) -> "VAEConfig":
        """Official depth (8x down, 16 latent channels, temporal flags) at 8 base channels: tests on a CPU."""
        return cls(**{"base_dim": 8, "num_res_blocks": 1, **kw})


def check_sizes(config, names) -> None:
    """The named fields and every dim_mult entry of a VAE config must be positive integers: a config file's
    "num_res_blocks": "2" is named here, not a TypeError in a later check."""
    if not isinstance(config.dim_mult, (list, tuple)):
        raise ValueError(f"config field 'dim_mult' = {config.dim_mult!r} must be a list of positive integers")
    sizes = [(n, getattr(config, n)) for n in names] + [(f"dim_mult[{i}]", m) for i, m in enumerate(config.dim_mult)]
    for name, v in sizes:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"config field {name!r} = {v!r} must be a positive integer")


# ----------------------------------------------------------------------------------- latent normalisation

def _stats(z: torch.Tensor, config: VAEConfig):
    shape = (1, config.z_dim) + (1,) * (z.ndim - 2)
    mean = torch.tensor(config.latents_mean).view(shape).to(z.device, z.dtype)
    inv_std = 1.0 / torch.tensor(config.latents_std).view(shape).to(z.device, z.dtype)
    return mean, inv_std


def normalize_latents(z: torch.Tensor, config: VAEConfig | None = None) -> torch.Tensor:
    """VAE latents -> the transformer's space: (z - mean) * (1 / std), as the img2img pipeline writes it (the
    edit pipelines divide by std instead: the same up to one rounding). Default: the official statistics, which
    every Qwen-Image VAE shares (graph latents are stored un-normalised, as ComfyUI's are)."""
    mean, inv_std = _stats(z, config or VAEConfig())
    return (z - mean) * inv_std


def denormalize_latents(z: torch.Tensor, config: VAEConfig | None = None) -> torch.Tensor:
    """The transformer's latents -> the VAE's: z / (1 / std) + mean, as every reference pipeline decodes."""
    mean, inv_std = _stats(z, config or VAEConfig())
    return z / inv_std + mean


# ------------------------------------------------------------------------------------------------- layers

class CausalConv3d(nn.Conv3d):
    """A causal 3-D convolution applied to one frame: the conv2d of its last temporal kernel slice (the others
    only ever meet the causal zero padding). The parameter keeps its 5-D shape, so weights load by name."""

    def __init__(self, cin, cout, k=3, kt=None):
        super().__init__(cin, cout, (k if kt is None else kt, k, k))
        self.spatial_padding = k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight[:, :, -1], self.bias, padding=self.spatial_padding)


class RMSNorm(nn.Module):
    """x / ||x|| over channels * sqrt(C) * gamma, in the reference's order (half inputs normalised in float32)."""

    def __init__(self, dim, images=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))
        self.scale = dim ** 0.5

    def forward(self, x):
        half = x.dtype in (torch.float16, torch.bfloat16)
        y = F.normalize(x.float() if half else x, dim=1).to(x.dtype)
        return y.mul_(self.scale).mul_(self.gamma.view(-1, 1, 1))  # y is fresh: in place saves two allocations


class ResidualBlock(nn.Module):
    """`conv(cin, cout, k)` builds the convolutions: 5-D causal ones here, plain 2-D ones in the 2.1 VAE."""

    def __init__(self, cin, cout, dropout=0.0, conv=CausalConv3d):
        super().__init__()
        self.norm1, self.conv1 = RMSNorm(cin), conv(cin, cout, 3)
        self.norm2, self.conv2 = RMSNorm(cout), conv(cout, cout, 3)
        self.dropout = nn.Dropout(dropout)
        self.conv_shortcut = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))
        return h.add_(self.conv_shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of the frame, residual."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        # (b, 3c, h, w) -> (b, 1, hw, 3c): a view when x is channels-last, the reference's layout either way
        qkv = self.to_qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(b, 1, h * w, 3 * c)
        out = F.scaled_dot_product_attention(*qkv.chunk(3, dim=-1))
        return self.proj(out.reshape(b, h, w, c).permute(0, 3, 1, 2)).add_(x)


class Upsample(nn.Upsample):
    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)  # nearest-exact in float32, as the reference


class Resample(nn.Module):
    """2x down (zero-pad right/bottom, stride-2 conv) or up (nearest-exact, conv to `out_dim`: default half the
    channels). The 3-D modes' `time_conv` is there for the weights: on a first frame the reference skips it; it is
    a (3, 1, 1) causal convolution, or what `time_conv(cin, cout)` builds (the 2.1 VAE's 1x1 Conv2d)."""

    def __init__(self, dim, mode, out_dim=None, time_conv=None):
        super().__init__()
        if mode.startswith("up"):
            self.resample = nn.Sequential(Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2 if out_dim is None else out_dim, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode.endswith("3d"):
            cout = dim * 2 if mode.startswith("up") else dim
            self.time_conv = CausalConv3d(dim, cout, k=1, kt=3) if time_conv is None else time_conv(dim, cout)

    def forward(self, x):
        return self.resample(x)


class MidBlock(nn.Module):
    def __init__(self, dim, dropout=0.0, conv=CausalConv3d):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim, dropout, conv), ResidualBlock(dim, dim, dropout, conv)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class UpBlock(nn.Module):
    def __init__(self, cin, cout, num_res_blocks, upsample, dropout=0.0):
        super().__init__()
        self.resnets = nn.ModuleList(ResidualBlock(cin if i == 0 else cout, cout, dropout)
                                     for i in range(num_res_blocks + 1))
        self.upsamplers = nn.ModuleList([Resample(cout, upsample)]) if upsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        dims = [c.base_dim * m for m in (1, *c.dim_mult)]
        self.conv_in = CausalConv3d(c.input_channels, dims[0])
        self.down_blocks = nn.ModuleList()
        scale = 1.0  # resolution relative to the input, for attn_scales
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(c.num_res_blocks):
                self.down_blocks.append(ResidualBlock(cin, cout, c.dropout))
                if scale in c.attn_scales:
                    self.down_blocks.append(AttentionBlock(cout))
                cin = cout
            if i < len(c.dim_mult) - 1:
                self.down_blocks.append(Resample(cout, "downsample3d" if c.temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.mid_block = MidBlock(dims[-1], c.dropout)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], c.z_dim * 2)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(self.mid_block(x)), inplace=True))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        mult = c.dim_mult
        dims = [c.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = c.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(c.z_dim, dims[0])
        self.mid_block = MidBlock(dims[0], c.dropout)
        self.up_blocks = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            up = None if i == len(mult) - 1 else ("upsample3d" if temporal_up[i] else "upsample2d")
            # every upsampler halves its channels, so blocks after the first take half of the previous width
            self.up_blocks.append(UpBlock(cin // 2 if i > 0 else cin, cout, c.num_res_blocks, up, c.dropout))
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], c.input_channels)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x), inplace=True))


# ---------------------------------------------------------------------------------------------- the model

class DiagonalGaussian:
    """The encoder's posterior: mean and log-variance (clamped to [-30, 20], as the reference)."""

    def __init__(self, params: torch.Tensor):
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """mean + std * noise, the noise drawn as diffusers' randn_tensor draws it (so seeded samples match the
        reference pipelines): on the generator's device, then moved; a list of generators draws one per item."""
        if isinstance(generator, list):
            noise = torch.cat([_randn((1, *self.mean.shape[1:]), g, self.mean) for g in generator])
        else:
            noise = _randn(self.mean.shape, generator, self.mean)
        return self.mean + self.std * noise


def _randn(shape, generator, like: torch.Tensor) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


@dataclass(frozen=True)
class Tiling:
    """Tiles of `tile` pixels overlapping by `overlap` pixels (the reference's defaults: 256, stride 192).
    as_diffusers: lay and blend the tiles as diffusers does (see _diffusers_weights), not as our mean."""
    tile: int = 256
    overlap: int = 64
    as_diffusers: bool = False


class QwenImageVAE(nn.Module):
    """encode: images in [-1, 1] -> DiagonalGaussian over latents; decode: latents -> images in [-1, 1]. Both take
    5-D (B, C, 1, H, W) as the reference, or 4-D (B, C, H, W), and answer in the rank they were given."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = c = config or VAEConfig()
        self.encoder = Encoder(c)
        self.quant_conv = CausalConv3d(c.z_dim * 2, c.z_dim * 2, k=1)
        self.post_quant_conv = CausalConv3d(c.z_dim, c.z_dim, k=1)
        self.decoder = Decoder(c)
        self.scale_factor = 2 ** len(c.temperal_downsample)
        self.tiling: Tiling | None = None

    tiles_as_diffusers = False  # the tile layout and blend enable_tiling sets up: ours (see _tiled) or diffusers'

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.quant_conv.weight.device

    def enable_tiling(self, tile: int = 256, overlap: int = 64) -> None:
        """Encode/decode images larger than `tile` pixels (either side) in overlapping tiles, blended linearly."""
        f = self.scale_factor
        if tile % f or overlap % f or not 0 <= overlap < tile:
            raise ValueError(f"tile {tile} and overlap {overlap} must be multiples of {f} with overlap < tile")
        if self.tiles_as_diffusers and 2 * overlap > tile:
            raise ValueError(f"overlap {overlap} must be at most half the tile {tile} (diffusers' blend)")
        self.tiling = Tiling(tile, overlap, self.tiles_as_diffusers)

    def disable_tiling(self) -> None:
        self.tiling = None

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images in [-1, 1], sides a multiple of 8 -> the posterior over latents (B, 16, (1,) H/8, W/8)."""
        x4, five = _frame(x)
        f = self.scale_factor
        if x4.shape[-1] % f or x4.shape[-2] % f:
            raise ValueError(f"image size {x4.shape[-1]}x{x4.shape[-2]} must be a multiple of {f}")
        params = self._run(lambda t: self.quant_conv(self.encoder(t)), x4, up=False)
        return DiagonalGaussian(params.unsqueeze(2) if five else params)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, 16, (1,) h, w) -> images (B, 3, (1,) 8h, 8w) in [-1, 1]."""
        z4, five = _frame(z)
        out = self._run(lambda t: self.decoder(self.post_quant_conv(t)), z4, up=True).clamp_(-1.0, 1.0)
        return out.unsqueeze(2) if five else out

    def forward(self, x: torch.Tensor, generator=None, sample_posterior: bool = True):
        """Training: images -> (reconstruction, posterior). The reconstruction is not clamped (a clamp would stop
        the gradient of every pixel beyond [-1, 1]); the latents are a posterior sample, or its mean."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        z4, five = _frame(z)
        out = self._run(lambda t: self.decoder(self.post_quant_conv(t)), z4, up=True)
        return (out.unsqueeze(2) if five else out), posterior

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return normalize_latents(z, self.config)

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return denormalize_latents(z, self.config)

    # -- running: channels-last inside (oneDNN convolutions and channel norms are faster so), plain layout out

    def _run(self, fn, x, up: bool):
        x = x.contiguous(memory_format=torch.channels_last)
        if self.tiling is not None and max(x.shape[-2:]) * (self.scale_factor if up else 1) > self.tiling.tile:
            return self._tiled(fn, x, up)
        return fn(x).contiguous()

    def _tiled(self, fn, x: torch.Tensor, up: bool) -> torch.Tensor:
        """Run `fn` on overlapping tiles of x. Each output pixel is the weighted mean of the tiles covering it,
        the weights ramping linearly across the overlap (in pixels for decode, in latents for encode), so seams
        fade out; the last tile in each direction sits flush with the edge. Accumulated in float32. With
        `as_diffusers`, the tiles and weights are diffusers' instead (_diffusers_weights)."""
        f = self.scale_factor
        tile, overlap = self.tiling.tile, self.tiling.overlap
        if up:  # tile sizes are given in pixels; decode tiles the latents
            tile, overlap = tile // f, overlap // f
        scale = (lambda n: n * f) if up else (lambda n: n // f)  # input units -> output units
        H, W = x.shape[-2:]
        stride, exact = tile - overlap, self.tiling.as_diffusers
        rows, cols = ([*range(0, n, stride)] if exact else _starts(n, tile, stride) for n in (H, W))
        sizes = [[scale(min(tile, n - s)) for s in starts] for n, starts in ((H, rows), (W, cols))]  # output units
        out = weight = None
        for i, top in enumerate(rows):
            for j, left in enumerate(cols):
                y = fn(x[..., top:top + tile, left:left + tile]).float()
                if out is None:
                    out = y.new_zeros(*y.shape[:2], scale(H), scale(W))
                    weight = y.new_zeros(scale(H), scale(W))
                h, w = y.shape[-2:]
                if exact:
                    ramp = _diffusers_weights(sizes, i, j, scale(stride), scale(overlap)).to(y.device)
                else:
                    ramp = (_ramp(h, scale(overlap), top > 0, top + tile < H)[:, None]
                            * _ramp(w, scale(overlap), left > 0, left + tile < W)[None, :]).to(y.device)
                t, l = scale(top), scale(left)
                out[..., t:t + h, l:l + w] += y * ramp
                weight[t:t + h, l:l + w] += ramp
        return (out / weight).to(x.dtype)


def _starts(n, tile, stride):
    """Tile offsets along a side of n: every `stride`, the last tile flush with the end."""
    return [0] if n <= tile else sorted({*range(0, n - tile, stride), n - tile})


def _ramp(n, width, fade_in, fade_out):
    """Blend weights along one tile side: 1, ramping down to ~0 over `width` at each edge shared with a neighbour."""
    r = torch.ones(n)
    edge = (torch.arange(width) + 0.5) / width
    if fade_in and width:
        r[:width] = torch.minimum(r[:width], edge)
    if fade_out and width:
        r[-width:] = torch.minimum(r[-width:], edge.flip(0))
    return r


def _diffusers_weights(sizes, i, j, stride, overlap) -> torch.Tensor:
    """Tile (i, j)'s weights in diffusers' tiling (for overlap <= stride). Its tiles start every `stride` from 0
    (the last ones cut by the edge); each is blended in place with its upper neighbour, then with its left one,
    both already blended (B), and keeps its first stride x stride pixels: B = L (1 - wx) + wx (U (1 - wy) + T wy),
    the w ramping 0 -> 1 over the overlap (cut to the tiles' sizes). Unrolled to raw tiles, a pixel is
        T wy wx  +  T_left wy (1 - wx)  +  T_up (1 - wy) wx^2  +  T_upleft (1 - wy) (1 - wx) (1 + wx),
    weights adding up to 1; here they are laid out on tile (i, j): its own part (local < stride on an axis) with
    its own ramps, the parts its right and lower neighbours keep with theirs."""
    def axis(sizes, k):  # the ramp in over its own part; 1 - the next tile's ramp over the part that tile keeps
        n = sizes[k]
        own, nxt = torch.zeros(n), torch.zeros(n)
        own[:stride] = 1
        if k > 0:
            m = min(sizes[k - 1], n, overlap)
            own[:m] = torch.arange(m) / m
        if k + 1 < len(sizes):
            m = min(n, sizes[k + 1], overlap)
            nxt[stride:stride + m] = 1 - torch.arange(m) / m
        return own, nxt

    wy, uy = axis(sizes[0], i)
    wx, ux = axis(sizes[1], j)  # u: 1 - the neighbour's w, where the neighbour keeps the pixels
    return wy[:, None] * (wx + ux)[None, :] + uy[:, None] * (wx * wx + ux * (2 - ux))[None, :]


def _frame(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(B, C, 1, H, W) or (B, C, H, W) -> (B, C, H, W), and whether it was 5-D."""
    if x.ndim == 5:
        if x.shape[2] != 1:
            raise ValueError(f"the image VAE takes one frame, got {x.shape[2]} (shape {tuple(x.shape)})")
        return x[:, :, 0], True
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) or (B, C, 1, H, W), got shape {tuple(x.shape)}")
    return x, False


# ------------------------------------------------------------------------------------ ComfyUI / Wan names

# The original Wan names: top-level conv1/conv2, per side conv1/head/middle and flat downsamples/upsamples lists,
# residual blocks as a Sequential. Leaf renames inside blocks, and whole-block renames:
_RESIDUAL = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
             "shortcut": "conv_shortcut"}
_BLOCKS = {"conv1": "conv_in", "head.0": "norm_out", "head.2": "conv_out", "middle.0": "mid_block.resnets.0",
           "middle.1": "mid_block.attentions.0", "middle.2": "mid_block.resnets.1"}
_TOP = {"conv1": "quant_conv", "conv2": "post_quant_conv"}


def _rename(path: str, table: dict) -> str:
    for a, b in table.items():
        if path.startswith(a + "."):
            return b + path[len(a):]
    return path


def _inverse(table: dict) -> dict:
    return {b: a for a, b in table.items()}


def comfy_to_diffusers(key: str, num_res_blocks: int = 2) -> str:
    """One ComfyUI/Wan VAE key -> its diffusers name. The decoder's flat `upsamples` list holds, per level,
    num_res_blocks + 1 residual blocks then the upsampler; the encoder's `downsamples` index is kept as is."""
    if key.split(".")[0] in _TOP:
        return _rename(key, _TOP)
    m = re.fullmatch(r"(encoder|decoder)\.(conv1|head\.\d|middle\.\d|(?:down|up)samples\.\d+)\.(.+)", key)
    if not m:
        return key
    side, block, leaf = m.groups()
    if block.startswith("downsamples."):
        block = "down_blocks." + block.split(".")[1]
    elif block.startswith("upsamples."):
        b, r = divmod(int(block.split(".")[1]), num_res_blocks + 2)
        block = f"up_blocks.{b}." + ("upsamplers.0" if r == num_res_blocks + 1 else f"resnets.{r}")
    else:
        block = _BLOCKS[block]
    return f"{side}.{block}.{_rename(leaf, _RESIDUAL)}"


def diffusers_to_comfy(key: str, num_res_blocks: int = 2) -> str:
    """The inverse of comfy_to_diffusers."""
    if key.split(".")[0] in _TOP.values():
        return _rename(key, _inverse(_TOP))
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|norm_out|conv_out|mid_block\.\w+\.\d|down_blocks\.\d+|"
                     r"up_blocks\.\d+\.(?:resnets\.\d+|upsamplers\.0))\.(.+)", key)
    if not m:
        return key
    side, block, leaf = m.groups()
    if block.startswith("down_blocks."):
        block = "downsamples." + block.split(".")[1]
    elif block.startswith("up_blocks."):
        _, b, kind, r = block.split(".")
        i = num_res_blocks + 1 if kind == "upsamplers" else int(r)
        block = f"upsamples.{int(b) * (num_res_blocks + 2) + i}"
    else:
        block = _inverse(_BLOCKS)[block]
    return f"{side}.{block}.{_rename(leaf, _inverse(_RESIDUAL))}"


def _comfy_num_res_blocks(keys) -> int:
    """From the first upsampler's position in the decoder's flat list (it follows num_res_blocks + 1 blocks)."""
    ups = [int(m[1]) for k in keys if (m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.resample\.1\.weight", k))]
    return min(ups) - 1 if ups else 2


# ------------------------------------------------------------------------------------------------ loading

PREFIXES = ("vae.", "first_stage_model.")  # full checkpoints: ComfyUI, and SD-style


def infer_vae_config(shapes: dict[str, tuple], **fields) -> VAEConfig:
    """The architecture from diffusers-named weight shapes (latent statistics: the official ones, or `fields`)."""
    def need(k):
        if k not in shapes:
            raise CheckpointError(f"not a Qwen-Image/Wan VAE: no {k!r}")
        return shapes[k]

    base = need("encoder.conv_in.weight")[0]
    ups = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("decoder.up_blocks.")})
    mult = tuple(need(f"decoder.up_blocks.{i}.resnets.0.conv1.weight")[0] // base for i in ups[::-1])
    num_res = len({k.split(".")[4] for k in shapes if k.startswith("decoder.up_blocks.0.resnets.")}) - 1
    temporal = tuple(f"decoder.up_blocks.{i}.upsamplers.0.time_conv.weight" in shapes for i in ups[:-1])[::-1]
    attn, scale = set(), 1.0  # walk the encoder's flat list: attention blocks at the current scale
    for i in sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down_blocks.")}):
        if f"encoder.down_blocks.{i}.to_qkv.weight" in shapes:
            attn.add(scale)
        if f"encoder.down_blocks.{i}.resample.1.weight" in shapes:
            scale /= 2.0
    return VAEConfig(base_dim=base, z_dim=need("post_quant_conv.weight")[0], dim_mult=mult, num_res_blocks=num_res,
                     attn_scales=tuple(sorted(attn, reverse=True)), temperal_downsample=temporal,
                     input_channels=need("encoder.conv_in.weight")[1], **fields)


FAMILIES = {"qwen-image": "the Qwen-Image (20B) VAE, Wan 2.1's (RGB, 16 channels, 8x)",
            "qwen-image-2.1": "the Qwen-Image 2.1 VAE (RGBA, 64 channels, 16x; load_vae21)",
            "wan-2.2": "a Wan 2.2 VAE (48 channels, 3-D kernels)"}


def vae_family(shapes: dict[str, tuple]) -> str | None:
    """Which VAE a set of weights is ({name: shape}, diffusers or ComfyUI names, prefix removed): a key of
    FAMILIES, or None. Residual levels (Wan 2.2's layout) tell 2.1 and Wan 2.2 from the 20B's Wan 2.1; 3-D
    kernels (a temporal size over 1) tell Wan 2.2 from 2.1."""
    conv_in = shapes.get("encoder.conv_in.weight", shapes.get("encoder.conv1.weight"))
    if conv_in is None:
        return None
    if not any(k.startswith(("encoder.down_blocks.0.resnets.", "encoder.downsamples.0.downsamples.")) for k in shapes):
        return "qwen-image"
    return "wan-2.2" if len(conv_in) == 5 and conv_in[2] > 1 else "qwen-image-2.1"


def _refuse_other_family(where, shapes) -> None:
    family = vae_family(shapes)
    if family not in (None, "qwen-image"):
        raise CheckpointError(f"{where}: this is {FAMILIES[family]}, not {FAMILIES['qwen-image']}")


def vae_folder_sources(path: str, config, config_class, check_family) -> tuple:
    """(config, {diffusers name: (file, key)}) of a diffusers model folder or its vae/ folder, after
    `check_family(where, {name: shape})` (both VAE families read their folders so)."""
    folder = component_folder(path, "vae")
    if folder is None:
        raise CheckpointError(f"{path}: no vae/ folder with a config.json (nor is it a VAE folder)")
    config, sources = folder_sources(folder, config, config_class.from_diffusers)
    check_family(folder, {n: f.shape(k) for n, (f, k) in sources.items()})
    return config, sources


def vae_file_names(path: str, check_family) -> tuple[SafetensorsFile, dict, str]:
    """(file, {name without the component prefix: key}, prefix) of a single file, bare or under `vae.` /
    `first_stage_model.` (other components are left out), after `check_family(path, {name: shape})`."""
    f = SafetensorsFile(path)
    keys = f.keys()
    prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in keys)), "")
    names = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    check_family(path, {n: f.shape(k) for n, k in names.items()})
    return f, names, prefix


def vae_sources(path, config: VAEConfig | None = None) -> tuple[VAEConfig, dict]:
    """(config, {diffusers name: (file, key)}) for a diffusers folder or a single file; another family's VAE
    (vae_family) is an error naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return vae_folder_sources(path, config, VAEConfig, _refuse_other_family)
    f, names, prefix = vae_file_names(path, _refuse_other_family)
    if any(n.startswith(("encoder.conv1.", "decoder.conv1.", "conv1.")) for n in names):
        nrb = _comfy_num_res_blocks(names)
        names = {comfy_to_diffusers(n, nrb): k for n, k in names.items()}
    sources = {n: (f, k) for n, k in names.items()}
    if config is None:
        stats = f.metadata_json(LATENT_STATS_KEY)  # a VAE trained from scratch carries its own
        try:
            config = infer_vae_config({n: f.shape(k) for n, k in names.items()},
                                      **({} if stats is None else _stats_fields(stats)))
        except (CheckpointError, ValueError, TypeError, KeyError) as e:  # ValueError: no official statistics
            raise CheckpointError(f"{path}: {e}{' under ' + prefix if prefix else ''}") from None
    return config, sources


def _stats_fields(stats) -> dict:
    if not (isinstance(stats, dict) and isinstance(stats.get("mean"), list) and isinstance(stats.get("std"), list)):
        raise ValueError(f"metadata {LATENT_STATS_KEY!r} must be {{\"mean\": [...], \"std\": [...]}}")
    return {"latents_mean": tuple(float(v) for v in stats["mean"]),
            "latents_std": tuple(float(v) for v in stats["std"])}


def check_vae_config(config: VAEConfig, sources: dict) -> None:
    """The config (config.json or the caller's) against the weights' shapes, before building."""
    c = config
    dims = [("encoder.conv_in.weight", 0, "base_dim", c.base_dim),
            ("encoder.conv_in.weight", 1, "input_channels", c.input_channels),
            ("post_quant_conv.weight", 0, "z_dim", c.z_dim)]
    dims += [(f"decoder.up_blocks.{i}.resnets.0.conv1.weight", 0, f"base_dim x dim_mult[{len(c.dim_mult) - 1 - i}]",
              c.base_dim * m) for i, m in enumerate(reversed(c.dim_mult))]
    check_config_fits("VAE", sources, dims=dims, counts=[
        ("decoder.up_blocks.", "len(dim_mult)", len(c.dim_mult)),
        ("decoder.up_blocks.0.resnets.", "num_res_blocks + 1", c.num_res_blocks + 1)])


def load_vae(path, device=None, dtype=None, config: VAEConfig | None = None) -> QwenImageVAE:
    """Load the VAE from a diffusers model folder (or its vae/ folder; sharded or not), a diffusers-named single
    file, the ComfyUI/Wan single file (qwen_image_vae.safetensors), or a full checkpoint whose VAE keys carry
    `vae.` or `first_stage_model.`. Without a config.json the architecture is read off the weight shapes.
    Built on the meta device, each tensor assigned from the memory map in `dtype` (default: as stored) on
    `device` (default: CPU). Errors name the file and the key. Eval mode, gradients off."""
    config, sources = vae_sources(path, config)
    check_vae_config(config, sources)
    with torch.device("meta"):
        model = QwenImageVAE(config)
    assign_weights(model, sources, dtype=dtype, device=device, what="VAE")
    return model.eval().requires_grad_(False)


def save_vae(model: QwenImageVAE, folder) -> None:
    """Write the diffusers layout (config.json + diffusion_pytorch_model.safetensors), each file atomically."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_file_atomic(state, os.path.join(folder, "diffusion_pytorch_model.safetensors"), {"format": "pt"})
    _write_json(model.config.to_dict(), os.path.join(folder, "config.json"))


def save_comfyui_vae(model: QwenImageVAE, path) -> None:
    """Write the ComfyUI/Wan single file (qwen_image_vae.safetensors' names), atomically. The architecture is read
    back off the shapes; latent statistics other than the official ones (a VAE trained from scratch) go in the
    metadata, where our loader finds them (ComfyUI's own Wan loader has no place for them)."""
    c, nrb = model.config, model.config.num_res_blocks
    state = {diffusers_to_comfy(k, nrb): v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt"}
    if (tuple(c.latents_mean), tuple(c.latents_std)) != (LATENTS_MEAN, LATENTS_STD):
        meta[LATENT_STATS_KEY] = json.dumps({"mean": list(c.latents_mean), "std": list(c.latents_std)})
    save_file_atomic(state, os.fspath(path), meta)
