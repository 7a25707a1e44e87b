"""A curation op: compute named statistics of one sample, then keep or drop it by thresholds on them.

As data-juicer's filters: measuring and deciding are apart, so every statistic lands in the sample's record (and in
the report's histograms) whether or not it drops anything, and a threshold can be tuned by looking at the numbers
without measuring again. An op is a small class found by name (`@register("luma")`), built from one table of the
pipeline config:

    { op = "luma", keep = { luma = [0.05, 0.95] } }             # drop when a statistic falls outside [lo, hi]
    { op = "qr_code", drop_if = { has_qr = true } }              # drop when a statistic equals a value (or one of a list)
    { op = "clip_alignment", model = "...", keep = { ... } }    # every other key is an option of the op's class

TOML has `inf` and `-inf`, so a one-sided bound is `[0.3, inf]`. An op may give default `keep`/`drop_if` rules
(`default_keep`, `default_drop_if`); the config replaces them per statistic.

Three kinds:
- `Op`: per sample; `compute(item) -> {stat: value}` (or `compute_batch(items)` for models that batch).
- `GlobalOp`: per sample, then over the whole set: `compute` gives each sample's statistics (a perceptual hash),
  `decide_all(records)` returns {key: reason} for the ones to drop (near duplicates, keeping the best copy).
- a `tag` op is an `Op` with no rules: it only writes statistics (language, caption split) that later stages,
  the taxonomy or the manifest read.

A sample whose file cannot be read, or whose op raises, is dropped with the reason, never a stopped run."""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

REGISTRY: dict[str, type["Op"]] = {}


def register(name: str):
    """Class decorator: `@register("luma")` makes the op buildable by that name from a pipeline config."""
    def deco(cls):
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"curation op {name!r} is registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls
    return deco


class OpError(ValueError):
    """A bad op table in a pipeline config (unknown op, unknown option, malformed rule); names the op."""


class Undecodable(Exception):
    """The sample's image cannot be read; the message says why (truncated, not an image, a decompression bomb)."""


# ------------------------------------------------------------------------------------------------ one sample

@dataclass
class Record:
    """One sample as it moves through a pipeline: where it came from, what was measured, and whether it was dropped.
    `key` is unique and stable across runs (the source path, or tar path + member), so shards and resumes line up."""
    key: str
    image: str                                   # a path, or "TAR::MEMBER" for a webdataset tar's member
    caption: str | None = None
    meta: dict = field(default_factory=dict)     # the source row's other fields (category, weight, references, ...)
    stats: dict = field(default_factory=dict)    # {stat: value} from every op that ran
    dropped: str | None = None                   # "op: reason" of the first op that dropped it
    stage: str | None = None                     # the stage that dropped it


class Item:
    """What an op sees: the record plus the image, decoded once and shared by every op of the sample.
    `pil` is the image as stored (RGB, no EXIF transpose: the rotation op measures that); `small` is it scaled so
    the long side is at most `ANALYSIS_SIDE` (image statistics do not need 4K pixels, and 10x fewer are 10x faster);
    `pixels` / `gray_u8` are its uint8 RGB and Rec. 601 luma arrays, computed once for every op of the sample (the
    statistics read these: integer arrays are 4x smaller than float and most OpenCV paths are faster on them);
    `rgb` / `gray` are float32 arrays in [0, 1] of the same."""

    ANALYSIS_SIDE = 512
    MAX_PIXELS = 178_956_970   # PIL's own decompression-bomb limit (2x its warning size): refuse, do not decode

    def __init__(self, record: Record, data: bytes | None = None, reader=None):
        self.record = record
        self._data, self._reader = data, reader
        self._pil = self._small = self._pixels = self._gray_u8 = self._rgb = self._gray = None
        self.header = None   # files.header's lazily opened image (size, format, EXIF), shared by the file ops

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def caption(self) -> str | None:
        return self.record.caption

    @property
    def stats(self) -> dict:
        return self.record.stats

    @property
    def data(self) -> bytes:
        if self._data is None:
            try:
                self._data = self._reader(self.record.image) if self._reader else _read_file(self.record.image)
            except OSError as e:
                raise Undecodable(f"cannot read {self.record.image}: {e}") from None
        return self._data

    @property
    def pil(self) -> Image.Image:
        if self._pil is None:
            self._pil = decode(self.data)
        return self._pil

    @property
    def small(self) -> Image.Image:
        if self._small is None:
            self._small = Image.fromarray(self.pixels)
        return self._small

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            im = self.pil
            factor = max(im.size) // self.ANALYSIS_SIDE
            if factor >= 2:  # a box average by a whole factor first: 7x cheaper than resizing all the pixels
                im = im.reduce(int(factor))
            self._pixels = shrink(np.asarray(im), self.ANALYSIS_SIDE)
        return self._pixels

    @property
    def gray_u8(self) -> np.ndarray:
        if self._gray_u8 is None:
            self._gray_u8 = np.asarray(self.small.convert("L"))
        return self._gray_u8

    @property
    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            self._rgb = self.pixels.astype(np.float32) / 255.0
        return self._rgb

    @property
    def gray(self) -> np.ndarray:
        if self._gray is None:
            self._gray = self.gray_u8.astype(np.float32) / 255.0
        return self._gray


