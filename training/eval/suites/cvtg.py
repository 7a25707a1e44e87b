"""CVTG-2K (TextCrafter, Du et al. 2025): 2,000 prompts with 2 to 5 text regions each.

Download CVTG-2K.zip from huggingface.co/datasets/dnkdnk/CVTG-2K (https://github.com/NJU-PCALab/TextCrafter) and
pass the extracted CVTG-2K folder, one of its subsets (CVTG/, CVTG-Style/), or one file:
  <N>.json           {"data_list": [{"index", "prompt", "carrier_list", "sentence_list"}]}  (N = text regions)
  <N>_combined.json  {"<index>": "<prompt>", ...}
A folder is read as its <N>.json files (the _combined ones hold the same prompts). The texts to render are the
prompt's quoted spans (text_metrics.quoted_text), as the benchmark writes them; a prompt with none is a bad row.
Verified: the folder layout and both file forms (the repository README, its eval.py and third-party loaders); the
CVTG-Style subset folder is spelled "CVTG-Style" by the loaders and "CVTG-style" in the README: both are read.
Item id: <subset>_<N>_<index>; category: "<N> regions" (the paper's breakdown). Scored by word accuracy and
normalised edit distance of the OCR'd text (E2's text_rendering, rule "cvtg")."""
from __future__ import annotations

import os
import re

from ..text_metrics import quoted_text
from .base import EvalItem, RowError, Suite, SuiteFileError, item_seed, json_file, register, safe_id


def _files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    found = []
    for root, _, files in os.walk(path):
        found += [os.path.join(root, f) for f in files if re.fullmatch(r"\d+\.json", f)]
    if not found:  # only the combined files were extracted
        for root, _, files in os.walk(path):
            found += [os.path.join(root, f) for f in files if re.fullmatch(r"\d+_combined\.json", f)]
    if not found:
        raise SuiteFileError(f"{path}: no CVTG-2K <N>.json or <N>_combined.json files in it")
    return sorted(found, key=lambda f: (os.path.dirname(f), int(os.path.basename(f).split('_')[0].split('.')[0])))


@register
class CVTG2K(Suite):
    name = "cvtg"
    description = "CVTG-2K: complex visual text, 2-5 text regions per prompt (English)"
    download = "pass the CVTG-2K folder (or one <N>.json) from huggingface.co/datasets/dnkdnk/CVTG-2K"
    size = (1024, 1024)
    scorers = [{"name": "text_rendering", "rule": "cvtg"}]

    def rows(self, path, cache_dir):
        for f in _files(path):
            subset = os.path.basename(os.path.dirname(os.path.abspath(f))) or "CVTG"
            regions = os.path.basename(f).split("_")[0].split(".")[0]
            data = json_file(f)
            if isinstance(data, dict) and "data_list" in data:
                entries = data["data_list"]
                if not isinstance(entries, list):
                    raise SuiteFileError(f"{f}: \"data_list\" must be a list")
                for i, e in enumerate(entries):
                    yield f"{f} data_list[{i}]", {**e, "subset": subset, "regions": regions} if isinstance(e, dict) \
                        else RowError("not an object")
            elif isinstance(data, dict):
                for key, prompt in data.items():
                    yield f"{f} key {key}", {"index": key, "prompt": prompt, "subset": subset, "regions": regions}
            else:
                raise SuiteFileError(f"{f}: expected {{\"data_list\": [...]}} or {{index: prompt}}")

    def item(self, raw, index, where):
        prompt = raw.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RowError("field 'prompt' is missing or empty")
        if raw.get("index") is None:
            raise RowError("field 'index' is missing")
        texts = quoted_text(prompt)
        if not texts:
            raise RowError("field 'prompt' quotes no text to render")
        item_id = safe_id(f"{raw['subset']}_{raw['regions']}_{raw['index']}")
        meta = {"texts": texts, "language": "en", "text_rule": "cvtg", "subset": raw["subset"],
                **{k: raw[k] for k in ("carrier_list", "sentence_list") if raw.get(k)}}
        return EvalItem(item_id, prompt.strip(), f"{raw['regions']} regions", item_seed(item_id), meta=meta)
