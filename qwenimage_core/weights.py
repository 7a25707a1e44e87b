"""Safetensors I/O shared by every loader: validated, memory-mapped reading and assignment onto meta modules.

Models are built on the meta device and each tensor is read from the memory-mapped file straight into its final
dtype and device, so loading never holds two copies of the weights. Everything is checked (keys, shapes, file
integrity) before the first tensor is read, so a bad file fails cleanly instead of leaving a half-loaded model.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# The rest of safetensors' dtypes (sub-byte floats, complex) have no torch equivalent we could load into.
_DTYPES.update({name: getattr(torch, attr) for name, attr in (
    ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E8M0", "float8_e8m0fnu"),
    ("F8_E4M3FNUZ", "float8_e4m3fnuz"), ("F8_E5M2FNUZ", "float8_e5m2fnuz")) if hasattr(torch, attr)})
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as given; the message names the file and the key."""


MAX_JSON_DEPTH = 64  # headers and configs nest a few levels; 100,000 levels overflowed the parser's recursion


def json_depth_ok(value, limit: int) -> bool:
    """Whether a parsed JSON value nests at most `limit` containers deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            if d > limit:
                return False
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return True


def load_json(text: str | bytes, where: str | None, what: str = "JSON"):
    """Parse `text` (a safetensors header, a config, metadata): bad JSON, or nesting deeper than MAX_JSON_DEPTH
    (a RecursionError from the parser, or a value later code would recurse into), is a CheckpointError that
    names `where` (the file; None when the caller adds it) and `what`. The one JSON reader for every file a
    loader is handed."""
    where = f"{where}: " if where else ""
    try:
        value, deep = json.loads(text), False
    except RecursionError:
        value, deep = None, True
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}{what} is not valid JSON ({e})") from None
    if deep or not json_depth_ok(value, MAX_JSON_DEPTH):
        raise CheckpointError(f"{where}{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


class SafetensorsFile:
    """One safetensors file, header validated up front; tensors are read lazily from the memory map."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.infos, self.metadata = _read_header(self.path)
        self._handle = None
        self._mapped_bytes = 0

    def keys(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, key: str) -> bool:
        return key in self.infos

    def shape(self, key: str) -> tuple[int, ...]:
        return self.infos[key].shape

    def dtype(self, key: str) -> torch.dtype | None:
        return _DTYPES.get(self.infos[key].dtype)

    def get(self, key: str) -> torch.Tensor:
        """The tensor as stored. It may be a copy-on-write view of the memory map (zero-copy)."""
        try:
            if self._handle is None:
                self._handle = safe_open(self.path, framework="pt", device="cpu")
            return self._handle.get_tensor(key)
        except SafetensorError as e:  # what our header check does not cover: named here, for every loader
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r}: {e}") from None

    def metadata_json(self, key: str):
        """A JSON value stored as text in the header's metadata (a config), or None when absent."""
        raw = self.metadata.get(key)
        return None if raw is None else load_json(raw, self.path, f"metadata {key!r}")

    def done_with(self, tensor: torch.Tensor, every: int = 2 ** 29) -> None:
        """Note that a tensor read from the map has been copied elsewhere (cast or moved). Pages once touched
        stay resident until the map is closed, so re-open it every `every` bytes to keep peak memory near the
        size of the converted weights rather than that plus the file."""
        self._mapped_bytes += tensor.numel() * tensor.element_size()
        if self._mapped_bytes >= every:
            self._handle, self._mapped_bytes = None, 0

    def close(self):
        self._handle = None

    def __repr__(self):
        return f"SafetensorsFile({self.path!r}, {len(self.infos)} tensors)"