ANTIALIAS = 0.35   # the blur's sigma, in output pixels, that matches PIL's BILINEAR (a triangle filter) reduction


def shrink(a: np.ndarray, side: int) -> np.ndarray:
    """uint8 pixels (H, W[, C]) scaled so the long side is at most `side`, as PIL's antialiased BILINEAR resize
    does but at ~1/3 of its cost (2.2 against 6.0 ms for 960 x 720 RGB -> 512): a Gaussian blur, then bilinear
    samples. Its sigma is fitted to PIL's filter at scales 1.1..1.9 (clarity, the most sensitive statistic, moves
    by -0.04..+0.15 on its 0..10 scale, median +0.02, on bench/bench_curation.py's and the test sets' pictures; the
    others by < 1.5%: the thresholds calibrated on PIL's copy hold)."""
    h, w = a.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return a
    import cv2   # here: the CLI imports this module, and --help should not pay for OpenCV

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(cv2.GaussianBlur(a, (0, 0), ANTIALIAS / scale), size, interpolation=cv2.INTER_LINEAR)


def _read_file(path: str) -> bytes:
    from ....qwenimage_core.images import not_regular

    if why := not_regular(path, 1 << 30):   # a FIFO would block, a device never end (sources.MAX_IMAGE_BYTES)
        raise OSError(why)
    with open(path, "rb") as fh:
        return fh.read()


_ADDRESS = re.compile(r" <[\w.]+ object at 0x[0-9a-f]+>")  # "cannot identify image file <_io.BytesIO object at
#                                                            0x7f..>": differs run to run and engine to engine


