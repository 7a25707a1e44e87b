"""Aspect-ratio buckets and the batch sampler over them: every batch holds images of one size, the order is a pure
function of (seed, epoch, position), and ranks of a distributed run split the same global batches.

The unit is the GLOBAL batch of batch_size * num_replicas indices, all in one bucket; rank r takes its slice
[r * batch_size, (r + 1) * batch_size). So a 2-process run sees, step for step, the batches of a 1-process run with
the doubled batch size, and resuming needs only (epoch, position) in global batches.

Epoch order:
  * no weights: a seeded permutation of all samples, split by bucket in permutation order into global batches,
    which are then shuffled. A bucket's remainder is dropped (drop_last) or padded by repeating the bucket's own
    samples from its start, so every rank always gets a full batch.
  * weights: each of the epoch's len(sizes) // global_batch batches draws its bucket with probability proportional
    to the bucket's total weight, then its indices within the bucket proportional to weight, with replacement.
    So sample i is drawn with probability weight[i] / sum(weights) exactly.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from torch.utils.data import Sampler

MAX_ASPECT = 4.0


def bucket_size(width: int, height: int, area: int, step: int = 16, max_aspect: float = MAX_ASPECT
                ) -> tuple[int, int]:
    """(w, h) of about `area` pixels at the image's aspect ratio (clamped to 1:max_aspect..max_aspect:1), both
    multiples of `step`: calculate_dimensions' rule with `step` rounding."""
    ratio = min(max(width / height, 1 / max_aspect), max_aspect)
    w = math.sqrt(area * ratio)
    h = w / ratio
    return max(step, round(w / step) * step), max(step, round(h / step) * step)


def category_weights(samples, weights: dict[str, float] | None = None) -> list[float]:
    """Per-sample sampling weight: weights[category] / (samples in category) * sample.weight, so each category's
    share of draws follows its configured weight whatever its size. weights=None gives every category 1."""
    counts: dict[str, int] = defaultdict(int)
    for s in samples:
        counts[s.category] += 1
    if weights is not None:
        unknown = sorted(set(counts) - set(weights))
        if unknown:
            raise ValueError(f"category weights give no weight for categories {unknown} (have {sorted(weights)})")
        bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v))}
        if bad:
            raise ValueError(f"category weights must be non-negative numbers: {bad}")
    return [(1.0 if weights is None else float(weights[s.category])) / counts[s.category] * s.weight
            for s in samples]


class BucketBatchSampler(Sampler):
    """Infinite batch sampler: yields lists of `batch_size` dataset indices of one bucket size, epoch after epoch.

    state_dict() / load_state_dict() resume exactly at the next batch. When a DataLoader prefetches (the sampler
    runs ahead of training), save `state_for(n)` instead, n = batches the trainer consumed since epoch 0."""

    def __init__(self, sizes: list[tuple[int, int]], batch_size: int, *, weights: list[float] | None = None,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0, drop_last: bool = True):
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < num_replicas, got batch_size={batch_size}, "
                             f"rank={rank}, num_replicas={num_replicas}")
        if not sizes:
            raise ValueError("no samples to sample from")
        self.sizes = [tuple(s) for s in sizes]
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.global_batch = batch_size * num_replicas
        self.seed, self.drop_last = int(seed), drop_last
        self.buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, s in enumerate(self.sizes):
            self.buckets[s].append(i)
        self.keys = sorted(self.buckets)
        self.weights = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(sizes),) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights must be {len(sizes)} non-negative finite numbers with a positive sum")
            self.weights = w
        elif drop_last and all(len(v) < self.global_batch for v in self.buckets.values()):
            raise ValueError(f"no bucket holds a global batch of {self.global_batch} samples (largest: "
                             f"{max(len(v) for v in self.buckets.values())}); lower the batch size or set "
                             "drop_last=False")
        self.epoch, self.position = 0, 0
        self._cached: tuple[tuple, list[list[int]]] | None = None

    # -- the order

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches (each `global_batch` indices of one bucket); cached for the current epoch."""
        key = (self.seed, epoch)
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self._weighted(epoch) if self.weights is not None else self._shuffled(epoch))
        return self._cached[1]

    def _shuffled(self, epoch):
        rng, g = self._rng(epoch), self.global_batch
        members = defaultdict(list)
        for i in rng.permutation(len(self.sizes)).tolist():
            members[self.sizes[i]].append(i)
        batches = []
        for k in self.keys:
            idx = members[k]
            full = len(idx) // g * g
            batches += [idx[j:j + g] for j in range(0, full, g)]
            if full < len(idx) and not self.drop_last:
                rest = idx[full:]
                batches.append(rest + [idx[j % len(idx)] for j in range(g - len(rest))])
        order = rng.permutation(len(batches))
        return [batches[j] for j in order]

    def _weighted(self, epoch):
        rng, g = self._rng(epoch), self.global_batch
        members = [np.asarray(self.buckets[k]) for k in self.keys]
        totals = np.array([self.weights[m].sum() for m in members])
        batches = []
        for _ in range(len(self)):
            b = rng.choice(len(members), p=totals / totals.sum())
            p = self.weights[members[b]] / totals[b]
            batches.append(members[b][rng.choice(len(p), size=g, replace=True, p=p)].tolist())
        return batches

    def __len__(self) -> int:
        """Batches per epoch (every epoch has the same number)."""
        if self.weights is not None:
            return max(1, len(self.sizes) // self.global_batch)
        n = (len(v) // self.global_batch if self.drop_last else math.ceil(len(v) / self.global_batch)
             for v in self.buckets.values())
        return sum(n)

    def __iter__(self):
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while True:
            batches = self.global_batches(self.epoch)
            while self.position < len(batches):
                batch = batches[self.position][lo:hi]
                self.position += 1  # before yielding: state_dict() after k batches resumes at batch k + 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    # -- resume

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def state_for(self, consumed: int) -> dict:
        """The state after `consumed` batches counted from epoch 0 (epochs all have len(self) batches)."""
        return {"epoch": consumed // len(self), "position": consumed % len(self), "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        self.seed, self.epoch, self.position = int(d["seed"]), int(d["epoch"]), int(d["position"])
