"""What every `qwenimage` command line shares: the one-line usage errors, argument types checked before anything
loads, and running a parsed command with errors as one line and an exit code. Below cli.py and the faces' CLIs
(training/cli.py, training/eval/cli.py), so each can build and run its own parser without importing the top one.
Light on purpose: `qwenimage --help` imports this and argparse, nothing heavy (torch only to check a --device)."""
from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (and exit code 2), not the usage block: a script's log shows what was wrong."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_dtype(name: str):
    """The core's dtype names (bf16, fp16, fp32, fp8 and the long ones) for argparse's type=."""
    from .dtypes import parse_dtype as parse

    try:
        return parse(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_device(name: str) -> str:
    """A torch device this machine has ('cpu', 'cuda', 'cuda:1', 'mps'), checked before anything loads."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {name!r}: CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"device {name!r}: MPS is not available on this machine")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"device {name!r}: use cpu, cuda or cuda:N")
    return name


def finite_float(text: str) -> float:
    """A float that is a number: inf and nan would run and write a flat image."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return v


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} is not positive")
    return v


def unit_float(text: str) -> float:
    v = finite_float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not between 0 and 1")
    return v


def run(parser: argparse.ArgumentParser, argv=None, stops=tuple) -> int:
    """Parse `argv` and run the command's `fn`: bad input (a config, a file, a checkpoint, a download) is one line
    and exit code 2; a full disk or one of the exceptions `stops()` returns (a diverged run) one line and exit code
    1; never a traceback. `stops` is called after parsing, so --help and usage errors do not import their modules."""
    a = parser.parse_args(argv)
    from .weights import CheckpointError
    from .hub import DownloadError

    try:
        return a.fn(a)
    except (CheckpointError, DownloadError, FileNotFoundError, ValueError) as e:  # incl. config and data errors
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, *stops()) as e:  # a full disk, a diverged run: said in one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
