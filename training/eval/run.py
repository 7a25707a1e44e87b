"""One evaluation run: a suite's items -> images (generate.py) -> scores (the rewards registry) -> results.jsonl
-> the report (report.py). Everything a run makes lives in OUT/<suite>/<model_tag>/:

  run.json       suite, model, data file, sampling settings, scorer specs, when, package version
  images/        <id>_<k>.png, the k-th image of an item (seed = seed_base + item.seed + k)
  results.jsonl  one row per scored image: id, k, prompt, category, seed, image, inputs, metrics, failures,
                 details (what the scorers said: OCR read-back, judge answers), when any
  skipped.jsonl  rows of the suite file left out with on_error="skip"

Resuming is the default: images on disk are not made again and rows in results.jsonl are not scored again. A run
directory keeps its settings: asking it for other ones is an error naming them (mixed images would compare
nothing). Other scorers are not: the kept images are scored again with them, the earlier rows set aside as
results.<n>.jsonl. A scorer that fails on an image leaves its metrics null with the reason in "failures"; the run
goes on.

`score_folder` (`qwenimage eval SUITE --images DIR`) scores images a user already has, made by anything: the
image k of item <id> is DIR/<id>_<k>.<ext> (k any whole number: an earlier run's images/ folder and LongText's
<prompt_id>_<1..4>.png both fit) or DIR/<id>.<ext> (k = 0), ext one of IMAGE_EXTS. Its run directory is
OUT/<suite>/images_<DIR name>/; its rows name the files where they are (nothing copied) and its run.json has no
sampling settings (none are known), so the report shows none.

`evaluate(pipeline, items, scorers, out_dir)` is the same path for a pipeline already in memory (the trainer's
periodic held-out evaluation)."""
from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import replace
from typing import Sequence

from ...qwenimage_core.images import load_image, not_regular, write_atomic
from ..rewards import base as rewards
from .generate import Settings, generate, image_path, image_seed, process_split
from .suites.base import EvalItem, get_suite

RESULTS = "results.jsonl"
JUDGED = ("vlm_questions", "edit_judge", "prompt_following")  # the scorers --judge configures


class RunDirError(ValueError):
    """A run directory made with other settings, or a damaged results.jsonl; names the file and what differs."""


# ------------------------------------------------------------------------------------------------ run files

def model_tag(model, lora: Sequence[str] = ()) -> str:
    """A folder name for a model (its folder or file name, LoRA names appended)."""
    first = model[0] if isinstance(model, (list, tuple)) else model
    stem = os.path.splitext(os.path.basename(os.path.normpath(os.fspath(first))))[0]
    for path in lora:
        stem += "+" + os.path.splitext(os.path.basename(path.rsplit(":", 1)[0]))[0]
    return re.sub(r"[^\w.+\-]+", "-", stem) or "model"


def write_json_atomic(path: str, data) -> None:
    write_atomic(path, json.dumps(data, indent=1, ensure_ascii=False))


