"""Your own prompts: the RL prompt files (training/data/prompts.py: a .txt, one prompt a line, or a .jsonl with
"prompt" and any metadata the scorers read, e.g. "texts", "category", "id"), scored by the --scorer specs you give
(no default: a custom set has no agreed measure). The trainer's held-out evaluation uses this suite."""
from __future__ import annotations

from ...data.prompts import PromptFileError, load_prompts
from .base import EvalItem, RowError, Suite, SuiteFileError, item_seed, register, safe_id


@register
class Prompts(Suite):
    name = "prompts"
    description = "your own prompt file (.txt or .jsonl with \"prompt\"), scored by the --scorer specs given"
    download = "pass a .txt (one prompt a line) or .jsonl ({\"prompt\": ...} a line) of your own"
    scorers = []

    def rows(self, path, cache_dir):
        try:
            rows = load_prompts(path)
        except PromptFileError as e:
            raise SuiteFileError(str(e)) from None
        return ((f"{path} prompt {i + 1}", r) for i, r in enumerate(rows))

    def item(self, raw, index, where):
        meta = {k: v for k, v in raw.items() if k not in ("prompt", "id", "category")}
        if "texts" in meta and not (isinstance(meta["texts"], list) and all(isinstance(t, str) for t in meta["texts"])):
            raise RowError("field 'texts' must be a list of strings")
        item_id = safe_id(raw.get("id") or f"{index:05d}")
        return EvalItem(item_id, raw["prompt"].strip(), str(raw.get("category") or "prompts"), item_seed(item_id),
                        meta=meta)
