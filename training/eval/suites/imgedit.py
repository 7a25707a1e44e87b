"""ImgEdit-Bench (Ye et al. 2025), the basic single-turn suite: 737 edits in 9 types.

File: `Benchmark/Basic/basic_edit.json` of https://github.com/PKU-YuanGroup/ImgEdit, with the benchmark's images
(Benchmark/singleturn/...): {"<key>": {"id": "<image path under singleturn/>", "prompt": "<instruction>",
"edit_type": "add"|"adjust"|"extract"|"replace"|"remove"|"background"|"style"|"compose"|"action"}}.
Verified against third-party loaders of the file (keys, "id" relative to singleturn/, the nine edit types).
The image is looked up beside the JSON file, under singleturn/, and under ../../singleturn/ (the file's place in
the downloaded Benchmark folder); a missing image is a bad row naming it. The official score is a GPT-4.1 1-5
rating; here E2's edit_judge (a Qwen2.5-VL or any OpenAI-compatible judge) scores consistency and quality."""
from __future__ import annotations

import os

from .base import EvalItem, RowError, Suite, SuiteFileError, existing_file, item_seed, json_file, register, safe_id, \
    text_field

PLACES = ("", "singleturn", os.path.join("..", "..", "singleturn"), os.path.join("..", "singleturn"))


@register
class ImgEdit(Suite):
    name = "imgedit"
    description = "ImgEdit-Bench (basic): 737 single-turn edits in 9 types"
    download = ("pass Benchmark/Basic/basic_edit.json of https://github.com/PKU-YuanGroup/ImgEdit, with the "
                "benchmark's singleturn/ images downloaded beside it")
    size = None
    edit = True
    scorers = [{"name": "edit_judge"}]

    def rows(self, path, cache_dir):
        self._base = os.path.dirname(os.path.abspath(path))
        data = json_file(path)
        if not isinstance(data, dict):
            raise SuiteFileError(f"{path}: expected an object {{key: {{id, prompt, edit_type}}}}")
        return ((f"{path} key {k}", v if isinstance(v, dict) else RowError("not an object")) for k, v in data.items())

    def item(self, raw, index, where):
        key = where.rsplit(" key ", 1)[-1]
        prompt, edit_type = text_field(raw, "prompt"), text_field(raw, "edit_type")
        source = existing_file(self._base, text_field(raw, "id"), "field 'id': image", PLACES)
        item_id = safe_id(key)
        return EvalItem(item_id, prompt, edit_type, item_seed(item_id), inputs=(source,),
                        meta={"source": source, "instruction": prompt})
