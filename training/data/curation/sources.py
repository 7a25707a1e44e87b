"""Where curation's samples come from: image folders, JSONL manifests and webdataset tars, several at once.

Each input becomes `Record`s with a key that is stable across runs (the image's absolute path; a tar member as
"TAR::MEMBER"; a manifest row's image, suffixed "#n" if the manifest repeats it), so shards and resumes line up.
A row or file that cannot become a sample (malformed JSON, a missing field, a tar that ends early) becomes a
dropped record naming the file and why: it is counted and listed, never an exception that stops the run.

- folder: `root/**/name.(png|jpg|...)` + an optional same-stem `name.txt` (the caption) or `name.json` (its
  "caption", the other fields to `meta`); a nested folder is the sample's category, as training/data/dataset.py.
- manifest (`*.jsonl`): the trainer's rows {"image", "caption", "references", "category", "weight", ...}; relative
  paths resolve against the manifest's folder; every field but image and caption goes to `meta`.
- webdataset tar (`*.tar`): members grouped by basename up to the first dot ("dir/0001.jpg" + "dir/0001.txt");
  `read_bytes("x.tar::dir/0001.jpg")` returns the member's bytes."""
from __future__ import annotations

import contextlib
import json
import os
import tarfile
from collections import defaultdict

from ..dataset import IMAGE_EXTS, check_row
from .op import Record

TAR_SEP = "::"
SOURCE_STAGE = "source"   # the stage name of records dropped before any op ran


def read_inputs(inputs) -> list[Record]:
    """Records of every input (folder, .jsonl manifest or .tar), sorted by key; bad ones arrive already dropped."""
    records: list[Record] = []
    for path in inputs:
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            records += read_folder(path)
        elif path.endswith(".tar"):
            records += read_tar(path)
        elif os.path.isfile(path):
            records += read_manifest(path)
        else:
            raise FileNotFoundError(f"curation input not found: {path}")
    seen, out = set(), []
    for r in sorted(records, key=lambda r: r.key):
        if r.key in seen:   # the same file named by two inputs: curated once
            continue
        seen.add(r.key)
        out.append(r)
    return out


def _bad(key: str, image: str, why: str) -> Record:
    return Record(key=key, image=image, dropped=f"source: {why}", stage=SOURCE_STAGE)


def _caption_json(text: str, where: str) -> tuple[str | None, dict]:
    """A .json sidecar -> (caption, other fields); raises ValueError naming `where` when it is not an object."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    caption = row.pop("caption", None)
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"{where}: caption: expected a string, got {type(caption).__name__}")
    return caption, row


# ------------------------------------------------------------------------------------------------ folder

def read_folder(root: str) -> list[Record]:
    records = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        names = set(filenames)
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTS or name.startswith("."):
                continue
            image = os.path.join(dirpath, name)
            meta = {} if rel == "." else {"category": rel.replace(os.sep, "/")}
            caption = None
            try:
                if stem + ".txt" in names:
                    with open(os.path.join(dirpath, stem + ".txt"), encoding="utf-8") as fh:
                        caption = fh.read().strip()
                elif stem + ".json" in names:
                    sidecar = os.path.join(dirpath, stem + ".json")
                    with open(sidecar, encoding="utf-8") as fh:
                        caption, extra = _caption_json(fh.read(), sidecar)
                    meta.update(extra)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                records.append(_bad(image, image, f"caption: {e}"))
                continue
            records.append(Record(key=image, image=image, caption=caption, meta=meta))
    return records


# ------------------------------------------------------------------------------------------------ manifest

def read_manifest(path: str) -> list[Record]:
    base = os.path.dirname(path)
    records, count = [], defaultdict(int)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        return [_bad(path, path, f"manifest: unreadable: {e}")]
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            records.append(_bad(where, where, f"json: line {n}: not valid JSON ({e.msg} at column {e.colno})"))
            continue
        problem = check_row(row, captions=False)  # the trainer's own rules for a manifest row
        if problem:
            records.append(_bad(where, where, f"row: line {n}: {problem}"))
            continue
        row = dict(row)
        image = os.path.normpath(os.path.join(base, row.pop("image")))
        caption = row.pop("caption", None)
        if "references" in row:
            row["references"] = [os.path.normpath(os.path.join(base, r)) for r in row["references"]]
        count[image] += 1
        key = image if count[image] == 1 else f"{image}#{count[image]}"
        records.append(Record(key=key, image=image, caption=caption, meta=row))
    return records


# ------------------------------------------------------------------------------------------------ webdataset tar

def read_tar(path: str) -> list[Record]:
    """One record per image member, its caption from the same-basename .txt/.json member. A tar that ends early
    keeps the samples before the break and adds one dropped record saying where it broke."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = defaultdict(dict)
    broken = None
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                folder, base = os.path.split(m.name)
                if "." not in base or base.startswith("."):
                    continue
                stem, ext = base.split(".", 1)
                groups[os.path.join(folder, stem)][ext.lower()] = m
    except (tarfile.TarError, OSError, EOFError) as e:
        broken = f"tar: unreadable after {sum(len(g) for g in groups.values())} members: {type(e).__name__}: {e}"
    records = []
    with tarfile.open(path, "r:") if groups else contextlib.nullcontext() as tf:
        for stem in sorted(groups):
            members = groups[stem]
            img = next((m for ext, m in sorted(members.items()) if "." + ext in IMAGE_EXTS), None)
            if img is None:
                continue
            key = f"{path}{TAR_SEP}{img.name}"
            try:
                caption, meta = _tar_caption(tf, path, members)
            except (ValueError, OSError, tarfile.TarError, UnicodeDecodeError) as e:
                records.append(_bad(key, key, f"caption: {e}"))
                continue
            records.append(Record(key=key, image=key, caption=caption, meta=meta))
    if broken:
        records.append(_bad(f"{path}{TAR_SEP}", path, broken))
    return records


def _tar_caption(tf, path: str, members: dict) -> tuple[str | None, dict]:
    if "txt" in members:
        return _member(tf, members["txt"]).decode("utf-8").strip(), {}
    if "json" in members:
        return _caption_json(_member(tf, members["json"]).decode("utf-8"), f"{path}{TAR_SEP}{members['json'].name}")
    return None, {}


def _member(tf, info) -> bytes:
    fh = tf.extractfile(info)
    data = fh.read()
    if len(data) != info.size:
        raise OSError(f"member {info.name} truncated: {len(data)} of {info.size} bytes")
    return data


_TARS: dict[str, tuple[tarfile.TarFile, dict]] = {}   # per process: open tars and their member index


def read_bytes(image: str) -> bytes:
    """The bytes of a record's image: a file, or a tar member ("x.tar::dir/0001.jpg"). Any failure is an OSError
    (which the op machinery turns into a "broken" drop naming the file)."""
    if TAR_SEP not in image:
        with open(image, "rb") as fh:
            return fh.read()
    path, name = image.split(TAR_SEP, 1)
    try:
        if path not in _TARS:
            tf = tarfile.open(path, "r:")
            index = {}
            try:
                for m in tf:
                    index[m.name] = m
            except (tarfile.TarError, EOFError):
                pass   # the members before the break stay readable
            _TARS[path] = (tf, index)
        tf, index = _TARS[path]
        if name not in index:
            raise OSError(f"no member {name}")
        return _member(tf, index[name])
    except OSError as e:
        raise OSError(f"{image}: {e}") from None
    except (tarfile.TarError, EOFError) as e:
        raise OSError(f"{image}: {type(e).__name__}: {e}") from None
