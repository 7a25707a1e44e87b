"""Dtype names as people type them ('bf16', 'fp16', 'fp8', 'bfloat16', ...), read in one place for the command
line and the training config."""
from __future__ import annotations

import torch

# name -> (compute dtype, weight dtype); fp8 keeps the transformer's linear weights in float8_e4m3fn and computes
# in bfloat16, as the loader nodes' fp8_e4m3fn choice.
NAMES = {"float32": ("float32", None), "fp32": ("float32", None), "bfloat16": ("bfloat16", None),
         "bf16": ("bfloat16", None), "float16": ("float16", None), "fp16": ("float16", None),
         "half": ("float16", None), "fp8": ("bfloat16", "float8_e4m3fn"),
         "float8_e4m3fn": ("bfloat16", "float8_e4m3fn"), "fp8_e4m3fn": ("bfloat16", "float8_e4m3fn")}


def parse_dtype(name: str) -> tuple[torch.dtype, torch.dtype | None]:
    """'bf16' -> (torch.bfloat16, None); 'fp8' -> (torch.bfloat16, torch.float8_e4m3fn). ValueError names the
    accepted names."""
    key = str(name).lower()
    if key not in NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(NAMES)}")
    compute, weights = NAMES[key]
    return getattr(torch, compute), getattr(torch, weights) if weights else None


def canonical_float(name: str) -> str:
    """The torch name of a plain float dtype ('bf16' -> 'bfloat16'); fp8 and unknown names are ValueErrors."""
    compute, weights = parse_dtype(name)
    if weights is not None:
        raise ValueError(f"{name!r} is a weight storage format, not a dtype to compute in")
    return str(compute).removeprefix("torch.")