class RowChunk:
    """One of `parts` equal row blocks of a file's tensors, read as a tensor of its own (a view: no copy): how a
    fused weight (ComfyUI's SwiGLU `gate_up`) is loaded into separate layers. Stands in for the file in sources."""

    def __init__(self, file: SafetensorsFile, index: int, parts: int):
        self.file, self.index, self.parts = file, index, parts
        self.path = file.path

    def shape(self, key: str) -> tuple[int, ...]:
        rows, *rest = self.file.shape(key)
        if rows % self.parts:
            raise CheckpointError(f"{self.path}: fused tensor {key!r} has {rows} rows, not {self.parts} equal parts")
        return (rows // self.parts, *rest)

    def dtype(self, key: str) -> torch.dtype | None:
        return self.file.dtype(key)

    def get(self, key: str) -> torch.Tensor:
        self.shape(key)
        return self.file.get(key).chunk(self.parts)[self.index]

    def done_with(self, tensor: torch.Tensor) -> None:
        self.file.done_with(tensor)


def _read_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and check the header ourselves: safetensors' own errors do not say which file was bad."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file (bad header length {n} for a {size}-byte file)")
        header = load_json(fh.read(n), path, "the safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: not a safetensors file (__metadata__ must map names to strings)")
    data_len = size - 8 - n
    infos, spans = {}, []
    for key, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
            start, end = int(start), int(end)
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: malformed header entry for key {key!r}") from None
        if dtype not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {key!r} has dtype {dtype!r}, which cannot be loaded "
                                  f"(known: {', '.join(_DTYPES)})")
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated file: tensor {key!r} ends at byte {end} but only {data_len} data bytes are present")
        if min(shape, default=0) < 0 or not 0 <= start <= end or \
                end - start != math.prod(shape) * _DTYPES[dtype].itemsize:
            raise CheckpointError(f"{path}: tensor {key!r}: offsets {[start, end]} do not hold a {dtype} tensor of "
                                  f"shape {list(shape)}")
        infos[key] = TensorInfo(dtype, shape)
        spans.append((start, end, key))
    pos = 0
    for start, end, key in sorted(spans):  # safetensors' rule: the tensors tile the data, in order, no gap
        if start != pos:
            raise CheckpointError(f"{path}: tensor {key!r} starts at byte {start}, expected {pos} (overlapping or "
                                  "inconsistent offsets)")
        pos = end
    if pos != data_len:
        raise CheckpointError(f"{path}: {data_len - pos} data bytes after the last tensor (inconsistent offsets)")
    return infos, metadata


def open_checkpoint_files(paths: Iterable[str | os.PathLike]) -> dict[str, SafetensorsFile]:
    """Open several shards and index their keys, refusing a key that two shards both claim."""
    where: dict[str, SafetensorsFile] = {}
    for p in paths:
        f = SafetensorsFile(p)
        for k in f.keys():
            if k in where:
                raise CheckpointError(f"{f.path}: key {k!r} is also in {where[k].path}")
            where[k] = f
    return where


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _fmt(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def assign_weights(
    model: torch.nn.Module,
    sources: Mapping[str, tuple[SafetensorsFile, str]],
    *,
    dtype: torch.dtype | Callable[[str, torch.Tensor], torch.dtype | None] | None = None,
    device: torch.device | str | None = None,
    ignore: Callable[[str], bool] = lambda k: False,
    convert: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    what: str = "checkpoint",
) -> LoadReport:
    """Fill the parameters and persistent buffers of a (meta-device) model from safetensors files.

    `sources` maps each model name to (file, key in file). Every name the model expects must be present and of
    the right shape, and every source name must be expected unless `ignore` says it is a known marker; all of
    this is checked before any tensor is read. Floating tensors are cast to `dtype` (default: as stored), which
    may also be a function (name, tensor) -> dtype or None (keep);
    `convert(name, tensor)` may replace the tensor read from disk (e.g. de-quantisation) before placement.
    """
    expected = dict(model.state_dict(keep_vars=True))  # parameters and persistent buffers
    files = sorted({f.path for f, _ in sources.values()}) or ["<no file>"]
    where = files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} shards)"

    missing = [n for n in expected if n not in sources]
    unexpected = [n for n in sources if n not in expected and not ignore(n)]
    mismatched = [
        f"{src[1]!r} in {src[0].path}: file has {list(src[0].shape(src[1]))}, model expects {list(t.shape)}"
        for n, t in expected.items() if (src := sources.get(n)) is not None and tuple(src[0].shape(src[1])) != tuple(t.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_fmt([sources[n][1] for n in unexpected])}")
    if mismatched:
        problems.append("shape mismatch (the config does not match the weights): " + "; ".join(mismatched[:6])
                        + (f" and {len(mismatched) - 6} more" if len(mismatched) > 6 else ""))
    if problems:
        raise CheckpointError(f"{where}: cannot load this {what}: " + "; ".join(problems))

    report = LoadReport(ignored=[sources[n][1] for n in sources if n not in expected])
    for name, ref in expected.items():
        f, key = sources[name]
        raw = f.get(key)
        t = convert(name, raw) if convert is not None else raw
        target = dtype(name, t) if callable(dtype) else (dtype if t.is_floating_point() else None)
        placed = t.to(device=device if device is not None else "cpu", dtype=target or t.dtype)
        if placed.data_ptr() != raw.data_ptr():
            f.done_with(raw)
        _set_tensor(model, name, placed)
        report.loaded.append(name)
    return report


def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=module._parameters[leaf].requires_grad)
    else:
        module._buffers[leaf] = value


def block_indices(names: Iterable[str], prefix: str) -> list[int]:
    """The numbers of the blocks (`prefix`0., `prefix`1., ...) that the names hold, sorted."""
    found = {n[len(prefix):].split(".", 1)[0] for n in names if n.startswith(prefix)}
    return sorted(int(i) for i in found if i.isascii() and i.isdigit())


