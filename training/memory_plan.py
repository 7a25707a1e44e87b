"""The memory plan of a LoRA run: a VRAM budget (or an explicit `train.blocks_to_swap`) -> fp8 base or not, how
many transformer blocks stream from CPU memory, gradient checkpointing, and where the text encoder and VAE run.
It is printed at start; a budget nothing fits is refused before anything loads, with the smallest that would.

How the bytes are estimated (GB here means GiB, 2^30 bytes, as cards are sold: a "24 GB" card has 24 GiB):
- base weights: a block's linear weights at 1 byte each in fp8 (float8_e4m3fn), else at the compute dtype's size
  (`model.dtype`: 2 bytes in bf16); a block's biases and norms, and every layer outside the blocks, at the
  compute dtype's size. Swapped blocks wait in pinned CPU memory; two of them are on the GPU at once (the one
  computing and the one prefetched).
- LoRA: rank x (in + out) parameters per targeted layer; the parameter and its gradient at `model.dtype`'s size,
  AdamW's two moments at that size too (1 byte each with `optimizer.eight_bit`).
- activations, per sample, per token (data.area / 256 image tokens, plus edit references, plus the text tokens:
  data.max_text_tokens or 256), in units of the model width at the compute dtype's size: a block keeps
  ACTIVATIONS_PER_BLOCK of them for its backward (13.3 measured on the CPU with saved-tensor hooks, LoRA on every
  attention projection; attention saves no S x S matrix), and the backward of a block needs BACKWARD_WORKSPACE
  more. With gradient checkpointing each block keeps only its two inputs (1 per token) and one block at a time
  is recomputed; without, every block keeps its whole set.
- OVERHEAD: what the allocator's peak does not show: CUDA context, cuBLAS workspace, fragmentation.
At 1024 px (4,096 image + 256 text tokens, width 3,072) the official model's checkpointed activations come to
about 2.2 GB in bf16; without checkpointing about 26 GB.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .config import ConfigError

GiB = 1024 ** 3
ACTIVATIONS_PER_BLOCK = 16      # model widths per token one block saves for its backward (13.3 measured, rounded up)
BACKWARD_WORKSPACE = 8          # gradients in flight inside one block's backward, same unit
OVERHEAD = 2.0 * GiB
DEFAULT_TEXT_TOKENS = 256


class PlanError(ConfigError):
    """The budget cannot hold the run; the message names the smallest budget that would."""


@dataclass
class Footprint:
    """What the plan needs to know of the model and the run, in element counts."""
    blocks: int
    block_linear: int          # one block's linear weights (what fp8 halves)
    block_other: int           # its biases and norms
    rest: int                  # the layers outside the blocks
    lora: int                  # LoRA parameters in all
    width: int
    tokens: int                # per sample
    batch: int
    compute_bytes: int         # element size of model.dtype
    eight_bit: bool = False
    stored_fp8: bool = False   # the checkpoint's block weights are fp8 already


@dataclass
class Placement:
    fp8: bool
    blocks_to_swap: int
    checkpointing: bool
    parts: dict = field(default_factory=dict)    # name -> bytes on the GPU at the peak
    encoders_on_gpu: bool = True
    budget_gb: float = 0.0
    blocks: int = 0

    @property
    def predicted(self) -> int:
        """The allocator's predicted peak (what torch.cuda.max_memory_allocated measures)."""
        return sum(self.parts.values())

    @property
    def need(self) -> int:
        return self.predicted + int(OVERHEAD)

    def summary(self) -> str:
        """'fp8 (e4m3fn) base, 27 of 60 blocks swapped, gradient checkpointing on'"""
        n = f" of {self.blocks}" if self.blocks else ""
        return (f"{'fp8 (e4m3fn)' if self.fp8 else 'full-precision'} base, {self.blocks_to_swap}{n} blocks swapped, "
                f"gradient checkpointing {'on' if self.checkpointing else 'off'}")

    def describe(self, gpu: bool = True) -> str:
        """The plan as printed at start. `gpu`: whether the run has a GPU; without one the budget is moot (the
        placement still applies: fp8, swap and checkpointing change what is computed, not where)."""
        where = "" if gpu else " (no GPU here: the run trains on the CPU, in CPU memory)"
        lines = [f"memory plan{f' for {self.budget_gb:g} GB' if self.budget_gb else ''}{where}: {self.summary()}; "
                 f"predicted peak {self.predicted / GiB:.1f} GB + {OVERHEAD / GiB:.1f} GB overhead = "
                 f"{self.need / GiB:.1f} GB"]
        lines += [f"  {k}: {v / GiB:.2f} GB" for k, v in self.parts.items()]
        if not gpu:
            lines.append("  text encoder and VAE: never loaded with a complete cache; else on the CPU")
        else:
            lines.append(f"  text encoder and VAE: never loaded with a complete cache; else on the "
                         f"{'GPU' if self.encoders_on_gpu else 'CPU (they do not fit beside the training state)'}")
        return "\n".join(lines)


