"""Synthetic text rendering: images per second per core for each kind (pure, compositional, template), one process
on one core (the run scales by `workers`, one process per core), including the PNG write; optionally OCR
read-back accuracy per kind and language.

    python bench/bench_synth.py --n 24 --size 512
    python bench/bench_synth.py --n 12 --size 1024 --ocr 6

Font loading (the character maps, read once and cached on disk) is timed apart."""
import argparse
import os
import tempfile
import time

import torch

from _common import command, machine

from qwenimage.training.data.synthesis import generate as gen
from qwenimage.training.data.synthesis import review


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=24, help="images per kind")
    ap.add_argument("--size", type=int, default=512, help="pure and compositional canvas side (templates keep theirs)")
    ap.add_argument("--ocr", type=int, default=0, help="OCR this many images per kind and language")
    ap.add_argument("--kinds", nargs="+", default=list(gen.KINDS), choices=gen.KINDS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"# {command()}\n# {machine()}; load average {os.getloadavg()[0]:.1f}")
    out = tempfile.mkdtemp(prefix="bench_synth_")
    results = {}
    for kind in a.kinds:
        cfg = gen.load_config({"output": os.path.join(out, kind), "sizes": [[a.size, a.size]], "seed": 0,
                               "count": {kind: a.n}})
        t = time.perf_counter()
        synth = gen.Synthesizer(cfg)
        load = time.perf_counter() - t
        summary = gen.generate(cfg, progress=False)
        results[kind] = summary
        print(f"{kind:<14} {summary['images_per_second']:.2f} images/s/core ({summary['seconds']:.1f} s for "
              f"{a.n}; fonts etc. loaded in {load:.1f} s); dropped/refused: {summary['dropped_or_refused'] or 'none'}")
        if a.ocr:
            table = review.ocr_report(synth, review.dataset_jobs(synth, gen.plan(cfg), a.ocr))
            for k, v in table.items():
                print(f"  OCR {k:<22} char accuracy {v['char_accuracy']:.3f} (min {v['min']:.3f}, n={v['n']})")


if __name__ == "__main__":
    main()
