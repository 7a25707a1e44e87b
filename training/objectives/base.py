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

    # Online objectives (RL on the policy's own samples, objectives/rollout.py) make their data; the rest use the
    # engine's cached dataset and these defaults.
    def data(self, cfg, stage, encoders, accelerator):
        """(dataset, sampler) for a stage when the objective makes its own data; None: the engine's data."""
        return None

    def micro_batches(self, grad_accum: int) -> int:
        """Micro-batches per optimiser step (RL also accumulates over each sample's trained timesteps)."""
        return grad_accum

    def collect(self, model, step: int) -> None:
        """Called before optimiser step `step` with the policy: online objectives sample and score fresh rollouts
        when the last ones are spent."""

    def state_dict(self) -> dict:
        """{"weights": {name: tensor}, "optimizer": state} of what the objective trains itself; {} for none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict() gave (resume)."""
