"""Text in the image, from OCR (the report's fourth stage: the language split, the Intensive Text and Small
Character filters). rapidocr's PP-OCR detector (shipped in its wheel: offline) finds the text lines; the recognizer,
optional, reads them for the language split. Through training/rewards/ocr.py's engine, one per process."""
from __future__ import annotations

import cv2
import numpy as np

from ...taxonomy import text_language   # the one language rule, shared with the taxonomy's categories
from ..op import Item, Op, OpError, register
from .abnormal import qr_regions

INF = float("inf")
# The detector pads each line's box (DB's unclip). Measured on rendered text with glyphs 6..37 px high: box height
# = 1.25 x glyph height + 5 px (of the detection scale), within ~1 px; inverted, it estimates the glyphs' height.
BOX_SLOPE, BOX_PAD_PX = 1.25, 5.0
# A squat "line" taller than half the image is the detector mistaking grain or a gradient for text (seen on grainy
# photos: one box over most of the image); real lines are long, or lower (a one-word banner is long, not squat).
MAX_LINE_SHARE, MIN_LINE_ASPECT = 0.5, 2.0
DET_SIDE_LEN = 640      # the detection's long side: >= 4 images/s per core at 960 x 720 (the docstring's figures)
MIN_LINE_SCORE = 0.5   # the recognizer's confidence under which a line is not counted (as the docstring says)


@register("ocr_text")
class OcrText(Op):
    """text_boxes: text lines found (0 = no text); text_area: their boxes' share of the image (0..1; a poster title
    ~0.05, a page of text 0.5 and more); min_char_height: the smallest line's glyph height in stored pixels
    (estimated from its box; None without text). With `recognize = true` also ocr_text (what is read, lines joined
    with spaces), text_chars (its characters but spaces) and text_language ("zh", "en", "other"; "none" without
    text), and lines the recognizer cannot read (score < 0.5) are not counted; otherwise those are None
    (text_language is "none" still when nothing is found). Lines inside a QR code (abnormal.qr_regions) are
    never counted: the recognizer reads its modules as Han characters. Defaults drop text-dense images
    (text_area > 0.5) and glyphs under 8 px, too small to learn their shapes from (an image without text passes
    both). Options: recognize (false), threads (1: the engines run a process per core), det_side_len (640:
    detection scales larger images down to it). The detector's cost goes with the pixels it sees: on 960 x 720
    photos, one core took 473 ms at 1024 (no scaling), 284 at 736, 217 at 640 and 108 at 512 (bench/
    bench_curation.py); what it misses grows the other way: at 640, lines of glyphs under ~5 px in the
    detection's pixels (~7 px of a 960 px image) are not seen, so such an image reads as having no text."""

    stats = ("text_boxes", "text_area", "min_char_height", "text_chars", "text_language", "ocr_text")
    default_keep = {"text_area": (0.0, 0.5), "min_char_height": (8.0, INF)}
    TEXT_ONLY = ("min_char_height", "text_chars")   # undefined without text: their rules pass an image with none

    def __init__(self, recognize: bool = False, threads: int = 1, det_side_len: int = DET_SIDE_LEN, **kw):
        super().__init__(**kw)
        self.recognize = bool(recognize)
        needs = sorted(s for s in ("text_chars", "text_language", "ocr_text") if s in {*self.keep, *self.drop_if})
        if needs and not self.recognize:
            raise OpError(f"op 'ocr_text': a rule on {', '.join(needs)} needs recognize = true (detection alone "
                          f"does not read the text)")
        self.engine = dict(threads=int(threads), det_side_len=int(det_side_len), use_cls=False)

    def compute(self, item: Item) -> dict:
        from ....rewards.ocr import ocr_engine
        im = item.pil
        out = ocr_engine(**self.engine)(im, use_det=True, use_cls=False, use_rec=self.recognize)
        boxes = [] if out.boxes is None else [np.asarray(b, dtype=np.float32) for b in out.boxes]
        qr = qr_regions(item) if boxes else []
        keep = [_is_line(cv2.minAreaRect(b)[1], im.size) and not _inside_any(b, qr) for b in boxes]
        if self.recognize:   # a line the recognizer is unsure of is not text it can vouch for
            keep = [k and s >= MIN_LINE_SCORE for k, s in zip(keep, out.scores or [1.0] * len(keep))]
        boxes = [b for b, k in zip(boxes, keep) if k]
        texts = [t for t, k in zip(out.txts or (), keep) if k] if self.recognize else []
        stats = {"text_boxes": len(boxes),
                 "text_area": min(1.0, sum(cv2.contourArea(b) for b in boxes) / (im.width * im.height)),
                 "min_char_height": char_height(min(min(cv2.minAreaRect(b)[1]) for b in boxes), im.size,
                                                self.engine["det_side_len"]) if boxes else None,
                 "text_chars": None, "text_language": "none" if not boxes else None, "ocr_text": None}
        if self.recognize:
            text = " ".join(texts)
            stats.update(ocr_text=text, text_chars=sum(not c.isspace() for c in text),
                         text_language=text_language(text))
        return stats

    def decide(self, stats):
        if not stats.get("text_boxes"):
            stats = {**stats, **{s: self.keep[s][0] for s in self.TEXT_ONLY if s in self.keep}}
        return super().decide(stats)


def _inside_any(box: np.ndarray, regions) -> bool:
    """A detected line whose centre lies in a QR code: the code's modules, not text."""
    centre = tuple(float(v) for v in box.mean(axis=0))
    return any(cv2.pointPolygonTest(r.reshape(-1, 1, 2), centre, False) >= 0 for r in regions)


def _is_line(box_size, image_size) -> bool:
    short, long = sorted(box_size)
    return short <= MAX_LINE_SHARE * min(image_size) or long >= MIN_LINE_ASPECT * short


def char_height(box_height: float, size: tuple[int, int], det_side_len: int) -> float:
    """Glyph height in stored pixels from a detected line box's height (BOX_SLOPE, BOX_PAD_PX)."""
    scale = max(1.0, max(size) / det_side_len)   # the detector saw the image scaled down by this
    return max(0.0, box_height - BOX_PAD_PX * scale) / BOX_SLOPE
