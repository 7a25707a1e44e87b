"""Curation's records as the trainer's manifest rows, and any curation input read back as rows: what the engine
writes, and what annotation (annotate.py) and balancing (taxonomy.py) read. Below all three, so none of them
imports another to get at it (the taxonomy is an op of the engine's pipelines; annotation reads its inputs the
way the engine does)."""
from __future__ import annotations

import math
import os

from ....qwenimage_core.images import write_atomic
from .op import Record
from .sources import TAR_SEP, read_bytes, read_inputs


def manifest_row(out: str, r: Record) -> dict:
    """A kept record as the trainer's manifest row; a tar member is extracted to OUT/images/<tar name>/<member>."""
    image = r.image
    if TAR_SEP in image:
        tar, member = image.split(TAR_SEP, 1)
        parts = [p for p in member.split("/") if p not in ("", ".", "..")]   # never outside OUT/images
        rel = os.path.join("images", os.path.splitext(os.path.basename(tar))[0], *parts)
        path = os.path.join(out, rel)
        if not os.path.isfile(path):
            write_atomic(path, read_bytes(image))
        image = rel
    meta = dict(r.meta)
    row = {"image": image, "caption": r.caption or ""}
    if "references" in meta:
        row["references"] = meta.pop("references")
    row["category"] = r.stats.get("category") or meta.pop("category", None) or "default"
    meta.pop("category", None)
    weight = meta.pop("weight", 1.0)
    row["weight"] = weight if isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0 else 1.0
    earlier = meta.get("stats") if isinstance(meta.get("stats"), dict) else {}  # a curated manifest curated again
    return {**row, **{k: v for k, v in meta.items() if k not in ("stats",)}, "stats": {**earlier, **r.stats}}


def relative_paths(row: dict, out_dir: str) -> dict:
    """The row with its image and references relative to the output folder (the trainer resolves them against
    it); a path on another drive stays absolute."""
    def rel(p):
        try:
            return os.path.relpath(p, out_dir)
        except ValueError:
            return p
    row = {**row, "image": rel(row["image"])}
    if row.get("references"):
        row["references"] = [rel(p) for p in row["references"]]
    return row


def read_rows(source: str, out_dir: str) -> tuple[list[dict], list[str]]:
    """Rows of a JSONL manifest, an image folder or a webdataset tar (read as `qwenimage data curate` reads them),
    as the trainer's manifest rows with their curation key; a tar's member is extracted under OUT_DIR/images.
    Rows that cannot be samples come back as "key: why" problems."""
    rows, problems = [], []
    for r in read_inputs([source]):
        if r.dropped:
            problems.append(f"{r.key}: {r.dropped}")
            continue
        try:
            row = manifest_row(out_dir, r)
        except OSError as e:   # a tar member that cannot be extracted
            problems.append(f"{r.key}: unreadable: {e}")
            continue
        row["stats"] = {**(r.meta.get("stats") or {}), **r.stats}   # a curated manifest keeps its statistics
        if not row["stats"]:
            del row["stats"]
        row["image"] = os.path.join(out_dir, row["image"])    # absolute; a writer makes it relative to its output
        row.pop("key", None)                                    # an annotated row read again: this run's key
        rows.append({"key": r.key, **row})
    return rows, problems