def footprint(config, targets, rank: int, compute_dtype=torch.bfloat16, tokens: int = 4096 + DEFAULT_TEXT_TOKENS,
              batch: int = 1, eight_bit: bool = False, stored_fp8: bool = False) -> Footprint:
    """Count the official (or any) config's elements on the meta device: nothing is allocated."""
    from ..qwenimage_core.transformer import QwenImageTransformer

    with torch.device("meta"):
        model = QwenImageTransformer(config)
    block = model.transformer_blocks[0]
    linear = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
    in_block = sum(p.numel() for p in block.parameters())
    total = sum(p.numel() for p in model.parameters())
    lora = sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets))
    return Footprint(blocks=len(model.transformer_blocks), block_linear=linear, block_other=in_block - linear,
                     rest=total - in_block * len(model.transformer_blocks), lora=lora, width=config.inner_dim,
                     tokens=tokens, batch=batch, compute_bytes=torch.finfo(compute_dtype).bits // 8,
                     eight_bit=eight_bit, stored_fp8=stored_fp8)


def block_bytes(fp: Footprint, fp8: bool) -> int:
    return fp.block_linear * (1 if fp8 else fp.compute_bytes) + fp.block_other * fp.compute_bytes


def estimate(fp: Footprint, fp8: bool, swap: int, checkpointing: bool) -> dict:
    """Bytes on the GPU at the peak, by part."""
    e, blk = fp.compute_bytes, block_bytes(fp, fp8)
    per_block = fp.batch * fp.tokens * fp.width * e  # one model width per token
    on_device = fp.blocks - swap + (min(2, swap))
    kept = (fp.blocks + ACTIVATIONS_PER_BLOCK) if checkpointing else fp.blocks * ACTIVATIONS_PER_BLOCK
    return {
        f"base weights ({fp.blocks - swap} resident + {min(2, swap)} streamed blocks)": on_device * blk + fp.rest * e,
        "LoRA weights, gradients, AdamW": fp.lora * (2 * e + (2 if fp.eight_bit else 2 * e)),
        f"activations ({fp.batch} x {fp.tokens} tokens)": (kept + BACKWARD_WORKSPACE) * per_block,
    }


def candidates(fp: Footprint, fp8: str, swap: int, checkpointing: bool):
    """Placements in order of preference, as musubi-tuner's table: the full-precision base resident, then fp8
    resident, then fp8 with more and more blocks swapped (`fp8_base = "off"` swaps full-precision blocks);
    no checkpointing before checkpointing; swapping always checkpoints."""
    swaps = [swap] if swap >= 0 else list(range(fp.blocks + 1))
    if fp8 == "off":
        order = [(False, swaps)]
    elif fp8 == "on" or fp.stored_fp8:
        order = [(True, swaps)]
    else:
        order = [(False, swaps[:1]), (True, swaps)]
    for q, ss in order:
        for s in ss:
            for c in ([True] if s or checkpointing else [False, True]):
                yield q, s, c


