"""Peak RAM while load_transformer reads a checkpoint, against the size of the weights in the target dtype.

    python bench/bench_load.py --layers 4 --stored bfloat16 --dtype bfloat16

Writes a random checkpoint of the official width with --layers blocks (about 340M parameters a block), then
loads it in a fresh process, reads every weight once (so memory-mapped pages count), and reports that process's
peak resident memory above its baseline after imports."""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

from _common import command, machine

CHILD = r"""
import json, resource, sys, torch
from qwenimage.qwenimage_core import load_transformer
def rss_kb():
    with open("/proc/self/status") as fh:
        return {l.split(":")[0]: int(l.split()[1]) for l in fh if l.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile"))}
base = rss_kb()["VmRSS"]
m = load_transformer(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
touched = sum(float(p.float().abs().sum()) for p in m.parameters())  # fault every page in: count what is used
after = rss_kb()
weights = sum(p.numel() * p.element_size() for p in m.parameters())
print(json.dumps({"base_kb": base, "peak_kb": after["VmHWM"], "after": after, "weights": weights}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--stored", default="bfloat16")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    from qwenimage.qwenimage_core import QwenImageTransformer, preset
    from safetensors.torch import save_file

    work = a.dir or tempfile.mkdtemp(prefix="qwenimage-bench-")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"qwen_image_{a.layers}l_{a.stored}.safetensors")
    if not os.path.exists(path):
        with torch.device("meta"):
            m = QwenImageTransformer(preset("qwen-image", num_layers=a.layers))
        g = torch.Generator().manual_seed(0)
        state = {k: (torch.randn(v.shape, generator=g) * 0.02).to(getattr(torch, a.stored)) for k, v in m.state_dict().items()}
        save_file(state, path)
        del state
    out = subprocess.run([sys.executable, "-c", CHILD, path, a.dtype], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    gib = 2 ** 30
    extra = (r["peak_kb"] - r["base_kb"]) * 1024
    print(f"| `{command()}` | {machine()} | {a.layers} blocks, file {os.path.getsize(path) / gib:.2f} GiB {a.stored} | "
          f"weights in {a.dtype}: {r['weights'] / gib:.2f} GiB | peak RSS above baseline: {extra / gib:.2f} GiB "
          f"({extra / r['weights']:.2f}x the weights) |")


if __name__ == "__main__":
    main()
