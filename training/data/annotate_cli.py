"""`qwenimage data annotate` (Qwen2.5-VL structured captions, caption splits) and `qwenimage data balance`
(taxonomy, best N per category, category weights): the two commands over annotate.py and taxonomy.py."""
from __future__ import annotations

import sys


def cmd_annotate(a) -> int:
    from ..rewards.clip import ModelMissing
    from .annotate import Annotator, annotate_manifest, failures_path, parse_ratios

    try:
        ratios = parse_ratios(a.split)
        prompt = {}
        if a.prompt:
            with open(a.prompt, encoding="utf-8") as fh:
                prompt = {"prompt": fh.read().strip()}
        annotator = Annotator(a.model, **prompt, retries=a.retries, max_new_tokens=a.max_new_tokens, device=a.device,
                              dtype=a.dtype, offline=a.offline, fuse=a.fuse, min_pixels=a.min_pixels * 28 * 28,
                              max_pixels=a.max_pixels * 28 * 28)
        counts = annotate_manifest(a.manifest, a.out, annotator, batch=a.batch, ratios=ratios, limit=a.limit,
                                   redo_failures=a.redo_failures, progress=not a.no_progress)
    except (ModelMissing, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{counts['annotated']} annotated, {counts['failed']} failed (-> {failures_path(a.out)}), "
          f"{counts['done']} already done, {counts['skipped_bad_rows']} bad rows skipped -> {a.out}")
    return 0


def cmd_balance(a) -> int:
    from .taxonomy import balance, format_table

    try:
        result = balance(a.manifest, a.out, top_n=a.top_n, rank_by=a.rank_by, target=a.target,
                         max_boost=a.max_boost, taxonomy=a.taxonomy, min_text_chars=a.min_text_chars,
                         keep_categories=a.keep_categories, drop_abnormal=a.drop_abnormal,
                         drop_watermarked=a.drop_watermarked)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result["table"]))
    for why in ("abnormal", "watermarked"):
        if result[why]:
            print(f"{result[why]} rows dropped: annotated {why}")
    print(f"{result['kept']} of {result['rows']} rows kept -> {a.out}/manifest.jsonl; weights -> "
          f"{a.out}/category_weights.toml; counts -> {a.out}/counts.csv")
    return 0


def register(data) -> None:
    """Adds `annotate` and `balance` to the `qwenimage data` subparsers."""
    s = data.add_parser("annotate", help="caption and rate images with Qwen2.5-VL (the report's annotator): JSONL")
    s.add_argument("manifest", help="a JSONL manifest (image, caption, ...) or a folder of images + .txt captions")
    s.add_argument("--out", required=True, help="output JSONL; rows already in it are skipped (resume)")
    s.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct", help="hub name or local folder")
    s.add_argument("--batch", type=int, default=4, help="images per generate call (default 4)")
    s.add_argument("--retries", type=int, default=2, help="sampled retries of a malformed answer (default 2)")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    s.add_argument("--dtype", default="bfloat16", help="model dtype (default bfloat16)")
    s.add_argument("--limit", type=int, default=0, help="annotate at most N rows this run (0: all)")
    s.add_argument("--split", default="raw=0.2,recaption=0.4,fused=0.4",
                   help="caption split ratios, chosen per row from its key (default raw=0.2,recaption=0.4,fused=0.4)")
    s.add_argument("--fuse", choices=("rule", "model"), default="rule",
                   help="fused caption: the documented rule (default) or a fuse prompt to the same model")
    s.add_argument("--prompt", help="a text file replacing the annotator prompt (answer: the same JSON keys)")
    s.add_argument("--max-new-tokens", type=int, default=1024)
    s.add_argument("--min-pixels", type=int, default=256, help="image size floor in 28x28 patches (default 256)")
    s.add_argument("--max-pixels", type=int, default=1280, help="image size cap in 28x28 patches (default 1280)")
    s.add_argument("--offline", action="store_true", help="never download the model")
    s.add_argument("--redo-failures", action="store_true", help="try rows in OUT.failures.jsonl again")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_annotate)

    b = data.add_parser("balance", help="categorise a manifest, keep the best N per category, weight the categories")
    b.add_argument("manifest", help="a JSONL manifest (annotated or curated) or a folder")
    b.add_argument("--out", required=True, help="output folder: manifest.jsonl, category_weights.toml, counts.csv")
    b.add_argument("--top-n", type=int, default=0, help="keep the best N per category (0: keep all)")
    b.add_argument("--rank-by", default="aesthetic",
                   help="a statistic, or a weighted sum of z-scores: aesthetic=1,clip_score=0.5 (default aesthetic)")
    b.add_argument("--target", default="power:0.5",
                   help="category shares: natural | uniform | power:ALPHA (default power:0.5) | "
                        "general=0.5,portrait=0.2,text_rendering=0.3 | a TOML file")
    b.add_argument("--max-boost", type=float, default=10.0,
                   help="no category above this many times its natural share (default 10; 0: no cap)")
    b.add_argument("--taxonomy", help="a TOML class table replacing the built-in one (see taxonomy.py)")
    b.add_argument("--min-text-chars", type=int, default=4, help="text length that makes a sample text rendering")
    b.add_argument("--keep-categories", action="store_true",
                   help="keep categories the rows already have (other than 'default') instead of re-assigning")
    b.add_argument("--drop-abnormal", action="store_true",
                   help="leave out rows the annotator marked Abnormal Element: yes (QR code, barcode, mosaic)")
    b.add_argument("--drop-watermarked", action="store_true", help="leave out rows whose annotation lists a watermark")
    b.set_defaults(fn=cmd_balance)
