"""Quality measured, not assumed: OCR reads a rendered image back, and the character accuracy of what it reads
against the text we drew is 1 - edit distance / length (training/eval/text_metrics.py, shared with the OCR
reward; the engine is the reward's: RapidOCR, offline, its ONNX models inside the wheel). Both sides are
NFKC-normalised and lower-cased, and spaces and punctuation are left out (OCR reads "，" as "," and drops the
spaces between words). Reading order: rows top to bottom, each left to right, on both sides (reading_order)."""
from __future__ import annotations

import unicodedata

from ...eval.text_metrics import normalize, normalized_edit_distance
from ...rewards.ocr import ocr_engine


def _letters(s: str) -> str:
    return "".join(c for c in normalize(s) if not unicodedata.category(c).startswith(("P", "S")))


def char_accuracy(read: str, truth: str) -> float:
    """1 - normalised edit distance of the letters (and digits, and characters): 1.0 for an exact read."""
    return 1.0 - normalized_edit_distance(_letters(read), _letters(truth))


def reading_order(items) -> list[str]:
    """Texts of (x0, y0, x1, y1, text) boxes in reading order: rows (boxes whose vertical centres lie within half a
    box height of the row's), top to bottom, each left to right. Both sides go through it, so two columns read
    row by row on both (OCR joins a row's columns into one line; spaces and newlines are not compared)."""
    rows: list[list] = []
    for it in sorted(items, key=lambda b: (b[1] + b[3]) / 2):
        c, h = (it[1] + it[3]) / 2, it[3] - it[1]
        if rows and abs(c - rows[-1][0]) <= 0.5 * max(h, rows[-1][1]):
            rows[-1][2].append(it)
        else:
            rows.append([c, h, [it]])
    return [it[4] for _, _, row in rows for it in sorted(row, key=lambda b: b[0])]


def read(image) -> str:
    """The text OCR finds in a PIL image, in reading order, one line per box."""
    out = ocr_engine()(image.convert("RGB"))
    if out.txts is None or out.boxes is None:
        return ""
    boxes = [(float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 0].max()), float(b[:, 1].max()), t)
             for b, t in zip(out.boxes, out.txts)]
    return "\n".join(reading_order(boxes))


def truth(rendered) -> str:
    """The drawn text in the order OCR reads it (see reading_order), one line per laid-out line."""
    return "\n".join(reading_order([(*ln.box, ln.text) for b in rendered.blocks for ln in b.lines]))


def score(rendered) -> float:
    return char_accuracy(read(rendered.image), truth(rendered))