def block_count(names: Iterable[str], prefix: str) -> int:
    """How many numbered blocks the names hold, numbered 0..n-1: a count read off the highest index would let
    one stray key `transformer_blocks.19999.x` build 20,000 blocks, so a gap is an error."""
    index = block_indices(names, prefix)
    if index and index[-1] != len(index) - 1:
        gaps = [(a + 1, b - 1) for a, b in zip([-1] + index, index) if b > a + 1]  # missing runs, first..last
        shown = ", ".join(f"{prefix}{a}" + (f"..{b}" if b > a else "") for a, b in gaps[:3])
        raise CheckpointError(f"numbered blocks with gaps: {len(index)} present among {prefix}0..{index[-1]}, "
                              f"missing {shown}{f' and {len(gaps) - 3} more runs' if len(gaps) > 3 else ''}")
    return len(index)


def check_config_fits(what: str, sources: Mapping[str, tuple[SafetensorsFile, str]],
                      dims: Iterable[tuple[str, int, str, int]] = (),
                      counts: Iterable[tuple[str, str, int]] = ()) -> None:
    """Refuse a config that the file's shapes contradict, before a model is built from it: a crafted config
    (num_layers = 20000 in a small file's metadata) would otherwise build every layer only to fail on missing
    keys. dims: (name, axis, config field, value) - the weight's size along axis must equal value; counts:
    (name prefix, config field, value) - the config may not ask for more numbered blocks than the file holds
    (fewer is cheap to build, and the loader then names the unexpected keys)."""
    bad, dims, counts = [], list(dims), list(counts)
    fields = [(fld, want) for _, _, fld, want in dims] + [(fld, want) for _, fld, want in counts]
    for fld, want in dict(fields).items():
        if not isinstance(want, int) or isinstance(want, bool):
            bad.append(f"{fld} = {want!r} in the config is not an integer")
    if bad:
        where = next(iter(sources.values()))[0].path if sources else "<no weights>"
        raise CheckpointError(f"{where}: the {what} config is not usable: " + "; ".join(bad))
    for name, axis, fld, want in dims:
        if (src := sources.get(name)) is None:
            continue
        shape = list(src[0].shape(src[1]))
        if axis < len(shape) and shape[axis] != want:
            needs = shape[:axis] + [want] + shape[axis + 1:]
            bad.append(f"{src[1]!r}: file has {shape}, config ({fld} = {want}) needs {needs}")
    for prefix, fld, want in counts:
        have = len(block_indices(sources, prefix))  # blocks present, not the highest index: see block_count
        if want > have:
            bad.append(f"{fld} = {want} in the config, but the file has {have} ({prefix}N)")
    if bad:
        where = next(iter(sources.values()))[0].path if sources else "<no weights>"
        raise CheckpointError(f"{where}: the {what} config does not match the weights: " + "; ".join(bad))


def check_parameter_count(what: str, sources: Mapping[str, tuple[SafetensorsFile, str]], params: int) -> None:
    """Refuse a config whose model would be far larger than the file's weights: every parameter is read from one
    stored element, so a model of more than twice the stored elements (a file of stub blocks, a crafted config)
    can only fail to load, and building it first could take minutes."""
    held = sum(math.prod(f.shape(k)) for f, k in sources.values())
    if params > 2 * held:
        where = next(iter(sources.values()))[0].path if sources else "<no weights>"
        raise CheckpointError(f"{where}: the {what} config describes at least {params:,} parameters, but the file "
                              f"holds only {held:,} weight values: the config does not match the weights")


def _sort_header_metadata(path: str) -> None:
    """safetensors keeps the metadata in a Rust HashMap, so its order in the header (and the file's bytes) changes
    from one write to the next. Rewrite the header in place with the metadata keys sorted: the same tensors and
    metadata always give the same bytes (a build can be checked by its hash)."""
    with open(path, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        if len(header.get("__metadata__") or {}) < 2:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        data = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(data) > n:  # never: the same JSON, reordered; but a longer header would overwrite tensor bytes
            return
        fh.seek(8)
        fh.write(data + b" " * (n - len(data)))


def save_file_atomic(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write safetensors through a temporary file and a rename, so a crash never leaves a half-written file. The
    file gets the mode a plain open() gives (0644 under umask 022), as every other file the project writes."""
    import stat

    from safetensors.torch import save_file

    from .images import create_temp

    path = os.fspath(path)
    fd, tmp = create_temp(os.path.dirname(os.path.abspath(path)), ".safetensors")  # 0666 less the umask
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))
        except SafetensorError as e:  # a full disk arrives as "Error while serializing: I/O error ..."
            raise OSError(f"{path}: could not write ({e}); nothing was written under that name") from e
        _sort_header_metadata(tmp)
        os.chmod(tmp, mode)  # safetensors writes through a temporary of its own, created 0600, renamed onto ours
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
