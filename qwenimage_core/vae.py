"""The Qwen-Image VAE: the Wan-2.1 architecture (causal 3-D convolutions, RMS norms, residual blocks, a middle
attention block, 2x spatial resampling; 16 latent channels, 8x down), run on single images.

Parameters keep the reference's names and 5-D Conv3d shapes, so diffusers and ComfyUI/Wan files load as they
are. The compute is 2-D: a causal convolution pads time on the left with zeros, so on one frame only the last
temporal slice of each kernel ever meets data, and the temporal resamplers are skipped on a first frame (the
reference's feature cache does the same). That is the reference's arithmetic, minus the video machinery.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import component_folder, folder_weight_files, read_json, _write_json
from .weights import CheckpointError, SafetensorsFile, assign_weights, open_checkpoint_files, save_file_atomic

LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916)


@dataclass
class VAEConfig:
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple = ()
    temperal_downsample: tuple = (False, True, True)  # sic: the reference's spelling, kept for config.json
    dropout: float = 0.0
    input_channels: int = 3
    latents_mean: tuple = LATENTS_MEAN
    latents_std: tuple = LATENTS_STD

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"_class_name": "AutoencoderKLQwenImage", **d}


# ------------------------------------------------------------------------------------------------- layers

class CausalConv3d(nn.Module):
    """A causal 3-D convolution applied to one frame: the conv2d of its last temporal kernel slice."""

    def __init__(self, cin, cout, k=3, padding=1, kt=None):
        super().__init__()
        kt = k if kt is None else kt
        self.weight = nn.Parameter(torch.empty(cout, cin, kt, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.weight[:, :, -1], self.bias, padding=self.padding)


class RMSNorm(nn.Module):
    """Channel RMS norm with a learned gain: F.normalize over channels times sqrt(C) (in float32 for half)."""

    def __init__(self, dim, images=False):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))
        self.scale = dim ** 0.5

    def forward(self, x):
        half = x.dtype in (torch.float16, torch.bfloat16)
        x = F.normalize(x.float() if half else x, dim=1).to(x.dtype)
        return x * self.scale * self.gamma.view(-1, 1, 1)


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = RMSNorm(cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = RMSNorm(cout), CausalConv3d(cout, cout)
        self.conv_shortcut = CausalConv3d(cin, cout, k=1, padding=0) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return self.conv2(F.silu(self.norm2(h))) + self.conv_shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of the frame, residual."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, 1, c * 3, h * w).transpose(-1, -2)
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return self.proj(out) + x


class Resample(nn.Module):
    """2x down (zero-pad right/bottom, stride-2 conv) or up (nearest-exact, conv halving channels). The 3-D
    variants' `time_conv` exists for the weights; on a first frame the reference skips it."""

    def __init__(self, dim, mode):
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, k=1, padding=0, kt=3)
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, k=1, padding=0, kt=3)

    def forward(self, x):
        if self.mode.startswith("up"):
            return self.resample[1](self.resample[0](x.float()).to(x.dtype))
        return self.resample(x)


class MidBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class UpBlock(nn.Module):
    def __init__(self, cin, cout, num_res_blocks, upsample):
        super().__init__()
        self.resnets = nn.ModuleList(ResidualBlock(cin if i == 0 else cout, cout) for i in range(num_res_blocks + 1))
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
        scale = 1.0
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(c.num_res_blocks):
                self.down_blocks.append(ResidualBlock(cin, cout))
                if scale in c.attn_scales:
                    self.down_blocks.append(AttentionBlock(cout))
                cin = cout
            if i != len(c.dim_mult) - 1:
                self.down_blocks.append(Resample(cout, "downsample3d" if c.temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], c.z_dim * 2)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        mult = c.dim_mult
        dims = [c.base_dim * m for m in (mult[-1], *mult[::-1])]
        upsample_t = tuple(c.temperal_downsample[::-1])
        self.conv_in = CausalConv3d(c.z_dim, dims[0])
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = nn.ModuleList()
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            up = None if i == len(mult) - 1 else ("upsample3d" if upsample_t[i] else "upsample2d")
            self.up_blocks.append(UpBlock(cin // 2 if i > 0 else cin, cout, c.num_res_blocks, up))
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], c.input_channels)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


