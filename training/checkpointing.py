"""Training checkpoints: a directory per save, written whole under a temporary name and renamed into place, so a
full disk or a killed process never leaves a half-written checkpoint where the last good one was. The last N
are kept; resume restores the trainable weights, optimiser, LR schedule, EMA, RNG states and data position.

Weights and EMA are safetensors; the optimiser and scheduler states are plain tensors and numbers, read back with
`torch.load(weights_only=True)`; everything else is JSON."""
from __future__ import annotations

import json
import os
import random
import re
import shutil

import numpy as np
import torch
from safetensors import SafetensorError

from ..qwenimage_core.weights import CheckpointError, SafetensorsFile, save_file_atomic
from .guards import check_finite

PATTERN = re.compile(r"^step-(\d{8})$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, usually); says which file, and what is still intact."""


def _rng_state() -> dict:
    py = random.getstate()
    return {"torch": torch.get_rng_state().tolist(), "python": [py[0], list(py[1]), py[2]],
            "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()]}


def _set_rng_state(d: dict) -> None:
    torch.set_rng_state(torch.tensor(d["torch"], dtype=torch.uint8))
    random.setstate((d["python"][0], tuple(d["python"][1]), d["python"][2]))
    n = d["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def list_checkpoints(root) -> list[str]:
    """Complete checkpoints under root, oldest first (temporary folders of an interrupted save are not listed)."""
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, n) for n in sorted(os.listdir(root)) if PATTERN.match(n)]


def save_checkpoint(root, step: int, *, weights: dict, optimizer: dict, scheduler: dict, ema: dict | None,
                    state: dict, keep_last: int, objective: dict | None = None) -> str:
    """Write checkpoint `step` under root/step-XXXXXXXX atomically; prune to the last `keep_last`. Non-finite
    weights are refused (naming the tensor) before anything is written. `objective`: what the objective trains
    itself ({"weights": ..., "optimizer": ...}, a GAN's discriminator), in objective.safetensors and optimizer.pt."""
    final = os.path.join(root, f"step-{step:08d}")
    check_finite(weights, f"checkpoint {final}")
    if ema is not None:
        check_finite(ema, f"checkpoint {final} (EMA)")
    previous = list_checkpoints(root)
    intact = (f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists")

    def write(name, fn):
        path = os.path.join(tmp, name)
        try:
            fn(path)
        except (OSError, RuntimeError, SafetensorError) as e:  # torch.save says only "basic_ios::clear: iostream error"
            raise CheckpointWriteError(f"could not write {path} ({e}); {intact}. Free some disk space and resume "
                                       "with --resume auto") from e

    def write_json(path):
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({**state, "rng": _rng_state()}, fh)
            fh.flush()
            os.fsync(fh.fileno())

    tmp = final + ".tmp"
    try:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a previous interrupted save
        os.makedirs(tmp)
    except OSError as e:
        raise CheckpointWriteError(f"could not create {tmp} ({e}); {intact}") from e
    try:
        write("weights.safetensors", lambda p: save_file_atomic(
            {k: v.detach().contiguous().cpu() for k, v in weights.items()}, p))
        if ema is not None:
            write("ema.safetensors", lambda p: save_file_atomic({k: v.contiguous().cpu() for k, v in ema.items()}, p))
        if objective:
            write("objective.safetensors", lambda p: save_file_atomic(
                {k: v.detach().contiguous().cpu() for k, v in objective["weights"].items()}, p))
        write("optimizer.pt", lambda p: torch.save({"optimizer": optimizer, "scheduler": scheduler,
                                                    "objective": (objective or {}).get("optimizer")}, p))
        write("state.json", write_json)
        if os.path.isdir(final):  # re-saving the same step (a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_tensors(path) -> dict:
    f = SafetensorsFile(path)  # header checked; errors name the file
    try:
        return {k: f.get(k).clone() for k in f.keys()}
    finally:
        f.close()


def load_checkpoint(path) -> dict:
    """-> dict(weights, ema (or None), optimizer, scheduler, state, objective (or None)); RNG states are restored
    here."""
    need = ("weights.safetensors", "optimizer.pt", "state.json")
    missing = [n for n in need if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise FileNotFoundError(f"{path}: not a complete checkpoint (missing {', '.join(missing)})")
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{os.path.join(path, 'state.json')}: not valid JSON ({e})") from None
    try:
        opt = torch.load(os.path.join(path, "optimizer.pt"), weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError... for a damaged file
        raise CheckpointError(f"{os.path.join(path, 'optimizer.pt')}: cannot be read ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    ema_path = os.path.join(path, "ema.safetensors")
    weights = _read_tensors(os.path.join(path, "weights.safetensors"))
    ema = _read_tensors(ema_path) if os.path.isfile(ema_path) else None
    obj_path = os.path.join(path, "objective.safetensors")
    objective = ({"weights": _read_tensors(obj_path), "optimizer": opt.get("objective")}
                 if os.path.isfile(obj_path) else None)
    _set_rng_state(state.pop("rng"))
    return {"weights": weights, "ema": ema, "optimizer": opt["optimizer"], "scheduler": opt["scheduler"],
            "state": state, "objective": objective}


def resolve_resume(resume, root) -> str | None:
    """'auto' -> the newest complete checkpoint under root (None if there is none); a path -> itself."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(root)
        return found[-1] if found else None
    return resume
