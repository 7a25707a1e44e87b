"""ChineseWord (the Qwen-Image report, section 5): rendering single Chinese characters by frequency tier
(Level-1: the 3,500 common characters, Level-2: 3,000, Level-3: 1,605 rarer ones), scored by character accuracy.

NOT VERIFIED: the report describes the benchmark but we found no published file, so this reads a documented format
of our own:
  a .txt file, one character (or word) a line, optionally "<level><TAB><text>"; or
  a .jsonl file, one {"text": "永", "level": "1"?, "prompt": "..."?, "id": "..."?} a line.
A row without a prompt gets PROMPT with its text. Item id: the given id, else the level and line index
(L1_0001); category: "level-<n>" (or "chineseword"). Rule "chineseword" (E2: character-level accuracy)."""
from __future__ import annotations

from .base import EvalItem, RowError, Suite, has_cjk, item_seed, jsonl_rows, register, regular, safe_id

PROMPT = "一张白色背景的海报，正中间用黑色楷体写着大字“{text}”"


def _txt_rows(path):
    with open(regular(path), encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            level, _, rest = text.partition("\t")
            yield f"{path}:{n}", {"level": level.strip(), "text": rest.strip()} if rest else {"text": text}


@register
class ChineseWord(Suite):
    name = "chineseword"
    description = "ChineseWord: single Chinese characters by frequency level (format of our own, see docs)"
    download = ("no published file: pass a .txt (one character a line, optionally '<level>\\t<char>') or a .jsonl "
                "with \"text\" (and \"level\", \"prompt\") fields")
    size = (1024, 1024)
    scorers = [{"name": "text_rendering", "rule": "chineseword"}]

    def rows(self, path, cache_dir):
        return jsonl_rows(path) if path.endswith(".jsonl") else _txt_rows(path)

    def item(self, raw, index, where):
        text = raw.get("text")
        if not isinstance(text, str) or not text.strip():
            raise RowError("field 'text' is missing or empty")
        if not has_cjk(text):
            raise RowError(f"field 'text' {text!r} holds no Chinese character")
        level = str(raw.get("level") or "").strip()
        prompt = raw.get("prompt") or PROMPT.format(text=text.strip())
        if not isinstance(prompt, str):
            raise RowError("field 'prompt' must be a string")
        item_id = safe_id(raw.get("id") or f"L{level or 0}_{index:04d}")
        meta = {"texts": [text.strip()], "language": "zh", "text_rule": "chineseword"}
        return EvalItem(item_id, prompt, f"level-{level}" if level else "chineseword", item_seed(item_id), meta=meta)
