"""The Qwen-Image 2.1 DiT: one single-stream transformer over the interleaved text and image sequence.

Every block: parameter-free LayerNorm, x * (1 + scale), block-causal attention with QK RMSNorm and 3-axis RoPE,
residual gated by tanh(gate); the same again around a SwiGLU MLP. There is no shift and no per-block modulation:
one shared SiLU -> Linear gives (scale, gate) x 2 for every block. With `causal_condition`, text and reference
tokens are modulated from t = 0, so their keys and values do not depend on the step: the first step can store
them (KVCache, mode "extract") and later steps compute only the target's tokens (mode "cached"), exactly as the
full forward does. The network predicts the flow-matching velocity (noise - data) at sigma in [0, 1].
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from math import prod

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .attention import attention
from .config import _META_FIELDS, check_field_types
from .layers import RMSNorm, TimestepConditioning, layer_norm, modulation
from .msrope import apply_rope
from .positions21 import TOKENS_PER_SLOT, Layout, build_layout, joint_key_mask, layout_shapes, rope21
from .transformer import TransformerOutput

CLASS_NAME = "QwenImage21Transformer2DModel"


@dataclass(frozen=True)
class Transformer21Config:
    """Field names of the diffusers config.json, so a diffusers folder's config reads straight in."""
    patch_size: int = 1
    in_channels: int = 64
    out_channels: int = 64
    num_layers: int = 32
    attention_head_dim: int = 128
    num_attention_heads: int = 32
    context_in_dim: int = 4096            # Qwen3-VL-8B hidden size
    mlp_ratio: int = 3                    # SwiGLU hidden = mlp_ratio x width
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)
    eps: float = 1e-6
    causal_condition: bool = True         # text and references modulated from t = 0 (what makes the KV cache valid)
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def __post_init__(self):
        check_field_types(self)
        object.__setattr__(self, "axes_dims_rope", tuple(self.axes_dims_rope))
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(a % 2 for a in self.axes_dims_rope):
            raise ValueError(f"axes_dims_rope {self.axes_dims_rope} must be even and sum to attention_head_dim "
                             f"{self.attention_head_dim}")

    @classmethod
    def from_dict(cls, d: dict) -> "Transformer21Config":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(k for k in d if k not in names and k not in _META_FIELDS)
        if unknown:
            raise ValueError(f"unknown Qwen-Image 2.1 transformer config field(s): {', '.join(unknown)}")
        kw = {k: v for k, v in d.items() if k in names}
        if kw.get("out_channels", 0) is None:  # the reference's default: as many as in
            kw["out_channels"] = kw.get("in_channels", cls.in_channels)
        return cls(**kw, extra={k: v for k, v in d.items() if k in _META_FIELDS})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["axes_dims_rope"] = list(self.axes_dims_rope)
        return {"_class_name": CLASS_NAME, **d}

    def replace(self, **kw) -> "Transformer21Config":
        return dataclasses.replace(self, **kw)


PRESETS21: dict[str, Transformer21Config] = {
    "qwen-image-2.1": Transformer21Config(),
    # 2 blocks, 32 wide: unit tests on a 2-core CPU.
    "tiny": Transformer21Config(num_layers=2, attention_head_dim=16, num_attention_heads=2, context_in_dim=24,
                                in_channels=8, out_channels=8, axes_dims_rope=(4, 6, 6)),
    # 4 blocks, 512 wide: CPU benchmarks.
    "small": Transformer21Config(num_layers=4, attention_head_dim=64, num_attention_heads=8, context_in_dim=256,
                                 axes_dims_rope=(8, 28, 28)),
}


