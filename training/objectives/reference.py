"""The reference model of the RL objectives: the frozen model the policy is measured against (DPO's e_ref, GRPO's
KL). With LoRA it is the base itself with the adapters switched off, so no second copy is held; full fine-tuning
keeps a frozen copy of model.path, on the training device or on the CPU (its blocks streamed to the device one
ahead of the compute), optionally in fp8. Online mode refreshes it from the policy every N optimiser steps
(OnlineDPO); the refreshed weights travel in the checkpoint so a resumed run measures against the same model."""
from __future__ import annotations

import contextlib

import torch

from ...qwenimage_core.fp8 import FP8Linear, quantize
from ..config import trains_lora

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def adapter_layers(model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_off(model):
    """The model with its peft adapters disabled (the base), restored after, requires_grad flags included."""
    layers = adapter_layers(model)
    flags = {p: p.requires_grad for m in layers for p in m.parameters()}
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)
        for p, flag in flags.items():
            p.requires_grad_(flag)


class Reference:
    def __init__(self, cfg, device=None, unwrap=lambda m: m):
        r = cfg.reference
        self.lora, self.every, self.unwrap = trains_lora(cfg), r.refresh_every, unwrap
        self.snapshot: dict | None = None   # LoRA online: the adapters' weights at the last refresh
        self.refreshed = False              # full online: the copy holds a refreshed policy
        self.copy, self.swap, self.device = None, None, device
        if not self.lora:
            from ...qwenimage_core.checkpoint import load_transformer

            on_cpu = r.device == "cpu"
            self.copy = load_transformer(cfg.model.path, device="cpu" if on_cpu else device,
                                         dtype=DTYPES[cfg.model.dtype],
                                         weight_dtype=torch.float8_e4m3fn if r.fp8 else None)
            if on_cpu:
                self._stream()

    def _stream(self) -> None:
        from ...qwenimage_core.offload import BlockSwap

        self.swap = BlockSwap(self.copy, resident=0, device=self.device or "cpu")

    @contextlib.contextmanager
    def _writable(self):
        """The copy's own tensors to write into: streaming stopped (a prefetched block's slot holds a device copy
        that a release would drop), started again after."""
        if self.swap is not None:
            self.swap.remove()
        try:
            yield self.copy
        finally:
            if self.swap is not None:
                self._stream()

    # -- the reference forward ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def model(self, policy):
        """The reference as a module to call under torch.no_grad(). LoRA: the policy (unwrapped) with its adapters
        off, or with the snapshot's adapter weights swapped in; call it before the policy's own forward (the swap
        writes into the adapters in place)."""
        if not self.lora:
            yield self.copy
            return
        policy = self.unwrap(policy)
        if self.snapshot is None:
            with adapters_off(policy) as base:
                yield base
            return
        params = dict(policy.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.snapshot}
        with torch.no_grad():
            for n, t in self.snapshot.items():
                params[n].copy_(t)
        try:
            yield policy
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)

    # -- online refresh -----------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.every > 0 and step > 0 and step % self.every == 0

    @torch.no_grad()
    def refresh(self, policy) -> None:
        """Reference := the policy as it is now."""
        policy = self.unwrap(policy)
        if self.lora:
            self.snapshot = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
            return
        source = dict(policy.named_parameters()) | dict(policy.named_buffers())
        with self._writable():
            self._copy_from(source)
        self.refreshed = True

    def _copy_from(self, source: dict) -> None:
        for name, module in self.copy.named_modules():
            for leaf, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                full = f"{name}.{leaf}" if name else leaf
                if full not in source:
                    continue
                if isinstance(module, FP8Linear) and leaf == "weight":  # in place: BlockSwap holds these tensors
                    w, scale = quantize(source[full].detach(), t.dtype)
                    t.copy_(w)
                    module.weight_scale.copy_(scale)
                else:
                    t.copy_(source[full].detach().to(t.dtype))

    # -- checkpoints --------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The refreshed reference's tensors (nothing while it is still the starting model)."""
        if self.snapshot is not None:
            return {f"lora.{n}": t for n, t in self.snapshot.items()}
        if not self.refreshed:
            return {}
        out = {f"copy.{k}": v for k, v in self.copy.state_dict().items()}
        out.update({f"copy.{n}.weight_scale": m.weight_scale.reshape(1) for n, m in self.copy.named_modules()
                    if isinstance(m, FP8Linear)})
        return out

    @torch.no_grad()
    def load_state_dict(self, tensors: dict) -> None:
        lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
        copy = {k[5:]: v for k, v in tensors.items() if k.startswith("copy.")}
        if lora:
            self.snapshot = {n: t.clone() for n, t in lora.items()}
        if copy:
            with self._writable():
                self._load_copy(copy)
            self.refreshed = True

    def _load_copy(self, copy: dict) -> None:
        mods = dict(self.copy.named_modules())
        for k, v in copy.items():
            if k.endswith(".weight_scale"):  # not in state_dict (a non-persistent buffer)
                mods[k[: -len(".weight_scale")]].weight_scale.copy_(v.reshape(()))
        for k, t in self.copy.state_dict(keep_vars=True).items():
            t.copy_(copy[k])
