"""Reports of an evaluation run that a person can skim: metrics.json (means overall and per category), results.csv
(one row per image, for spreadsheets) and report.html (score table, per-category breakdown, the worst and best
images per metric, and with a second run the two models side by side per prompt and seed).

A run directory is OUT/<suite>/<model_tag>/ with run.json, images/ and results.jsonl (one row per image: id, k,
prompt, category, seed, image (relative path), inputs, metrics {name: float | null}, failures {name: reason}, and
optionally details {scorer: what it said}: shown folded under the image).
Means are over the values present (null is a recorded failure, counted, not averaged as 0). A row that is not
JSON or lacks its id is listed under "problems" in every report and skipped; the report is still written. A row
repeated for the same (id, k) (a resumed run) counts once, the last one.

The HTML is one self-contained file: images are embedded as JPEG thumbnails (THUMB px, about 10 KB each; the
page needs nothing beside it and can be mailed alone), every text from the run is escaped. The comparison matches rows by (id, k): the same prompt with the same
seed in both runs; a row one run lacks is shown as missing, never dropped."""
from __future__ import annotations

import csv
import functools
import html
import io
import json
import math
import os
import statistics
from collections import defaultdict

LOWER_IS_BETTER = {"lpips"}  # every other metric: higher is better
GRID = 8  # images per worst/best grid
THUMB = 200  # px, the page's largest image box


# ------------------------------------------------------------------------------------------------------ reading

def read_run(run_dir) -> tuple[dict, list[dict], list[str]]:
    """(run.json or {}, rows of results.jsonl (last per (id, k)), problems found reading them)."""
    run_dir = os.fspath(run_dir)
    path = os.path.join(run_dir, "results.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no results.jsonl in the run folder {run_dir} (run the evaluation first)")
    problems, rows = [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                problems.append(f"{path} line {n}: not JSON ({e})")
                continue
            problem = _check_row(row)
            if problem:
                problems.append(f"{path} line {n}: {problem}")
                continue
            rows[(str(row["id"]), int(row.get("k", 0)))] = row
    info = {}
    run_json = os.path.join(run_dir, "run.json")
    if os.path.isfile(run_json):
        try:
            with open(run_json, encoding="utf-8") as f:
                info = json.load(f)
        except ValueError as e:
            problems.append(f"{run_json}: not JSON ({e})")
    return info, list(rows.values()), problems


def _check_row(row) -> str | None:
    if not isinstance(row, dict):
        return f"a row must be an object, not {type(row).__name__}"
    if "id" not in row:
        return "no 'id'"
    try:
        int(row.get("k", 0))
    except (TypeError, ValueError):
        return f"'k' is {row.get('k')!r}, not an integer"
    metrics = row.get("metrics", {})
    if not isinstance(metrics, dict):
        return f"'metrics' must be an object, not {type(metrics).__name__}"
    for name, v in metrics.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            return f"metric {name!r} is {v!r}, not a finite number or null"
    return None


def metric_names(rows) -> list[str]:
    names = []
    for row in rows:
        names += [m for m in row.get("metrics", {}) if m not in names]
    return names


# ------------------------------------------------------------------------------------------------ summarising

def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summarize(rows) -> dict:
    """{"overall": {metric: mean}, "by_category": {category: {metric: mean}}, "n": rows, "scored": {metric:
    non-null values}, "failures": {name: rows with a recorded failure for it}}; means over non-null values."""
    names = metric_names(rows)
    by_cat = defaultdict(list)
    for row in rows:
        by_cat[str(row.get("category") or "")].append(row)
    failures = defaultdict(int)
    for row in rows:
        for name in (row.get("failures") or {}):
            failures[name] += 1
    column = {m: [row.get("metrics", {}).get(m) for row in rows] for m in names}
    return {"overall": {m: _mean(column[m]) for m in names},
            "by_category": {c: {m: _mean(r.get("metrics", {}).get(m) for r in rs) for m in names}
                            for c, rs in sorted(by_cat.items())},
            "n": len(rows),
            "scored": {m: sum(v is not None for v in column[m]) for m in names},
            "failures": dict(sorted(failures.items()))}


# ------------------------------------------------------------------------------------------------------ writing

def _write_atomic(path: str, text: str) -> None:
    from ...qwenimage_core.images import write_atomic

    write_atomic(path, text)


def results_csv(rows) -> str:
    names = metric_names(rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "k", "category", "seed", "prompt", "image", *names, "failures"])
    for row in rows:
        m = row.get("metrics", {})
        fails = "; ".join(f"{k}: {v}" for k, v in (row.get("failures") or {}).items())
        w.writerow([row["id"], row.get("k", 0), row.get("category", ""), row.get("seed", ""), row.get("prompt", ""),
                    row.get("image", ""), *("" if m.get(n) is None else m[n] for n in names), fails])
    return buf.getvalue()


