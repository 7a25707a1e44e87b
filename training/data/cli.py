"""`qwenimage data ...`: the data room's commands. `data synth CONFIG` renders synthetic text images (pure,
compositional, template) into shards the trainer reads; `data curate` filters a raw set through the report's
stages, `data annotate` captions it with Qwen2.5-VL and `data balance` categorises and weights it (their own
modules register them here)."""
from __future__ import annotations

import os
import sys


def cmd_synth(a) -> int:
    from .synthesis import generate as gen
    from .synthesis import review

    cfg = gen.add_text_files(gen.load_config(a.config, a.set or ()), a.corpus or (), a.words or ())
    try:
        synth = gen.Synthesizer(cfg)
    except ImportError as e:  # the data extra not installed: one line naming it
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.preview is not None:
        jobs = review.preview_jobs(synth, a.preview)
        print(f"contact sheet: {review.contact_sheet(synth, jobs, os.path.join(cfg.output, 'preview.png'))}")
    else:
        summary = gen.generate(cfg, progress=not a.no_progress)
        print(f"{summary['images']} images in {summary['seconds']} s -> {os.path.join(cfg.output, 'manifest.jsonl')}")
        for why, n in summary["dropped_or_refused"].items():
            print(f"  {why}: {n}")
        jobs = review.dataset_jobs(synth, gen.plan(cfg), a.ocr) if a.ocr else []
    if a.ocr:
        table = review.ocr_report(synth, jobs, os.path.join(cfg.output, "quality.json"))
        print(review.format_table(table))
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("data", help="data tools: synth (text rendering), curate, annotate, balance")
    data = p.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    s = data.add_parser("synth", help="render synthetic text images (pure, compositional, template) from a TOML config")
    s.add_argument("config", help="the TOML config (see training/examples/synth.toml)")
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override fields, e.g. count.pure=10 seed=3")
    s.add_argument("--corpus", action="append", metavar="LANG=FILE",
                   help="sentences to render (one a line), added to corpus.LANG; repeat")
    s.add_argument("--words", action="append", metavar="LANG=FILE",
                   help="titles and labels (one a line), added to corpus.LANG_words; repeat")
    s.add_argument("--preview", nargs="?", type=int, const=4, metavar="N",
                   help="write <output>/preview.png, N examples of each kind (default 4), instead of the dataset")
    s.add_argument("--ocr", type=int, default=0, metavar="N",
                   help="read back N images per kind and language with OCR; table -> <output>/quality.json")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_synth)
    from .curation.cli import register as _curate; _curate(data)  # data curate
    from .annotate_cli import register as _annotate_balance; _annotate_balance(data)  # data annotate, data balance

