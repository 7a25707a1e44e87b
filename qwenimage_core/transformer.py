"""The Qwen-Image MMDiT: a dual-stream transformer over 2x2-patched image latents and Qwen2.5-VL text states.

Each block keeps separate weights for the image and the text stream (AdaLN modulation, QKV projections, QK
RMSNorm, output projection, MLP) and lets both attend jointly over the concatenated [text, image] sequence,
positioned by MSRoPE. The network predicts the flow-matching velocity (noise - data) at sigma in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
import torch.nn as nn
import torch.utils.checkpoint

from .attention import attention
from .config import TransformerConfig
from .layers import AdaLNOut, FeedForward, RMSNorm, TimestepConditioning, layer_norm, modulate, modulation
from .msrope import apply_rope, image_sets, msrope_table


class JointAttention(nn.Module):
    """One attention over [text, image]; each stream projects its own queries, keys, values and outputs."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.norm_added_q, self.norm_added_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_add_out = nn.Linear(dim, dim)

    def forward(self, img, txt, rope, mask):
        split = lambda x: x.unflatten(-1, (self.heads, self.head_dim))  # noqa: E731
        q = torch.cat([self.norm_added_q(split(self.add_q_proj(txt))), self.norm_q(split(self.to_q(img)))], dim=1)
        k = torch.cat([self.norm_added_k(split(self.add_k_proj(txt))), self.norm_k(split(self.to_k(img)))], dim=1)
        v = torch.cat([split(self.add_v_proj(txt)), split(self.to_v(img))], dim=1)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = attention(q, k, v, mask)
        n_txt = txt.shape[1]
        return self.to_out[0](out[:, n_txt:].contiguous()), self.to_add_out(out[:, :n_txt].contiguous())


class MMDiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, zero_cond_t: bool = False):
        super().__init__()
        self.zero_cond_t = zero_cond_t
        self.img_mod, self.txt_mod = modulation(dim), modulation(dim)
        self.attn = JointAttention(dim, heads, head_dim)
        self.img_mlp, self.txt_mlp = FeedForward(dim), FeedForward(dim)

    def forward(self, img, txt, temb, rope, mask, mod_index=None):
        # With zero_cond_t, temb is [2B]: the real timestep, then timestep 0 for reference tokens (image only).
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)
        txt_mod1, txt_mod2 = self.txt_mod(temb.chunk(2)[0] if self.zero_cond_t else temb).chunk(2, dim=-1)

        img_in, img_gate = modulate(layer_norm(img), img_mod1, mod_index)
        txt_in, txt_gate = modulate(layer_norm(txt), txt_mod1)
        img_attn, txt_attn = self.attn(img_in, txt_in, rope, mask)
        img = img + img_gate * img_attn
        txt = txt + txt_gate * txt_attn

        img_in, img_gate = modulate(layer_norm(img), img_mod2, mod_index)
        img = img + img_gate * self.img_mlp(img_in)
        txt_in, txt_gate = modulate(layer_norm(txt), txt_mod2)
        txt = txt + txt_gate * self.txt_mlp(txt_in)
        if img.dtype == torch.float16:  # keep fp16 activations finite
            img, txt = img.clip(-65504, 65504), txt.clip(-65504, 65504)
        return img, txt


@dataclass
class TransformerOutput:
    sample: torch.Tensor

    def __getitem__(self, i):
        return (self.sample,)[i]


class QwenImageTransformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        dim = c.inner_dim
        self.time_text_embed = TimestepConditioning(dim, c.use_additional_t_cond)
        self.txt_norm = RMSNorm(c.joint_attention_dim)
        self.img_in = nn.Linear(c.in_channels, dim)
        self.txt_in = nn.Linear(c.joint_attention_dim, dim)
        self.transformer_blocks = nn.ModuleList(
            MMDiTBlock(dim, c.num_attention_heads, c.attention_head_dim, c.zero_cond_t) for _ in range(c.num_layers))
        self.norm_out = AdaLNOut(dim)
        self.proj_out = nn.Linear(dim, c.patch_size ** 2 * c.out_channels)
        self.gradient_checkpointing = False

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (linear weights may be stored in fp8; norms never are)."""
        return self.txt_norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.txt_norm.weight.device

    def enable_gradient_checkpointing(self, enabled: bool = True):
        self.gradient_checkpointing = enabled

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask=None, timestep=None,
                img_shapes=None, additional_t_cond=None, return_dict=None, **unused):
        """Predicted velocity [B, S_img, 64] for noisy image tokens at sigma `timestep` ([B], in [0, 1]).

        hidden_states [B, S_img, 64]: packed latents, the target's tokens first, then any edit references';
        encoder_hidden_states [B, L, 3584] and its mask [B, L] (1 = real token, 0 = padding);
        img_shapes: per sample, the (frames, h, w) patch grid of each image in hidden_states.
        Returns the tensor; `return_dict=False` gives a 1-tuple and `True` an object with `.sample`, as the
        reference does, so code written against it runs unchanged."""
        for name in unused:
            if name not in ("guidance", "attention_kwargs", "controlnet_block_samples") or unused[name] is not None:
                raise TypeError(f"unsupported argument {name!r}")
        c, batch = self.config, hidden_states.shape[0]
        sets = image_sets(img_shapes, batch)
        n_img = sum(prod(s) for s in sets[0])
        if any(sum(prod(s) for s in st) != hidden_states.shape[1] for st in sets):
            raise ValueError(f"img_shapes {img_shapes} describe {n_img} tokens, hidden_states has {hidden_states.shape[1]}")

        hidden_states, encoder_hidden_states = hidden_states.to(self.dtype), encoder_hidden_states.to(self.dtype)
        img = self.img_in(hidden_states)
        sigma = timestep.to(img.dtype).reshape(-1).expand(batch)
        mod_index = None
        if c.zero_cond_t:
            sigma = torch.cat([sigma, sigma * 0])
            mod_index = torch.tensor([[0] * prod(s[0]) + [1] * sum(prod(x) for x in s[1:]) for s in sets],
                                     device=img.device)
        txt = self.txt_in(self.txt_norm(encoder_hidden_states))
        temb = self.time_text_embed(sigma, img.dtype, additional_t_cond)

        mask = None
        if encoder_hidden_states_mask is not None:
            txt_mask = encoder_hidden_states_mask.to(torch.bool)
            if not bool(txt_mask.all()):  # an all-true mask is no mask, and lets SDPA pick its fastest kernel
                mask = torch.cat([txt_mask, txt_mask.new_ones(batch, img.shape[1])], dim=1)
        rope = msrope_table(sets, txt.shape[1], batch, c.axes_dims_rope, c.rope_theta, c.use_layer3d_rope, img.device)

        for block in self.transformer_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                img, txt = torch.utils.checkpoint.checkpoint(block, img, txt, temb, rope, mask, mod_index,
                                                             use_reentrant=False)
            else:
                img, txt = block(img, txt, temb, rope, mask, mod_index)

        out = self.proj_out(self.norm_out(img, temb.chunk(2)[0] if c.zero_cond_t else temb))
        if return_dict is None:
            return out
        return TransformerOutput(out) if return_dict else (out,)
