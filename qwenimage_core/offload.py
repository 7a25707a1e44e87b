"""Low-VRAM execution: block swapping for the MMDiT, and the placement a VRAM budget implies.

Block swap keeps the first `resident` transformer blocks (and everything outside the blocks) on the GPU and the
rest in pinned CPU memory. Before block i runs, its weights are already on their way: the copy of block i+1
is issued on a side CUDA stream while block i computes, and the compute stream waits on that copy's event only
when it reaches block i+1. After a streamed block has run, its modules hold their CPU tensors again; a GPU copy
is freed once nothing refers to it (autograd may, until the block's backward) and the compute stream is done
with it (`record_stream`). The weights are only read,
never written, so the CPU copy stays the canonical one and the output is bit-identical to the resident run.

Training (LoRA) streams the same way through the backward pass, with gradient checkpointing (`train=True`);
the gradients are bit-identical to the resident run's too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

GiB = 1024 ** 3


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class BlockSwap:
    """Stream `model.transformer_blocks[resident:]` to `device` one block ahead of the compute.

    A streamed block's parameters and buffers are swapped in and out as objects: loading puts a device copy in
    the module's slot, releasing puts the CPU one back. Autograd keeps a reference to the device copy it saved,
    so a release never changes a tensor the backward pass will read; the copy is freed when nothing needs it.

    `train=True` serves LoRA training: parameters that require grad stay on the device (the optimiser holds
    them), and the schedule runs both ways. The model must use gradient checkpointing (else the forward keeps
    every block's weights alive for the backward and nothing is saved): each block then runs forward once in the
    forward pass (blocks resident..N-1, prefetching i+1) and again, recomputed, in the backward pass (N-1 down
    to resident, prefetching i-1). The block at each turn stays: the last one for the backward, the first one
    for the next step's forward.

    Works on CPU too (then the "copies" are plain tensor copies on one device), which is how the tests check
    the bookkeeping: `max_loaded` records how many streamed blocks were ever on the device at once (at most 2:
    the one computing and the one prefetched); `moves` (with `trace=True`) lists every ("load"|"release", i)."""

    def __init__(self, model: nn.Module, resident: int, device, pin: bool = True, train: bool = False,
                 trace: bool = False):
        self.model, self.device, self.train = model, torch.device(device), train
        self.blocks = list(model.transformer_blocks)
        if not 0 <= resident <= len(self.blocks):
            raise ValueError(f"resident blocks {resident} must be in 0..{len(self.blocks)}")
        self.resident = resident
        self.cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        # everything but the streamed blocks' frozen tensors lives on the device
        streamed = range(resident, len(self.blocks))
        for i, block in enumerate(self.blocks):
            if i < resident:
                block.to(self.device)
        for name, child in model.named_children():
            if name != "transformer_blocks":
                child.to(self.device)
        for p in model._parameters.values():
            if p is not None:
                p.data = p.data.to(self.device)
        self.cpu = {}  # block index -> [(module, "_parameters" | "_buffers", name, CPU tensor)]
        for i in streamed:
            held = []
            for module in self.blocks[i].modules():
                for kind in ("_parameters", "_buffers"):
                    for name, t in getattr(module, kind).items():
                        if t is None:
                            continue
                        if train and kind == "_parameters" and t.requires_grad:
                            t.data = t.data.to(self.device)  # trainable: stays put, same object for the optimiser
                            continue
                        cpu = t.to("cpu") if t.device.type != "cpu" else t
                        if pin and self.cuda:
                            cpu = _like(t, cpu.pin_memory())
                        getattr(module, kind)[name] = cpu
                        held.append((module, kind, name, cpu))
            self.cpu[i] = held
        self.events, self.loaded, self.max_loaded = {}, set(), 0
        self.moves: list | None = [] if trace else None
        self.hooks = []
        for i in streamed:
            self.hooks.append(self.blocks[i].register_forward_pre_hook(self._before(i)))
            self.hooks.append(self.blocks[i].register_forward_hook(self._after(i)))

    # -- the two hooks ------------------------------------------------------------------------------------

    def _before(self, i):
        def hook(module, args):
            if i not in self.loaded:  # the first streamed block of a pass (nothing prefetched it)
                self._load(i)
            event = self.events.pop(i, None)
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            nxt = self._next(i)
            for j in list(self.loaded - {i, nxt}):  # left by a pass that stopped early (checkpoint's early stop)
                self._release(j)
            if nxt is not None and nxt not in self.loaded:
                self._load(nxt)  # overlaps with this block's compute
        return hook

    def _after(self, i):
        def hook(module, args, output):
            if self.train and torch.is_grad_enabled():
                last = len(self.blocks) - 1
                if i == (self.resident if _in_backward() else last):
                    return  # the block at the turn is the next one to run: it stays
            self._release(i)
        return hook

    def _next(self, i):
        if self.train and torch.is_grad_enabled():  # forward up to the last block, backward down to `resident`
            nxt = i - 1 if _in_backward() else i + 1
            return nxt if nxt in self.cpu else None
        nxt = i + 1 if i + 1 < len(self.blocks) else self.resident
        return nxt if nxt != i and nxt in self.cpu else None

    def _load(self, i):
        stream = self.copy_stream
        ctx = torch.cuda.stream(stream) if self.cuda else _null()
        with ctx:
            for module, kind, name, cpu in self.cpu[i]:
                getattr(module, kind)[name] = _like(cpu, cpu.to(self.device, non_blocking=True, copy=True))
            if self.cuda:
                ev = torch.cuda.Event()
                ev.record(stream)
                self.events[i] = ev
        self.loaded.add(i)
        self.max_loaded = max(self.max_loaded, len(self.loaded))
        if self.moves is not None:
            self.moves.append(("load", i))

    def _release(self, i):
        compute = torch.cuda.current_stream(self.device) if self.cuda else None
        for module, kind, name, cpu in self.cpu[i]:
            if self.cuda:
                getattr(module, kind)[name].record_stream(compute)  # freed only after the compute stream used it
            getattr(module, kind)[name] = cpu
        self.events.pop(i, None)
        self.loaded.discard(i)
        if self.moves is not None:
            self.moves.append(("release", i))

    def remove(self) -> None:
        """Stop streaming; streamed blocks stay on the CPU."""
        for h in self.hooks:
            h.remove()
        self.hooks = []
        for i in list(self.loaded):
            self._release(i)


def _like(template: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """`data` as the same kind of object as `template` (a frozen Parameter stays a Parameter)."""
    if isinstance(template, nn.Parameter):
        return nn.Parameter(data, requires_grad=False)
    return data


def _in_backward() -> bool:
    """True while the autograd engine runs (a checkpointed block recomputing its forward in the backward pass)."""
    return torch._C._current_graph_task_id() != -1


class _null:

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@dataclass
class VramPlan:
    """What a VRAM budget allows: how many transformer blocks stay on the GPU (None: all), and whether the text
    encoder and VAE leave the GPU between uses (always, under a budget)."""
    resident_blocks: int | None
    offload_components: bool
    text_encoder_streamed: bool
    detail: str


def plan_for_budget(transformer: nn.Module, text_encoder_bytes: int, budget_gb: float,
                    activations_gb: float = 2.5) -> VramPlan:
    """Resident blocks for a VRAM budget. Reserve: the non-block weights, `activations_gb` for activations and
    the attention workspace (about 2 GB at 1328x1328 in bf16 with CFG run as two passes), and two streamed
    blocks (the computing one and the prefetched one). The text encoder runs alone on the GPU before sampling;
    if it does not fit the budget either, its layers are streamed too (accelerate's cpu_offload)."""
    budget = budget_gb * GiB
    blocks = list(transformer.transformer_blocks)
    block = max(module_bytes(b) for b in blocks) if blocks else 0
    rest = module_bytes(transformer) - sum(module_bytes(b) for b in blocks)
    reserve = rest + activations_gb * GiB
    te_streamed = text_encoder_bytes + 1 * GiB > budget
    if reserve + sum(module_bytes(b) for b in blocks) <= budget:
        return VramPlan(None, True, te_streamed, f"transformer resident ({module_bytes(transformer) / GiB:.1f} GiB)")
    fit = int((budget - reserve - 2 * block) // block) if block else 0
    if fit < 0:
        raise ValueError(f"a VRAM budget of {budget_gb} GB cannot hold the transformer's non-block weights, two "
                         f"blocks and activations ({(reserve + 2 * block) / GiB:.1f} GiB); quantise to fp8 or "
                         f"raise the budget")
    fit = min(fit, len(blocks))
    return VramPlan(fit, True, te_streamed, f"{fit} of {len(blocks)} blocks resident, {len(blocks) - fit} streamed "
                                            f"({block / GiB:.2f} GiB each)")
