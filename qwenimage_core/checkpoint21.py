"""Qwen-Image 2.1 transformer files: telling them from the 20B model's by their keys, and reading ComfyUI's layout.

Comfy-Org's single files use the diffusers names, optionally under `model.diffusion_model.`, except that each
block's SwiGLU gate and up projections are one `img_mlp.gate_up.weight` (gate rows first); it is read as two
tensors without a copy. The loader itself (fp8, meta-device assignment) is checkpoint.py's, shared with 20B.
"""
from __future__ import annotations

import torch

from .transformer21 import CLASS_NAME, Transformer21Config
from .weights import CheckpointError, RowChunk, block_count

FAMILY_20B = "Qwen-Image 20B MMDiT"
FAMILY_21 = "Qwen-Image 2.1 DiT"
# The text input's norm tells them apart: the 20B model's is `txt_norm`, 2.1's sits inside `txt_in`.
_MARKS = {"txt_norm.weight": FAMILY_20B, "txt_in.text_norm.weight": FAMILY_21}
FUSED = "img_mlp.gate_up."


def transformer_family(names) -> str | None:
    """FAMILY_20B or FAMILY_21 for a transformer state dict's keys (any file prefix removed); None if neither."""
    found = {family for key, family in _MARKS.items() if key in names}
    if len(found) > 1:
        raise CheckpointError("the keys mix the 20B MMDiT's (txt_norm.weight) and 2.1's (txt_in.text_norm.weight)")
    return found.pop() if found else None


def is_config21(d: dict) -> bool:
    """A diffusers config.json of the 2.1 transformer."""
    return d.get("_class_name") == CLASS_NAME or "context_in_dim" in d


def unfuse(sources: dict) -> dict:
    """{name: (file, key)} with each fused `gate_up` weight as its gate and up halves; an fp8 scale of the fused
    tensor (per tensor) serves both."""
    out = {}
    for name, (f, key) in sources.items():
        head, fused, leaf = name.partition(FUSED)
        if not fused:
            out[name] = (f, key)
        elif leaf == "weight":
            out[head + "img_mlp.gate_layer.weight"] = (RowChunk(f, 0, 2), key)
            out[head + "img_mlp.proj.weight"] = (RowChunk(f, 1, 2), key)
        else:
            out[head + "img_mlp.gate_layer." + leaf] = out[head + "img_mlp.proj." + leaf] = (f, key)
    return out


def fuse(state: dict) -> dict:
    """The inverse of `unfuse` on a state dict: each block's gate and up projections as one `gate_up` weight."""
    out = {}
    for name, t in state.items():
        if name.endswith("img_mlp.gate_layer.weight"):
            out[name.replace("gate_layer", "gate_up")] = torch.cat([t, state[name.replace("gate_layer", "proj")]])
        elif not name.endswith("img_mlp.proj.weight"):
            out[name] = t
    return out


def infer_config21(shapes: dict[str, tuple], axes_for) -> Transformer21Config:
    """The architecture from the weight shapes of a single file (which carries no config); `axes_for(head_dim)`
    gives the rotary split."""
    def need(key):
        if key not in shapes:
            raise CheckpointError(f"not a Qwen-Image 2.1 transformer: key {key!r} is missing")
        return shapes[key]

    dim, in_ch = need("img_in.weight")
    head_dim = need("transformer_blocks.0.attn.norm_q.weight")[0]
    hidden = need("transformer_blocks.0.img_mlp.proj.weight")[0]
    if dim % head_dim or hidden % dim:
        raise CheckpointError(f"not a Qwen-Image 2.1 transformer: width {dim}, head {head_dim}, MLP {hidden} "
                              "do not divide")
    return Transformer21Config(
        in_channels=in_ch, out_channels=need("proj_out.weight")[0], num_layers=block_count(shapes, "transformer_blocks."),
        attention_head_dim=head_dim, num_attention_heads=dim // head_dim,
        context_in_dim=need("txt_in.in_layer.weight")[1], mlp_ratio=hidden // dim, axes_dims_rope=axes_for(head_dim))


def config21_dims(c: Transformer21Config) -> list[tuple[str, int, str, int]]:
    """(name, axis, config field, size) the weights must show for config `c` (for weights.check_config_fits)."""
    return [("img_in.weight", 0, "num_attention_heads x attention_head_dim", c.inner_dim),
            ("img_in.weight", 1, "in_channels x patch_size^2", c.in_channels * c.patch_size ** 2),
            ("transformer_blocks.0.attn.norm_q.weight", 0, "attention_head_dim", c.attention_head_dim),
            ("transformer_blocks.0.img_mlp.proj.weight", 0, "mlp_ratio x width", c.mlp_ratio * c.inner_dim),
            ("txt_in.in_layer.weight", 1, "context_in_dim", c.context_in_dim),
            ("proj_out.weight", 0, "out_channels x patch_size^2", c.out_channels * c.patch_size ** 2)]
