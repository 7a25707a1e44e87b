"""Text rendering read back by OCR (rapidocr, offline: ocr.py's engine) and compared with the texts the prompt asks
for, under each benchmark's rule. Three metrics per image, all in [0, 1], higher is better:

- word_accuracy: the share of target words that were read (a multiset match: a word asked for twice must be read
  twice; order and position ignored). For Chinese the "words" are characters.
- char_accuracy: 1 - Levenshtein(read, target) / len(target) on the characters (spaces ignored), clipped at 0
  (text_metrics.normalized_edit_distance): order counts, so "CLOSED FOREVER" read for "OPEN DAILY" scores 0, not the
  0.444 a count of shared characters gave.
- ned: 1 - Levenshtein(read, target) / max(len(read), len(target)) on the normalised strings (order counts;
  everything else OCR reads in the image costs too). Reported as a similarity, as the CVTG-2K tables print NED.

Targets are metadata["texts"] (a list; metadata["text"] also works) or the prompt's quoted spans; the rule is
metadata["text_rule"] or the scorer's `rule` option; the language metadata["language"] or guessed (any CJK
character in the targets: "zh").

Rules (what each benchmark's scoring does, and what we could and could not check):
- "longtext" (LongText-Bench, X-Omni's textbench/summary_scores.py, read): keep only CJK (U+4E00-U+9FA5), ASCII
  letters and digits, whitespace and common accented Latin letters; English lower-cased with runs of whitespace as
  one space, Chinese without any spaces. Its text accuracy is our word_accuracy: English words, Chinese
  characters, matched as multisets. The benchmark averages over all words of the suite (sum of matches / sum of
  words), we give per-image ratios; and it reads the image with Qwen2.5-VL-7B as OCR, we with rapidocr.
- "cvtg" (CVTG-2K, TextCrafter): word accuracy over the target words and NED. Its scoring script is not in the
  published repository (NJU-PCALab/TextCrafter, checked) nor anywhere we could search, so its case and punctuation
  handling is not verified: we lower-case, drop punctuation and symbols (Unicode P*/S*) and compare words, the
  usual convention for OCR word accuracy (unchecked against CVTG-2K's published numbers).
- "chineseword" (ChineseWord, the Qwen-Image report's own benchmark; no public scorer found): character-level
  accuracy: keep CJK characters, letters and digits; word_accuracy matches characters as a multiset.
- "quoted" (any prompt with quoted text, the RL OCR reward's case): text_metrics.normalize (NFKC, lower case),
  punctuation dropped, words for English and characters for Chinese."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter

from ..eval.text_metrics import edit_distance, normalize, normalized_edit_distance, quoted_text
from .base import RewardError, register
from .ocr import ocr_engine, read_text

RULES = ("cvtg", "chineseword", "longtext", "quoted")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LONGTEXT_KEEP = re.compile(r"[^\u4e00-\u9fa5a-zA-Z0-9\sàâäéèêëîïôöùûüçÀÂÄÉÈÊËÎÏÔÖÙÛÜÇ]")


def _no_punct(text: str) -> str:
    return "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)


def normalize_for(rule: str, text: str, language: str) -> str:
    """The string a rule compares: English keeps single spaces between words, Chinese has none."""
    if rule == "longtext":
        text = _LONGTEXT_KEEP.sub("", text)
        return " ".join(text.split()).lower() if language == "en" else "".join(text.split())
    if rule == "chineseword":
        return "".join(c for c in unicodedata.normalize("NFKC", text) if _CJK.match(c) or c.isalnum())
    # cvtg, quoted: NFKC, lower case, punctuation and symbols dropped
    text = _no_punct(normalize(text, ignore_case=True, ignore_space=False))
    return " ".join(text.split()) if language == "en" else "".join(text.split())


def _matched(target: list[str], read: list[str]) -> float:
    if not target:
        return 0.0
    return sum((Counter(target) & Counter(read)).values()) / len(target)


def text_scores(read: str, targets: list[str], rule: str = "quoted", language: str | None = None) -> dict:
    """word_accuracy, char_accuracy, ned of what OCR read against the target texts, under `rule`."""
    if rule not in RULES:
        raise ValueError(f"text rule {rule!r} is not one of {', '.join(RULES)}")
    language = language or ("zh" if any(_CJK.search(t) for t in targets) else "en")
    target = normalize_for(rule, " ".join(targets), language)
    got = normalize_for(rule, read, language)
    if not target.replace(" ", ""):
        raise ValueError(f"no text to compare: the targets {targets!r} are empty under the {rule!r} rule")
    words = language == "en" and rule != "chineseword"
    t_chars, r_chars = target.replace(" ", ""), got.replace(" ", "")
    longest = max(len(target), len(got))
    word = _matched(target.split(), got.split()) if words else _matched(list(t_chars), list(r_chars))
    return {"word_accuracy": word,
            "char_accuracy": 1.0 - normalized_edit_distance(r_chars, t_chars),
            "ned": 1.0 - edit_distance(got, target) / longest}


def targets_of(prompt: str, meta: dict) -> list[str]:
    texts = meta.get("texts") or ([meta["text"]] if meta.get("text") else None) or quoted_text(prompt)
    if not texts:
        raise ValueError(f"no target text: metadata has no 'texts' and the prompt {prompt[:60]!r} quotes none")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"metadata 'texts' must be a list of strings, not {texts!r:.80}")
    return list(texts)


class TextRendering:
    """OCR text metrics per image (see the module doc); `reward` picks the one `__call__` returns."""

    def __init__(self, rule: str = "quoted", reward: str = "word_accuracy", threads: int = 2,
                 det_side_len: int = 1024, use_cls: bool = False):
        if rule not in RULES:
            raise ValueError(f"text_rendering: rule {rule!r} is not one of {', '.join(RULES)}")
        if reward not in ("word_accuracy", "char_accuracy", "ned"):
            raise ValueError(f"text_rendering: reward {reward!r} is not word_accuracy, char_accuracy or ned")
        self.rule, self.reward = rule, reward
        self.engine = dict(threads=int(threads), det_side_len=int(det_side_len), use_cls=bool(use_cls))
        ocr_engine(**self.engine)  # a missing package fails here, not mid-run
        self.failures: dict[int, str] = {}
        self.details: dict[int, dict] = {}

    def metrics(self, images, prompts, metadata) -> dict[str, list[float | None]]:
        self.failures, self.details = {}, {}
        out = {"word_accuracy": [], "char_accuracy": [], "ned": []}
        for i, (image, prompt, meta) in enumerate(zip(images, prompts, metadata)):
            meta = meta or {}
            try:
                targets = targets_of(prompt, meta)
                read = read_text(image, **self.engine)
                values = text_scores(read, targets, meta.get("text_rule") or self.rule, meta.get("language"))
                self.details[i] = {"read": read, "targets": targets}
            except ValueError as e:
                self.failures[i] = str(e)
                values = dict.fromkeys(out)
            for name in out:
                out[name].append(values[name])
        return out

    def __call__(self, images, prompts, metadata):
        values = self.metrics(images, prompts, metadata)[self.reward]
        if self.failures:
            i, reason = next(iter(self.failures.items()))
            raise RewardError(f"scorer 'text_rendering': image {i}: {reason}")
        return values


@register("text_rendering")
def text_rendering(**options):
    """OCR read-back vs the target texts: word_accuracy, char_accuracy, ned (rule: cvtg, chineseword, longtext,
    quoted)."""
    return TextRendering(**options)
