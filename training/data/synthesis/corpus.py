"""Text to render: sentences from the user's text files or the built-in English and Chinese corpus (corpus/*.txt,
one sentence per line), grouped into paragraphs, and strings drawn from the 3,500 common Chinese characters for
character-level coverage (a model learns rare characters only if it sees them)."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
BUILTIN = {"en": os.path.join(HERE, "en.txt"), "zh": os.path.join(HERE, "zh.txt")}
COMMON_HANZI = os.path.join(HERE, "common_hanzi_3500.txt")
LANGS = ("en", "zh")
STOPWORDS = {"the", "a", "an", "in", "on", "at", "of", "to", "and", "or", "for", "with", "is", "are", "by", "from",
             "your", "our", "must", "will", "be"}


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names it."""


def read_lines(path: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file, '#' comment lines left out."""
    try:
        with open(path, encoding="utf-8") as fh:
            rows = [ln.strip() for ln in fh]
    except FileNotFoundError:
        raise CorpusError(f"{path}: corpus file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: corpus file not readable as UTF-8 text ({e})") from None
    return [ln for ln in rows if ln and not ln.startswith("#")]


def common_hanzi() -> str:
    return "".join(read_lines(COMMON_HANZI))


@dataclass
class Corpus:
    sentences: dict          # lang -> list[str]
    hanzi: str               # the common characters, for coverage strings

    @classmethod
    def load(cls, files: dict | None = None) -> "Corpus":
        """files: {"en": [paths], "zh": [paths]}; a language with no files uses the built-in corpus."""
        files = files or {}
        unknown = sorted(set(files) - set(LANGS))
        if unknown:
            raise CorpusError(f"corpus: unknown language(s) {', '.join(unknown)} (known: {', '.join(LANGS)})")
        sentences = {}
        for lang in LANGS:
            paths = files.get(lang) or [BUILTIN[lang]]
            sentences[lang] = [s for p in paths for s in read_lines(p)]
            if not sentences[lang]:
                raise CorpusError(f"corpus.{lang}: no text in {', '.join(paths)}")
        return cls(sentences, common_hanzi())

    def paragraph(self, rng: random.Random, lang: str, sentences: tuple[int, int] = (1, 4)) -> list[str]:
        """Consecutive sentences (a few, from a random place), as a list so a caller can drop the last to fit."""
        pool = self.sentences[lang]
        n = rng.randint(*sentences)
        start = rng.randrange(len(pool))
        return [pool[(start + k) % len(pool)] for k in range(min(n, len(pool)))]

    def coverage(self, rng: random.Random, length: tuple[int, int] = (6, 24)) -> list[str]:
        """Common characters in groups of 2-6 separated by the ideographic comma: text for character coverage."""
        n, out = rng.randint(*length), []
        while sum(map(len, out)) < n:
            out.append("".join(rng.choice(self.hanzi) for _ in range(rng.randint(2, 6))))
        return ["、".join(out) + "。"]

    def phrase(self, rng: random.Random, lang: str, words: tuple[int, int] = (1, 4)) -> str:
        """A short label (a title, a button): the first words (or characters) of a sentence, no final stop."""
        s = rng.choice(self.sentences[lang]).rstrip("。.!！?？")
        if lang == "en":
            w = s.split()[:rng.randint(*words)]
            while len(w) > 1 and w[-1].lower().strip(",;:") in STOPWORDS:  # no title ends on "the"
                w.pop()
            return " ".join(w).rstrip(",;:")
        cut = s.replace("，", " ").replace("、", " ").split()[0]
        return cut[:max(2, rng.randint(words[0] * 2, words[1] * 2))]


def join(sentences: list[str], lang: str) -> str:
    return ("" if lang == "zh" else " ").join(sentences)
