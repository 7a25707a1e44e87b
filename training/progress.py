"""What a run shows and keeps of itself: one row per optimiser step (and per validation) in
`output.dir/metrics.jsonl`, always, whatever is installed (TensorBoard logs come on top, from the trainer); the
progress bar's figures (the loss for supervised modes; for RL the rollouts' reward, KL and clip fraction, since
GRPO's loss is ~0 on-policy and says nothing); one line per RL iteration; and the trainer's info lines on the
console for `qwenimage train`."""
from __future__ import annotations

import json
import logging
import math
import os
import sys

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"
LOGGER = "qwenimage.training"


def _plain(value):
    """A JSON value: floats that are not finite (a skipped step's NaN loss) as null, tensors as numbers."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """output.dir/metrics.jsonl: {"step": N, name: value, ...} a line, appended as the run goes. A resumed run
    first drops the rows after its checkpoint's step, which it is about to write again."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, METRICS_FILE)

    def resume_at(self, step: int) -> None:
        from ..qwenimage_core.images import write_atomic

        if not os.path.isfile(self.path):
            return
        with open(self.path, encoding="utf-8") as fh:
            rows = [line for line in fh if line.strip()]
        keep = []
        for line in rows:
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, AttributeError):  # a line cut by a killed process
                continue
        if len(keep) != len(rows):
            write_atomic(self.path, "".join(keep))

    def write(self, step: int, values: dict) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        row = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def reward_summary(stats: dict) -> str:
    """'reward mean 0.4123, std 0.0213, min 0.3800, max 0.4500' of an iteration's rollouts."""
    parts = [f"{name} {stats[key]:.4f}" for key, name in (("reward", "mean"), ("reward_std", "std"),
                                                          ("reward_min", "min"), ("reward_max", "max"))
             if key in stats]
    return "reward " + ", ".join(parts)


def postfix(record: dict, show_loss: bool) -> dict:
    """The progress bar's figures for one step's record (loss, lr and the objective's scalars)."""
    out = {}
    if "reward" in record:  # online RL: the rollouts' reward, and the policy's drift from them and the reference
        out["reward"] = f"{record['reward']:.4f}"
        if "reward_std" in record:
            out["std"] = f"{record['reward_std']:.3f}"
        if "reward_min" in record and "reward_max" in record:
            out["range"] = f"[{record['reward_min']:.3f}, {record['reward_max']:.3f}]"
        for key, name in (("kl", "kl"), ("clip_frac", "clip")):
            if key in record:
                out[name] = f"{record[key]:.4g}"
    if show_loss:
        out["loss"] = f"{record['loss']:.4f}"
    return out


class IterationLine:
    """RL: the figures of one iteration's optimiser steps (KL and clip fraction averaged over them), said in one
    line when the iteration's last step is taken."""

    AVERAGED = ("kl", "clip_frac", "ratio_dev", "loss")

    def __init__(self):
        self.sums, self.n = {}, 0

    def add(self, record: dict) -> None:
        for k in self.AVERAGED:
            if k in record and record[k] is not None and math.isfinite(record[k]):
                self.sums[k] = self.sums.get(k, 0.0) + record[k]
        self.n += 1

    def close(self, record: dict, first_step: int, last_step: int, show_loss: bool) -> str:
        mean = {k: v / max(1, self.n) for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        steps = f"step {last_step}" if first_step == last_step else f"steps {first_step}-{last_step}"
        line = f"iteration {record.get('iteration', '?')} ({steps}): {reward_summary(record)}"
        if "kl" in mean:
            line += f"; KL {mean['kl']:.4g}"
        if "clip_frac" in mean:
            line += f"; clip fraction {mean['clip_frac']:.3f}"
        if show_loss and "loss" in mean:
            line += f"; loss {mean['loss']:.4f}"
        return line


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001  (logging must never stop a run)
            self.handleError(record)


def console_logging() -> None:
    """`qwenimage train`: the trainer's info lines (RL iterations, held-out reward, evaluation) on the console,
    written around the progress bar. Only the main process speaks (accelerate launch sets RANK)."""
    logger = logging.getLogger(LOGGER)
    if os.environ.get("RANK", "0") != "0" or any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        return
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
