"""A curation pipeline as a TOML file: a few global options, then stages, each a list of op tables.

    name = "report"
    shard_size = 256                       # records per shard (the unit of work and of resuming)

    [[stage]]
    name = "s1"
    title = "256p: broken files, file size, resolution, duplicates, NSFW"
    ops = [
      { op = "broken" },
      { op = "resolution", keep = { short_side = [256, inf] } },
    ]

Overrides, as the CLI's `--set` and `--skip`:
    "luma.keep.luma=[0.1, 0.9]"      every op named luma       "s5.luma.keep.luma=[0.1, 0.9]"   only stage s5's
    "nsfw.model=/path/to/model"      an op option               "shard_size=64"                  a global option
    skip "nsfw" drops every nsfw op (no weights for it here); skip "s3" drops stage s3; skip "s5.luma" one op.
A bad file, stage or op table is a PipelineError naming the file, the stage and the op."""
from __future__ import annotations

import copy
import os

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field

from ...config import ConfigError, parse_override
from .op import GlobalOp, Op, build_op

PRESETS = os.path.join(os.path.dirname(__file__), "presets")
GLOBAL_OPTIONS = {"name": str, "description": str, "shard_size": int}
STAGE_KEYS = ("name", "title", "ops")


class PipelineError(ValueError):
    """A bad pipeline config; the message names the file, the stage and the op."""


@dataclass
class Stage:
    name: str
    title: str
    ops: list[Op]


@dataclass
class Pipeline:
    source: str                    # the file it came from (or "<dict>")
    name: str
    stages: list[Stage]
    shard_size: int = 256
    description: str = ""
    raw: dict = field(default_factory=dict)   # the config after overrides: fingerprints a run's shards

    def steps(self) -> list[tuple[str, Op]]:
        """(stage name, op) in run order."""
        return [(st.name, op) for st in self.stages for op in st.ops]

    def phases(self) -> list[list[tuple[str, Op]]]:
        """The steps cut after each GlobalOp: a phase runs per shard, then its last op (if global) decides over all."""
        out, cur = [], []
        for step in self.steps():
            cur.append(step)
            if isinstance(step[1], GlobalOp):
                out.append(cur)
                cur = []
        if cur or not out:
            out.append(cur)
        return out


def resolve(name_or_path: str) -> str:
    """A preset name ("report") or a TOML path -> the path."""
    if os.path.isfile(name_or_path):
        return name_or_path
    preset = os.path.join(PRESETS, f"{name_or_path}.toml")
    if os.sep not in name_or_path and os.path.isfile(preset):
        return preset
    known = sorted(f[:-5] for f in os.listdir(PRESETS) if f.endswith(".toml")) if os.path.isdir(PRESETS) else []
    raise PipelineError(f"pipeline {name_or_path!r}: no such file, and no preset of that name "
                        f"(presets: {', '.join(known) or 'none'})")


def load_pipeline(name_or_path="report", overrides=(), skip=()) -> Pipeline:
    """Read, override, skip, and build every op (so a bad table fails here, before any image is read)."""
    if isinstance(name_or_path, dict):
        source, raw = "<dict>", copy.deepcopy(name_or_path)
    else:
        source = resolve(os.fspath(name_or_path))
        try:   # not config.load_raw: a one-sided bound is [lo, inf], and that refuses infinities
            with open(source, "rb") as fh:
                raw = tomllib.load(fh)
        except tomllib.TOMLDecodeError as e:
            raise PipelineError(f"{source}: not valid TOML: {e}") from None
    raw = apply_skip(apply_overrides(raw, overrides, source), skip, source)
    return build(raw, source)


def _stages(raw: dict, source: str) -> list[dict]:
    stages = raw.get("stage")
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise PipelineError(f"{source}: needs [[stage]] tables (name = ..., ops = [...])")
    return stages


