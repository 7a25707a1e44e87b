"""Exact and near duplicates over the whole set: a sample is dropped when an earlier-ranked copy of it is kept, and its
reason names that copy, so a person can look at both. The report removes duplicates in its first stage; a pipeline
should run this op after its per-image rules (the report preset does), so only copies that pass them compete: the
ranking below knows sizes, not quality, and a copy kept here but dropped by a later rule loses the picture.

Exact: the SHA-256 of the file's bytes. Near: a 64-bit perceptual hash (pHash: the signs of the 8x8 lowest
frequencies of the 32x32 DCT of the gray image, against their median), which survives resizing, re-encoding and
small colour changes; two images are near duplicates when their hashes differ in at most `hamming` bits. Copies are
ranked by pixel count, then file size, then key: the largest, least compressed copy is the one kept."""
from __future__ import annotations

import hashlib
from typing import Sequence

import cv2
import numpy as np

from ..op import GlobalOp, Item, OpError, Record, register

PAIR_BLOCK = 1 << 22   # hash comparisons per numpy step (32 MB of uint64): bounds memory on a million images
SMALL_SET = 8000       # below this many hashes comparing every pair is quicker than sorting into chunks


def phash(gray: np.ndarray) -> int:
    """pHash of a float gray image, imagehash.phash's algorithm (32x32, DCT, the 8x8 lowest against their median)
    on OpenCV and the Item's shared gray array: 0.4 ms where imagehash takes 3.8 ms (its own resize and scipy DCT;
    the bits can differ from its, so do not mix the two in one set)."""
    low = cv2.dct(cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA))[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


@register("dedup")
class Dedup(GlobalOp):
    """phash: the 64-bit perceptual hash as 16 hex digits; sha256: of the file's bytes. Also writes width, height
    and file_bytes (the same values as the resolution and file_size ops), which rank copies. Option hamming (default
    6 of 64 bits): the largest pHash distance that still counts as the same picture; a resized and re-encoded copy is
    typically 0..4 bits away, unrelated images ~32. Reasons: "exact duplicate of KEY" (same bytes) or
    "near duplicate of KEY (hamming N)"."""

    stats = ("phash", "sha256")

    def __init__(self, hamming: int = 6, **kw):
        super().__init__(**kw)
        if isinstance(hamming, bool) or not isinstance(hamming, int) or not 0 <= hamming <= 32:
            raise OpError(f"op 'dedup': hamming must be a whole number of bits in 0..32, got {hamming!r}")
        self.hamming = hamming

    def compute(self, item: Item) -> dict:
        w, h = item.pil.size
        return {"phash": f"{phash(item.gray):016x}", "sha256": hashlib.sha256(item.data).hexdigest(),
                "width": w, "height": h, "file_bytes": len(item.data)}

    def decide_all(self, records: Sequence[Record]) -> dict[str, str]:
        recs = sorted((r for r in records if r.stats.get("phash") and r.stats.get("sha256")), key=_rank)
        if len(recs) < 2:
            return {}
        hashes = np.array([int(r.stats["phash"], 16) for r in recs], dtype=np.uint64)
        groups = _components(len(recs), near_pairs(hashes, self.hamming))
        drop = {}
        for members in groups:   # members ascend in rank: the first is the best copy
            kept: list[int] = []
            for i in members:
                dists = [(int(np.bitwise_count(hashes[i] ^ hashes[k])), k) for k in kept]
                near = [(d, k) for d, k in dists if d <= self.hamming]
                if not near:
                    kept.append(i)   # only chained to the group through others: a picture of its own
                    continue
                d, k = near[0]
                same = recs[i].stats["sha256"] == recs[k].stats["sha256"]
                drop[recs[i].key] = (f"exact duplicate of {recs[k].key}" if same
                                     else f"near duplicate of {recs[k].key} (hamming {d})")
        return drop


def _rank(r: Record):
    s = r.stats
    return (-(s.get("width") or 0) * (s.get("height") or 0), -(s.get("file_bytes") or 0), r.key)


def near_pairs(hashes: np.ndarray, hamming: int) -> np.ndarray:
    """(i, j) with i < j and popcount(h[i] ^ h[j]) <= hamming, as an (n, 2) array. Pigeonhole (multi-index hashing):
    split the 64 bits into hamming + 1 chunks; two hashes that close agree exactly on at least one chunk, so only
    hashes sharing a chunk's value are compared. With 7 chunks of 9-10 bits that is ~1/70 of all pairs on spread-out
    hashes (measured: 100k hashes in 2 s, where every pair takes ~60 s); past hamming 9 the chunks are too short
    to help, and small sets are quicker to compare whole."""
    chunks = hamming + 1
    if 64 // chunks < 6 or len(hashes) < SMALL_SET:
        return all_pairs(hashes, hamming)
    found = []
    edges = np.linspace(0, 64, chunks + 1).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        key = (hashes >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(key, kind="stable")
        bounds = np.flatnonzero(np.diff(key[order])) + 1
        for members in np.split(order, bounds):
            if len(members) > 1:
                members = np.sort(members)
                found.append(members[all_pairs(hashes[members], hamming)])
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0)   # a pair agreeing on several chunks is found once per chunk


def all_pairs(hashes: np.ndarray, hamming: int) -> np.ndarray:
    """(i, j), i < j, within `hamming`, comparing every pair blockwise (~2e8 comparisons a second on one core)."""
    n = len(hashes)
    rows = max(1, PAIR_BLOCK // n)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for a in range(0, n, rows):
        b = min(n, a + rows)
        i, j = np.nonzero(np.bitwise_count(hashes[a:b, None] ^ hashes[None, a:]) <= hamming)
        i, j = i + a, j + a
        keep = j > i
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found)


def _components(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Union-find: the groups (of two or more, members ascending) that the pairs connect."""
    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs.tolist():
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]
