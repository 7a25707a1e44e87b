"""Joint attention goes through this one function, so faster kernels can be swapped in without touching the model."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# backend(q, k, v, mask) with q, k, v [B, H, S, D] and mask None or bool [B, 1, 1, S] (keys), or [B|1, 1, Sq, S]
# (per query: 2.1's causal text) -> [B, H, Sq, D]
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


BACKENDS: dict[str, AttentionFn] = {"sdpa": _sdpa}
_active = "sdpa"


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    BACKENDS[name] = fn


def set_attention_backend(name: str) -> None:
    global _active
    if name not in BACKENDS:
        raise KeyError(f"unknown attention backend {name!r}; known: {', '.join(BACKENDS)}")
    _active = name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q, k, v [B, S, H, D], mask None (attend everywhere), bool [B, S] of keys to attend or [B|1, Sq, S] per
    query; returns [B, Sq, H*D]."""
    m = None if mask is None else mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]
    out = BACKENDS[_active](q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), m)
    return out.transpose(1, 2).flatten(2).to(q.dtype)
