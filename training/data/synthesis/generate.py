"""`qwenimage data synth CONFIG`: the three kinds of rendering from one TOML config, deterministic from its seed,
written as shards the trainer reads as they are (`data.path = "<output>/manifest.jsonl"`), with a progress bar, a
contact sheet (`--preview`) and an OCR read-back report (`--ocr N`).

Output:
    <output>/shard-00000/000000.png ...   images, `shard_size` per folder
    <output>/shard-00000/manifest.jsonl   the shard's rows (paths relative to the shard)
    <output>/manifest.jsonl               every row (paths relative to <output>): what `qwenimage train` reads
    <output>/synth.json                   the config, counts, what was dropped or refused and why
A row: {"image", "caption", "category": "text/<kind>/<lang>", "text", "captions": {"en", "zh"},
        "tags": {"language", "kind", "subcategory"}, "font", "seed"}.
Sample i draws everything from its own generator seeded by (seed, i): a sample does not depend on the others, so
any worker count gives the same bytes."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from ...config import ConfigError, _build, load_raw
from . import captions, compositional, fonts as fontlib, pure, templates
from .corpus import LANGS, Corpus

KINDS = ("pure", "compositional", "template")


@dataclass
class CountConfig:
    pure: int = 0
    compositional: int = 0
    template: int = 0


@dataclass
class CorpusConfig:
    en: list = field(default_factory=list)         # text files, one sentence per line; [] = built-in
    zh: list = field(default_factory=list)
    en_words: list = field(default_factory=list)   # word lists, one title or label per line; [] = built-in
    zh_words: list = field(default_factory=list)


@dataclass
class FontsConfig:
    dirs: list = field(default_factory=list)       # font folders; [] (and no files) = the system's
    files: list = field(default_factory=list)
    exclude: list = field(default_factory=lambda: ["Emoji", "Math", "Symbol", "Dingbat"])  # family regexes


@dataclass
class CompositionalConfig:
    backgrounds: str = ""                          # a folder of images; "" = procedural scenes
    media: list = field(default_factory=lambda: list(compositional.MEDIA))


@dataclass
class TemplateConfig:
    files: list = field(default_factory=list)      # template JSON files; [] (and no dirs) = the shipped ones
    dirs: list = field(default_factory=list)


@dataclass
class SynthConfig:
    output: str = ""
    seed: int = 0
    shard_size: int = 1000
    sizes: list = field(default_factory=lambda: [[512, 512], [768, 512], [512, 768]])  # pure and compositional
    languages: dict = field(default_factory=lambda: {"en": 0.5, "zh": 0.5})
    caption_language: str = "match"                # match (the text's) | en | zh | both (either, at random)
    hanzi_coverage: float = 0.2                    # share of Chinese pure renders drawn from the 3,500 characters
    min_font_size: int = 0                         # 0: 1/40 of the image height, at least 12 px
    workers: int = 1
    count: CountConfig = field(default_factory=CountConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    fonts: FontsConfig = field(default_factory=FontsConfig)
    compositional: CompositionalConfig = field(default_factory=CompositionalConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)


def load_config(source, overrides=()) -> SynthConfig:
    """A SynthConfig from a TOML file (or a dict) with KEY=VALUE overrides, checked field by field."""
    return validate(_build(SynthConfig, load_raw(source, overrides), ""))


def validate(cfg: SynthConfig) -> SynthConfig:
    if not cfg.output:
        raise ConfigError("output: required (the folder the shards are written to)")
    for i, s in enumerate(cfg.sizes):
        if not (isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and v >= 64 and v % 16 == 0 for v in s)):
            raise ConfigError(f"sizes[{i}]: expected [width, height], multiples of 16 of at least 64, got {s!r}")
    if not cfg.sizes:
        raise ConfigError("sizes: give at least one [width, height]")
    bad = sorted(set(cfg.languages) - set(LANGS))
    if bad or not cfg.languages or any(not isinstance(w, (int, float)) or w < 0 for w in cfg.languages.values()) \
            or sum(cfg.languages.values()) <= 0:
        raise ConfigError(f"languages: expected weights >= 0 for {' and '.join(LANGS)} (not all 0), "
                          f"got {cfg.languages}")
    if cfg.caption_language not in ("match", "en", "zh", "both"):
        raise ConfigError(f"caption_language: {cfg.caption_language!r} is not one of match, en, zh, both")
    for key in KINDS:
        if getattr(cfg.count, key) < 0:
            raise ConfigError(f"count.{key}: must be 0 or more")
    if not total(cfg):
        raise ConfigError("count: ask for at least one image (count.pure, count.compositional, count.template)")
    if not 0 <= cfg.hanzi_coverage <= 1:
        raise ConfigError(f"hanzi_coverage: must be in [0, 1], got {cfg.hanzi_coverage}")
    for key in ("shard_size", "workers"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: must be 1 or more")
    bad = sorted(set(cfg.compositional.media) - set(compositional.MEDIA))
    if bad or not cfg.compositional.media:
        raise ConfigError(f"compositional.media: {bad or 'none'} not among {', '.join(compositional.MEDIA)}")
    if cfg.compositional.backgrounds and not os.path.isdir(cfg.compositional.backgrounds):
        raise ConfigError(f"compositional.backgrounds: {cfg.compositional.backgrounds}: not a folder")
    return cfg


def add_text_files(cfg: SynthConfig, corpus=(), words=()) -> SynthConfig:
    """The command line's --corpus LANG=FILE and --words LANG=FILE, added to the config's lists."""
    for flag, specs, suffix in (("--corpus", corpus, ""), ("--words", words, "_words")):
        for spec in specs:
            lang, eq, path = spec.partition("=")
            if not eq or lang not in LANGS or not path:
                raise ConfigError(f"{flag} {spec!r}: give LANG=FILE with LANG one of {', '.join(LANGS)}")
            getattr(cfg.corpus, lang + suffix).append(path)
    return cfg


def total(cfg: SynthConfig) -> int:
    return sum(getattr(cfg.count, k) for k in KINDS)


def plan(cfg: SynthConfig) -> list[str]:
    """The kind of every sample index: the counts asked for, shuffled by the seed."""
    kinds = [k for k in KINDS for _ in range(getattr(cfg.count, k))]
    random.Random(f"{cfg.seed}/plan").shuffle(kinds)
    return kinds


class Synthesizer:
    """Corpus, fonts, templates and backgrounds loaded once; `make(i, kind)` renders sample i."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        c = cfg.corpus
        self.corpus = Corpus.load({"en": c.en, "zh": c.zh}, {"en": c.en_words, "zh": c.zh_words})
        faces = fontlib.load_fonts(cfg.fonts.dirs, cfg.fonts.files, cfg.fonts.exclude)
        langs = [lang for lang, w in cfg.languages.items() if w > 0]
        searched = [*cfg.fonts.dirs, *cfg.fonts.files] or fontlib.SYSTEM_DIRS
        self.fonts = {lang: fontlib.require(faces, lang, "fonts", searched) for lang in langs}
        self.templates = []
        if cfg.count.template:
            paths = list(cfg.template.files) + [p for d in cfg.template.dirs for p in _json_files(d)]
            self.templates = [templates.load(p) for p in (paths or templates.shipped())]
        self.backgrounds = compositional.background_files(cfg.compositional.backgrounds) \
            if cfg.compositional.backgrounds else []
        if cfg.compositional.backgrounds and not self.backgrounds and cfg.count.compositional:
            raise ConfigError(f"compositional.backgrounds: no images in {cfg.compositional.backgrounds}")

    def make(self, i: int, kind: str, lang: str | None = None):
        """(Rendered, row, stats) for sample i; `lang` forces the language (previews)."""
        cfg, stats = self.cfg, Counter()
        rng = random.Random(f"{cfg.seed}/{i}")
        langs = sorted(self.fonts)
        lang = lang or rng.choices(langs, [cfg.languages[x] for x in langs])[0]
        size = tuple(rng.choice(cfg.sizes))
        fonts = self.fonts[lang]
        if kind == "pure":
            r = pure.render(rng, self.corpus, fonts, lang, size, stats, coverage=cfg.hanzi_coverage,
                            min_size=cfg.min_font_size)
        elif kind == "compositional":
            r = compositional.render(rng, self.corpus, fonts, lang, size, stats, backgrounds=self.backgrounds,
                                     media=cfg.compositional.media, min_size=cfg.min_font_size)
        else:
            r = templates.render(rng, self.corpus, fonts, lang, self.templates, stats)
        both = {x: captions.caption(r, x, rng) for x in LANGS}
        cap_lang = {"match": lang, "en": "en", "zh": "zh", "both": rng.choice(LANGS)}[cfg.caption_language]
        row = {"caption": both[cap_lang], "category": f"text/{kind}/{lang}", "text": r.text, "captions": both,
               "tags": captions.tags(r), "font": r.facts.get("font", ""), "seed": f"{cfg.seed}/{i}"}
        return r, row, stats


