"""Text-rendering accuracy: read the image with OCR and compare with the text the prompt quotes.

Flow-GRPO's OCR reward, on the `rapidocr` wheel instead of PaddleOCR: the wheel ships PP-OCR detection and
recognition models (Chinese + English, one character set) inside it, so the reward runs offline, on CPU, with
onnxruntime. Score = 1 - min(edit distance, len) / len between everything read (lines joined in reading order) and
the target, both normalized (text_metrics.normalize): 1.0 is the exact text and nothing else, 0.0 nothing of it."""
from __future__ import annotations

import functools

from ..eval.text_metrics import char_accuracy, quoted_text
from .base import register

EXTRA_HINT = "pip install 'qwenimage[train]' (or: pip install rapidocr onnxruntime)"


@functools.lru_cache(maxsize=4)
def ocr_engine(threads: int = 2, det_side_len: int = 1024, use_cls: bool = False):
    """One RapidOCR engine per setting and process (loading the models takes seconds). Detection runs on the image
    scaled down to `det_side_len` on its long side (rapidocr's default scales *up* to 736 on the short side: 10x
    slower on CPU, and it splits lines); recognition reads crops of the full image. `use_cls` adds the 180-degree
    line classifier, which generated upright text does not need."""
    try:
        from rapidocr import RapidOCR
        import onnxruntime  # noqa: F401  (rapidocr does not declare it)
    except ImportError as e:
        raise ImportError(f"the OCR reward needs rapidocr and onnxruntime ({e}); {EXTRA_HINT}") from None
    return RapidOCR(params={"Global.log_level": "error", "Global.use_cls": bool(use_cls),
                            "Det.limit_type": "max", "Det.limit_side_len": int(det_side_len),
                            "EngineConfig.onnxruntime.intra_op_num_threads": int(threads),
                            "EngineConfig.onnxruntime.inter_op_num_threads": 1})


def read_text(image, **engine) -> str:
    """All text OCR finds in a PIL image, lines joined with spaces in the engine's reading order ('' if none)."""
    out = ocr_engine(**engine)(image.convert("RGB"))
    return " ".join(out.txts) if out.txts else ""


def target_text(prompt: str, metadata) -> str:
    """metadata["text"] when given, else the prompt's quoted spans joined with spaces."""
    if metadata and metadata.get("text"):
        return str(metadata["text"])
    spans = quoted_text(prompt)
    if not spans:
        raise ValueError(f"prompt {prompt[:80]!r} quotes no text to render (put it in \"...\" or give "
                         "metadata['text'])")
    return " ".join(spans)


@register("ocr")
def ocr_reward(ignore_case: bool = True, ignore_space: bool = True, ignore_punct: bool = False, threads: int = 2,
               det_side_len: int = 1024, use_cls: bool = False):
    """OCR reward: character accuracy of what is read against the prompt's quoted text, in [0, 1]."""
    engine = dict(threads=int(threads), det_side_len=int(det_side_len), use_cls=bool(use_cls))
    ocr_engine(**engine)  # fail at build time (missing package), not in the middle of a run

    def fn(images, prompts, metadata):
        targets = [target_text(p, m) for p, m in zip(prompts, metadata)]
        return [char_accuracy(read_text(im, **engine), t, ignore_case, ignore_space, ignore_punct)
                for im, t in zip(images, targets)]

    return fn
