"""OneIG-Bench (Chang et al. 2025): prompts in six dimensions, English and Chinese.

File: `OneIG-Bench.csv` (English) or `OneIG-Bench-ZH.csv` of https://github.com/OneIG-Bench/OneIG-Benchmark (also
as OneIG-Bench.json / OneIG-Bench-ZH.json, a list of the same objects, on huggingface.co/datasets/OneIG-Bench/
OneIG-Bench). Columns used: category (Anime_Stylization, Portrait, General_Object, Text_Rendering,
Knowledge_Reasoning, Multilingualism), id (numbered within a category), prompt_en (English file) or prompt_cn
(Chinese file); class, type, prompt_length are kept in meta. Verified against the repository's generation example
and its scorers (alignment_score.py, text_score.py).
When the file sits in a clone of the repository, the official extras are read too:
  scripts/alignment/Q_D/<anime|human|object|multilingualism>[_zh].json  {id: {"question": {n: q}, "dependency":
      {n: [parents]}}}  -> meta "questions" (scored like DPG by vlm_questions)
  scripts/text/text_content[_zh].csv  (id, text_content)  -> meta "texts" for Text_Rendering (text_rendering)
Items without either get the judged prompt_following score. The official protocol: 4 images per prompt."""
from __future__ import annotations

import csv
import json
import os

from .base import (EvalItem, RowError, Suite, SuiteFileError, csv_rows, item_seed, json_file, register, regular,
                   text_field)

SHORT = {"Anime_Stylization": "anime", "Portrait": "human", "General_Object": "object", "Text_Rendering": "text",
         "Knowledge_Reasoning": "reasoning", "Multilingualism": "multilingualism"}


def _chinese(path: str) -> bool:
    return "-zh" in os.path.basename(path).lower() or "_zh" in os.path.basename(path).lower()


def _questions(root: str, zh: bool) -> dict:
    """{(short, id): [question dicts]} from the repository's Q_D files, when present."""
    out = {}
    folder = os.path.join(root, "scripts", "alignment", "Q_D")
    for short in ("anime", "human", "object", "multilingualism"):
        path = os.path.join(folder, f"{short}_zh.json" if zh else f"{short}.json")
        if not os.path.isfile(path):
            continue
        for key, entry in json_file(path).items():
            qs, deps = entry.get("question", {}), entry.get("dependency", {})
            qs = json.loads(qs) if isinstance(qs, str) else qs
            deps = json.loads(deps) if isinstance(deps, str) else deps
            out[(short, str(key))] = [{"id": str(n), "question": q,
                                       "depends": [str(p) for p in deps.get(str(n), deps.get(n, [])) if int(p) != 0]}
                                      for n, q in qs.items()]
    return out


def _texts(root: str, zh: bool) -> dict:
    path = os.path.join(root, "scripts", "text", "text_content_zh.csv" if zh else "text_content.csv")
    if not os.path.isfile(path):
        return {}
    with open(regular(path), encoding="utf-8-sig", newline="") as fh:
        try:
            return {str(r["id"]): r["text_content"] for r in csv.DictReader(fh) if r.get("text_content")}
        except csv.Error as e:
            raise SuiteFileError(f"{path}: not readable CSV ({e})") from None


@register
class OneIG(Suite):
    name = "oneig"
    description = "OneIG-Bench: alignment, text, reasoning, style, multilingual prompts (EN/ZH)"
    download = ("pass OneIG-Bench.csv or OneIG-Bench-ZH.csv from a clone of "
                "https://github.com/OneIG-Bench/OneIG-Benchmark (the clone's question and text files are read too)")
    images_per_prompt = 4
    scorers = [{"name": "vlm_questions", "requires": "questions"},
               {"name": "text_rendering", "rule": "longtext", "requires": "texts"},
               {"name": "prompt_following", "requires": "judged"}]

    def default_scorers(self, items):
        keys = {k for i in items for k in i.meta}
        return [dict(s) for s in self.scorers if s["requires"] in keys]

    def rows(self, path, cache_dir):
        zh = _chinese(path)
        self._zh, root = zh, os.path.dirname(os.path.abspath(path))
        self._q, self._t = _questions(root, zh), _texts(root, zh)
        if path.endswith(".json"):
            data = json_file(path)
            if not isinstance(data, list):
                raise SuiteFileError(f"{path}: expected a list of prompt objects")
            return ((f"{path} [{i}]", r if isinstance(r, dict) else RowError("not an object"))
                    for i, r in enumerate(data))
        return csv_rows(path, ("category", "id", "prompt_cn" if zh else "prompt_en"))

    def item(self, raw, index, where):
        category = text_field(raw, "category")
        if category not in SHORT:
            raise RowError(f"field 'category' is {category!r}, not one of {', '.join(SHORT)}")
        short, num = SHORT[category], text_field(raw, "id")
        prompt = text_field(raw, "prompt_cn" if self._zh else "prompt_en")
        meta = {"language": "zh" if self._zh else "en",
                **{k: raw[k] for k in ("class", "type", "prompt_length") if raw.get(k)}}
        if (short, num) in self._q:
            meta["questions"] = self._q[(short, num)]
        elif short == "text" and num in self._t:
            meta.update(texts=[self._t[num]], text_rule="longtext")
        else:
            meta["judged"] = True
        item_id = f"{short}_{num}"
        return EvalItem(item_id, prompt, category, item_seed(item_id), meta=meta)
