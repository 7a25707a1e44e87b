"""`qwenimage eval SUITE --model PATH --data FILE`: generate a benchmark's images with a checkpoint, score them,
write results.jsonl and the report; `--compare` a second model (or an earlier run) on the same items and seeds.
`qwenimage eval SUITE --images DIR --data FILE` scores images made elsewhere, named <id>_<k>.png or <id>.png after
the suite's items (run.py says how). `qwenimage eval --list` names the suites and where to download each one's
file."""
from __future__ import annotations

import json
import sys


def parse_size(text: str) -> tuple[int, int]:
    import argparse

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give the size as WIDTHxHEIGHT, e.g. 1328x1328") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive")
    return w, h


def parse_scorer(text: str):
    """A scorer spec: a name, `module:function`, `name,key=value,...`, or a JSON object."""
    import argparse

    if text.lstrip().startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"--scorer {text!r}: not valid JSON ({e.msg})") from None
        if not isinstance(spec, dict) or "name" not in spec:
            raise argparse.ArgumentTypeError(f"--scorer {text!r}: a JSON spec needs a \"name\"")
        return spec
    name, *options = text.split(",")
    spec = {"name": name.strip()}
    for opt in options:
        key, eq, value = opt.partition("=")
        if not eq or not key.strip():
            raise argparse.ArgumentTypeError(f"--scorer {text!r}: options are key=value, got {opt!r}")
        try:
            spec[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            spec[key.strip()] = value
    return spec


def list_suites() -> str:
    from .suites import SUITES

    lines = []
    for name, s in sorted(SUITES.items()):
        size = f"{s.size[0]}x{s.size[1]}" if s.size else "input size"
        lines.append(f"{name:12s} {s.description}\n{'':12s} {s.images_per_prompt} image(s) per prompt, {size}; "
                     f"{s.download}")
    return "\n".join(lines)


def cmd_eval(a) -> int:
    if a.list:
        print(list_suites())
        return 0
    if a.images:
        return _score_images(a)
    if not a.suite or not a.model or not a.data:
        raise ValueError("give SUITE, --model (or --images) and --data (qwenimage eval --list names the suites and "
                         "their files)")
    for given, what in ((a.model, "--model"), (a.compare or [], "--compare")):
        if len(given) not in (0, 1, 3):
            raise ValueError(f"{what}: a diffusers model folder, or three files: diffusion model, text encoder, VAE")
    import os

    for path in [*a.model, *(a.compare or []), *(_lora_spec(x)[0] for x in a.lora or [])]:
        if not os.path.exists(path):  # said now, not after the suite's images are planned
            raise FileNotFoundError(f"{path}: no such model, LoRA or run directory")
    from .generate import Settings
    from .run import run_suite

    width, height = a.size or (None, None)
    settings = Settings(steps=a.steps, cfg=a.cfg, width=width, height=height, images_per_prompt=a.images_per_prompt,
                        seed_base=a.seed, negative_prompt=a.negative_prompt, shift=a.shift)

    def load(model, lora):
        from ...qwenimage_core.pipeline import load_pipeline

        dtype, weight_dtype = a.dtype or (None, None)
        pipe = load_pipeline(model[0] if len(model) == 1 else list(model), device=a.device or _process_device(),
                             dtype=dtype, weight_dtype=weight_dtype, edit_template=a.edit_template)
        for spec in lora:
            pipe.load_lora(*_lora_spec(spec))
        return pipe

    compare = None if not a.compare else a.compare[0] if len(a.compare) == 1 else a.compare
    model = a.model[0] if len(a.model) == 1 else a.model
    result = run_suite(a.suite, a.data, model, a.out, settings, scorers=a.scorer, compare=compare, limit=a.limit,
                       batch=a.batch, on_error=a.on_error, judge=a.judge, lora=a.lora or (), load=load,
                       progress=not a.quiet)
    if result["summary"] is None:
        return 0
    _print_result(a.suite, result)
    return 0


def _score_images(a) -> int:
    """--images DIR: score a folder of images made elsewhere; sampling and model options make no sense with it."""
    given = [opt for opt, value in (("--model", a.model), ("--compare", a.compare), ("--lora", a.lora),
                                    ("--size", a.size), ("--images-per-prompt", a.images_per_prompt)) if value]
    if given:
        raise ValueError(f"--images scores images made elsewhere: {', '.join(given)} cannot apply to them")
    if not a.suite or not a.data:
        raise ValueError("give SUITE and --data with --images (qwenimage eval --list names the suites and their files)")
    from .run import score_folder

    result = score_folder(a.suite, a.data, a.images, a.out, scorers=a.scorer, limit=a.limit, on_error=a.on_error,
                          judge=a.judge, progress=not a.quiet)
    _print_result(a.suite, result)
    return 0


def _print_result(suite: str, result: dict) -> None:
    print(f"{suite}: {result['items']} items -> {result['run_dir']}"
          + (f" ({result['skipped']} rows skipped, see skipped.jsonl)" if result["skipped"] else ""))
    for name, summary in (("", result["summary"]), ("compare ", result.get("compare_summary"))):
        for metric, value in (summary or {}).get("overall", {}).items():
            print(f"  {name}{metric}: {value:.4f}")
    for what, path in (result.get("reports") or {}).items():
        print(f"{what}: {path}")


def _lora_spec(spec: str) -> tuple[str, float]:
    """PATH or PATH:STRENGTH."""
    path, _, strength = spec.rpartition(":")
    try:
        return (path, float(strength)) if path else (spec, 1.0)
    except ValueError:
        return spec, 1.0


def _process_device():
    """Under accelerate launch each process samples on its own GPU."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        return PartialState(cpu=not torch.cuda.is_available()).device
    return None


def register_cli(sub) -> None:
    from ...qwenimage_core.cli_args import finite_float, parse_device, parse_dtype, positive_int

    p = sub.add_parser("eval", help="evaluate a checkpoint on a benchmark suite (GenEval, DPG, OneIG, CVTG-2K, ...)")
    p.add_argument("suite", nargs="?", help="the suite (qwenimage eval --list)")
    p.add_argument("--list", action="store_true", help="list the suites, with where to download each one's file")
    p.add_argument("--model", nargs="+", help="a diffusers model folder, or three files: diffusion model, text "
                                              "encoder, VAE")
    p.add_argument("--data", help="the suite's file as downloaded (see --list)")
    p.add_argument("--images", metavar="DIR", help="score the images in DIR instead of generating: <id>_<k>.png or "
                                                   "<id>.png (.jpg, .webp) per item of the suite")
    p.add_argument("--out", default="eval", help="output root: OUT/<suite>/<model>/ (default ./eval)")
    p.add_argument("--compare", nargs="+", help="a second model (same items and seeds), or an earlier run directory")
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--cfg", type=finite_float, default=4.0)
    p.add_argument("--shift", type=finite_float, default=None, help="fixed schedule shift (default: the official)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--size", type=parse_size, default=None, help="WIDTHxHEIGHT (default: the suite's)")
    p.add_argument("--images-per-prompt", type=positive_int, default=None, help="default: the suite's protocol")
    p.add_argument("--seed", type=int, default=0, help="base seed: image k of an item gets seed + item seed + k")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N items")
    p.add_argument("--batch", type=positive_int, default=1, help="images per sampling call")
    p.add_argument("--scorer", action="append", type=parse_scorer, metavar="SPEC",
                   help="replace the suite's scorers: a name, name,key=value,..., JSON, or module:function (repeat)")
    p.add_argument("--judge", default=None, help="the VLM judge: a Qwen2.5-VL hub name or folder, or an "
                                                 "OpenAI-compatible URL (for the judged scorers)")
    p.add_argument("--lora", action="append", metavar="PATH[:STRENGTH]", help="apply a LoRA to --model (repeat)")
    p.add_argument("--edit-template", choices=["edit", "edit_plus"], default=None,
                   help="the edit model kind, for edit suites with three model files")
    p.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="a bad row in the suite file: stop with its name (default), or leave it out and list it")
    p.add_argument("--device", default=None, type=parse_device)
    p.add_argument("--dtype", default=None, type=parse_dtype)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_eval)


def main(argv=None) -> int:
    from ...qwenimage_core.cli_args import Parser, run

    ap = Parser(prog="qwenimage")
    register_cli(ap.add_subparsers(dest="command", required=True))
    return run(ap, ["eval", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