def decode(data: bytes) -> Image.Image:
    """Bytes -> RGB PIL image, fully decoded (a truncated file fails here, not in a later op), or Undecodable."""
    try:
        im = Image.open(io.BytesIO(data))   # no copy after load: it would double the decode's time and memory
        w, h = im.size
        if w * h > Item.MAX_PIXELS:
            raise Undecodable(f"decompression bomb: {w}x{h} = {w * h} pixels > {Item.MAX_PIXELS}")
        im.load()
        return im.convert("RGB") if im.mode != "RGB" else im
    except Undecodable:
        raise
    except Image.DecompressionBombError as e:
        raise Undecodable(f"decompression bomb: {e}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files: all mean "broken"
        raise Undecodable(f"not a readable image: {decode_problem(e)}") from None


def decode_problem(e: Exception) -> str:
    """What a decoder's exception means, in words (its own text is for a developer: "cannot identify image file",
    "unrecognized data stream contents when reading image file")."""
    text = _ADDRESS.sub("", str(e))
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image file, or a format PIL does not read"
    if isinstance(e, EOFError) or "truncated" in text:
        return "the file is truncated (it ends before the image does)"
    if isinstance(e, SyntaxError) or any(w in text for w in ("data stream", "decoder", "broken", "corrupt")):
        return f"the image data is corrupt ({text})"
    return text or type(e).__name__


# ------------------------------------------------------------------------------------------------ the ops

class Op:
    """Base class. Subclasses set `stats` (the statistic names they write), implement `compute`, and may set
    `default_keep` / `default_drop_if`. Options come in as keyword arguments from the config table."""

    name = "op"
    stats: tuple[str, ...] = ()
    default_keep: Mapping[str, tuple[float, float]] = {}
    default_drop_if: Mapping[str, Any] = {}
    batch_size = 1          # > 1: the engine calls compute_batch with up to this many items
    needs_caption = False   # True: a sample without a caption is not judged (it passes; annotation captions it)

    def __init__(self, keep: Mapping | None = None, drop_if: Mapping | None = None, **options):
        if options:
            raise OpError(f"op {self.name!r}: unknown option(s) {', '.join(sorted(options))}")
        self.keep = {**self.default_keep, **_bounds(self.name, keep or {})}
        self.drop_if = {**self.default_drop_if, **dict(drop_if or {})}
        for stat in [*self.keep, *self.drop_if]:
            if self.stats and stat not in self.stats:
                raise OpError(f"op {self.name!r}: no statistic {stat!r} (it writes {', '.join(self.stats)})")

    def compute(self, item: Item) -> dict:
        raise NotImplementedError

    def compute_batch(self, items: Sequence[Item]) -> list[dict]:
        return [self.compute(it) for it in items]

    def decide(self, stats: Mapping) -> str | None:
        """None to keep, or the reason to drop: the first rule the statistics break."""
        for stat, (lo, hi) in self.keep.items():
            v = stats.get(stat)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return f"{stat} missing"
            if not lo <= v <= hi:
                return f"{stat}={_fmt(v)} outside [{_fmt(lo)}, {_fmt(hi)}]"
        for stat, bad in self.drop_if.items():
            v = stats.get(stat)
            if v == bad or (isinstance(bad, list) and v in bad):
                return f"{stat}={v!r}"
        return None

    @property
    def thresholds(self) -> dict:
        """{stat: (lo, hi)} for the report's histograms."""
        return dict(self.keep)


class GlobalOp(Op):
    """An op that decides over the whole set (near duplicates): the engine runs `compute` per sample with the others,
    gathers every kept record, then calls `decide_all` once; the per-sample `decide` keeps everything."""

    def decide(self, stats: Mapping) -> str | None:
        return None

    def decide_all(self, records: Sequence[Record]) -> dict[str, str]:
        """{key: reason} for the records to drop (each reason names what it duplicates)."""
        raise NotImplementedError


def build_op(table: Mapping) -> Op:
    """An op from its config table {op = name, keep = ..., drop_if = ..., options...}."""
    table = dict(table)
    name = table.pop("op", None)
    if not name:
        raise OpError(f"op table {table!r}: needs op = NAME (known: {', '.join(sorted(REGISTRY))})")
    if name not in REGISTRY:
        raise OpError(f"unknown curation op {name!r} (known: {', '.join(sorted(REGISTRY))})")
    try:
        return REGISTRY[name](**table)
    except TypeError as e:
        raise OpError(f"op {name!r}: {e}") from None


def run_op(op: Op, items: Sequence[Item]) -> None:
    """Compute `op` on items (in batches), write its statistics into each record, and drop the ones it rejects.
    An unreadable image drops the sample as "broken"; any other exception drops it naming the op, except OpError:
    a config error (a model that cannot be loaded) stops the run instead of dropping every sample."""
    live = [it for it in items if it.record.dropped is None
            and not (op.needs_caption and not (it.record.caption or "").strip())]
    for i in range(0, len(live), max(1, op.batch_size)):
        batch = live[i:i + max(1, op.batch_size)]
        try:
            results = op.compute_batch(batch) if len(batch) > 1 else [_compute_one(op, batch[0])]
        except OpError:
            raise
        except Exception:   # a batch failed: retry one by one so one bad sample does not drop its neighbours
            results = [_compute_one(op, it) for it in batch]
        for it, stats in zip(batch, results):
            if isinstance(stats, _Failure):
                it.record.dropped = stats.reason
                continue
            it.record.stats.update(stats)
            reason = op.decide(it.record.stats)
            if reason:
                it.record.dropped = f"{op.name}: {reason}"


@dataclass
class _Failure:
    reason: str


def _compute_one(op: Op, item: Item):
    try:
        return op.compute(item)
    except Undecodable as e:
        return _Failure(_ADDRESS.sub("", f"broken: {e}"))
    except OpError:
        raise
    except Exception as e:
        return _Failure(_ADDRESS.sub("", f"{op.name}: error: {type(e).__name__}: {e}"))


def _bounds(name: str, keep: Mapping) -> dict[str, tuple[float, float]]:
    out = {}
    for stat, rule in keep.items():
        if (not isinstance(rule, (list, tuple)) or len(rule) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rule)):
            raise OpError(f"op {name!r}: keep.{stat} must be [lo, hi] numbers (inf and -inf allowed), got {rule!r}")
        lo, hi = float(rule[0]), float(rule[1])
        if lo > hi:
            raise OpError(f"op {name!r}: keep.{stat} = [{lo}, {hi}] is empty")
        out[stat] = (lo, hi)
    return out


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def iter_ops(tables: Iterable[Mapping]) -> list[Op]:
    return [build_op(t) for t in tables]
