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
  `read_bytes("x.tar::dir/0001.jpg")` returns the member's bytes.
- one image file (`x.png`): that image, with its same-stem caption file as in a folder.

Only regular files are opened, each under a size cap (qwenimage_core.images.not_regular): a FIFO named x.png would
block open() forever and a link to /dev/zero named .jpg would be read until memory runs out. Such an image is a
dropped record saying so; such an INPUT is an error naming it."""
from __future__ import annotations

import contextlib
import json
import os
import tarfile
from collections import defaultdict

from ....qwenimage_core.images import not_regular
from ..dataset import IMAGE_EXTS, check_row
from .op import Record

TAR_SEP = "::"
SOURCE_STAGE = "source"   # the stage name of records dropped before any op ran
# Size caps. An image: Item.MAX_PIXELS (179 M) as an uncompressed 24-bit BMP is 537 MB, so a larger file is no
# image the decoder would accept. A caption sidecar: far over any caption (the text encoder keeps 1,024 tokens).
# A manifest or tar is read whole (a manifest) or indexed (a tar) and may be large: only absurd sizes are refused.
MAX_IMAGE_BYTES = 1 << 30
MAX_CAPTION_BYTES = 16 << 20
MAX_LIST_BYTES = 64 << 30


class SourceError(ValueError):
    """An INPUT that cannot be read at all (not found, a FIFO, a device, too large): the run does not start."""


def read_inputs(inputs) -> list[Record]:
    """Records of every input (folder, .jsonl manifest, .tar or one image), sorted by key; bad ones arrive already
    dropped. An input that is not there, or not a regular file or folder, raises SourceError naming it."""
    records: list[Record] = []
    for path in inputs:
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            records += read_folder(path)
            continue
        is_image = os.path.splitext(path)[1].lower() in IMAGE_EXTS
        if not os.path.lexists(path):
            raise SourceError(f"curation input not found: {path}")
        if why := not_regular(path, MAX_IMAGE_BYTES if is_image else MAX_LIST_BYTES):
            raise SourceError(f"curation input {path}: {why}")
        if not os.path.exists(path):
            raise SourceError(f"curation input {path}: a link to nothing")
        if is_image:
            records.append(read_image(path))
        elif path.endswith(".tar"):
            records += read_tar(path)
        else:
            records += read_manifest(path)
    seen, out = set(), []
    for r in sorted(records, key=lambda r: r.key):
        if r.key in seen:   # the same file named by two inputs: curated once
            continue
        seen.add(r.key)
        out.append(r)
    return out


def _bad(key: str, image: str, why: str) -> Record:
    return Record(key=key, image=image, dropped=f"source: {why}", stage=SOURCE_STAGE)


# json's messages, said in words: "Unterminated string starting at" + " at column 44" read as raw exception text
_JSON_WORDS = {
    "Expecting value": "a value is missing or is not JSON (text needs double quotes)",
    "Unterminated string starting at": "a string is not closed (no ending double quote)",
    "Expecting property name enclosed in double quotes": "a key is not in double quotes (or a comma is extra)",
    "Expecting ',' delimiter": "a comma is missing between items",
    "Expecting ':' delimiter": "a colon is missing after a key",
    "Extra data": "more than one JSON value (one object per line)",
    "Invalid control character at": "a raw control character (a tab or newline) inside a string",
    "Invalid \\escape": "a backslash escape JSON does not know",
}


def json_problem(e: json.JSONDecodeError, line: bool = True) -> str:
    """What is wrong with a JSON text, in words, and where: "a string is not closed (...) at column 44"."""
    where = f"line {e.lineno} column {e.colno}" if line else f"column {e.colno}"
    return f"not valid JSON: {_JSON_WORDS.get(e.msg, e.msg[:1].lower() + e.msg[1:])} at {where}"


def _caption_json(text: str, where: str) -> tuple[str | None, dict]:
    """A .json sidecar -> (caption, other fields); raises ValueError naming `where` when it is not an object."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: {json_problem(e)}") from None
    except RecursionError:
        raise ValueError(f"{where}: not valid JSON: nested too deeply") from None
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
            meta = {} if rel == "." else {"category": rel.replace(os.sep, "/")}
            records.append(_image_record(os.path.join(dirpath, name), names, meta))
    return records


def read_image(path: str) -> Record:
    """One image file given as an INPUT: a sample as in a folder (its same-stem .txt or .json is the caption)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(path)
    return _image_record(path, {n for n in (stem + ".txt", stem + ".json") if os.path.lexists(os.path.join(folder, n))},
                         {})


def _image_record(image: str, names: set, meta: dict) -> Record:
    """An image file and its sidecar caption (`names`: the file names beside it) -> a Record, or a dropped one
    saying why (the image or its caption is not a regular file, too large, unreadable, malformed)."""
    if why := not_regular(image, MAX_IMAGE_BYTES):
        return _bad(image, image, f"image: {why}")
    folder, stem = os.path.dirname(image), os.path.splitext(os.path.basename(image))[0]
    caption = None
    try:
        for ext in (".txt", ".json"):
            if stem + ext not in names:
                continue
            sidecar = os.path.join(folder, stem + ext)
            if why := not_regular(sidecar, MAX_CAPTION_BYTES):
                raise ValueError(f"{sidecar}: {why}")
            with open(sidecar, encoding="utf-8") as fh:
                text = fh.read()
            if ext == ".txt":
                caption = text.strip()
            else:
                caption, extra = _caption_json(text, sidecar)
                meta = {**meta, **extra}
            break
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return _bad(image, image, f"caption: {e}")
    return Record(key=image, image=image, caption=caption, meta=meta)


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
            records.append(_bad(where, where, f"json: line {n}: {json_problem(e, line=False)}"))
            continue
        except RecursionError:
            records.append(_bad(where, where, f"json: line {n}: not valid JSON: nested too deeply"))
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
            if img.size > MAX_IMAGE_BYTES:
                records.append(_bad(key, key, f"image: {img.size:,} bytes, over the {MAX_IMAGE_BYTES:,}-byte limit; "
                                              "not read"))
                continue
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


def _member(tf, info, max_bytes: int = MAX_CAPTION_BYTES) -> bytes:
    if info.size > max_bytes:
        raise OSError(f"member {info.name}: {info.size:,} bytes, over the {max_bytes:,}-byte limit; not read")
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
        if why := not_regular(image, MAX_IMAGE_BYTES):   # a manifest's row may name a FIFO or a device
            raise OSError(why)
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
        return _member(tf, index[name], MAX_IMAGE_BYTES)
    except OSError as e:
        raise OSError(f"{image}: {e}") from None
    except (tarfile.TarError, EOFError) as e:
        raise OSError(f"{image}: {type(e).__name__}: {e}") from None
