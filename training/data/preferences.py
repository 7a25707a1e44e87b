"""Preference data for DPO: JSONL rows of pairs or of scored groups, validated up front like SFT data.

    {"prompt": "...", "chosen": "a.png", "rejected": "b.png"}                    a pair
    {"prompt": "...", "chosen": "a.png", "rejected": "b.png", "references": ["r.png"]}   an edit pair
    {"prompt": "...", "images": ["a.png", "b.png", "c.png"], "scores": [0.9, 0.1, 0.5]}  a group -> (best, worst)

A group gives one pair, its highest- and lowest-scored images (Flow-DPO's argmax / argmin per prompt). Relative
paths resolve against the file's folder. Both images of a pair must fall in the same bucket: they are noised with
the same noise, so their latents must have the same shape. Each side becomes an ordinary `Sample`, so the pairs
are cached by the SFT cache (training/data/cache.py) and read back from it."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass

import torch

from .cache import collate
from .dataset import MAX_REFERENCES, DataError, Sample, _validate, settle_problems

log = logging.getLogger("qwenimage.training")


@dataclass(frozen=True)
class Pair:
    chosen: Sample
    rejected: Sample


def load_pairs(path, *, on_error: str = "skip", min_size: int = 64, bucket=None, base_dir=None) -> list[Pair]:
    """Read and validate a preference file -> list[Pair], in file order. on_error "skip" logs each bad row and
    leaves it out; "error" raises one DataError naming every bad row ("file:line: field: problem").
    bucket: (width, height) -> bucket size; pairs whose two images land in different buckets are refused."""
    if on_error not in ("skip", "error"):
        raise ValueError(f"on_error must be 'skip' or 'error', not {on_error!r}")
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise DataError(f"preference file not found: {path}")
    base = os.path.abspath(base_dir or os.path.dirname(path))
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: empty file: no preference rows (expected JSONL rows with prompt + chosen/rejected "
                        "or prompt + images/scores)")
    pairs, problems = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        pair, problem = _row_pair(line, f"{path}:{n}", base, min_size, bucket)
        if problem:
            problems.append(problem)
        else:
            pairs.append(pair)
    settle_problems(problems, path, on_error, "preference row")
    if not pairs:
        raise DataError(f"no usable preference pairs in {path} ({len(problems)} row(s) skipped)")
    return pairs


def _row_pair(line: str, where: str, base: str, min_size: int, bucket):
    """(Pair, None) or (None, 'where: field: problem')."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"{where}: json: not valid JSON ({e.msg} at column {e.colno})"
    problem = _check_types(row)
    if problem:
        return None, f"{where}: {problem}"
    refs = [os.path.normpath(os.path.join(base, r)) for r in row.get("references", [])]
    if "images" in row:
        names = [f"images[{k}]" for k in range(len(row["images"]))]
        paths = row["images"]
        best = max(range(len(paths)), key=lambda k: row["scores"][k])
        worst = min(range(len(paths)), key=lambda k: row["scores"][k])
        if row["scores"][best] == row["scores"][worst]:
            return None, f"{where}: scores: all equal ({row['scores'][best]}), no preference"
    else:
        names, paths, best, worst = ["chosen", "rejected"], [row["chosen"], row["rejected"]], 0, 1
    samples = []
    for name, p in zip(names, paths):  # every image is checked, so a broken file is named even if unused
        sample, problem = _validate({"image": os.path.normpath(os.path.join(base, p)), "caption": row["prompt"],
                                     "references": refs}, f"{where}: {name}", min_size)
        if problem:
            return None, problem
        samples.append(sample)
    chosen, rejected = samples[best], samples[worst]
    if bucket is not None and bucket(chosen.width, chosen.height) != bucket(rejected.width, rejected.height):
        return None, (f"{where}: {names[worst]}: {rejected.width}x{rejected.height} falls in another bucket than "
                      f"{names[best]}'s {chosen.width}x{chosen.height} (a pair shares its noise: same aspect needed)")
    return Pair(chosen, rejected), None


def _check_types(row) -> str | None:
    if not isinstance(row, dict):
        return f"json: expected an object, got {type(row).__name__}"
    if not isinstance(row.get("prompt", ""), str):
        return f"prompt: expected a string, got {type(row['prompt']).__name__}"
    if not row.get("prompt", "").strip():
        return "prompt: missing or empty"
    if "images" in row or "scores" in row:
        images, scores = row.get("images"), row.get("scores")
        if not isinstance(images, list) or len(images) < 2 or not all(isinstance(p, str) and p for p in images):
            return f"images: expected a list of at least 2 path strings, got {images!r}"
        if (not isinstance(scores, list) or len(scores) != len(images)
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                           for s in scores)):
            return f"scores: expected {len(images)} finite numbers (one per image), got {scores!r}"
    else:
        for name in ("chosen", "rejected"):
            if not isinstance(row.get(name), str) or not row[name]:
                return f"{name}: expected a path string, got {row.get(name)!r}"
    refs = row.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        return f"references: expected a list of path strings, got {refs!r}"
    if "references" in row and not 1 <= len(refs) <= MAX_REFERENCES:
        return f"references: expected 1 to {MAX_REFERENCES} paths, got {len(refs)}"
    return None


def pair_samples(pairs: list[Pair]) -> list[Sample]:
    """The samples to cache: every pair's chosen and rejected image (each with the pair's prompt)."""
    return [s for p in pairs for s in (p.chosen, p.rejected)]


class PairDataset:
    """Pairs read from a CachedDataset of `pair_samples(pairs)`: `sizes[i]` is pair i's bucket, `batch(idx, gens)`
    the engine's batch: the chosen images' latents, text states and references as collate gives them, and the
    rejected images' latents under "rejected" (same prompt, so the same text states)."""

    def __init__(self, cached, pairs: list[Pair]):
        where = {s: i for i, s in enumerate(cached.samples)}
        kept = [(where[p.chosen], where[p.rejected]) for p in pairs if p.chosen in where and p.rejected in where]
        if len(kept) < len(pairs):  # an image the cache build could not decode (on_error = "skip")
            log.warning("left out %d preference pair(s) with an image that could not be cached", len(pairs) - len(kept))
        if not kept:
            raise DataError(f"no usable preference pairs in the cache {cached.cache_dir}")
        self.cached, self.index = cached, kept
        self.sizes = [cached.sizes[w] for w, _ in kept]

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, idx, generators=None) -> dict:
        chosen = collate([self.cached[self.index[i][0]] for i in idx])
        rejected = torch.stack([self.cached[self.index[i][1]]["latents"] for i in idx])
        return {**chosen, "rejected": rejected, "index": torch.tensor(list(idx), dtype=torch.long)}


def as_pairs(samples: list[Sample]) -> list[Pair]:
    """The inverse of pair_samples."""
    return [Pair(c, r) for c, r in zip(samples[0::2], samples[1::2])]
