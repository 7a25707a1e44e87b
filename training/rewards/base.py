"""The one scorer interface that RL rewards and evaluation share: (images, prompts, metadata) -> one float per
image. A reward is a scorer used for training; an evaluation metric is a scorer used for measuring; a plugin
written for one works as the other.

Scorers are found by name in one registry (`register`, `build`), or given as `module:function` (any callable
with the same signature; the module installed, or a file in the training config's folder or the working folder),
and combined by `WeightedSum`. Every call goes through `score`, which checks what came
back, so a broken plugin stops a run with its name instead of training on garbage."""
from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Callable, Mapping, Sequence

from PIL import Image

ScoreFn = Callable[[Sequence[Image.Image], Sequence[str], Sequence[Mapping]], Sequence[float]]
REGISTRY: dict[str, Callable[..., ScoreFn]] = {}


class RewardError(RuntimeError):
    """A scorer failed, returned the wrong number of scores, or a non-finite one. Names the scorer."""


def register(name: str):
    """Decorator: `@register("jpeg_compressibility")` on a factory `(**options) -> ScoreFn` (a class works)."""
    def deco(factory):
        if name in REGISTRY and REGISTRY[name] is not factory:
            raise ValueError(f"scorer {name!r} is registered twice")
        REGISTRY[name] = factory
        return factory
    return deco


PLUGIN_FOLDERS: list[str] = []  # the training config's folder (the trainer adds it); the working folder is implied


def plugin_folders() -> list[str]:
    return list(dict.fromkeys([*PLUGIN_FOLDERS, os.getcwd()]))


def add_plugin_folder(folder: str) -> None:
    """Let `module:function` scorers be found in `folder` (a config's own folder) too."""
    folder = os.path.abspath(folder)
    if folder not in PLUGIN_FOLDERS:
        PLUGIN_FOLDERS.append(folder)


def import_plugin(module: str):
    """A plugin module: installed (or on PYTHONPATH), else a `module.py` or `module/` package in one of the plugin
    folders (the config's folder, then the working folder), whose folder then joins sys.path as PYTHONPATH would,
    so the plugin's own imports of its neighbours work."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name != top:  # the plugin was found, but something it imports was not: that error is the one to see
            raise
        for folder in plugin_folders():
            if os.path.isfile(os.path.join(folder, top + ".py")) or os.path.isfile(
                    os.path.join(folder, top, "__init__.py")):
                if folder not in sys.path:
                    sys.path.append(folder)
                importlib.invalidate_caches()
                return importlib.import_module(module)
        raise


def build(spec: str | Mapping) -> tuple[str, ScoreFn]:
    """A scorer from a name, `module:function`, or a table {"name" = ..., options...} -> (name, fn)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    spec.pop("weight", None)
    if not name:
        raise ValueError(f"scorer spec {spec!r}: needs a name (one of {', '.join(sorted(REGISTRY))}, or module:function)")
    if name in REGISTRY:
        try:
            return name, REGISTRY[name](**spec)
        except (TypeError, ImportError) as e:  # an unknown option, a missing extra: a config error, named
            raise ValueError(f"scorer {name!r}: {e}") from e
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(import_plugin(module), attr)
        except (ImportError, AttributeError) as e:
            where = ", ".join(plugin_folders())
            raise ValueError(f"scorer {name!r}: cannot import it ({e}; looked in the installed modules and in "
                             f"{where})") from None
        return name, (fn(**spec) if spec else fn)
    raise ValueError(f"unknown scorer {name!r} (known: {', '.join(sorted(REGISTRY))}, or module:function)")


def score(name: str, fn: ScoreFn, images, prompts, metadata=None) -> list[float]:
    """Call a scorer and check its answer: one finite float per image, or a RewardError naming it."""
    metadata = list(metadata) if metadata is not None else [{} for _ in images]
    if not len(images) == len(prompts) == len(metadata):
        raise ValueError(f"scorer {name!r}: {len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata")
    try:
        out = fn(list(images), list(prompts), metadata)
    except RewardError:
        raise
    except Exception as e:  # a plugin's own failure: stop with its name, keep the cause
        raise RewardError(f"scorer {name!r} failed: {type(e).__name__}: {e}") from e
    try:
        values = [float(v) for v in (out.tolist() if hasattr(out, "tolist") else out)]
    except (TypeError, ValueError) as e:
        raise RewardError(f"scorer {name!r} returned {type(out).__name__}, not a list of numbers ({e})") from None
    if len(values) != len(images):
        raise RewardError(f"scorer {name!r} returned {len(values)} scores for {len(images)} images")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise RewardError(f"scorer {name!r} returned a non-finite score for image {bad[0]} ({values[bad[0]]})")
    return values


class WeightedSum:
    """Several scorers, each with a weight: the total is sum(weight * score); `details` keeps each one's scores
    (logged by RL, reported by evaluation)."""

    def __init__(self, specs: Sequence[str | Mapping]):
        if not specs:
            raise ValueError("no scorers given")
        self.parts = []
        for s in specs:
            weight = float(s.get("weight", 1.0)) if isinstance(s, Mapping) else 1.0
            name, fn = build(s)
            self.parts.append((name, weight, fn))
        self.details: dict[str, list[float]] = {}

    def __call__(self, images, prompts, metadata=None) -> list[float]:
        total = [0.0] * len(images)
        self.details = {}
        for name, weight, fn in self.parts:
            values = score(name, fn, images, prompts, metadata)
            self.details[name] = values
            total = [t + weight * v for t, v in zip(total, values)]
        return total


def metrics(name: str, fn: ScoreFn, images, prompts, metadata=None) -> dict[str, list[float | None]]:
    """Evaluation's call: {metric: one value per image}. A scorer with a `metrics(images, prompts, metadata)` method
    reports several named metrics at once (OCR: word accuracy, edit distance, character accuracy), where None is a
    failure recorded for that image (a judge that never gave a valid answer); its `__call__` stays the one reward
    value. Any other scorer gives {name: score(...)}."""
    many = getattr(fn, "metrics", None)
    if many is None:
        return {name: score(name, fn, images, prompts, metadata)}
    metadata = list(metadata) if metadata is not None else [{} for _ in images]
    try:
        out = dict(many(list(images), list(prompts), metadata))
    except Exception as e:
        raise RewardError(f"scorer {name!r} failed: {type(e).__name__}: {e}") from e
    for metric, values in out.items():
        values = list(values)
        if len(values) != len(images):
            raise RewardError(f"scorer {name!r}: metric {metric!r} has {len(values)} values for {len(images)} images")
        if any(v is not None and not math.isfinite(float(v)) for v in values):
            raise RewardError(f"scorer {name!r}: metric {metric!r} has a non-finite value")
        out[metric] = [None if v is None else float(v) for v in values]
    return out
