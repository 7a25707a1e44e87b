"""What the output is judged by: a contact sheet of examples of each kind for a person (`--preview`), and an OCR
read-back table for numbers (`--ocr N`): mean character accuracy per kind and language."""
from __future__ import annotations

import os
from collections import defaultdict

from PIL import Image, ImageDraw

from . import layout
from .generate import KINDS, Synthesizer, _write_json

CELL = 300          # thumbnail side in the contact sheet
CAPTION_LINES = 4


def preview_jobs(synth: Synthesizer, per_kind: int) -> list[tuple[int, str, str]]:
    """(index, kind, language) for `per_kind` examples of each kind asked for, languages alternating."""
    langs = sorted(synth.fonts)
    kinds = [k for k in KINDS if getattr(synth.cfg.count, k)] or list(KINDS)
    return [(1_000_000 + j, k, langs[j % len(langs)]) for k in kinds for j in range(per_kind)]


def contact_sheet(synth: Synthesizer, jobs, path: str) -> str:
    """One row per kind: the images as thumbnails, each with its kind, language and caption beneath."""
    rendered = [(synth.make(i, kind, lang), kind) for i, kind, lang in jobs]
    rows = defaultdict(list)
    for (r, row, _), kind in rendered:
        rows[kind].append((r, row))
    cols = max(len(v) for v in rows.values())
    label_font = _label_font(synth)
    line_h = layout.line_height(label_font, 1.1)
    cell_h = CELL + 8 + line_h * (CAPTION_LINES + 1)
    sheet = Image.new("RGB", (cols * (CELL + 12) + 12, len(rows) * (cell_h + 12) + 12), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for y, kind in enumerate(rows):
        for x, (r, row) in enumerate(rows[kind]):
            x0, y0 = 12 + x * (CELL + 12), 12 + y * (cell_h + 12)
            thumb = r.image.copy()
            thumb.thumbnail((CELL, CELL))
            sheet.paste(thumb, (x0 + (CELL - thumb.width) // 2, y0 + (CELL - thumb.height) // 2))
            lines = [f"{kind} / {r.lang} / {row['tags']['subcategory']}"]
            lines += layout.break_lines(row["caption"], label_font, CELL)[:CAPTION_LINES]
            for k, s in enumerate(lines):
                d.text((x0, y0 + CELL + 8 + k * line_h), s, font=label_font, fill=(40, 40, 40) if k else (180, 30, 30))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _label_font(synth: Synthesizer):
    """A face that draws both languages (a CJK face maps Latin too), regular weight when there is one."""
    faces = synth.fonts.get("zh") or synth.fonts["en"]
    face = next((f for f in faces if not f.bold and "mono" not in f.family.lower()), faces[0])
    return face.pil(13)


def dataset_jobs(synth: Synthesizer, kinds: list[str], per_group: int) -> list[tuple[int, str, None]]:
    """The first `per_group` samples of each kind and language in the dataset's own plan (re-rendered exactly)."""
    import random

    seen, jobs = defaultdict(int), []
    langs = sorted(synth.fonts)
    weights = [synth.cfg.languages[x] for x in langs]
    for i, kind in enumerate(kinds):
        lang = random.Random(f"{synth.cfg.seed}/{i}").choices(langs, weights)[0]  # as make() draws it
        if seen[kind, lang] < per_group:
            seen[kind, lang] += 1
            jobs.append((i, kind, None))
    return jobs


def ocr_report(synth: Synthesizer, jobs, path: str | None = None) -> dict:
    """{"kind/lang": {"n", "char_accuracy", "min"}} over the jobs' images, OCR'd; written to `path` as JSON."""
    from .quality import score

    got = defaultdict(list)
    for i, kind, lang in jobs:
        r, _, _ = synth.make(i, kind, lang)
        got[f"{kind}/{r.lang}"].append(score(r))
    table = {k: {"n": len(v), "char_accuracy": round(sum(v) / len(v), 4), "min": round(min(v), 4)}
             for k, v in sorted(got.items())}
    if path:
        _write_json(path, table)
    return table


def format_table(table: dict) -> str:
    rows = [f"{'kind/language':<24} {'n':>4} {'char accuracy':>14} {'min':>6}"]
    rows += [f"{k:<24} {v['n']:>4} {v['char_accuracy']:>14.3f} {v['min']:>6.3f}" for k, v in table.items()]
    return "\n".join(rows)