# ---------------------------------------------------------------------------------------------- the model

class DiagonalGaussian:
    """The encoder's posterior: mean and log-variance (clamped to [-30, 20], as the reference)."""

    def __init__(self, params: torch.Tensor):
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * noise, the noise drawn as diffusers' randn_tensor draws it (on the generator's device)."""
        dev = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=dev, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)


@dataclass
class Tiling:
    """Tiled encode/decode for images larger than memory allows: tiles of `tile` pixels overlapping by
    `overlap`, blended with linear ramps across the overlaps (the reference's defaults: 256 and 64)."""
    tile: int = 256
    overlap: int = 64


class QwenImageVAE(nn.Module):
    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = c = config or VAEConfig()
        self.encoder = Encoder(c)
        self.quant_conv = CausalConv3d(c.z_dim * 2, c.z_dim * 2, k=1, padding=0, kt=1)
        self.post_quant_conv = CausalConv3d(c.z_dim, c.z_dim, k=1, padding=0, kt=1)
        self.decoder = Decoder(c)
        self.tiling: Tiling | None = None
        self.scale_factor = 2 ** len(c.temperal_downsample)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.quant_conv.weight.device

    def enable_tiling(self, tile: int = 256, overlap: int = 64) -> None:
        if tile % 16 or overlap % 16 or not 0 <= overlap < tile:
            raise ValueError(f"tile {tile} and overlap {overlap} must be multiples of 16 with overlap < tile")
        self.tiling = Tiling(tile, overlap)

    def disable_tiling(self) -> None:
        self.tiling = None

    # -- encode / decode: 5-D (B, C, 1, H, W) as the reference, or 4-D (B, C, H, W); same rank out

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images in [-1, 1] -> the posterior over latents [B, 16, (1,) H/8, W/8]."""
        x4, five = _frame(x)
        f = self.scale_factor
        if x4.shape[-1] % f or x4.shape[-2] % f:
            raise ValueError(f"image size {x4.shape[-1]}x{x4.shape[-2]} must be a multiple of {f}")
        fn = lambda t: self.quant_conv(self.encoder(t))  # noqa: E731
        params = self._tiled(fn, x4, 1 / f) if self._tile(x4.shape[-2:], 1) else fn(x4)
        return DiagonalGaussian(params.unsqueeze(2) if five else params)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]."""
        z4, five = _frame(z)
        fn = lambda t: self.decoder(self.post_quant_conv(t))  # noqa: E731
        out = self._tiled(fn, z4, self.scale_factor) if self._tile(z4.shape[-2:], self.scale_factor) else fn(z4)
        out = out.clamp(-1.0, 1.0)
        return out.unsqueeze(2) if five else out

    def _stats(self, z):
        shape = (1, -1) + (1,) * (z.ndim - 2)
        mean = torch.tensor(self.config.latents_mean).view(shape).to(z.device, z.dtype)
        inv_std = 1.0 / torch.tensor(self.config.latents_std).view(shape).to(z.device, z.dtype)
        return mean, inv_std

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the transformer's space: (z - mean) / std, as the pipelines write it."""
        mean, inv_std = self._stats(z)
        return (z - mean) * inv_std

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self._stats(z)
        return z / inv_std + mean

    # -- tiling

    def _tile(self, hw, scale) -> bool:
        return self.tiling is not None and max(hw) * scale > self.tiling.tile

    def _tiled(self, fn, x: torch.Tensor, scale: float) -> torch.Tensor:
        """Run `fn` on overlapping tiles of x and blend: each output pixel is the ramp-weighted mean of the
        tiles covering it, so seams fade linearly over the overlap."""
        in_tile = self.tiling.tile // self.scale_factor if scale > 1 else self.tiling.tile  # tile sizes in pixels
        in_overlap = self.tiling.overlap // self.scale_factor if scale > 1 else self.tiling.overlap
        stride = in_tile - in_overlap
        H, W = x.shape[-2:]
        out, weight = None, None
        for top in _starts(H, in_tile, stride):
            for left in _starts(W, in_tile, stride):
                tile = x[..., top:top + in_tile, left:left + in_tile]
                y = fn(tile)
                if out is None:
                    out = y.new_zeros(*y.shape[:2], int(H * scale), int(W * scale))
                    weight = y.new_zeros(1, 1, int(H * scale), int(W * scale))
                o = int(in_overlap * scale)
                ramp = _ramp(y.shape[-2], o, top > 0, top + in_tile < H, y)[:, None] * \
                    _ramp(y.shape[-1], o, left > 0, left + in_tile < W, y)[None, :]
                t, l = int(top * scale), int(left * scale)
                out[..., t:t + y.shape[-2], l:l + y.shape[-1]] += y * ramp
                weight[..., t:t + y.shape[-2], l:l + y.shape[-1]] += ramp
        return out / weight


def _starts(n, tile, stride):
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride)) + [n - tile]
    return sorted(set(starts))