def check_run_json(run_dir: str, info: dict) -> dict | None:
    """Refuse to resume a run directory with other settings; -> its run.json (None: a new directory)."""
    path = os.path.join(run_dir, "run.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        old = json.load(fh)
    differ = [f"{k}: {old.get(k)!r} there, {info.get(k)!r} now" for k in ("suite", "model_tag", "images")
              if old.get(k) != info.get(k)]
    differ += [f"settings.{k}: {v!r} there, {(info['settings'] or {}).get(k)!r} now"
               for k, v in (old.get("settings") or {}).items() if (info["settings"] or {}).get(k) != v]
    if differ:
        raise RunDirError(f"{path}: this run directory was made with other settings ({'; '.join(differ)}); "
                          "use another --out, or the same settings to resume it")
    return old


def start_run_dir(run_dir: str, info: dict, old: dict | None) -> None:
    """run.json written for a new run; with other scorers than `old`'s, the rows scored so far set aside as
    results.<n>.jsonl (kept, not deleted) so every kept image is scored again with the new ones."""
    os.makedirs(run_dir, exist_ok=True)
    if old is not None and old.get("scorers") == info["scorers"]:
        return
    results = os.path.join(run_dir, RESULTS)
    if old is not None and os.path.isfile(results):
        n = 1
        while os.path.exists(os.path.join(run_dir, f"results.{n}.jsonl")):
            n += 1
        os.replace(results, os.path.join(run_dir, f"results.{n}.jsonl"))
        print(f"note: {run_dir}: scorers changed ({old.get('scorers')} -> {info['scorers']}): the kept images are "
              f"scored again; the earlier rows are in results.{n}.jsonl")
    write_json_atomic(os.path.join(run_dir, "run.json"),
                      {**info, "created": old.get("created", info["created"])} if old else info)


def read_results(run_dir: str) -> list[dict]:
    """The rows of results.jsonl; a torn last line (a run killed mid-write) is dropped, any other bad line is an
    error naming it."""
    path = os.path.join(run_dir, RESULTS)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # no newline after it: the write was cut off
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                break
            raise RunDirError(f"{path}:{n}: not valid JSON; fix or delete the line (its image is kept)") from None
    return rows


def append_rows(run_dir: str, rows: list[dict]) -> None:
    with open(os.path.join(run_dir, RESULTS), "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        fh.flush()
        os.fsync(fh.fileno())


def write_skipped(run_dir: str, skipped: Sequence[dict]) -> None:
    """skipped.jsonl: the suite file's rows left out with on_error="skip"."""
    if skipped:
        write_atomic(os.path.join(run_dir, "skipped.jsonl"),
                     "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped))


# ------------------------------------------------------------------------------------------------- scoring

def prepare_scorers(specs: Sequence, judge: str | None = None) -> list[dict]:
    """Specs as dicts, --judge given to the judged scorers that name no model or endpoint, names checked (before
    any generation: a typo must not cost an hour of sampling)."""
    out = []
    for s in specs:
        s = {"name": s} if isinstance(s, str) else dict(s)
        name = s.get("name")
        if not name or (name not in rewards.REGISTRY and ":" not in name):
            raise ValueError(f"unknown scorer {name!r} (known: {', '.join(sorted(rewards.REGISTRY))}, or "
                             "module:function)")
        if judge and name in JUDGED and not ({"model", "endpoint"} & set(s)):
            s["endpoint" if judge.startswith(("http://", "https://")) else "model"] = judge
        out.append(s)
    return out


class Scorers:
    """The built scorers of a run; `requires` in a spec limits it to items whose meta holds that key."""

    def __init__(self, specs: list[dict]):
        self.parts = []
        for spec in specs:
            spec = dict(spec)
            requires = spec.pop("requires", None)
            name, fn = rewards.build(spec)
            self.parts.append((name, requires, fn))

    def __call__(self, items: list[EvalItem], images: list) -> tuple[list[dict], list[dict], list[dict]]:
        """-> (metrics, failures, details), one dict each per image; details: what a scorer said about the image
        (its `fn.details[i]`: OCR read-back, judge answers), for the report."""
        metrics = [{} for _ in items]
        failures = [{} for _ in items]
        details = [{} for _ in items]
        for name, requires, fn in self.parts:
            idx = [i for i, it in enumerate(items) if requires is None or requires in it.meta]
            try:
                self._one(name, fn, idx, items, images, metrics, failures, details)
            except Exception:  # the batch failed: each image alone, so one bad image does not sink the others
                for i in idx:
                    try:
                        self._one(name, fn, [i], items, images, metrics, failures, details)
                    except Exception as e:  # recorded for this image; the run goes on
                        metrics[i][name] = None
                        failures[i][name] = str(e)
        return metrics, failures, details

    @staticmethod
    def _one(name, fn, idx, items, images, metrics, failures, details) -> None:
        if not idx:
            return
        meta = [{**items[i].meta, "id": items[i].id, "category": items[i].category, "inputs": list(items[i].inputs)}
                for i in idx]
        out = rewards.metrics(name, fn, [images[i] for i in idx], [items[i].prompt for i in idx], meta)
        reasons = dict(getattr(fn, "failures", None) or {})
        said = getattr(fn, "details", None)
        for metric, values in out.items():
            for j, i in enumerate(idx):
                metrics[i][metric] = values[j]
                if values[j] is None:
                    failures[i][metric] = reasons.get(j, "no value")
        for j, i in enumerate(idx):
            if isinstance(said, dict) and j in said:
                details[i][name] = said[j]


def score(run_dir: str, items: Sequence[EvalItem], settings: Settings, specs: list[dict], batch: int = 8,
          progress: bool = True) -> int:
    """Score the generated images on disk that have no row yet; returns how many rows were added."""
    jobs = [(it, k, image_path(it, k), image_seed(it, k, settings)) for it in items
            for k in range(settings.images_per_prompt) if os.path.isfile(os.path.join(run_dir, image_path(it, k)))]
    return score_jobs(run_dir, jobs, specs, batch, progress)


def score_jobs(run_dir: str, jobs: Sequence[tuple], specs: list[dict], batch: int = 8, progress: bool = True) -> int:
    """Score (item, k, image path (relative to run_dir, or absolute), seed or None) jobs that have no row yet."""
    done = {(r["id"], r["k"]) for r in read_results(run_dir)}
    jobs = [j for j in jobs if (j[0].id, j[1]) not in done]
    if not jobs:
        return 0
    scorers = Scorers(specs)
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="scoring", unit="image", disable=not progress)
    failed: dict[str, list[str]] = {}
    for start in range(0, len(jobs), batch):
        group = jobs[start:start + batch]
        images = [load_image(os.path.join(run_dir, path), f"item {it.id} image {k}") for it, k, path, _ in group]
        metrics, failures, details = scorers([it for it, *_ in group], images)
        for f in failures:
            for metric, reason in f.items():
                failed.setdefault(metric, []).append(reason)
        append_rows(run_dir, [{"id": it.id, "k": k, "prompt": it.prompt, "category": it.category, "seed": seed,
                               "image": path, "inputs": list(it.inputs), "metrics": m, "failures": f,
                               **({"details": d} if d else {})}
                              for (it, k, path, seed), m, f, d in zip(group, metrics, failures, details)])
        bar.update(len(group))
    bar.close()
    for metric, reasons in failed.items():
        print(f"note: {metric}: no value for {len(reasons)} of {len(jobs)} images (first: {reasons[0]})")
    return len(jobs)


# ------------------------------------------------------------------------------------------------- reports

def summarize(rows: list[dict]) -> dict:
    """report.summarize when it is there; else the overall means (non-null values) and failure count."""
    try:
        from .report import summarize as full
    except ImportError:
        values: dict[str, list[float]] = {}
        for r in rows:
            for m, v in r["metrics"].items():
                if v is not None:
                    values.setdefault(m, []).append(v)
        return {"overall": {m: sum(v) / len(v) for m, v in values.items()}, "n": len(rows),
                "failures": sum(len(r["failures"]) for r in rows)}
    return full(rows)


def write_reports(run_dir: str, compare_dir: str | None = None) -> dict:
    """report.write_reports (metrics.json, results.csv, report.html); {} with a note until report.py lands."""
    try:
        from .report import write_reports as write
    except ImportError:
        print(f"note: no report written (training/eval/report.py is not installed); the rows are in "
              f"{os.path.join(run_dir, RESULTS)}")
        return {}
    return write(run_dir, compare_dir) if compare_dir else write(run_dir)


# ---------------------------------------------------------------------------------------------------- runs

def _version() -> str:
    try:
        from importlib.metadata import version

        return version("qwenimage")
    except Exception:  # not installed (a bare checkout)
        return "unknown"


def run_items(pipe, suite: str, items: Sequence[EvalItem], specs: list[dict], run_dir: str, settings: Settings,
              model: str = "pipeline", data_file: str | None = None, batch: int = 1, score_batch: int = 8,
              progress: bool = True, skipped: Sequence[dict] = ()) -> dict | None:
    """Generate, score and report one run directory. `pipe`: a QwenImage, or a callable that loads one (called
    only if an image is missing). Returns the summary (None on processes other than the main one)."""
    if settings.images_per_prompt is None:
        settings = replace(settings, images_per_prompt=1)
    info = {"suite": suite, "model": model, "model_tag": os.path.basename(os.path.normpath(run_dir)),
            "data_file": data_file, "settings": settings.to_dict(), "scorers": specs,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "qwenimage_version": _version()}
    old = check_run_json(run_dir, info)
    rank, world, wait = process_split()
    if rank == 0:
        start_run_dir(run_dir, info, old)
        os.makedirs(os.path.join(run_dir, "images"), exist_ok=True)
        write_skipped(run_dir, skipped)
    wait()
    generate(pipe, items, run_dir, settings, batch=batch, rank=rank, world=world, progress=progress)
    wait()
    if rank != 0:
        return None
    score(run_dir, items, settings, specs, batch=score_batch, progress=progress)
    ids = {it.id for it in items}
    return summarize([r for r in read_results(run_dir) if r["id"] in ids])


def evaluate(pipeline, suite_items: Sequence[EvalItem], scorers: Sequence, out_dir: str,
             settings: Settings | None = None, suite: str = "prompts", batch: int = 1, progress: bool = False,
             report: bool = True) -> dict:
    """The trainer's hook: evaluate a pipeline in memory (e.g. QwenImage(model, vae, text_encoder) inside
    `Trainer.validate`) on items (`get_suite(name).load(path).items`), writing out_dir/{images,results.jsonl,...}.
    Returns the summary {"overall": {metric: mean}, ...}."""
    settings = settings or Settings()
    specs = prepare_scorers(scorers)
    summary = run_items(pipeline, suite, list(suite_items), specs, out_dir, settings, batch=batch, progress=progress)
    if report and summary is not None:
        write_reports(out_dir)
    return summary


def suite_settings(suite, s: Settings) -> Settings:
    """The suite's size and image count where the settings leave them None."""
    width, height = (s.width, s.height) if s.width and s.height else (suite.size or (None, None))
    return replace(s, width=width, height=height, images_per_prompt=s.images_per_prompt or suite.images_per_prompt)


def run_suite(suite_name: str, data: str, model, out: str, settings: Settings, scorers: Sequence | None = None,
              compare=None, limit: int | None = None, batch: int = 1, on_error: str = "stop", judge: str | None = None,
              lora: Sequence[str] = (), load=None, progress: bool = True) -> dict:
    """`qwenimage eval`: the suite file read (and checked) before any model loads; the run; with `compare` (a
    model, or a run directory) the second run on the same items and seeds, and the side-by-side report.
    `load(model, lora) -> QwenImage` loads a model (the CLI's: device, dtype); the LoRAs apply to `model` only,
    so `--model base --lora style.safetensors --compare base` measures what the LoRA changes. Returns
    {"run_dir", "summary", "reports", ...} (plus "compare_dir" and "compare_summary")."""
    suite, items, loaded, specs = _load_suite(suite_name, data, out, scorers, limit, on_error, judge)
    settings = suite_settings(suite, settings)
    other_run = compare is not None and not isinstance(compare, (list, tuple)) and os.path.isfile(
        os.path.join(os.fspath(compare), "run.json"))
    tag = model_tag(model, lora)
    run_dir = os.path.join(out, suite_name, tag)
    common = dict(data_file=os.path.abspath(data), batch=batch, progress=progress, skipped=loaded.skipped)
    summary = run_items(lambda: load(model, lora), suite_name, items, specs, run_dir, settings, model=_name(model),
                        **common)
    result = {"run_dir": run_dir, "summary": summary, "items": len(items), "skipped": len(loaded.skipped)}
    compare_dir = None
    if other_run:
        compare_dir = os.fspath(compare)
    elif compare is not None:  # every process samples the second model too; the main one scores it
        tag_b = model_tag(compare)
        compare_dir = os.path.join(out, suite_name, tag_b if tag_b != tag else tag_b + "_b")
        result["compare_summary"] = run_items(lambda: load(compare, ()), suite_name, items, specs, compare_dir,
                                              settings, model=_name(compare), **common)
    result["compare_dir"] = compare_dir
    if summary is None:  # not the main process
        return result
    if other_run:
        _warn_if_other_settings(compare_dir, suite_name, settings)
    result["reports"] = write_reports(run_dir, compare_dir)
    return result


def _load_suite(suite_name, data, out, scorers, limit, on_error, judge):
    """(suite, items, Loaded, scorer specs): the suite file read and checked, and the scorers, before any work."""
    suite = get_suite(suite_name)
    loaded = suite.load(data, on_error, cache_dir=os.path.join(out, suite_name, "inputs"))
    items = loaded.items[:limit] if limit else loaded.items
    for s in loaded.skipped:
        print(f"skipped {s['where']}: {s['error']}")
    specs = scorers if scorers else suite.default_scorers(items)
    if not specs:  # a run with no scorer writes empty metrics and says nothing is wrong
        raise ValueError(f"the {suite_name} suite has no scorer of its own (a prompt set of yours has no agreed "
                         "measure): give --scorer, e.g. --scorer clip or --scorer text_rendering")
    return suite, items, loaded, prepare_scorers(specs, judge)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
MAX_IMAGE_BYTES = 256 << 20  # an image file past 256 MiB is not one a text-to-image model made


def folder_jobs(folder: str, items: Sequence[EvalItem]) -> tuple[list[tuple], list[str]]:
    """(item, k, absolute path, None) for every image of `folder` named after an item (see the module doc), and
    notes on what was left out: files that are not regular or too large, items with no image."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images {folder}: not a folder of images")
    by_id = {it.id: it for it in items}
    found, notes = {}, []
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTS:
            continue
        head, _, tail = stem.rpartition("_")
        key = (stem, 0) if stem in by_id else (head, int(tail)) if head in by_id and tail.isdigit() else None
        if key is None:
            continue
        path = os.path.join(folder, name)
        why = not_regular(path, MAX_IMAGE_BYTES)
        if why:
            notes.append(f"{path}: {why}")
        elif key in found:
            notes.append(f"{path}: image {key[1]} of item {key[0]} is {found[key]} already; left out")
        else:
            found[key] = path
    if not found:
        raise ValueError(f"--images {folder}: no image named after an item of the suite (<id>_<k>.png or <id>.png, "
                         f"e.g. {items[0].id}_0.png)")
    missing = [it.id for it in items if not any(i == it.id for i, _ in found)]
    if missing:
        notes.append(f"{len(missing)} of {len(items)} items have no image in {folder} (first: {missing[0]}); "
                     "they are not scored")
    return [(by_id[i], k, path, None) for (i, k), path in sorted(found.items())], notes


def score_folder(suite_name: str, data: str, folder: str, out: str, scorers: Sequence | None = None,
                 limit: int | None = None, on_error: str = "stop", judge: str | None = None,
                 progress: bool = True) -> dict:
    """`qwenimage eval SUITE --images DIR`: score images made elsewhere (module doc: how they are named). Returns
    {"run_dir", "summary", "reports", "items", "skipped", "images"}."""
    suite, items, loaded, specs = _load_suite(suite_name, data, out, scorers, limit, on_error, judge)
    jobs, notes = folder_jobs(folder, items)
    for note in notes:
        print(f"note: {note}")
    tag = "images_" + model_tag(folder)
    run_dir = os.path.join(out, suite_name, tag)
    info = {"suite": suite_name, "model": None, "model_tag": tag, "images": os.path.abspath(folder),
            "data_file": os.path.abspath(data), "settings": None, "scorers": specs,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "qwenimage_version": _version()}
    start_run_dir(run_dir, info, check_run_json(run_dir, info))
    write_skipped(run_dir, loaded.skipped)
    score_jobs(run_dir, jobs, specs, progress=progress)
    ids = {it.id for it in items}
    summary = summarize([r for r in read_results(run_dir) if r["id"] in ids])
    return {"run_dir": run_dir, "summary": summary, "reports": write_reports(run_dir), "items": len(items),
            "skipped": len(loaded.skipped), "images": len(jobs)}


def _warn_if_other_settings(run_dir: str, suite: str, settings: Settings) -> None:
    with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as fh:
        theirs = json.load(fh)
    if theirs.get("suite") != suite or theirs.get("settings") != settings.to_dict():
        print(f"warning: {run_dir} was made for suite {theirs.get('suite')!r} with settings {theirs.get('settings')};"
              f" this run: {suite!r}, {settings.to_dict()}; only the items with the same id and seed line up")


def _name(model) -> str:
    return " ".join(map(os.fspath, model)) if isinstance(model, (list, tuple)) else os.fspath(model)
