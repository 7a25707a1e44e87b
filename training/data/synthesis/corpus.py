"""Text to render: sentences from the user's text files or the built-in English and Chinese corpus (corpus/*.txt,
one sentence per line), grouped into paragraphs; short titles and labels from word lists (the user's, or the
built-in corpus/*_words.txt: whole words and phrases, so a title is never a sentence cut mid-word); and strings
drawn from the 3,500 common Chinese characters for character-level coverage (a model learns rare characters only
if it sees them). The built-in texts were written for this project and are released with it (Apache-2.0)."""
from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass, field

from ....qwenimage_core.images import not_regular

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
BUILTIN = {"en": os.path.join(HERE, "en.txt"), "zh": os.path.join(HERE, "zh.txt")}
BUILTIN_WORDS = {"en": os.path.join(HERE, "en_words.txt"), "zh": os.path.join(HERE, "zh_words.txt")}
COMMON_HANZI = os.path.join(HERE, "common_hanzi_3500.txt")
LANGS = ("en", "zh")
MAX_CORPUS_BYTES = 256 << 20  # read whole into memory


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names it."""


def read_lines(path: str) -> list[str]:
    """Non-empty lines of a UTF-8 text file, '#' comment lines left out."""
    why = not_regular(path, MAX_CORPUS_BYTES)
    if why:
        raise CorpusError(f"{path}: {why}")
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


@functools.lru_cache(maxsize=None)
def builtin_words(lang: str) -> tuple[str, ...]:
    return tuple(read_lines(BUILTIN_WORDS[lang]))


@dataclass
class Corpus:
    sentences: dict          # lang -> list[str]
    hanzi: str               # the common characters, for coverage strings
    words: dict = field(default_factory=dict)   # lang -> titles and labels; a language without: the built-in list

    @classmethod
    def load(cls, files: dict | None = None, words: dict | None = None) -> "Corpus":
        """files: {"en": [paths], "zh": [paths]} of sentences, words: the same of word lists (one title or label a
        line); a language with no files uses the built-in ones. Lines repeated across files count once."""
        files, words = files or {}, words or {}
        for what, given in (("corpus", files), ("corpus words", words)):
            unknown = sorted(set(given) - set(LANGS))
            if unknown:
                raise CorpusError(f"{what}: unknown language(s) {', '.join(unknown)} (known: {', '.join(LANGS)})")
        sentences, lists = {}, {}
        for lang in LANGS:
            paths = files.get(lang) or [BUILTIN[lang]]
            sentences[lang] = list(dict.fromkeys(s for p in paths for s in read_lines(p)))
            if not sentences[lang]:
                raise CorpusError(f"corpus.{lang}: no text in {', '.join(paths)}")
            if words.get(lang):
                lists[lang] = tuple(dict.fromkeys(w for p in words[lang] for w in read_lines(p)))
                if not lists[lang]:
                    raise CorpusError(f"corpus.{lang}_words: no text in {', '.join(words[lang])}")
        return cls(sentences, common_hanzi(), lists)

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
        """A short label (a title, a button): a whole entry of the word list, one whose length fits `words` (English
        words, or Chinese characters / 2) when there is one. Entries are never cut: a cut sentence made titles such
        as "设计团" and "所有访客请在前台登"."""
        pool = self.words.get(lang) or builtin_words(lang)
        fit = _fitting(tuple(pool), lang, *words)
        return rng.choice(fit or pool)


@functools.lru_cache(maxsize=64)
def _fitting(pool: tuple, lang: str, lo: int, hi: int) -> tuple:
    size = (lambda w: len(w.split())) if lang == "en" else (lambda w: len(w) / 2)
    return tuple(w for w in pool if lo <= size(w) <= hi)


def join(sentences: list[str], lang: str) -> str:
    return ("" if lang == "zh" else " ").join(sentences)