def make_plan(fp: Footprint, budget_gb: float = 0.0, blocks_to_swap: int = -1, fp8: str = "auto",
              checkpointing: bool = False, encoder_bytes: int = 0) -> Placement:
    """The first placement of `candidates` that fits the budget (without a budget: the settings as given)."""
    if blocks_to_swap > fp.blocks:
        raise PlanError(f"train.blocks_to_swap: {blocks_to_swap}, but the model has {fp.blocks} blocks")
    if not budget_gb:
        q = fp.stored_fp8 if fp8 == "auto" else fp8 == "on"
        s = max(blocks_to_swap, 0)
        c = checkpointing or s > 0
        return Placement(q, s, c, estimate(fp, q, s, c), blocks=fp.blocks)
    options = [Placement(q, s, c, estimate(fp, q, s, c), budget_gb=budget_gb, blocks=fp.blocks)
               for q, s, c in candidates(fp, fp8, blocks_to_swap, checkpointing)]
    p = first_fit(options, budget_gb * GiB)
    if p is not None:
        p.encoders_on_gpu = p.need + encoder_bytes <= budget_gb * GiB
        return p
    # the smallest budget that fits, rounded up to a hundredth of a GB (rounding to a tenth named 2.1 GB where
    # 2.02 fitted), and the placement the plan picks there (the first that fits, not always the smallest)
    least = math.ceil(min(o.need for o in options) / GiB * 100) / 100
    pick = first_fit(options, least * GiB)
    raise PlanError(f"train.vram_budget_gb: {budget_gb:g} GB cannot hold this LoRA run; the smallest budget that "
                    f"does is {least:.2f} GB, where the plan picks {pick.summary()}. Lower data.area or "
                    "data.batch_size, or raise the budget")


def first_fit(options: list[Placement], budget: float) -> Placement | None:
    return next((o for o in options if o.need <= budget), None)


def files_bytes(path: str) -> int:
    """Bytes of a weights file, or of the safetensors files in a folder (0 when absent)."""
    if not path or not os.path.exists(path):
        return 0
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if f.endswith(".safetensors"))


def plan_for_config(cfg) -> Placement | None:
    """The plan of a training config; None when it asks for none (no budget, no swap, fp8 as stored)."""
    t = cfg.train
    if not t.vram_budget_gb and t.blocks_to_swap < 0 and t.fp8_base == "auto":
        return None
    from ..qwenimage_core.checkpoint import transformer_sources
    from ..qwenimage_core.config import TransformerConfig, preset
    from ..qwenimage_core.fp8 import FP8_DTYPES

    if cfg.model.path:
        config, sources = transformer_sources(cfg.model.path)
        if not isinstance(config, TransformerConfig):  # the plan counts the 20B MMDiT's blocks
            raise ConfigError(f"model.path: {cfg.model.path} is a Qwen-Image 2.1 DiT; training 2.1 is not in this "
                              f"version yet")
        stored_fp8 = any(f.dtype(k) in FP8_DTYPES for n, (f, k) in sources.items()
                         if n.startswith("transformer_blocks.") and n.endswith(".weight"))
    else:
        config, stored_fp8 = preset(cfg.model.preset, **cfg.model.preset_overrides), False
    area = max([s.area for s in cfg.stages if s.area] + [cfg.data.area])
    refs = cfg.data.ref_area // 256 if cfg.data.template != "t2i" else 0
    tokens = area // 256 + refs + (cfg.data.max_text_tokens or DEFAULT_TEXT_TOKENS)
    fp = footprint(config, cfg.lora.targets, cfg.lora.rank, getattr(torch, cfg.model.dtype), tokens,
                   cfg.data.batch_size, cfg.optimizer.eight_bit, stored_fp8)
    return make_plan(fp, t.vram_budget_gb, t.blocks_to_swap, t.fp8_base, cfg.model.gradient_checkpointing,
                     files_bytes(cfg.model.text_encoder) + files_bytes(cfg.model.vae))
