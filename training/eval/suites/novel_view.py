"""Novel view synthesis as an edit: a source view, a camera instruction, and the true target view.

The report measures it on GSO renders; no file is published for it, so this reads a format of our own (NOT an
official one): a .jsonl file, one line per pair, paths relative to the file:
  {"id": "mug_030", "source": "views/mug_000.png", "instruction": "Rotate the camera 30 degrees to the right.",
   "target": "views/mug_030.png", "category": "rotate_30"?}
Category defaults to "novel_view". Scored against the target by E2's edit_fidelity (PSNR, SSIM, LPIPS with its
weights); set --size to the target's size (or leave it: the edit's default follows the source image)."""
from __future__ import annotations

import os

from .base import EvalItem, Suite, existing_file, item_seed, jsonl_rows, register, safe_id, text_field


@register
class NovelView(Suite):
    name = "novel_view"
    description = "Novel view synthesis: source view + camera instruction vs the true view (format of our own)"
    download = ("no published file: pass a .jsonl of {\"id\", \"source\", \"instruction\", \"target\"} lines, paths "
                "relative to the file")
    size = None
    edit = True
    scorers = [{"name": "edit_fidelity"}]

    def rows(self, path, cache_dir):
        self._base = os.path.dirname(os.path.abspath(path))
        return jsonl_rows(path)

    def item(self, raw, index, where):
        item_id = safe_id(text_field(raw, "id"))
        instruction = text_field(raw, "instruction")
        source = existing_file(self._base, text_field(raw, "source"), "field 'source': image")
        target = existing_file(self._base, text_field(raw, "target"), "field 'target': image")
        meta = {"source": source, "target": target, "instruction": instruction}
        return EvalItem(item_id, instruction, str(raw.get("category") or "novel_view"), item_seed(item_id),
                        inputs=(source,), meta=meta)