def _ramp(n, overlap, fade_in, fade_out, like):
    r = torch.ones(n, dtype=like.dtype, device=like.device)
    if overlap > 0:
        edge = (torch.arange(overlap, dtype=like.dtype, device=like.device) + 0.5) / overlap
        if fade_in:
            r[:overlap] = torch.minimum(r[:overlap], edge)
        if fade_out:
            r[-overlap:] = torch.minimum(r[-overlap:], edge.flip(0))
    return r


def _frame(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.ndim == 5:
        if x.shape[2] != 1:
            raise ValueError(f"the image VAE takes one frame, got {x.shape[2]} (shape {tuple(x.shape)})")
        return x[:, :, 0], True
    if x.ndim != 4:
        raise ValueError(f"expected [B, C, H, W] or [B, C, 1, H, W], got shape {tuple(x.shape)}")
    return x, False


# ------------------------------------------------------------------------------------------------ loading

# ComfyUI / Wan names -> diffusers names. Residual blocks: residual.{0,2,3,6} and shortcut.
_RES = {"residual.0.gamma": "norm1.gamma", "residual.2": "conv1", "residual.3.gamma": "norm2.gamma",
        "residual.6": "conv2", "shortcut": "conv_shortcut"}


def _res(rest: str) -> str:
    for src, dst in _RES.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src):]
    return rest


def comfy_to_diffusers(key: str) -> str:
    """Map one ComfyUI/Wan VAE key to its diffusers name (the rules of shared vae_key_patterns.tsv)."""
    m = re.fullmatch(r"conv([12])\.(.+)", key)
    if m:
        return ("quant_conv." if m[1] == "1" else "post_quant_conv.") + m[2]
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return key
    side, rest = m[1], m[2]
    if rest.startswith("conv1."):
        return f"{side}.conv_in.{rest[6:]}"
    if rest.startswith("head.0."):
        return f"{side}.norm_out.{rest[7:]}"
    if rest.startswith("head.2."):
        return f"{side}.conv_out.{rest[7:]}"
    m = re.fullmatch(r"middle\.(\d)\.(.+)", rest)
    if m:
        i, r = int(m[1]), m[2]
        if i == 1:
            return f"{side}.mid_block.attentions.0.{r}"
        return f"{side}.mid_block.resnets.{i // 2}.{_res(r)}"
    m = re.fullmatch(r"downsamples\.(\d+)\.(.+)", rest)
    if m:
        return f"{side}.down_blocks.{m[1]}.{_res(m[2])}"
    m = re.fullmatch(r"upsamples\.(\d+)\.(.+)", rest)
    if m:
        i, r = int(m[1]), m[2]
        if r.startswith(("resample.", "time_conv.")):
            return f"{side}.up_blocks.{i // 4}.upsamplers.0.{r}"
        return f"{side}.up_blocks.{i // 4}.resnets.{i % 4}.{_res(r)}"
    return key


