"""Prompt files for online RL: the policy makes its own images, so its data is prompts only. A .txt file holds one
prompt a line (blank lines and lines starting with # skipped); a .jsonl file one object a line with "prompt" and
any other fields, handed to the rewards as the prompt's metadata (e.g. the text an OCR reward looks for)."""
from __future__ import annotations

import json
import os


class PromptFileError(ValueError):
    """A prompt file is missing, empty or has a bad row; the message names the file (and line)."""


def load_prompts(path) -> list[dict]:
    """-> [{"prompt": str, **metadata}], in file order."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PromptFileError(f"{path}: prompt file not found (a .txt file, one prompt a line, or .jsonl with "
                              "\"prompt\" fields)")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            text = line.strip()
            if not text or (text.startswith("#") and not path.endswith(".jsonl")):
                continue
            if path.endswith(".jsonl"):
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    raise PromptFileError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                    raise PromptFileError(f"{path}:{n}: needs a non-empty string field \"prompt\"")
                rows.append(row)
            else:
                rows.append({"prompt": text})
    if not rows:
        raise PromptFileError(f"{path}: no prompts in the file")
    return rows
