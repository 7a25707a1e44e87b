"""OUT/report.html: one self-contained page to tune a pipeline's thresholds by looking.

Three parts: the funnel (per stage and per op: in, kept, dropped, why), a histogram of every numeric statistic over
every sample that reached it (kept and dropped stacked, each op's [lo, hi] drawn as red lines), and thumbnails of a
few samples each op dropped, with the reason. Histograms are inline SVG and thumbnails JPEG data URIs, so the page
needs nothing beside it (no matplotlib, no network)."""
from __future__ import annotations

import html
import math
import os

from ....qwenimage_core.images import thumbnail_uri, write_atomic
from .op import decode
from .pipeline import Pipeline
from .sources import read_bytes

BINS = 40
SAMPLES_PER_OP = 6
THUMB = 112   # px, as the page's CSS


def write_report(out: str, pipeline: Pipeline, records, totals: dict) -> str:
    parts = [f"<h1>Curation report: {_e(pipeline.name)}</h1>",
             f"<p>{totals['records']} records in, {totals['kept']} kept. Pipeline: {_e(pipeline.source)}</p>",
             "<h2>Funnel</h2>", funnel_table(totals),
             "<h2>Statistics</h2><p>Kept samples blue, dropped grey (by any op); red lines: an op's keep range.</p>",
             *histograms(pipeline, records), categorical(records),
             "<h2>Dropped samples</h2>", dropped_samples(records, [st.name for st in pipeline.stages])]
    path = os.path.join(out, "report.html")
    write_atomic(path, PAGE.replace("BODY", "\n".join(parts)))
    return path


def _e(s) -> str:
    return html.escape(str(s))


def _reasons(reasons: dict) -> str:
    return ", ".join(f"{_e(k)}: {v}" for k, v in reasons.items())


def funnel_table(totals: dict) -> str:
    src = totals["source"]
    rows = [f"<tr class=st><td>source</td><td></td><td>{src['in']}</td><td>{src['kept']}</td>"
            f"<td>{src['dropped']}</td><td>{_reasons(src['reasons'])}</td></tr>"]
    for st in totals["stages"]:
        rows.append(f"<tr class=st><td>{_e(st['name'])}</td><td>{_e(st['title'])}</td><td>{st['in']}</td>"
                    f"<td>{st['kept']}</td><td>{st['dropped']}</td><td></td></tr>")
        for op in st["ops"]:
            pct = 100 * op["dropped"] / op["in"] if op["in"] else 0
            rows.append(f"<tr><td></td><td>{_e(op['op'])}</td><td>{op['in']}</td><td>{op['kept']}</td>"
                        f"<td>{op['dropped']} ({pct:.1f}%)</td><td>{_reasons(op['reasons'])}</td></tr>")
    return ("<table><tr><th>stage</th><th>op</th><th>in</th><th>kept</th><th>dropped</th><th>why</th></tr>"
            + "".join(rows) + "</table>")


