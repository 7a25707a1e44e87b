"""DPO on preference pairs that prefer one colour, measured by how far it moves the samples of held-out prompts.

    python bench/bench_dpo.py --threads 1                          # the shipped demo model, DPO's defaults
    python bench/bench_dpo.py --threads 1 --set dpo.sft=0          # plain DPO: the background drifts
    python bench/bench_dpo.py --threads 1 --set dpo.sft=0 dpo.beta=100   # Flow-DPO: saturates in 3 steps

It writes 24 pairs of 64 px pictures: a shape on a plain background, the chosen one blue and the rejected one red,
same shape, place and prompt ("a circle on a white background": the prompt names no colour). It trains a LoRA
through the public trainer (`train.mode = "dpo"`) with the defaults (`[dpo]`, `[objective]`, `[lora]`) at the demo
model's learning rate (1e-3, the one it was pretrained with; the trainer's 1e-4 is for the 20B model) and samples
fixed seeds of 6 held-out prompts (the shapes on backgrounds no pair has, gray and green; a shorter phrasing, "a
circle on gray", was dropped: the base draws no shape for it, so it only turns bluer by tinting the whole image)
with the adapters off (the base) and on. Blueness of an image: the mean over its pixels of (B - (R + G) / 2) / 255
(a blue shape on white about +0.2, a red one about -0.1, gray 0). Reported: the held-out change per prompt (mean
over seeds, same seeds before and after), its mean with the standard error over prompts, the number of prompts that
moved up, the same on the pairs' own prompts, the loss over the steps, and how much the background moved (the mean
absolute change of the corner pixels, where no shape is drawn: DPO alone can tint it)."""
import argparse
import json
import math
import os
import random
import tempfile
import time

import numpy as np
import torch

from _common import add_demo_model_args, command, machine

from qwenimage.qwenimage_core import QwenImage
from qwenimage.training.config import load_config
from qwenimage.training.data.demo_shapes import draw_demo_shape
from qwenimage.training.objectives.reference import adapters_off
from qwenimage.training.trainer import Trainer

SHAPES = ("square", "circle", "triangle")
TRAIN_BACKGROUNDS = ("white", "black")
HELDOUT_BACKGROUNDS = ("gray", "green")


def caption(shape: str, background: str) -> str:
    return f"a {shape} on a {background} background"


def write_pairs(folder: str, n: int, seed: int, chosen="blue", rejected="red") -> str:
    """n pairs over the training prompts (shape x background), chosen and rejected drawn from one geometry."""
    rng, rows = random.Random(seed), []
    prompts = [(s, b) for s in SHAPES for b in TRAIN_BACKGROUNDS]
    for i in range(n):
        shape, bg = prompts[i % len(prompts)]
        state = rng.getstate()
        names = []
        for colour in (chosen, rejected):
            rng.setstate(state)  # the same size and place for both
            name = f"{i:03d}-{colour}.png"
            draw_demo_shape(shape, colour, bg, 64, rng).save(os.path.join(folder, name))
            names.append(name)
        rows.append({"prompt": caption(shape, bg), "chosen": names[0], "rejected": names[1]})
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pixels(pipe, prompts, seeds, steps) -> np.ndarray:
    """[prompts, seeds, 64, 64, 3] fixed-seed samples in [0, 1]."""
    flat = [p for p in prompts for _ in seeds]
    images = pipe.generate(flat, width=64, height=64, steps=steps, cfg=1.0, seed=list(seeds) * len(prompts))
    a = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images])
    return a.reshape(len(prompts), len(seeds), *a.shape[1:])


def blueness(a: np.ndarray) -> np.ndarray:
    """Per prompt, mean over its seeds."""
    return (a[..., 2] - (a[..., 0] + a[..., 1]) / 2).mean(axis=(1, 2, 3))


def corners(a: np.ndarray) -> np.ndarray:
    """The four 8 x 8 corner patches (background: shapes are drawn near the centre)."""
    return np.concatenate([a[..., :8, :8, :], a[..., :8, -8:, :], a[..., -8:, :8, :], a[..., -8:, -8:, :]], -2)


def change(pipe, model, prompts, seeds, steps) -> tuple[np.ndarray, np.ndarray, float]:
    """(base, tuned) blueness per prompt and the mean absolute change of the corner pixels (0-255 scale)."""
    model.eval()
    with torch.no_grad():
        tuned = pixels(pipe, prompts, seeds, steps)
        with adapters_off(model):
            base = pixels(pipe, prompts, seeds, steps)
    return blueness(base), blueness(tuned), float(np.abs(corners(tuned) - corners(base)).mean() * 255)


def summary(base, tuned, background) -> str:
    d = tuned - base
    se = d.std(ddof=1) / math.sqrt(len(d))
    return (f"{base.mean():+.3f} -> {tuned.mean():+.3f}: change {d.mean():+.3f} +- {se:.3f} "
            f"({d.mean() / se:.1f} standard errors over {len(d)} prompts), {(d > 0).sum()}/{len(d)} prompts up "
            f"(per prompt: {' '.join(f'{x:+.2f}' for x in d)}); background (corners) changed by {background:.1f}/255")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_model_args(p)
    p.add_argument("--pairs", type=int, default=24)
    p.add_argument("--steps", type=int, default=60, help="optimiser steps")
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, default=4, help="samples per held-out prompt")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides (JSON values), e.g. dpo.beta=500 optimizer.lr=1e-3")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    work = tempfile.mkdtemp(prefix="bench_dpo_")
    pairs = write_pairs(work, a.pairs, seed=0)
    raw = {
        "model": {"path": a.model, "text_encoder": a.text_encoder, "vae": a.vae, "dtype": "float32"},
        "data": {"path": pairs, "area": 64 * 64, "batch_size": a.batch},
        "train": {"mode": "dpo", "steps": a.steps},
        "optimizer": {"lr": a.lr},
        "output": {"dir": os.path.join(work, "out"), "save_every": 100000},
        "logging": {"tensorboard": False, "progress": False},
    }
    for item in a.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        raw.setdefault(section, {})[name] = value
    trainer = Trainer(load_config(raw))
    t0 = time.perf_counter()
    result = trainer.run()
    train_s = time.perf_counter() - t0
    pipe, model, seeds = QwenImage(trainer.unwrapped, *trainer.encoders.get()), trainer.unwrapped, range(a.seeds)
    heldout = [caption(s, b) for s in SHAPES for b in HELDOUT_BACKGROUNDS]
    own = sorted({caption(s, b) for s in SHAPES for b in TRAIN_BACKGROUNDS})
    losses = result["losses"]
    marks = sorted({0, 1, 2, 4, 9, len(losses) // 2, len(losses) - 1} & set(range(len(losses))))
    print(f"command: {command()}")
    print(f"machine: {machine()}")
    print(f"{a.pairs} pairs (blue chosen over red), {a.steps} steps of {a.batch} pairs at lr {a.lr:g}, training "
          f"{train_s:.1f} s; dpo.beta {trainer.cfg.dpo.beta:g}; settings: {', '.join(a.set) or 'defaults'}")
    print("loss at step " + ", ".join(f"{i + 1}: {losses[i]:.3f}" for i in marks))
    for name, prompts in (("held-out prompts", heldout), ("the pairs' own prompts", own)):
        print(f"{name} x {a.seeds} seeds: blueness {summary(*change(pipe, model, prompts, seeds, a.sample_steps))}")


if __name__ == "__main__":
    main()
