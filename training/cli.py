"""`qwenimage train CONFIG` and `qwenimage cache CONFIG`."""
from __future__ import annotations

import sys


def _config(a):
    from .config import load_config

    return load_config(a.config, a.set or ())


def cmd_train(a) -> int:
    from .progress import console_logging
    from .trainer import Trainer

    console_logging()  # the trainer's info lines: RL iterations, held-out reward, evaluation
    result = Trainer(_config(a)).run(resume=a.resume)
    if result.get("outputs"):
        print("\n".join(f"{k}: {v}" for k, v in result["outputs"].items()))
    return 0


def cmd_cache(a) -> int:
    from .trainer import run_cache

    print(f"encoded {run_cache(_config(a))} sample(s)")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("train", help="train: pretraining, full fine-tuning or LoRA, from one TOML config")
    p.add_argument("config", help="the TOML config (see training/examples/)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override fields, e.g. optimizer.lr=1e-4")
    p.add_argument("--resume", default=None, help="a checkpoint folder, or 'auto' for the newest in output.dir")
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("cache", help="encode a config's data into its latent and text caches")
    p.add_argument("config")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(fn=cmd_cache)
    from .data.cli import register_cli as _data_cli; _data_cli(sub)  # qwenimage data synth (curate, annotate)
    from .eval.cli import register_cli as _eval_cli; _eval_cli(sub)  # qwenimage eval SUITE --model ...


def stops() -> tuple:
    """What stops a run on purpose (a diverged step): one line and exit code 1, as a full disk."""
    from .guards import TrainingStopped

    return (TrainingStopped,)


def main(argv=None) -> int:
    """`python -m qwenimage.training.cli CONFIG ...` (as `accelerate launch -m` runs it) = `qwenimage train`: its
    own parser over the shared helpers a floor down, not the top-level cli.py (which imports this module)."""
    from ..qwenimage_core.cli_args import Parser, run

    ap = Parser(prog="qwenimage")
    register_cli(ap.add_subparsers(dest="command", required=True))
    return run(ap, ["train", *(argv if argv is not None else sys.argv[1:])], stops=stops)


if __name__ == "__main__":
    sys.exit(main())
