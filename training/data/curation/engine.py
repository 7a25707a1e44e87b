"""Run a pipeline over a set of records: shards of records, every op of every stage in order, resumable.

The records (sorted by key) are cut into shards of `shard_size` (at most the pipeline's, cut smaller so every
worker gets several: `_shard_size`). One function, `run_shard`, runs a list of ops over
one shard: each sample's image is decoded once (an `Item` shared by the ops) and a dropped sample stops there,
its stage recorded. A `GlobalOp` (dedup, best-per-category) needs every sample's statistic before it can decide,
so the ops are cut into phases after each one: all shards run up to it, `decide_all` sees every kept record, then
the next phase runs on the same shards. The local engine maps shards over a process pool (all cores by default);
ray_engine.py maps the same function over Ray tasks, so both write the same bytes.

OUT/ after a run:
    shards/plan.json            what the shards were cut from (pipeline + keys): a rerun with another refuses them
    shards/pN/NNNNN.jsonl       one finished shard of phase N (its counts on the first line), written atomically;
                                a rerun skips finished shards (the run resumes after a crash)
    manifest.jsonl              the kept records in the trainer's format (image, caption, category, weight, stats)
    images/                     kept webdataset members, extracted (the manifest points at them)
    dropped.jsonl               every dropped record: key, image, stage, op, reason, stats
    counts.json                 per stage and per op: in, kept, dropped, dropped by reason class
    report.html                 the funnel, histograms with thresholds, samples of what each op dropped"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict

import numpy as np

from ....qwenimage_core.images import write_atomic
from .op import GlobalOp, Item, Op, Record, run_op
from .pipeline import Pipeline
from .rows import manifest_row
from .sources import SOURCE_STAGE, read_bytes, read_inputs

Step = tuple[str, Op]   # (stage name, op)


class CurationError(RuntimeError):
    """A run that cannot start or continue (its output folder holds another run's shards)."""


# ------------------------------------------------------------------------------------------------ one shard

def run_shard(steps: list[Step], records: list[Record], reader=read_bytes) -> tuple[list[Record], list[dict]]:
    """Run `steps` over one shard's records -> (the records, one count dict per step). The engines' only unit of
    work: the local pool and Ray both call this, so they agree byte for byte. Items are made a few at a time
    (the largest op batch), so a shard of big images never sits decoded in memory all at once."""
    counts = [{"in": 0, "dropped": 0, "reasons": {}} for _ in steps]
    chunk = max([op.batch_size for _, op in steps] + [1])
    for i in range(0, len(records), chunk):
        items = [Item(r, reader=reader) for r in records[i:i + chunk]]
        for (stage, op), c in zip(steps, counts):
            live = [it for it in items if it.record.dropped is None]
            if not live:
                break
            run_op(op, live)
            c["in"] += len(live)
            for it in live:
                if it.record.dropped is not None:
                    it.record.stage = stage
                    _count_drop(c, it.record.dropped)
    for r in records:   # plain JSON values: a resumed shard (read back from disk) equals a fresh one
        r.stats = json.loads(json.dumps(r.stats, default=_plain))
    return records, counts


def _count_drop(c: dict, reason: str) -> None:
    c["dropped"] += 1
    cls = reason_class(reason)
    c["reasons"][cls] = c["reasons"].get(cls, 0) + 1


_OUTSIDE = re.compile(r"(\w+)=(\S+) outside \[(\S+), (\S+)\]")


def reason_class(reason: str) -> str:
    """A drop reason without its numbers and names, for counting: "luma < 0.05", "broken", "near duplicate"."""
    head, _, rest = reason.partition(": ")
    if head in ("broken", "source"):
        return head if head == "broken" else f"source {rest.partition(':')[0]}"
    if m := _OUTSIDE.match(rest):
        stat, v, lo, hi = m.groups()
        try:
            return f"{stat} < {lo}" if float(v) < float(lo) else f"{stat} > {hi}"
        except ValueError:
            return stat
    if m := re.match(r"(\w+)(=| missing)", rest):
        return m.group(1) + (" missing" if m.group(2) == " missing" else "")
    if rest.startswith("error:"):
        return "error"
    return re.split(r" of |: |\(|\d", rest)[0].strip() or "other"


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (set, tuple)):
        return list(v)
    return str(v)


# ------------------------------------------------------------------------------------------------ shard files

def _record_line(r: Record) -> str:
    return json.dumps(asdict(r), ensure_ascii=False, default=_plain)


write_text = write_atomic   # a reader (or a resumed run) never sees half a shard, manifest or report


