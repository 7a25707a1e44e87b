"""The objective interface. An objective maps (model, batch, generators) to a per-sample loss; the engine
reduces, scales and backpropagates it and takes the model's optimiser step. An objective that trains something
of its own (a GAN's discriminator) does so in its hooks, so the engine stays one loop for every objective.

Randomness comes from one generator per sample (seeded by the run's seed, the step and the sample's index), so
the noise a sample sees does not depend on the batch it lands in or the process that draws it: a 2-process run
then reproduces a 1-process run with the same global batch, and a resumed run the uninterrupted one."""
from __future__ import annotations

import torch


class Objective:
    def loss(self, model, batch: dict, generators: list[torch.Generator]) -> tuple[torch.Tensor, dict]:
        """Per-sample losses [B] and scalars to log."""
        raise NotImplementedError

    def begin_step(self, step: int) -> None:
        """Called before the micro-batches of optimiser step `step` (0-based)."""

    def end_step(self, applied: bool) -> None:
        """Called after the model's optimiser step (`applied` False: skipped for a non-finite loss)."""

    def state_dict(self) -> dict:
        """{"weights": {name: tensor}, "optimizer": state} of what the objective trains itself; {} for none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() gave (resume)."""