class KVCache:
    """Post-norm, post-RoPE keys and values of the prefix (text and references), one pair per block, stored by
    mode "extract" and read by mode "cached". `device` keeps them elsewhere (the CPU) between steps; one cache per
    prompt (per CFG branch). About 0.5 MiB per prefix token in bf16 for the official model."""

    def __init__(self, num_layers: int, device=None):
        self.device = None if device is None else torch.device(device)
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.prefix_len: int | None = None  # set by "extract": a later step of another layout is refused

    def store(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        # a copy: a batch-1 slice is already contiguous and would pin the whole step's K/V
        self.layers[i] = tuple(t.to(self.device or t.device, copy=True) for t in (k, v))

    def get(self, i: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layers[i] is None:
            raise RuntimeError("the KV cache is empty: run the first step with kv_cache_mode='extract'")
        return tuple(t.to(device, non_blocking=True) for t in self.layers[i])

    @property
    def filled(self) -> bool:
        return all(x is not None for x in self.layers)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.layers if kv for t in kv)


class ZeroCentredRMSNorm(nn.Module):
    """RMSNorm whose weight is stored as scale - 1 and applied as weight + 1, in float32 (the text input's norm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * (self.weight.float() + 1)).to(x.dtype)


class TextIn(nn.Module):
    """Text states -> width: zero-centred RMSNorm, Linear, GELU(tanh), Linear."""

    def __init__(self, context_dim: int, dim: int, eps: float):
        super().__init__()
        self.text_norm = ZeroCentredRMSNorm(context_dim, eps)
        self.in_layer = nn.Linear(context_dim, dim, bias=False)
        self.out_layer = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        return self.out_layer(F.gelu(self.in_layer(self.text_norm(x)), approximate="tanh"))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden, bias=False)
        self.gate_layer = nn.Linear(dim, hidden, bias=False)
        self.out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.out(F.silu(self.gate_layer(x)) * self.proj(x))


@dataclass
class Step:
    """What every block of one forward shares: rotations, where the t = 0 modulation row stops applying, the key
    mask, the prefix's segments (full forward) and the cache with its mode."""
    rope: torch.Tensor
    split: int | None                 # tokens before it (text, references) read the last row (t = 0); None: none do
    keys: torch.Tensor | None         # [B, S_joint] bool, keys to attend (None: all)
    segments: tuple = ()
    prefix_len: int = 0
    cache: KVCache | None = None
    mode: str | None = None


def _times(x: torch.Tensor, rows: torch.Tensor, split: int | None) -> torch.Tensor:
    """x [B, S, dim] times its modulation row: rows [B, dim], or [B + 1, dim] whose last row (t = 0) serves the
    tokens before `split`. The prefix and the target are contiguous, so no per-token copy of the rows is made."""
    if split is None:
        return x * rows[:, None]
    return torch.cat([x[:, :split] * rows[-1:, None], x[:, split:] * rows[:-1, None]], dim=1)


class BlockCausalAttention(nn.Module):
    """Text is causal, each image block sees itself whole, every token sees all before it; padded keys never."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(head_dim, eps), RMSNorm(head_dim, eps)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=False)])

    def forward(self, x, s: Step, index: int):
        split = lambda t: t.unflatten(-1, (self.heads, self.head_dim))  # noqa: E731
        v = split(self.to_v(x))
        q = apply_rope(self.norm_q(split(self.to_q(x))).to(v.dtype), s.rope)
        k = apply_rope(self.norm_k(split(self.to_k(x))).to(v.dtype), s.rope)
        if s.mode == "cached":  # x holds the target only: it sees the stored prefix and itself
            ck, cv = s.cache.get(index, k.device)
            return self.to_out[0](attention(q, torch.cat([ck, k], 1), torch.cat([cv, v], 1), s.keys))
        if s.mode == "extract":
            s.cache.store(index, k[:, : s.prefix_len], v[:, : s.prefix_len])
        out = [attention(q[:, a:b], k[:, :b], v[:, :b], _segment_mask(a, b, text, s.keys, q.device))
               for a, b, text in s.segments]
        out.append(attention(q[:, s.prefix_len:], k, v, s.keys))
        return self.to_out[0](torch.cat(out, dim=1))


def _segment_mask(a: int, b: int, text: bool, keys, device):
    """Keys [0, b) for queries [a, b): everything before the segment, and within a text run only the causal part."""
    mask = None if keys is None else keys[:, :b]
    if text:
        tri = torch.ones(b - a, b, dtype=torch.bool, device=device).tril(a)[None]
        mask = tri if mask is None else tri & mask[:, None]
    return mask


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: int, eps: float):
        super().__init__()
        self.eps = eps
        self.attn = BlockCausalAttention(dim, heads, head_dim, eps)
        self.img_mlp = SwiGLU(dim, mlp_ratio * dim)

    def forward(self, x, mod, s: Step, index: int):
        """mod: (1 + scale, tanh(gate)) for attention and for the MLP, rows [B(+1), dim], shared by all blocks."""
        scale1, gate1, scale2, gate2 = mod
        x = x + _times(self.attn(_times(layer_norm(x, self.eps), scale1, s.split), s, index), gate1, s.split)
        x = x + _times(self.img_mlp(_times(layer_norm(x, self.eps), scale2, s.split)), gate2, s.split)
        if x.dtype == torch.float16:  # keep fp16 activations finite
            x = x.clip(-65504, 65504)
        return x


class NormOut(nn.Module):
    """LayerNorm(x) * (1 + scale): the output norm has no shift."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(dim, dim, bias=False)

    def forward(self, x, temb, split):
        return _times(layer_norm(x, self.eps), 1 + self.linear(F.silu(temb).to(x.dtype)), split)


class QwenImage21Transformer(nn.Module):
    def __init__(self, config: Transformer21Config):
        super().__init__()
        self.config = c = config
        dim = c.inner_dim
        self.time_text_embed = TimestepConditioning(dim, bias=False, fp32_freqs=True)
        self.txt_in = TextIn(c.context_in_dim, dim, c.eps)
        self.img_in = nn.Linear(c.in_channels * c.patch_size ** 2, dim, bias=False)
        self.modulation = modulation(dim, parts=4, bias=False)  # shared by every block
        self.transformer_blocks = nn.ModuleList(
            DiTBlock(dim, c.num_attention_heads, c.attention_head_dim, c.mlp_ratio, c.eps) for _ in range(c.num_layers))
        self.norm_out = NormOut(dim, c.eps)
        self.proj_out = nn.Linear(dim, c.patch_size ** 2 * c.out_channels, bias=False)
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (linear weights may be stored in fp8; norms never are)."""
        return self.txt_in.text_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.txt_in.text_norm.weight.device

    def enable_gradient_checkpointing(self, enabled: bool = True):
        self.gradient_checkpointing = enabled

    def new_cache(self, device=None) -> KVCache:
        """An empty prefix cache for one prompt; `device="cpu"` keeps it off the accelerator between steps."""
        return KVCache(len(self.transformer_blocks), device)

    def forward(self, hidden_states, encoder_hidden_states, timestep, img_shapes, img_mask,
                encoder_hidden_states_mask=None, kv_cache: KVCache | None = None, kv_cache_mode: str | None = None,
                return_dict=None, attention_kwargs=None):
        """Predicted velocity at sigma `timestep` ([B] or one value, in [0, 1]).

        hidden_states [B, S_img, in_channels]: latent tokens of the references then the target, in raster order;
        encoder_hidden_states [B, L, context_in_dim]: the Qwen3-VL states of the prompt (its image slots are
        overwritten by the references' tokens), encoder_hidden_states_mask [B, L] (1 = real token);
        img_mask [B, L + target tokens / 4]: True at image slots, the target's slots appended;
        img_shapes: (1, h, w) in latent tokens of each image, references first, target last (per sample, as the
        reference takes it, or one list); samples share one layout.
        Returns the whole joint sequence's output [B, S_joint, out] (the target is its last tokens), or with
        kv_cache_mode "cached" the target's only. `return_dict` as the reference: False a 1-tuple, True `.sample`."""
        if attention_kwargs:
            raise TypeError("attention_kwargs are not supported (LoRA scales are set on the model)")
        c, batch = self.config, hidden_states.shape[0]
        shapes = layout_shapes(img_shapes, batch)
        if hidden_states.shape[1] != sum(prod(s) for s in shapes):
            raise ValueError(f"img_shapes {list(shapes)} describe {sum(prod(s) for s in shapes)} tokens, "
                             f"hidden_states has {hidden_states.shape[1]}")
        n_target = prod(shapes[-1])
        length = encoder_hidden_states.shape[1]
        img_mask = torch.as_tensor(img_mask).bool()
        if img_mask.dim() == 1:
            img_mask = img_mask[None]
        if img_mask.shape[-1] != length + n_target // TOKENS_PER_SLOT or \
                (img_mask.shape[0] > 1 and not bool((img_mask == img_mask[:1]).all())):
            raise ValueError(f"img_mask [{', '.join(map(str, img_mask.shape))}] must mark, for every sample alike, "
                             f"the {length} prompt slots and then the target's {n_target // TOKENS_PER_SLOT}")
        if encoder_hidden_states_mask is not None and tuple(encoder_hidden_states_mask.shape) != (batch, length):
            raise ValueError(f"encoder_hidden_states_mask has shape {list(encoder_hidden_states_mask.shape)}, the "
                             f"prompt states need [{batch}, {length}]")
        layout = build_layout(img_mask[0], shapes)
        self._check_cache(kv_cache, kv_cache_mode, layout.prefix_len)

        dtype, dev = self.dtype, self.device
        sigma = torch.as_tensor(timestep).to(dev, dtype).reshape(-1).expand(batch)
        if c.causal_condition:  # one more row: t = 0 for text and references
            sigma = torch.cat([sigma, sigma.new_zeros(1)])
        temb = self.time_text_embed(sigma, dtype)
        scale1, gate1, scale2, gate2 = self.modulation(temb).chunk(4, dim=-1)
        mod = (1 + scale1, gate1.tanh(), 1 + scale2, gate2.tanh())
        keys = joint_key_mask(layout, encoder_hidden_states_mask, img_mask[0])
        s = Step(rope21(layout, c.axes_dims_rope, device=dev), layout.prefix_len if c.causal_condition else None,
                 None if keys is None else keys.to(dev), layout.segments, layout.prefix_len, kv_cache, kv_cache_mode)

        hidden_states = hidden_states.to(dev, dtype)
        if kv_cache_mode == "cached":  # only the target's tokens are computed, all with their samples' rows
            x = self.img_in(hidden_states[:, -n_target:])
            s.rope, s.split, mod, temb = s.rope[:, layout.prefix_len:], None, tuple(m[:-1] for m in mod), temb[:-1]
        else:
            x = self._joint(layout, self.img_in(hidden_states), self.txt_in(encoder_hidden_states.to(dev, dtype)))

        for i, block in enumerate(self.transformer_blocks):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, mod, s, i, use_reentrant=False)
            else:
                x = block(x, mod, s, i)
        out = self.proj_out(self.norm_out(x, temb, s.split))
        if return_dict is None:
            return out
        return TransformerOutput(out) if return_dict else (out,)

    @staticmethod
    def _joint(layout: Layout, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """[text with each image slot x4, target slots x4] with the image tokens written into the image places."""
        joint = torch.cat([txt, txt.new_zeros(txt.shape[0], len(layout.repeats) - txt.shape[1], txt.shape[2])], 1)
        joint = joint.repeat_interleave(layout.repeats.to(joint.device), dim=1)
        joint[:, layout.is_image.to(joint.device)] = img
        return joint

    def _check_cache(self, cache, mode, prefix_len: int):
        if cache is None and mode is None:
            return
        if cache is None or mode not in ("extract", "cached"):
            raise ValueError(f"kv_cache_mode {mode!r} needs a kv_cache, and a kv_cache needs mode 'extract' or 'cached'")
        if not self.config.causal_condition:
            raise ValueError("a KV cache needs causal_condition: only then do the prefix's keys not depend on the step")
        if len(cache.layers) != len(self.transformer_blocks):
            raise ValueError(f"the KV cache has {len(cache.layers)} layers, the model {len(self.transformer_blocks)}")
        if mode == "cached" and cache.prefix_len is None:
            raise ValueError("the KV cache is empty: run the first step with kv_cache_mode='extract'")
        if mode == "cached" and cache.prefix_len != prefix_len:
            raise ValueError(f"the KV cache holds a prefix of {cache.prefix_len} tokens, this prompt has {prefix_len}: "
                             "run its first step with kv_cache_mode='extract'")
        cache.prefix_len = prefix_len

