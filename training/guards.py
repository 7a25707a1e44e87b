"""Guards that stop a run with a clear message instead of training on, or writing, numbers that are not numbers:
a loss or gradient that stays non-finite, an update that blows the weights up, and non-finite weights about to
be checkpointed or exported."""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch


class TrainingStopped(RuntimeError):
    """The run was stopped on purpose; the message says why and what was (not) written."""


def nonfinite_tensor(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating tensor holding an inf or NaN, or None."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse to write `what` (a checkpoint, an export) when a tensor is not finite, naming the tensor."""
    name = nonfinite_tensor(tensors)
    if name is not None:
        bad = int((~torch.isfinite(tensors[name])).sum())
        raise TrainingStopped(f"not writing {what}: weight {name!r} has {bad} non-finite value(s) (the training "
                              "diverged; lower optimizer.lr or check the data); the previous checkpoint is intact")


class LossGuard:
    """Counts consecutive non-finite losses: a step with one is skipped (no weight update), and `limit` of them in
    a row stop the run, before the weights or the checkpoints are spoilt."""

    def __init__(self, limit: int):
        self.limit, self.bad = limit, 0

    def ok(self, loss: float, step: int, what: str = "loss") -> bool:
        """True: take the optimiser step. False: skip it. Raises TrainingStopped at the limit. `what`: the loss,
        or the gradient norm (a finite loss can still give an inf/NaN gradient)."""
        if math.isfinite(loss):
            self.bad = 0
            return True
        self.bad += 1
        if self.bad >= self.limit:
            raise TrainingStopped(f"the {what} was {loss} for {self.bad} step(s) in a row (up to step {step}); "
                                  f"stopping (train.max_nonfinite_steps = {self.limit}). Lower optimizer.lr, use "
                                  "bf16 rather than fp16, or check the data; checkpoints already written are intact")
        return False


EXPLODED = 10.0  # one optimiser step never multiplies the trained weights' norm by this much in a healthy run


def check_update(before: float, after: float, step: int, newest: Callable[[], str | None]) -> None:
    """Stop the run when optimiser step `step` made the trained weights non-finite, or multiplied their norm by
    more than EXPLODED (lr 1e30 gave finite weights of 1e30, which were saved, and keep_last then rotated the good
    checkpoints out). The step cannot be undone, so nothing after it may be written. `newest()`: the newest
    checkpoint on disk, named as intact (looked up only then)."""
    if math.isfinite(after) and after <= EXPLODED * before + 1e-6:
        return
    last = newest()
    kept = f"the newest checkpoint {last} is intact" if last else "no checkpoint was written"
    raise TrainingStopped(f"step {step} took the trained weights' norm from {before:.4g} to {after:.4g} (the "
                          f"training diverged; lower optimizer.lr or check the data); stopping before anything of "
                          f"it is saved; {kept}")