def _tag(run_dir: str, info: dict) -> str:
    return str(info.get("model_tag") or os.path.basename(os.path.normpath(run_dir)))


def write_reports(run_dir, compare_dir=None) -> dict:
    """metrics.json, results.csv and report.html in `run_dir`; with `compare_dir` (another model's run of the same
    suite) the report gets the side-by-side section, and OUT/<suite>/compare_<a>_vs_<b>.html is written too.
    Returns {"metrics": path, "csv": path, "html": path[, "compare": path]}."""
    run_dir = os.fspath(run_dir)
    info, rows, problems = read_run(run_dir)
    other = None
    if compare_dir is not None:
        o_info, o_rows, o_problems = read_run(compare_dir)
        other = (os.fspath(compare_dir), o_info, o_rows)
        problems = problems + o_problems
    summary = summarize(rows)
    paths = {"metrics": os.path.join(run_dir, "metrics.json"), "csv": os.path.join(run_dir, "results.csv"),
             "html": os.path.join(run_dir, "report.html")}
    record = {k: info.get(k) for k in ("suite", "model", "images", "model_tag", "settings", "scorers", "created")}
    _write_atomic(paths["metrics"], json.dumps({**record, **summary, "problems": problems}, indent=1,
                                               ensure_ascii=False) + "\n")
    _write_atomic(paths["csv"], results_csv(rows))
    _write_atomic(paths["html"], render_report(run_dir, info, rows, summary, problems, other))
    if other is not None:
        name = f"compare_{_tag(run_dir, info)}_vs_{_tag(other[0], other[1])}.html"
        paths["compare"] = compare(run_dir, other[0], os.path.join(os.path.dirname(os.path.abspath(run_dir)), name))
    return paths


def compare(run_a, run_b, out_html) -> str:
    """One HTML page comparing two runs of a suite: both score tables with deltas, and every (id, k) side by side.
    Returns out_html."""
    run_a, run_b, out_html = os.fspath(run_a), os.fspath(run_b), os.fspath(out_html)
    a_info, a_rows, a_problems = read_run(run_a)
    b_info, b_rows, b_problems = read_run(run_b)
    a, b = (run_a, a_info, a_rows), (run_b, b_info, b_rows)
    title = f"{_tag(run_a, a_info)} vs {_tag(run_b, b_info)}"
    body = (f"<h1>{_e(a_info.get('suite') or '')}: {_e(title)}</h1>" + _problems(a_problems + b_problems)
            + _comparison(a, b))
    _write_atomic(out_html, _page(title, body))
    return out_html


