"""GEdit-Bench (Step1X-Edit, Liu et al. 2025): 606 real-world edit requests in 11 task types, each in English and
Chinese, judged for semantic consistency (SC) and perceptual quality (PQ), overall = sqrt(SC * PQ), 0-10.

File: the dataset huggingface.co/datasets/stepfun-ai/GEdit-Bench (https://github.com/stepfun-ai/Step1X-Edit),
downloaded with `huggingface-cli download stepfun-ai/GEdit-Bench --repo-type dataset`: pass its parquet file, or the
folder holding the parquet shards. Columns used: key, task_type (background_change, color_alter, material_alter,
motion_change, ps_human, style_change, subject-add, subject-remove, subject-replace, text_change, tone_transfer),
instruction, instruction_language ("en" or "cn"), input_image (an image: {"bytes", "path"}). Verified: the column
names and languages, from the official scorer and third-party loaders (datasets.load_dataset(...)["train"]); NOT
verified: the shard file names inside the dataset repository (any *.parquet under the folder is read).
Or a .jsonl with the same fields, input_image a path relative to the file.
The input images are written once to the run's inputs/ folder (PNG, atomically) so the items can name them.
Suites "gedit-en" and "gedit-cn" keep one language: the report gives GEdit-EN and GEdit-CN separately."""
from __future__ import annotations

import glob
import io
import os

from ....qwenimage_core.images import save_png
from .base import (EvalItem, RowError, Suite, SuiteFileError, existing_file, item_seed, jsonl_rows, register, regular,
                   safe_id, text_field)

TASKS = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
         "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer")


def _parquet_rows(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SuiteFileError(f"{path}: reading parquet needs pyarrow (pip install 'qwenimage[eval]')") from None
    files = [path] if os.path.isfile(path) else sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
    if not files:
        raise SuiteFileError(f"{path}: no .parquet files in it")
    for f in files:
        regular(f)
        try:
            table = pq.read_table(f)
        except Exception as e:  # pyarrow's several error types for a broken file
            raise SuiteFileError(f"{f}: not a readable parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{f} row {i}", row


@register
class GEdit(Suite):
    name = "gedit"
    description = "GEdit-Bench: real-world image edits, 11 task types, English and Chinese (judged SC, PQ, O)"
    download = "pass the parquet file(s) of huggingface.co/datasets/stepfun-ai/GEdit-Bench (or a .jsonl export)"
    size = None
    edit = True
    language: str | None = None
    scorers = [{"name": "edit_judge"}]

    def rows(self, path, cache_dir):
        self._base = os.path.dirname(os.path.abspath(path))
        self._cache = cache_dir or os.path.join(self._base, "gedit_inputs")
        return jsonl_rows(path) if path.endswith(".jsonl") else _parquet_rows(path)

    def item(self, raw, index, where):
        key, task = text_field(raw, "key"), text_field(raw, "task_type")
        instruction, lang = text_field(raw, "instruction"), text_field(raw, "instruction_language")
        if lang not in ("en", "cn"):
            raise RowError(f"field 'instruction_language' is {lang!r}, not 'en' or 'cn'")
        if self.language and lang != self.language:
            return None
        item_id = safe_id(f"{key}_{lang}")
        source = self._input(raw.get("input_image"), item_id)
        meta = {"source": source, "instruction": instruction, "language": "zh" if lang == "cn" else "en",
                "task_type": task}
        return EvalItem(item_id, instruction, task, item_seed(item_id), inputs=(source,), meta=meta)

    def _input(self, image, item_id) -> str:
        if isinstance(image, str):
            return existing_file(self._base, image, "field 'input_image'")
        if isinstance(image, dict) and image.get("bytes"):
            from PIL import Image

            dest = os.path.join(self._cache, f"{item_id}.png")
            if not os.path.isfile(dest):
                try:
                    with Image.open(io.BytesIO(image["bytes"])) as im:
                        save_png(im.convert("RGB"), dest, {})
                except OSError as e:
                    raise RowError(f"field 'input_image' is not a readable image ({e})") from None
            return dest
        raise RowError("field 'input_image' needs the image (bytes) or a path")


@register
class GEditEN(GEdit):
    name = "gedit-en"
    description = "GEdit-Bench, English instructions only (GEdit-EN)"
    language = "en"


@register
class GEditCN(GEdit):
    name = "gedit-cn"
    description = "GEdit-Bench, Chinese instructions only (GEdit-CN)"
    language = "cn"
