"""GenEval (Ghosh et al. 2023): object-focused prompts with a machine-checkable spec.

File: `prompts/evaluation_metadata.jsonl` of https://github.com/djghosh13/geneval (553 lines). Each line:
  {"tag": "single_object"|"two_object"|"counting"|"colors"|"position"|"color_attr",
   "include": [{"class": "dog", "count": 1, "color": "red"?, "position": ["right of", 0]?}],
   "exclude": [{"class": "dog", "count": 3}]?,   (counting prompts: no more than count)
   "prompt": "a photo of a dog right of a teddy bear"}
Verified against copies of the file in public repositories (tags, include/exclude, position as [relation, index]).
The item id is the 0-based line index as 5 digits, the official output folder name (<id>/samples/<k>.png).
The official scorer is a Mask2Former detector + CLIP colour check (mmdetection); without it, E2's vlm_questions
turns the spec into yes/no questions for a VLM judge. The report's protocol: 4 images per prompt."""
from __future__ import annotations

from .base import EvalItem, RowError, Suite, item_seed, jsonl_rows, register, text_field

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _objects(row, key: str, required: bool) -> list[dict]:
    objs = row.get(key)
    if objs is None and not required:
        return []
    if not isinstance(objs, list) or (required and not objs):
        raise RowError(f"field {key!r} must be a non-empty list of objects")
    out = []
    for i, o in enumerate(objs):
        if not isinstance(o, dict) or not isinstance(o.get("class"), str):
            raise RowError(f"field {key!r}[{i}] needs a string \"class\"")
        count = o.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise RowError(f"field {key!r}[{i}].count must be a whole number, got {count!r}")
        pos = o.get("position")
        if pos is not None and not (isinstance(pos, list) and len(pos) == 2 and isinstance(pos[0], str)
                                    and isinstance(pos[1], int) and 0 <= pos[1] < len(objs)):
            raise RowError(f"field {key!r}[{i}].position must be [relation, index of another object], got {pos!r}")
        clause = {"class": o["class"], "count": count}
        clause.update({k: o[k] for k in ("color", "position") if o.get(k) is not None})  # only what the file says
        out.append(clause)
    return out


@register
class GenEval(Suite):
    name = "geneval"
    description = "GenEval: objects, counts, colours, positions (553 prompts)"
    download = ("pass prompts/evaluation_metadata.jsonl from https://github.com/djghosh13/geneval")
    images_per_prompt = 4
    scorers = [{"name": "vlm_questions"}]

    def rows(self, path, cache_dir):
        return jsonl_rows(path)

    def item(self, raw, index, where):
        prompt = text_field(raw, "prompt")
        tag = text_field(raw, "tag")
        if tag not in TAGS:
            raise RowError(f"field 'tag' is {tag!r}, not one of {', '.join(TAGS)}")
        spec = {"tag": tag, "include": _objects(raw, "include", True), "exclude": _objects(raw, "exclude", False)}
        item_id = f"{index:05d}"
        return EvalItem(item_id, prompt, tag, item_seed(item_id), meta={"geneval": spec})
