"""What a benchmark is to the evaluator: a named file format that turns into `EvalItem`s, with the scorers, image
count and size its authors use. One file per benchmark family reads the published files as users download them;
this file holds what they share: the item, the suite registry, and errors that name the file, the row and the field.

A bad row stops the load with a `SuiteFileError` naming it, before any model is loaded; with on_error="skip" the
row is left out and listed in `Loaded.skipped` instead (the run writes them to skipped.jsonl)."""
from __future__ import annotations

import csv
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ....qwenimage_core.images import not_regular
from ....qwenimage_core.pipeline import DEFAULT_SIZE

MAX_FILE_BYTES = 1 << 30  # a suite file past 1 GiB is not the benchmark's download (GEdit's parquet is ~1 GB whole)


@dataclass(frozen=True)
class EvalItem:
    """One prompt (or edit) of a suite. Its k-th image is sampled with seed `seed + k` (plus the run's base seed);
    `inputs` are edit input image paths; `meta` is what the scorers read (see the keys in training/eval/README)."""
    id: str
    prompt: str
    category: str
    seed: int
    inputs: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)


class SuiteFileError(ValueError):
    """A suite file is missing, unreadable or has a bad row; the message names the file (and row and field)."""


class RowError(ValueError):
    """A bad row, raised inside a loader; the suite adds where it was (file and line)."""


@dataclass
class Loaded:
    items: list[EvalItem]
    skipped: list[dict]  # {"where", "error"} of rows left out with on_error="skip"


def item_seed(item_id: str) -> int:
    """A fixed seed from the item's id, so --limit, a reordered file or a second model give an item the same noise."""
    return zlib.crc32(item_id.encode("utf-8")) & 0x7FFFFFFF


def safe_id(text: str) -> str:
    """An id usable in file names (images/<id>_<k>.png): path separators and odd characters become '-'."""
    return re.sub(r"[^\w.\-]+", "-", str(text), flags=re.UNICODE).strip("-") or "item"


class Suite:
    """A benchmark: subclasses set the class attributes and implement `rows` and `item`."""
    name = ""
    description = ""
    download = ""          # where users get the file, and which file to pass as --data
    images_per_prompt = 1
    size: tuple[int, int] | None = DEFAULT_SIZE   # None: edits default to their input's size
    edit = False           # items carry input images (references)
    scorers: list[dict] = []

    def default_scorers(self, items: list[EvalItem]) -> list[dict]:
        """The scorer specs this suite is scored with; a spec's "requires" names a meta key an item must carry to
        be scored by it (the others get no value for that scorer)."""
        return [dict(s) for s in self.scorers]

    # -- what subclasses implement ------------------------------------------------------------------------------
    def rows(self, path: str, cache_dir: str | None) -> Iterable[tuple[str, object]]:
        """(where, raw row) for every row of the file; a raw row may be a RowError (an unparseable line)."""
        raise NotImplementedError

    def item(self, raw, index: int, where: str) -> EvalItem | None:
        """One raw row -> EvalItem (None: a row this suite leaves out), raising RowError naming the field."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------------
    def load(self, path, on_error: str = "stop", cache_dir: str | None = None) -> Loaded:
        if on_error not in ("stop", "skip"):
            raise ValueError(f"on_error {on_error!r}: use 'stop' or 'skip'")
        path = os.fspath(path)
        if not os.path.exists(path):
            raise SuiteFileError(f"{path}: {self.name} file not found; {self.download}")
        if not os.path.isdir(path):
            regular(path)
        items, skipped, seen = [], [], {}
        for where, raw in self.rows(path, cache_dir):
            try:
                if isinstance(raw, RowError):
                    raise raw
                item = self.item(raw, len(items), where)
                if item is None:  # a row the suite leaves out by design (another language's)
                    continue
                if item.id in seen:
                    raise RowError(f"id {item.id!r} repeats the one at {seen[item.id]}")
            except RowError as e:
                if on_error == "stop":
                    raise SuiteFileError(f"{where}: {e} (pass --on-error skip to leave such rows out)") from None
                skipped.append({"where": where, "error": str(e)})
                continue
            seen[item.id] = where
            items.append(item)
        if not items:
            bad = f" ({len(skipped)} bad rows)" if skipped else ""
            raise SuiteFileError(f"{path}: no {self.name} items in it{bad}")
        return Loaded(items, skipped)


# ------------------------------------------------------------------------------------------- registry

SUITES: dict[str, Suite] = {}


def register(cls):
    SUITES[cls.name] = cls()
    return cls


def get_suite(name: str) -> Suite:
    from . import ALL  # noqa: F401  (the built-in suites register on import)

    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r} (known: {', '.join(sorted(SUITES))}; qwenimage eval --list)")
    return SUITES[name]


# --------------------------------------------------------------------------------------- file readers

def regular(path: str, error=SuiteFileError) -> str:
    """`path` if it is a regular file under MAX_FILE_BYTES, else `error` naming it: a FIFO blocks open() forever
    and a link to /dev/zero never ends, so nothing is opened before this check."""
    why = not_regular(path, MAX_FILE_BYTES)
    if why:
        raise error(f"{path}: {why}")
    return path


def jsonl_rows(path: str) -> Iterator[tuple[str, object]]:
    """(path:line, object) for each non-blank line; a line that is not a JSON object comes as a RowError."""
    with open(regular(path), encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{n}", RowError(f"not valid JSON ({e.msg})")
                continue
            yield f"{path}:{n}", row if isinstance(row, dict) else RowError("not a JSON object")


def json_file(path: str):
    try:
        with open(regular(path), encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise SuiteFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def csv_rows(path: str, required: Iterable[str]) -> Iterator[tuple[str, dict | RowError]]:
    """(path:line, row dict) of a CSV file with a header holding the `required` columns; a row the csv module
    cannot read (a field over its 131,072-character limit, a NUL byte) comes as a RowError, and reading goes on
    at the next line."""
    with open(regular(path), encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            missing = [c for c in required if c not in (reader.fieldnames or [])]
        except csv.Error as e:
            raise SuiteFileError(f"{path}:1: the header is not readable CSV ({e})") from None
        if missing:
            raise SuiteFileError(f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
        rows = iter(reader)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error as e:  # raised before line_num counts the line it was reading
                yield f"{path}:{reader.line_num + 1}", RowError(f"not readable CSV ({e})")
                continue
            yield f"{path}:{reader.line_num}", row


def text_field(row, key: str, required: bool = True) -> str:
    """row[key] as a non-empty string, or a RowError naming the field."""
    value = row.get(key) if isinstance(row, dict) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise RowError(f"field {key!r} is missing or empty")
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RowError(f"field {key!r} must be a string, got {type(value).__name__}")
    return str(value).strip()


def existing_file(base_dir: str, rel: str, what: str, candidates: Iterable[str] = ("",)) -> str:
    """rel resolved against base_dir (and sub-folders `candidates`), or a RowError naming what is missing (or
    what is there but is not a regular file under MAX_FILE_BYTES: a FIFO, a link to a device)."""
    tried = [rel] if os.path.isabs(rel) else [os.path.normpath(os.path.join(base_dir, c, rel)) for c in candidates]
    for p in tried:
        if os.path.exists(p) and not os.path.isdir(p):
            why = not_regular(p, MAX_FILE_BYTES)
            if why:
                raise RowError(f"{what} {p}: {why}")
            return p
    raise RowError(f"{what} not found: {' or '.join(tried)}")


def has_cjk(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in text)
