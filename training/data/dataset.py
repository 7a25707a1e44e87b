"""Training samples: a folder of images with same-stem caption files, or a JSONL manifest, validated up front.

Every sample is checked before training starts (image readable and large enough, caption present, references
readable, manifest fields well typed), so bad data is reported once, naming its file, line and field, and never
crashes a run halfway through an epoch.

Folder layout (as kohya / musubi-tuner): `root/**/name.png` + `root/**/name.txt`; a sample's category is its
folder relative to root ("default" at the top level, "a/b" for nested folders).

Manifest layout: one JSON object per line,
    {"image": "t.png", "caption": "...", "references": ["r.png"], "category": "faces", "weight": 2.0}
"image" and "caption" are required; "references" (1-3 paths) make an edit triple (references + instruction
caption -> target image). Relative paths resolve against the manifest's folder (or `base_dir`).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

from PIL import Image

from ...qwenimage_core.images import not_regular

log = logging.getLogger("qwenimage.training")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_REFERENCES = 3


@dataclass(frozen=True)
class Sample:
    image: str                          # absolute path of the target image
    caption: str                        # caption (t2i) or instruction (edit)
    references: tuple[str, ...] = ()    # absolute paths of the reference images (edit triples)
    category: str = "default"
    weight: float = 1.0                 # the row's weight, multiplied into the sampling weight
    width: int = 0                      # target image size, filled at load
    height: int = 0


class DataError(ValueError):
    """Bad training data; the message names the file (and manifest line) and the field."""


@dataclass
class LoadReport:
    """What `load_samples(..., report=True)` returns beside the samples: how many were read and why the skipped
    ones were skipped (one message per bad sample: "file[:line]: field: problem")."""
    source: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def settle_problems(problems: list[str], path, on_error: str, what: str) -> None:
    """Bad rows of a data file: all named in one DataError (on_error = "error"), else each logged as skipped."""
    if problems and on_error == "error":
        raise DataError(f"{len(problems)} bad {what}(s) in {path}:\n  " + "\n  ".join(problems))
    for p in problems:
        log.warning("skipping %s: %s", what, p)


def load_samples(path, *, kind: str = "auto", on_error: str = "skip", min_size: int = 64, caption_ext: str = ".txt",
                 base_dir=None, report: bool = False, captions: bool = True):
    """Read and validate a dataset -> sorted list[Sample] (or (samples, LoadReport) with report=True).

    kind: "folder", "manifest" or "auto" (a directory is a folder, a file a JSONL manifest). on_error: "skip"
    logs a warning per bad sample and leaves it out; "error" raises one DataError naming every bad sample.
    captions=False (VAE training): images alone; a caption is read when there is one, never required."""
    if on_error not in ("skip", "error"):
        raise ValueError(f"on_error must be 'skip' or 'error', not {on_error!r}")
    path = os.path.abspath(os.fspath(path))
    if kind == "auto":
        kind = "folder" if os.path.isdir(path) else "manifest"
    if kind == "folder":
        if not os.path.isdir(path):
            raise DataError(f"dataset folder not found: {path}")
        rows, problems = _folder_rows(path, caption_ext, captions)
    elif kind == "manifest":
        if not os.path.isfile(path):
            raise DataError(f"manifest not found: {path}")
        rows, problems = _manifest_rows(path, os.path.abspath(base_dir or os.path.dirname(path)), captions)
    else:
        raise ValueError(f"kind must be 'auto', 'folder' or 'manifest', not {kind!r}")

    samples = []
    for where, row in rows:
        sample, problem = _validate(row, where, min_size, captions)
        if problem:
            problems.append(problem)
        else:
            samples.append(sample)
    samples.sort(key=lambda s: (s.image, s.references, s.caption))

    settle_problems(problems, path, on_error, "sample")
    if not samples:
        raise DataError(f"no usable samples in {path} ({len(problems)} skipped)")
    if problems:
        log.warning("%s: %d samples loaded, %d skipped", path, len(samples), len(problems))
    rep = LoadReport(path, len(samples), problems)
    return (samples, rep) if report else samples


# ---------------------------------------------------------------------------------------------- the two layouts

def _folder_rows(root: str, caption_ext: str, captions: bool = True):
    """(where, row) per image file under root, in sorted walk order; a missing or unreadable caption file is a
    problem of that image."""
    rows, problems = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        category = "default" if rel == "." else rel.replace(os.sep, "/")
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTS or name.startswith("."):
                continue
            image = os.path.join(dirpath, name)
            cap_path = os.path.join(dirpath, stem + caption_ext)
            if why := not_regular(image):  # before the caption: the image is the sample's name
                problems.append(f"{image}: image: {why}")
                continue
            if not captions and not os.path.isfile(cap_path):
                rows.append((image, {"image": image, "caption": "", "category": category}))
                continue
            if why := not_regular(cap_path):
                problems.append(f"{cap_path}: caption: {why}")
                continue
            if not os.path.isfile(cap_path):
                problems.append(f"{image}: caption: no caption file {os.path.basename(cap_path)}")
                continue
            try:
                with open(cap_path, encoding="utf-8") as fh:
                    caption = fh.read()
            except (OSError, UnicodeDecodeError) as e:
                problems.append(f"{cap_path}: caption: unreadable ({e})")
                continue
            rows.append((image, {"image": image, "caption": caption, "category": category}))
    return rows, problems


def _manifest_rows(manifest: str, base: str, captions: bool = True):
    """(where, row) per non-blank line; JSON and type errors are problems naming manifest:line and the field."""
    rows, problems = [], []
    with open(manifest, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{manifest}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: json: not valid JSON ({e.msg} at column {e.colno})")
            continue
        problem = check_row(row, captions)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        row = dict(row)
        row["image"] = os.path.normpath(os.path.join(base, row["image"]))
        row["references"] = [os.path.normpath(os.path.join(base, r)) for r in row.get("references", [])]
        rows.append((where, row))
    return rows, problems


def check_row(row, captions: bool = True) -> str | None:
    """The first field of a manifest row with a wrong type or value, as 'field: problem', or None."""
    if not isinstance(row, dict):
        return f"json: expected an object, got {type(row).__name__}"
    for name in ("image", "caption") if captions else ("image",):
        if name not in row:
            return f"{name}: missing"
    if not isinstance(row["image"], str) or not row["image"]:
        return f"image: expected a path string, got {row['image']!r}"
    caption = row.get("caption", "")
    if not (isinstance(caption, str) or caption is None and not captions):  # uncaptioned rows: null allowed
        return f"caption: expected a string, got {type(caption).__name__}"
    refs = row.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        return f"references: expected a list of path strings, got {refs!r}"
    if "references" in row and not 1 <= len(refs) <= MAX_REFERENCES:
        return f"references: expected 1 to {MAX_REFERENCES} paths, got {len(refs)}"
    if "category" in row and (not isinstance(row["category"], str) or not row["category"]):
        return f"category: expected a non-empty string, got {row['category']!r}"
    w = row.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        return f"weight: expected a positive number, got {w!r}"
    return None


# ------------------------------------------------------------------------------------------------- validation

def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file, checked readable by PIL (header + verify) without decoding the pixels."""
    with Image.open(path) as im:
        size = im.size
        im.verify()
    return size


