"""Text-rendering metrics: what a prompt asks to be written, and how close a read-back string is to it.

Shared by the OCR reward (training/rewards/ocr.py) and evaluation. Distances are on characters (Levenshtein), so
Chinese and English are measured alike. Before comparing, both strings go through `normalize`: Unicode NFKC
(full-width letters and punctuation become their ASCII forms), and by default lower case without whitespace, as
Flow-GRPO's OCR reward compares them (OCR engines are unreliable about spaces and case)."""
from __future__ import annotations

import re
import unicodedata

# Text a prompt asks to render: inside "...", “...”, 「...」, 『...』 or ‘...’ (not '...': apostrophes).
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|「([^」]+)」|『([^』]+)』|‘([^’]+)’')


def quoted_text(prompt: str) -> list[str]:
    """The quoted spans of a prompt in order: 'a sign that says "OPEN" and “营业中”' -> ["OPEN", "营业中"]."""
    return [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(prompt)]


def normalize(text: str, ignore_case: bool = True, ignore_space: bool = True, ignore_punct: bool = False) -> str:
    text = unicodedata.normalize("NFKC", text)
    if ignore_case:
        text = text.lower()
    if ignore_space:
        text = "".join(text.split())
    if ignore_punct:  # Unicode punctuation and symbols (P*, S*): OCR often misses or confuses small marks
        text = "".join(c for c in text if not unicodedata.category(c).startswith(("P", "S")))
    return text


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance in characters (insertions, deletions, substitutions)."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(a, b)


def normalized_edit_distance(pred: str, target: str) -> float:
    """min(distance, len(target)) / len(target), in [0, 1]: 0 is exact, 1 is nothing of the target (reading too
    much text costs as much as missing it, up to the target's length). An empty target: 0 if pred is empty too."""
    if not target:
        return 0.0 if not pred else 1.0
    return min(edit_distance(pred, target), len(target)) / len(target)


def char_accuracy(pred: str, target: str, ignore_case: bool = True, ignore_space: bool = True,
                  ignore_punct: bool = False) -> float:
    """1 - normalized_edit_distance of the normalized strings: 1.0 for a perfect read, 0.0 for nothing right."""
    return 1.0 - normalized_edit_distance(normalize(pred, ignore_case, ignore_space, ignore_punct),
                                          normalize(target, ignore_case, ignore_space, ignore_punct))
