"""LongText-Bench (X-Omni, Geng et al. 2025): long passages of English and Chinese text to render.

Files: `textbench/text_prompts.jsonl` (English) and `textbench/text_prompts_zh.jsonl` (Chinese) of
https://github.com/X-Omni-Team/X-Omni (also huggingface.co/datasets/X-Omni/LongText-Bench). Each line:
  {"prompt_id": int, "prompt": str, "text": str (or a list of strings), "category": str, "length": str,
   "text_length": int}
Verified against the official evaluator (evaluate_text_reward.py reads prompt_id, prompt, text) and loaders that
read category, length and text_length. The official images are <prompt_id>_<1..4>.png, 4 per prompt; our item
id is the prompt_id as 4 digits. Language: the file name (_zh) or Chinese characters in the text.
Category: the row's "category" (sign, poster, ...) when given, else its "length". Rule "longtext" (E2)."""
from __future__ import annotations

from .base import EvalItem, RowError, Suite, has_cjk, item_seed, jsonl_rows, register, safe_id, text_field


@register
class LongText(Suite):
    name = "longtext"
    description = "LongText-Bench: long text passages to render, English and Chinese"
    download = ("pass textbench/text_prompts.jsonl or text_prompts_zh.jsonl from https://github.com/X-Omni-Team/X-Omni")
    images_per_prompt = 4
    scorers = [{"name": "text_rendering", "rule": "longtext"}]

    def rows(self, path, cache_dir):
        self._zh = "_zh" in path.rsplit("/", 1)[-1]
        return jsonl_rows(path)

    def item(self, raw, index, where):
        prompt = text_field(raw, "prompt")
        pid = raw.get("prompt_id")
        if not isinstance(pid, (int, str)) or isinstance(pid, bool) or str(pid).strip() == "":
            raise RowError("field 'prompt_id' is missing")
        text = raw.get("text")
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise RowError("field 'text' must be a non-empty string or list of strings")
        item_id = f"{int(pid):04d}" if str(pid).isdigit() else safe_id(pid)
        zh = self._zh or has_cjk("".join(texts))
        category = str(raw.get("category") or raw.get("length") or "longtext")
        meta = {"texts": texts, "language": "zh" if zh else "en", "text_rule": "longtext",
                **{k: raw[k] for k in ("category", "length", "text_length") if k in raw}}
        return EvalItem(item_id, prompt, category, item_seed(item_id), meta=meta)