# ------------------------------------------------------------------------------------------------------- HTML

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}pre{white-space:pre-wrap;font-size:11px}
table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td.t,th.t{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:18px}figure{margin:0;width:200px;font-size:12px}
img{width:160px;height:160px;object-fit:contain;display:block;background:#eee}figure img{width:200px;height:200px}
.up{color:#080}.down{color:#b00}.missing{color:#b00;font-style:italic}code{font-size:12px}"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4g}"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style>"
            f"</head><body>{body}</body></html>\n")


@functools.lru_cache(maxsize=1024)
def _thumbnail(path: str, stamp: tuple) -> str:
    """A data URI of the image at `path` (`stamp`: its mtime and size, so a remade image is read again), or the
    reason it cannot be shown; an image is read once however many tables show it."""
    from ...qwenimage_core.images import load_image, thumbnail_uri

    try:
        return thumbnail_uri(load_image(path), THUMB)
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"


def _embed(run_dir: str, rel, alt: str) -> str:
    """<img> of an image (a path relative to the run folder, or absolute) embedded as a thumbnail."""
    path = os.path.join(run_dir, os.fspath(rel))
    try:
        st = os.stat(path)
    except OSError:
        return f"<div class='missing' title='{_e(path)}'>image missing</div>"
    uri = _thumbnail(path, (st.st_mtime_ns, st.st_size))
    if not uri.startswith("data:"):
        return f"<div class='missing' title='{_e(uri)}'>unreadable image</div>"
    return f"<img src='{uri}' alt='{_e(alt)}' title='{_e(rel)}'>"


def _img(run_dir: str, row: dict) -> str:
    if not row.get("image"):
        return "<div class='missing'>no image</div>"
    return _embed(run_dir, row["image"], str(row["id"]))


def _input(run_dir: str, row: dict) -> str:
    """The first edit input of a row, as a thumbnail."""
    first = next(iter(row.get("inputs") or ()), None)
    return _embed(run_dir, first, "input") if first else ""


def _caption(row: dict, limit: int = 160) -> str:
    prompt = str(row.get("prompt", ""))
    short = prompt if len(prompt) <= limit else prompt[:limit] + "…"
    return f"<code>{_e(row['id'])} #{_e(row.get('k', 0))}</code> <span title='{_e(prompt)}'>{_e(short)}</span>"


def _details(row: dict) -> str:
    """What the scorers said about the image (a row's optional "details": OCR read-back, judge answers), folded."""
    if not row.get("details"):
        return ""
    text = json.dumps(row["details"], ensure_ascii=False, indent=1)
    return f"<details><summary>details</summary><pre>{_e(text[:2000])}</pre></details>"


def _problems(problems) -> str:
    if not problems:
        return ""
    return "<h2>Problems</h2><ul>" + "".join(f"<li>{_e(p)}</li>" for p in problems) + "</ul>"


def _score_table(summary: dict) -> str:
    head = "<tr><th class='t'>metric</th><th>mean</th><th>scored</th></tr>"
    body = "".join(f"<tr><td class='t'>{_e(m)}{' (lower is better)' if m in LOWER_IS_BETTER else ''}</td>"
                   f"<td>{_fmt(v)}</td><td>{summary['scored'][m]} / {summary['n']}</td></tr>"
                   for m, v in summary["overall"].items())
    fails = "".join(f"<li>{_e(k)}: {n} image(s)</li>" for k, n in summary["failures"].items())
    return (f"<h2>Scores</h2><table>{head}{body}</table>"
            + (f"<p>Recorded failures (no value, not averaged):</p><ul>{fails}</ul>" if fails else ""))


def _category_table(summary: dict) -> str:
    names = list(summary["overall"])
    if not summary["by_category"] or list(summary["by_category"]) == [""]:
        return ""
    head = "<tr><th class='t'>category</th>" + "".join(f"<th>{_e(m)}</th>" for m in names) + "</tr>"
    body = "".join(f"<tr><td class='t'>{_e(c or '(none)')}</td>" + "".join(f"<td>{_fmt(v[m])}</td>" for m in names)
                   + "</tr>" for c, v in summary["by_category"].items())
    return f"<h2>By category</h2><table>{head}{body}</table>"


def _grids(run_dir: str, rows) -> str:
    out = []
    for m in metric_names(rows):
        scored = [r for r in rows if r.get("metrics", {}).get(m) is not None]
        if not scored:
            continue
        scored.sort(key=lambda r: r["metrics"][m], reverse=m in LOWER_IS_BETTER)  # worst first
        for label, part in (("worst", scored[:GRID]), ("best", scored[::-1][:GRID])):
            cards = "".join(f"<figure>{_img(run_dir, r)}<figcaption><b>{_fmt(r['metrics'][m])}</b> "
                            f"{_caption(r)}{_details(r)}</figcaption></figure>" for r in part)
            out.append(f"<h3>{_e(m)}: {label}</h3><div class='grid'>{cards}</div>")
    return "<h2>Worst and best images</h2>" + "".join(out) if out else ""


def _cell(row: dict | None, m: str) -> str:
    """A row's value of metric m; "missing" when the run has no such row; "failed" with its reason on hover."""
    if row is None:
        return "<td><span class=missing>missing</span></td>"
    v = row.get("metrics", {}).get(m)
    if v is not None:
        return f"<td>{_fmt(v)}</td>"
    fails = row.get("failures") or {}
    reason = fails.get(m) or "; ".join(f"{k}: {r}" for k, r in fails.items())
    return f"<td title='{_e(reason)}'><span class=missing>failed</span></td>" if reason else "<td>–</td>"


def _delta(m: str, a, b) -> str:
    if a is None or b is None:
        return "<td>–</td>"
    d = b - a
    better = d < 0 if m in LOWER_IS_BETTER else d > 0
    cls = "" if d == 0 else (" class='up'" if better else " class='down'")
    return f"<td{cls}>{d:+.4g}</td>"


def _comparison(a, b) -> str:
    """Overall means of both runs with deltas (b - a), then every (id, k) of either run side by side."""
    (a_dir, a_info, a_rows), (b_dir, b_info, b_rows) = a, b
    ta, tb = _tag(a_dir, a_info), _tag(b_dir, b_info)
    sa, sb = summarize(a_rows), summarize(b_rows)
    names = metric_names(a_rows) + [m for m in metric_names(b_rows) if m not in metric_names(a_rows)]
    table = (f"<table><tr><th class='t'>metric</th><th>{_e(ta)}</th><th>{_e(tb)}</th><th>delta</th></tr>"
             + "".join(f"<tr><td class='t'>{_e(m)}</td><td>{_fmt(sa['overall'].get(m))}</td>"
                       f"<td>{_fmt(sb['overall'].get(m))}</td>{_delta(m, sa['overall'].get(m), sb['overall'].get(m))}"
                       "</tr>" for m in names) + "</table>")
    cats = list(sa["by_category"]) + [c for c in sb["by_category"] if c not in sa["by_category"]]
    if cats and cats != [""]:
        table += ("<table><tr><th class='t'>category</th>"
                  + "".join(f"<th>{_e(m)}<br>{_e(ta)}</th><th>{_e(m)}<br>{_e(tb)}</th><th>delta</th>" for m in names)
                  + "</tr>")
        for c in cats:
            va, vb = sa["by_category"].get(c, {}), sb["by_category"].get(c, {})
            table += (f"<tr><td class='t'>{_e(c or '(none)')}</td>"
                      + "".join(f"<td>{_fmt(va.get(m))}</td><td>{_fmt(vb.get(m))}</td>{_delta(m, va.get(m), vb.get(m))}"
                                for m in names) + "</tr>")
        table += "</table>"
    index_a = {(str(r["id"]), int(r.get("k", 0))): r for r in a_rows}
    index_b = {(str(r["id"]), int(r.get("k", 0))): r for r in b_rows}
    keys = list(index_a) + [k for k in index_b if k not in index_a]
    inputs = any(r.get("inputs") for r in a_rows + b_rows)
    head = ("<tr><th class='t'>prompt</th><th class='t'>seed</th>" + ("<th class='t'>input</th>" if inputs else "")
            + f"<th class='t'>{_e(ta)}</th><th class='t'>{_e(tb)}</th>"
            + "".join(f"<th>{_e(m)}<br>{_e(ta)}</th><th>{_e(m)}<br>{_e(tb)}</th><th>delta</th>" for m in names)
            + "</tr>")
    lines = []
    for key in keys:
        ra, rb = index_a.get(key), index_b.get(key)
        row = ra or rb
        cells = [f"<td class='t'>{_caption(row, 240)}</td><td class='t'>{_e(row.get('seed', ''))}</td>"]
        if inputs:
            cells.append(f"<td class='t'>{_input(a_dir if ra else b_dir, row)}</td>")
        for r, d in ((ra, a_dir), (rb, b_dir)):
            cells.append(f"<td class='t'>{_img(d, r) if r else '<span class=missing>missing</span>'}</td>")
        for m in names:
            va = ra.get("metrics", {}).get(m) if ra else None
            vb = rb.get("metrics", {}).get(m) if rb else None
            cells.append(f"{_cell(ra, m)}{_cell(rb, m)}{_delta(m, va, vb)}")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h2>Comparison: {_e(ta)} vs {_e(tb)}</h2>{table}"
            f"<h3>Side by side (same prompt and seed; delta = {_e(tb)} - {_e(ta)})</h3>"
            f"<table>{head}{''.join(lines)}</table>")


def render_report(run_dir: str, info: dict, rows, summary: dict, problems, other=None) -> str:
    settings = info.get("settings") or {}
    title = f"{info.get('suite') or 'evaluation'}: {_tag(run_dir, info)}"
    source = [("scored images", f"{info['images']} (made elsewhere: how is not known)")] if info.get("images") \
        else [("model", info.get("model", ""))]
    meta = "".join(f"<tr><td class='t'>{_e(k)}</td><td class='t'>{_e(v)}</td></tr>"
                   for k, v in [*source, *settings.items(),
                                ("scorers", json.dumps(info.get("scorers", []), ensure_ascii=False)),
                                ("created", info.get("created", "")), ("images", summary["n"])])
    body = (f"<h1>{_e(title)}</h1><table>{meta}</table>" + _problems(problems) + _score_table(summary)
            + _category_table(summary))
    if other is not None:
        body += _comparison((run_dir, info, rows), other)
    body += _grids(run_dir, rows)
    return _page(title, body)
