"""DPG-Bench (ELLA, Hu et al. 2024): 1,065 dense prompts, each with yes/no questions and their dependencies.

File: `dpg_bench/dpg_bench.csv` of https://github.com/TencentQQGYLab/ELLA, one row per question, columns
  item_id, text (the prompt), keywords, proposition_id, dependency ("0" = none, else "1" or "1,2": the ids of the
  questions this one depends on), category_broad, category_detailed, tuple, question_natural_language.
Rows of one item are consecutive; verified against the official evaluator's reader (compute_dpg_bench.py). That
reader skips the file's first data row (so the first item's first question is never asked); we keep every row.
Or `dpg_bench/prompts/` (one <item_id>.txt per prompt, no questions: scored by the prompt_following judge).
Question score (E2's vlm_questions) follows DPG: a question whose parent was answered "no" counts as "no".
Category: the item_id's leading letters (its source set); the per-question categories ride in the questions.
The official protocol: 4 images per prompt (a 2x2 grid)."""
from __future__ import annotations

import os
import re

from .base import EvalItem, RowError, Suite, SuiteFileError, csv_rows, item_seed, register, regular, safe_id

COLUMNS = ("item_id", "text", "proposition_id", "dependency", "question_natural_language")


def _category(item_id: str) -> str:
    m = re.match(r"[A-Za-z]+", item_id)
    return m.group(0).lower() if m else "dpg"


@register
class DPGBench(Suite):
    name = "dpg"
    description = "DPG-Bench: dense prompts, VQA questions with dependencies (1,065 prompts)"
    download = ("pass dpg_bench/dpg_bench.csv (or the dpg_bench/prompts folder) from "
                "https://github.com/TencentQQGYLab/ELLA")
    images_per_prompt = 4
    scorers = [{"name": "vlm_questions"}]

    def default_scorers(self, items):
        """The CSV's questions when given; the prompts folder has none: a judged prompt-following score."""
        return [{"name": "vlm_questions" if any("questions" in i.meta for i in items) else "prompt_following"}]

    def rows(self, path, cache_dir):
        if os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if f.endswith(".txt"))
            if not files:
                raise SuiteFileError(f"{path}: a DPG prompts folder holds <item_id>.txt files; none found")
            for f in files:
                where = os.path.join(path, f)
                try:
                    with open(regular(where, RowError), encoding="utf-8") as fh:
                        yield where, {"item_id": f[:-4], "text": fh.read().strip(), "questions": None}
                except (RowError, UnicodeDecodeError) as e:
                    yield where, e if isinstance(e, RowError) else RowError(f"not UTF-8 text ({e.reason})")
            return
        groups: dict[str, dict] = {}
        for where, row in csv_rows(path, COLUMNS):
            if isinstance(row, RowError):
                yield where, row
                continue
            key = (row.get("item_id") or "").strip()
            if not key:
                yield where, RowError("field 'item_id' is empty")
                continue
            group = groups.setdefault(key, {"item_id": key, "text": row.get("text", ""), "questions": [],
                                             "where": where, "bad": None})
            try:
                group["questions"].append(_question(row))
            except RowError as e:
                group["bad"] = group["bad"] or RowError(f"{e} (at {where})")
        for g in groups.values():
            yield g["where"], g["bad"] or g

    def item(self, raw, index, where):
        text = (raw.get("text") or "").strip()
        if not text:
            raise RowError("field 'text' (the prompt) is empty")
        item_id = safe_id(raw["item_id"])
        meta = {} if raw["questions"] is None else {"questions": raw["questions"]}
        return EvalItem(item_id, text, _category(item_id), item_seed(item_id), meta=meta)


def _question(row) -> dict:
    qid = (row.get("proposition_id") or "").strip()
    if not qid.isdigit():
        raise RowError(f"field 'proposition_id' must be a number, got {qid!r}")
    try:
        deps = [int(d) for d in (row.get("dependency") or "0").split(",") if d.strip()]
    except ValueError:
        raise RowError(f"field 'dependency' must be numbers separated by commas, "
                       f"got {row.get('dependency')!r}") from None
    question = (row.get("question_natural_language") or "").strip()
    if not question:
        raise RowError("field 'question_natural_language' is empty")
    return {"id": qid, "question": question, "depends": [str(d) for d in deps if d != 0],
            "category": (row.get("category_broad") or "").strip(), "tuple": (row.get("tuple") or "").strip()}