def _validate(row: dict, where: str, min_size: int, captions: bool = True):
    """Sample or the problem with it ('where: field: problem'); `where` is the image path or manifest:line."""
    caption = row.get("caption", "").strip()
    if captions and not caption:
        return None, f"{where}: caption: empty"
    for k, path in enumerate((row["image"], *row.get("references", ()))):
        if why := not_regular(path):
            return None, f"{where}: {'image' if k == 0 else f'references[{k - 1}]'}: {path}: {why}"
    try:
        w, h = image_size(row["image"])
    except FileNotFoundError:
        return None, f"{where}: image: file not found {row['image']}"
    except Exception as e:  # PIL raises many types for broken files
        return None, f"{where}: image: not a readable image {row['image']} ({type(e).__name__}: {e})"
    if min(w, h) < min_size:
        return None, f"{where}: image: {w}x{h} is smaller than min_size {min_size} ({row['image']})"
    for k, ref in enumerate(row.get("references", ())):
        try:
            image_size(ref)
        except FileNotFoundError:
            return None, f"{where}: references[{k}]: file not found {ref}"
        except Exception as e:
            return None, f"{where}: references[{k}]: not a readable image {ref} ({type(e).__name__}: {e})"
    return Sample(image=row["image"], caption=caption, references=tuple(row.get("references", ())),
                  category=row.get("category", "default"), weight=float(row.get("weight", 1.0)),
                  width=w, height=h), None