def _numeric(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def histograms(pipeline: Pipeline, records) -> list[str]:
    """One SVG per numeric statistic, in the order the ops write them."""
    values: dict[str, list[tuple[float, bool]]] = {}
    for r in records:
        for k, v in r.stats.items():
            if _numeric(v):
                values.setdefault(k, []).append((float(v), r.dropped is None))
    limits: dict[str, list[tuple[str, float, float]]] = {}
    for stage, op in pipeline.steps():
        for stat, (lo, hi) in op.thresholds.items():
            limits.setdefault(stat, []).append((f"{stage}.{op.name}", lo, hi))
    return [f"<div class=hist><h3>{_e(k)}</h3>{svg_histogram(v, limits.get(k, []))}</div>" for k, v in values.items()]


def svg_histogram(values: list[tuple[float, bool]], limits, width=360, height=150) -> str:
    """Stacked kept/dropped histogram with threshold lines; the x range covers the data and every finite bound."""
    xs = [v for v, _ in values]
    bounds = [b for _, lo, hi in limits for b in (lo, hi) if math.isfinite(b)]
    lo, hi = min(xs + bounds), max(xs + bounds)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    kept, dropped = [0] * BINS, [0] * BINS
    for v, k in values:
        b = min(BINS - 1, int((v - lo) / (hi - lo) * BINS))
        (kept if k else dropped)[b] += 1
    top = max(a + b for a, b in zip(kept, dropped)) or 1
    pad, plot_h, bw = 30, height - 40, (width - 40) / BINS
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i, (a, b) in enumerate(zip(kept, dropped)):
        x = pad + i * bw
        ha, hb = plot_h * a / top, plot_h * b / top
        if a:
            out.append(f'<rect x="{x:.1f}" y="{10 + plot_h - ha:.1f}" width="{bw - 1:.1f}" height="{ha:.1f}" '
                       f'fill="#4a7bd0"><title>{a} kept</title></rect>')
        if b:
            out.append(f'<rect x="{x:.1f}" y="{10 + plot_h - ha - hb:.1f}" width="{bw - 1:.1f}" height="{hb:.1f}" '
                       f'fill="#aaa"><title>{b} dropped</title></rect>')
    for name, a, b in limits:
        for bound in (a, b):
            if math.isfinite(bound):
                x = pad + (bound - lo) / (hi - lo) * (width - 40)
                out.append(f'<line class="threshold" x1="{x:.1f}" y1="5" x2="{x:.1f}" y2="{10 + plot_h}" '
                           f'stroke="#d22" stroke-dasharray="4 2"><title>{_e(name)}: {bound:g}</title></line>'
                           f'<text x="{x - 2 if x > width / 2 else x + 2:.1f}" y="{20}" font-size="9" fill="#d22" '
                           f'text-anchor="{"end" if x > width / 2 else "start"}">{bound:.3g}</text>')
    out.append(f'<text x="{pad}" y="{height - 12}" font-size="10">{lo:.4g}</text>'
               f'<text x="{width - 10}" y="{height - 12}" font-size="10" text-anchor="end">{hi:.4g}</text>'
               f'<text x="{pad}" y="{height - 1}" font-size="10">n={len(values)}, max bin {top}</text></svg>')
    return "".join(out)


def categorical(records) -> str:
    """Booleans and short labels (has_qr, text_language, category): counts per value; identifiers (a hash, one
    value per sample) are left out."""
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        for k, v in r.stats.items():
            if isinstance(v, bool) or (isinstance(v, str) and len(v) <= 40):
                c = counts.setdefault(k, {})
                c[str(v)] = c.get(str(v), 0) + 1
    rows = [f"<tr><td>{_e(k)}</td><td>{', '.join(f'{_e(v)}: {n}' for v, n in sorted(c.items(), key=lambda t: -t[1]))}"
            f"</td></tr>" for k, c in counts.items() if len(c) <= 30 and (len(c) < 4 or len(c) <= sum(c.values()) / 2)]
    return "<h3>Labels</h3><table>" + "".join(rows) + "</table>" if rows else ""


def thumbnail(image: str) -> str | None:
    """A JPEG data URI of the image, or None when it cannot be read (a broken file shows as its reason only)."""
    try:
        return thumbnail_uri(decode(read_bytes(image)), THUMB)
    except Exception:   # unreadable: it was dropped for that
        return None


def dropped_samples(records, stages: list[str]) -> str:
    """Up to SAMPLES_PER_OP thumbnails per (stage, op), in pipeline order."""
    by_op: dict[tuple, list] = {}
    for r in records:
        if r.dropped is not None:
            by_op.setdefault((r.stage, r.dropped.partition(":")[0]), []).append(r)
    order = {name: i for i, name in enumerate(["source", *stages])}
    out = []
    for (stage, op), rs in sorted(by_op.items(), key=lambda kv: order.get(kv[0][0], len(order))):
        cells = []
        for r in rs[:SAMPLES_PER_OP]:
            uri = thumbnail(r.image) if r.stage != "source" else None
            pic = f'<img src="{uri}">' if uri else '<div class=nopic>unreadable</div>'
            cells.append(f'<figure>{pic}<figcaption title="{_e(r.key)}">{_e(os.path.basename(r.key))}<br>'
                         f'{_e(r.dropped)}</figcaption></figure>')
        out.append(f"<h3>{_e(stage)} / {_e(op)}: {len(rs)} dropped</h3><div class=samples>{''.join(cells)}</div>")
    return "".join(out) or "<p>Nothing dropped.</p>"


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Curation report</title><style>
body{font-family:sans-serif;margin:1.5em;max-width:1400px} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top} tr.st{background:#eef}
.hist{display:inline-block;margin:4px} .hist h3{font-size:13px;margin:2px}
.samples{display:flex;flex-wrap:wrap} figure{width:112px;margin:4px;font-size:10px;word-break:break-all}
.nopic{width:112px;height:60px;background:#fee;display:flex;align-items:center;justify-content:center}
</style></head><body>
BODY
</body></html>"""
