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
from safetensors.torch import load_file

from ..qwenimage_core.weights import save_file_atomic

PATTERN = re.compile(r"^step-(\d{8})$")


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
                    state: dict, keep_last: int) -> str:
    """Write checkpoint `step` under root/step-XXXXXXXX atomically; prune to the last `keep_last`."""
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a previous interrupted save
    os.makedirs(tmp)
    try:
        save_file_atomic({k: v.detach().contiguous().cpu() for k, v in weights.items()},
                         os.path.join(tmp, "weights.safetensors"))
        if ema is not None:
            save_file_atomic({k: v.contiguous().cpu() for k, v in ema.items()}, os.path.join(tmp, "ema.safetensors"))
        torch.save({"optimizer": optimizer, "scheduler": scheduler}, os.path.join(tmp, "optimizer.pt"))
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as fh:
            json.dump({**state, "rng": _rng_state()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if os.path.isdir(final):  # re-saving the same step (a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path) -> dict:
    """-> dict(weights, ema (or None), optimizer, scheduler, state); RNG states are restored here."""
    need = ("weights.safetensors", "optimizer.pt", "state.json")
    missing = [n for n in need if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise FileNotFoundError(f"{path}: not a complete checkpoint (missing {', '.join(missing)})")
    with open(os.path.join(path, "state.json"), encoding="utf-8") as fh:
        state = json.load(fh)
    opt = torch.load(os.path.join(path, "optimizer.pt"), weights_only=True)
    ema_path = os.path.join(path, "ema.safetensors")
    _set_rng_state(state.pop("rng"))
    return {"weights": load_file(os.path.join(path, "weights.safetensors")),
            "ema": load_file(ema_path) if os.path.isfile(ema_path) else None,
            "optimizer": opt["optimizer"], "scheduler": opt["scheduler"], "state": state}


def resolve_resume(resume, root) -> str | None:
    """'auto' -> the newest complete checkpoint under root (None if there is none); a path -> itself."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(root)
        return found[-1] if found else None
    return resume
