"""Convert the aesthetic predictor's public .pth state dict to safetensors (read with weights_only=True):

    python -m qwenimage.training.data.curation.ops.aesthetic_convert aesthetic-model.pth aesthetic.safetensors

A module of its own: run as __main__, aesthetic.py itself would register its op a second time."""
from __future__ import annotations

import sys

from ..op import OpError
from .aesthetic import convert


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m qwenimage.training.data.curation.ops.aesthetic_convert IN.pth OUT.safetensors",
              file=sys.stderr)
        return 2
    try:
        keys = convert(*argv)
    except OpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {argv[1]}: {', '.join(keys)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