def _json_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise ConfigError(f"template.dirs: {folder}: not a folder")
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".json"))


def shard_name(i: int, shard_size: int) -> str:
    return f"shard-{i // shard_size:05d}"


# ------------------------------------------------------------------------------------------------ the run

_worker: Synthesizer | None = None


def _init(cfg):
    global _worker
    _worker = Synthesizer(cfg)


def _one(job):
    """Render and write sample i (the PNG written to a temporary name, then renamed: no partial files)."""
    i, kind = job
    r, row, stats = _worker.make(i, kind)
    cfg = _worker.cfg
    rel = f"{shard_name(i, cfg.shard_size)}/{i:06d}.png"
    path = os.path.join(cfg.output, rel)
    tmp = path + ".tmp"
    r.image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return i, {"image": rel, **row}, stats


def generate(cfg: SynthConfig, progress: bool = True) -> dict:
    """Write the dataset; -> the summary also written to <output>/synth.json."""
    from tqdm.auto import tqdm

    kinds = plan(cfg)
    n = len(kinds)
    os.makedirs(cfg.output, exist_ok=True)
    for s in range(math.ceil(n / cfg.shard_size)):
        os.makedirs(os.path.join(cfg.output, f"shard-{s:05d}"), exist_ok=True)
    t0, stats, rows = time.perf_counter(), Counter(), [None] * n
    jobs = list(enumerate(kinds))
    bar = tqdm(total=n, desc="synth", unit="img", disable=not progress)
    if cfg.workers == 1:
        _init(cfg)
        results = map(_one, jobs)
        pool = None
    else:
        import multiprocessing as mp

        # fork where there is one: a spawned worker re-imports everything (seconds); the workers use no torch
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(cfg.workers, _init, (cfg,))
        results = pool.imap_unordered(_one, jobs, chunksize=4)
    try:
        for i, row, st in results:
            rows[i] = row
            stats.update(st)
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - t0
    for s in range(math.ceil(n / cfg.shard_size)):
        shard = f"shard-{s:05d}"
        part = [dict(r, image=r["image"].split("/", 1)[1]) for r in rows[s * cfg.shard_size:(s + 1) * cfg.shard_size]]
        _write_jsonl(os.path.join(cfg.output, shard, "manifest.jsonl"), part)
    _write_jsonl(os.path.join(cfg.output, "manifest.jsonl"), rows)
    summary = {"images": n, "seconds": round(seconds, 2), "images_per_second": round(n / max(seconds, 1e-9), 3),
               "by_category": dict(sorted(Counter(r["category"] for r in rows).items())),
               "dropped_or_refused": dict(sorted(stats.items())), "config": dataclasses.asdict(cfg)}
    _write_json(os.path.join(cfg.output, "synth.json"), summary)
    return summary


def _write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    os.replace(tmp, path)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=1)
    os.replace(tmp, path)