def _targets(raw: dict, path: list[str], source: str, what: str):
    """The op tables a dotted override/skip names -> ([(stage, index)], rest of the path)."""
    stages = _stages(raw, source)
    by_stage = {s.get("name"): s for s in stages}
    if path[0] in by_stage and len(path) > 1:
        st = by_stage[path[0]]
        hits = [(st, i) for i, t in enumerate(st.get("ops", [])) if isinstance(t, dict) and t.get("op") == path[1]]
        rest = path[2:]
    else:
        hits = [(st, i) for st in stages for i, t in enumerate(st.get("ops", []))
                if isinstance(t, dict) and t.get("op") == path[0]]
        rest = path[1:]
    if not hits:
        ops = sorted({t.get("op") for s in stages for t in s.get("ops", []) if isinstance(t, dict)} - {None})
        raise PipelineError(f"{source}: {what}: no op {'.'.join(path[:2] if path[0] in by_stage else path[:1])!r} "
                            f"in the pipeline (its ops: {', '.join(ops)}; stages: {', '.join(map(str, by_stage))})")
    return hits, rest


def apply_overrides(raw: dict, overrides, source: str = "<dict>") -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        try:
            path, value = parse_override(item)
        except ConfigError as e:
            raise PipelineError(f"{source}: {e}") from None
        if len(path) == 1:
            raw[path[0]] = value
            continue
        hits, rest = _targets(raw, path, source, f"--set {item}")
        if not rest:
            raise PipelineError(f"{source}: --set {item}: name an option of the op (OP.KEY=VALUE)")
        for st, i in hits:
            node = st["ops"][i]
            for k in rest[:-1]:
                node = node.setdefault(k, {})
                if not isinstance(node, dict):
                    raise PipelineError(f"{source}: --set {item}: {k} is not a table")
            node[rest[-1]] = value
    return raw


def apply_skip(raw: dict, skip, source: str = "<dict>") -> dict:
    raw = copy.deepcopy(raw)
    for name in skip:
        stages = _stages(raw, source)
        path = name.split(".")
        if len(path) == 1 and any(s.get("name") == name for s in stages):
            raw["stage"] = [s for s in stages if s.get("name") != name]
            continue
        hits, rest = _targets(raw, path, source, f"--skip {name}")
        if rest:
            raise PipelineError(f"{source}: --skip {name}: name an op (OP or STAGE.OP) or a stage")
        for st, i in sorted(hits, key=lambda h: -h[1]):
            del st["ops"][i]
    return raw


def build(raw: dict, source: str = "<dict>") -> Pipeline:
    from . import ops as _ops  # noqa: F401  (registers every op family)

    for k, v in raw.items():
        if k == "stage":
            continue
        if k not in GLOBAL_OPTIONS:
            raise PipelineError(f"{source}: unknown option {k!r} (global options: {', '.join(GLOBAL_OPTIONS)}; "
                                f"then [[stage]] tables)")
        if not isinstance(v, GLOBAL_OPTIONS[k]) or isinstance(v, bool):
            raise PipelineError(f"{source}: {k}: expected {GLOBAL_OPTIONS[k].__name__}, got {v!r}")
    shard_size = raw.get("shard_size", 256)
    if shard_size < 1:
        raise PipelineError(f"{source}: shard_size must be >= 1, got {shard_size}")
    stages, names = [], set()
    for n, st in enumerate(_stages(raw, source), 1):
        sname = st.get("name")
        if not isinstance(sname, str) or not sname:
            raise PipelineError(f"{source}: stage {n}: needs name = \"...\"")
        if sname in names:
            raise PipelineError(f"{source}: stage {sname!r}: the name is used twice")
        names.add(sname)
        extra = sorted(set(st) - set(STAGE_KEYS))
        if extra:
            raise PipelineError(f"{source}: stage {sname!r}: unknown key(s) {', '.join(extra)} "
                                f"(keys: name, title, ops)")
        tables = st.get("ops", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise PipelineError(f"{source}: stage {sname!r}: ops must be a list of op tables {{ op = \"...\", ... }}")
        ops = []
        for i, table in enumerate(tables, 1):
            try:
                ops.append(build_op(table))
            except (ValueError, TypeError) as e:   # OpError, or an op's own check of its options
                raise PipelineError(f"{source}: stage {sname!r}, op {i} ({table.get('op', '?')}): {e}") from None
        stages.append(Stage(sname, str(st.get("title", "")), ops))
    return Pipeline(source=source, name=str(raw.get("name", os.path.splitext(os.path.basename(source))[0])),
                    stages=stages, shard_size=shard_size, description=str(raw.get("description", "")), raw=raw)