def write_shard(path: str, records: list[Record], counts: list[dict]) -> None:
    write_text(path, "".join([json.dumps({"counts": counts}) + "\n"] + [_record_line(r) + "\n" for r in records]))


def read_shard(path: str) -> tuple[list[Record], list[dict]]:
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    return [Record(**json.loads(line)) for line in lines[1:]], json.loads(lines[0])["counts"]


def _check_plan(out: str, pipeline: Pipeline, shard_size: int, records: list[Record]) -> None:
    """Shards are only reused by the run that cut them: same pipeline, same shard size, same records."""
    keys = hashlib.sha256("\n".join(r.key for r in records).encode()).hexdigest()
    plan = {"pipeline": pipeline.raw, "shard_size": shard_size, "records": len(records), "keys_sha256": keys}
    path = os.path.join(out, "shards", "plan.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        if old != json.loads(json.dumps(plan)):
            what = [k for k in plan if old.get(k) != json.loads(json.dumps(plan[k]))]
            raise CurationError(f"{os.path.join(out, 'shards')} holds shards of another run (its {', '.join(what)} "
                                f"differ): delete that folder to start over, or choose another --out")
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text(path, json.dumps(plan, indent=1, default=_plain))


# ------------------------------------------------------------------------------------------------ local engine

_W: dict = {}


def _init_worker(steps, threads: int):
    """A pool worker: the phase's ops, and its share of the cores for OpenCV and torch (a process per core, each
    with every core's threads, would oversubscribe the machine)."""
    import sys

    _W["steps"] = steps
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    try:
        import cv2
        cv2.setNumThreads(threads)
    except ImportError:
        pass


def _pool_shard(task):
    idx, records = task
    return (idx, *run_shard(_W["steps"], records))


def local_map(steps: list[Step], tasks, workers: int):
    """(shard index, records, counts) for each (index, records) task, in the order they finish."""
    if workers == 1 or len(tasks) <= 1:
        for idx, records in tasks:
            yield (idx, *run_shard(steps, records))
        return
    import multiprocessing as mp

    # forkserver where there is one: a plain fork of a process whose torch already ran OpenMP threads can deadlock
    # in the child (libgomp is not fork-safe), and model ops run torch in the workers. The ops travel pickled
    # (model ops leave their loaded models behind) and their modules are imported afresh in each worker.
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    if ctx.get_start_method() == "forkserver":  # the server imports the package once; each worker forks from it
        ctx.set_forkserver_preload([__name__, __package__ + ".ops"])
    workers = min(workers, len(tasks))
    pool = ctx.Pool(workers, _init_worker, (steps, max(1, (os.cpu_count() or 1) // workers)))
    try:
        yield from pool.imap_unordered(_pool_shard, tasks)
        pool.close()   # done: let the workers exit on their own
    finally:
        pool.terminate()   # a no-op after close(); on an error or an interrupt, stops the rest
        pool.join()


# ------------------------------------------------------------------------------------------------ the run

def curate(inputs, out: str, pipeline: Pipeline, *, workers: int | None = None, ray: bool | str | None = None,
           shard_size: int | None = None, progress: bool = True, report: bool = True) -> dict:
    """Curate `inputs` (folders, .jsonl manifests, .tar, image files) with `pipeline` into `out`; -> counts (as
    counts.json).
    ray: None/False for the local pool, True for a local Ray, or a Ray address."""
    from tqdm.auto import tqdm

    out = os.path.abspath(out)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise CurationError(f"--out {out}: exists and is not a folder; give a folder (made if missing)")
    for name, v in (("workers", workers), ("shard_size", shard_size)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise CurationError(f"{name} must be a positive whole number, got {v!r}")
    workers = workers or os.cpu_count() or 1
    records = read_inputs(inputs)
    if not records:
        raise CurationError(f"no images found in {', '.join(map(str, inputs))}")
    shard_size = _shard_size(out, pipeline, shard_size, len(records), workers)
    _check_plan(out, pipeline, shard_size, records)
    shards = [records[i:i + shard_size] for i in range(0, len(records), shard_size)]
    if ray:
        from .ray_engine import ray_map

        def mapper(steps, tasks):
            return ray_map(run_shard, steps, tasks, address=None if ray is True else ray, num_cpus=workers)
    else:
        def mapper(steps, tasks):
            return local_map(steps, tasks, workers)

    step_counts: list[dict] = []
    for p, steps in enumerate(pipeline.phases()):
        folder = os.path.join(out, "shards", f"p{p}")
        os.makedirs(folder, exist_ok=True)
        done: dict[int, tuple] = {}
        for i in range(len(shards)):
            path = os.path.join(folder, f"{i:05d}.jsonl")
            if os.path.isfile(path):
                done[i] = read_shard(path)
        tasks = [(i, shards[i]) for i in range(len(shards)) if i not in done]
        bar = tqdm(total=sum(len(s) for _, s in tasks), desc=f"curate {p + 1}/{len(pipeline.phases())}",
                   unit="img", disable=not progress or not tasks)
        try:
            for i, recs, counts in mapper(steps, tasks):
                write_shard(os.path.join(folder, f"{i:05d}.jsonl"), recs, counts)
                done[i] = (recs, counts)
                bar.update(len(recs))
        finally:
            bar.close()
        shards = [done[i][0] for i in range(len(shards))]
        counts = _sum_counts([done[i][1] for i in range(len(shards))], len(steps))
        if steps and isinstance(steps[-1][1], GlobalOp):
            _decide_all(steps[-1], [r for s in shards for r in s], counts[-1])
        step_counts += counts

    records = [r for s in shards for r in s]
    totals = funnel(pipeline, records, step_counts)
    write_outputs(out, records, totals)
    if report:
        from .report import write_report

        write_report(out, pipeline, records, totals)
    return totals


SHARDS_PER_WORKER = 4   # a small set still gives every worker work, and one slow shard does not idle the rest


def _shard_size(out: str, pipeline: Pipeline, given: int | None, records: int, workers: int) -> int:
    """Records per shard: as given (--shard-size), else the pipeline's shard_size or less, so that each worker
    gets SHARDS_PER_WORKER shards (145 images on 2 workers were one shard of 256: one busy core). A rerun without
    --shard-size keeps the size its shards were cut with (plan.json), whatever its worker count."""
    if given:
        return given
    try:
        with open(os.path.join(out, "shards", "plan.json"), encoding="utf-8") as fh:
            return int(json.load(fh)["shard_size"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return max(1, min(pipeline.shard_size, math.ceil(records / (workers * SHARDS_PER_WORKER))))


def _sum_counts(per_shard: list[list[dict]], n: int) -> list[dict]:
    total = [{"in": 0, "dropped": 0, "reasons": {}} for _ in range(n)]
    for counts in per_shard:
        for t, c in zip(total, counts):
            t["in"] += c["in"]
            t["dropped"] += c["dropped"]
            for k, v in c["reasons"].items():
                t["reasons"][k] = t["reasons"].get(k, 0) + v
    return total


def _decide_all(step: Step, records: list[Record], c: dict) -> None:
    """The global op's decision over every record still kept; its drops join its counts."""
    stage, op = step
    reasons = op.decide_all([r for r in records if r.dropped is None])
    for r in records:
        if r.dropped is None and r.key in reasons:
            r.dropped, r.stage = f"{op.name}: {reasons[r.key]}", stage
            _count_drop(c, r.dropped)


def funnel(pipeline: Pipeline, records: list[Record], step_counts: list[dict]) -> dict:
    """counts.json: the source's drops, then per stage and per op in, kept, dropped and dropped by reason class."""
    source = {"in": len(records), "dropped": 0, "reasons": {}}
    for r in records:
        if r.stage == SOURCE_STAGE:
            _count_drop(source, r.dropped)
    live = source["kept"] = source["in"] - source["dropped"]
    stages, k = [], 0
    for st in pipeline.stages:
        ops = []
        s_in = live
        for op in st.ops:
            c = step_counts[k]
            k += 1
            c = {"op": op.name, "in": live, "kept": live - c["dropped"], "dropped": c["dropped"],
                 "reasons": dict(sorted(c["reasons"].items(), key=lambda kv: -kv[1]))}
            live = c["kept"]
            ops.append(c)
        stages.append({"name": st.name, "title": st.title, "in": s_in, "kept": live, "dropped": s_in - live,
                       "ops": ops})
    return {"pipeline": pipeline.name, "records": len(records), "kept": live, "source": source, "stages": stages}


def write_outputs(out: str, records: list[Record], totals: dict) -> None:
    kept = [manifest_row(out, r) for r in records if r.dropped is None]
    write_text(os.path.join(out, "manifest.jsonl"),
               "".join(json.dumps(row, ensure_ascii=False, default=_plain) + "\n" for row in kept))
    dropped = [{"key": r.key, "image": r.image, "stage": r.stage, "op": r.dropped.partition(":")[0],
                "reason": r.dropped, "stats": r.stats} for r in records if r.dropped is not None]
    write_text(os.path.join(out, "dropped.jsonl"),
               "".join(json.dumps(row, ensure_ascii=False, default=_plain) + "\n" for row in dropped))
    write_text(os.path.join(out, "counts.json"), json.dumps(totals, indent=1, ensure_ascii=False) + "\n")