def _is_comfy(keys) -> bool:
    return any(k.startswith(("encoder.conv1.", "decoder.conv1.")) or k.startswith("conv1.") for k in keys)


def infer_vae_config(shapes: dict[str, tuple]) -> VAEConfig:
    """The architecture from diffusers-named weight shapes."""
    def need(k):
        if k not in shapes:
            raise CheckpointError(f"cannot infer the VAE config: no {k!r} in the weights")
        return shapes[k]

    base = need("encoder.conv_in.weight")[0]
    z_dim = need("post_quant_conv.weight")[0]
    ups = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("decoder.up_blocks.")})
    n_levels = len(ups)
    mult = [need(f"decoder.up_blocks.{i}.resnets.0.conv1.weight")[0] // base for i in ups][::-1]
    num_res = len({k.split(".")[4] for k in shapes if k.startswith("decoder.up_blocks.0.resnets.")}) - 1
    temporal = tuple(f"decoder.up_blocks.{i}.upsamplers.0.time_conv.weight" in shapes for i in range(n_levels - 1))[::-1]
    attn = any(".down_blocks." in k and ".to_qkv." in k for k in shapes)
    if attn:
        raise CheckpointError("VAE weights with encoder attention blocks: give the config.json (attn_scales)")
    return VAEConfig(base_dim=base, z_dim=z_dim, dim_mult=tuple(mult), num_res_blocks=num_res,
                     temperal_downsample=temporal)


PREFIXES = ("vae.", "first_stage_model.")


def vae_sources(path: str, config: VAEConfig | None = None):
    """(config, {diffusers name: (file, key)}) for a diffusers folder or a single file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder = component_folder(path, "vae")
        if folder is None:
            raise CheckpointError(f"{path}: no vae/ folder with a config.json (nor is it a VAE folder)")
        files = open_checkpoint_files(folder_weight_files(folder))
        cfg = config or VAEConfig.from_dict(read_json(os.path.join(folder, "config.json")))
        return cfg, {k: (f, k) for k, f in files.items()}
    f = SafetensorsFile(path)
    keys = f.keys()
    for p in PREFIXES:  # a full checkpoint: take only the VAE's keys
        if any(k.startswith(p) for k in keys):
            keys = [k for k in keys if k.startswith(p)]
            break
    else:
        p = ""
    comfy = _is_comfy([k[len(p):] for k in keys])
    sources = {}
    for k in keys:
        name = k[len(p):]
        sources[comfy_to_diffusers(name) if comfy else name] = (f, k)
    cfg = config or infer_vae_config({n: f.shape(k) for n, (f, k) in sources.items()})
    return cfg, sources


def load_vae(path, device=None, dtype=None, config: VAEConfig | None = None) -> QwenImageVAE:
    """Load the VAE from a diffusers model folder (or its vae/ folder), a diffusers-named single file, the
    ComfyUI/Wan single file (qwen_image_vae.safetensors), or a full checkpoint with `vae.`-prefixed keys.
    dtype defaults to the stored one; errors name the file and the key."""
    cfg, sources = vae_sources(path, config)
    with torch.device("meta"):
        model = QwenImageVAE(cfg)
    assign_weights(model, sources, dtype=dtype, device=device, what="VAE")
    return model.eval().requires_grad_(False)


def save_vae(model: QwenImageVAE, folder) -> None:
    """Write the diffusers layout (config.json + diffusion_pytorch_model.safetensors), atomically."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file_atomic(state, os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    _write_json(model.config.to_dict(), os.path.join(folder, "config.json"))
