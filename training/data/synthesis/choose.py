"""Choosing what to draw with what: a paragraph and a font for a language, under the report's quality rule: a
paragraph with any character the chosen font cannot draw is dropped whole (counted), never drawn with a gap."""
from __future__ import annotations

import random
from collections import Counter

from .corpus import Corpus


class NothingToDraw(ValueError):
    """Every attempt was dropped (the fonts cannot draw the corpus); the message says why."""


def text_and_font(rng: random.Random, corpus: Corpus, fonts: list, lang: str, stats: Counter, *,
                  coverage: float = 0.0, sentences=(1, 4), attempts: int = 50):
    """(sentences, font): a paragraph (or, with probability `coverage`, a common-character string for Chinese)
    and a face that maps every one of its characters."""
    last = ""
    for _ in range(attempts):
        if lang == "zh" and rng.random() < coverage:
            paragraph = corpus.coverage(rng)
        else:
            paragraph = corpus.paragraph(rng, lang, sentences)
        font = rng.choice(fonts)
        missing = font.missing("".join(paragraph))
        if not missing:
            return paragraph, font
        stats["dropped: glyph missing"] += 1
        last = f"{font.name} lacks {''.join(sorted(missing))[:20]!r}"
    raise NothingToDraw(f"{attempts} {lang} paragraphs in a row were dropped (last: {last}): the fonts cannot draw "
                        "this corpus; give fonts that cover it")
