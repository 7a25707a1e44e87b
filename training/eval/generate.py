"""Images for a suite's items through the core pipeline: batched, seeded, resumable, split over processes.

Image k of an item is images/<id>_<k>.png, sampled with seed `seed_base + item.seed + k` (one noise stream per
image, so the batch it shares does not change it). A file that exists is done: a rerun makes only the missing
ones, and a write is atomic (temporary file + rename), so an interrupted run never leaves half a picture under a
final name. Under `accelerate launch` every process takes the items i % world == rank; the main process waits for
the others, then scores."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from ...qwenimage_core.images import load_image, save_png
from .suites.base import EvalItem


@dataclass
class Settings:
    """How every image of a run is sampled (recorded in run.json; a resumed run must use the same)."""
    steps: int = 50
    cfg: float = 4.0
    width: int | None = None       # None: the suite's size (edits: their input's)
    height: int | None = None
    images_per_prompt: int | None = None   # None: the suite's (1 outside a suite)
    seed_base: int = 0
    negative_prompt: str | None = None
    shift: float | None = None
    sampler: str = "euler (flow matching)"

    def to_dict(self) -> dict:
        return asdict(self)


def image_path(item: EvalItem, k: int) -> str:
    """Relative to the run directory."""
    return f"images/{item.id}_{k}.png"


def image_seed(item: EvalItem, k: int, settings: Settings) -> int:
    return settings.seed_base + item.seed + k


def missing(items: Sequence[EvalItem], run_dir: str, settings: Settings) -> list[tuple[EvalItem, int]]:
    return [(it, k) for it in items for k in range(settings.images_per_prompt)
            if not os.path.isfile(os.path.join(run_dir, image_path(it, k)))]


def process_split() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, wait_for_everyone) under accelerate launch; (0, 1, no-op) in a plain process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # without cpu=True a GPU-less launch stays 1 process
    return state.process_index, state.num_processes, state.wait_for_everyone


def batches(jobs: list[tuple[EvalItem, int]], batch: int) -> list[list[tuple[EvalItem, int]]]:
    """Text-to-image jobs in groups of up to `batch`; an edit's images only with its own item's (the references
    are encoded once per call)."""
    out: list[list] = []
    for job in jobs:
        last = out[-1] if out else None
        joins = last is not None and len(last) < batch and (
            (not job[0].inputs and not last[0][0].inputs) or (bool(job[0].inputs) and last[0][0] is job[0]))
        if joins:
            last.append(job)
        else:
            out.append([job])
    return out


def generate(pipe, items: Sequence[EvalItem], run_dir: str, settings: Settings, batch: int = 1,
             rank: int = 0, world: int = 1, progress: bool = True) -> int:
    """Make this process's missing images; returns how many it made. `pipe` is a QwenImage (or a callable that
    returns one: it is called only when there is work, so a finished run never loads the model)."""
    if batch < 1:
        raise ValueError(f"batch {batch} must be positive")
    mine = [it for i, it in enumerate(items) if i % world == rank]
    jobs = missing(mine, run_dir, settings)
    if not jobs:
        return 0
    if callable(pipe) and not hasattr(pipe, "generate"):
        pipe = pipe()
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=f"generating (process {rank})" if world > 1 else "generating", unit="image",
               disable=not progress)
    made = 0
    for group in batches(jobs, batch):
        images = _sample(pipe, group, settings)
        for (item, k), im in zip(group, images):
            meta = {"id": item.id, "k": k, "prompt": item.prompt, "seed": image_seed(item, k, settings),
                    **{n: v for n, v in settings.to_dict().items() if n != "sampler"}}
            save_png(im, os.path.join(run_dir, image_path(item, k)), {"qwenimage": json.dumps(meta)})
            made += 1
        bar.update(len(group))
    bar.close()
    return made


def _sample(pipe, group: list[tuple[EvalItem, int]], s: Settings) -> list:
    item = group[0][0]
    seeds = [image_seed(it, k, s) for it, k in group]
    common = dict(negative_prompt=s.negative_prompt, width=s.width, height=s.height, steps=s.steps, cfg=s.cfg,
                  shift=s.shift, seed=seeds)
    if item.inputs:  # one edit, several seeds: its references are encoded once
        refs = [load_image(p, f"item {item.id}: input image") for p in item.inputs]
        return pipe.generate(item.prompt, references=refs, num_images=len(group), **common)
    return pipe.generate([it.prompt for it, _ in group], **common)
