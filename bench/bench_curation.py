"""Curation throughput and start-up on a generated set of photo-like JPEGs (gradients, shapes, noise; 960 x 720 by
default, the issue's labelled set's size):

0. start-up: `qwenimage --help` and loading caption_length's tokenizer, each in a fresh process (wall time);
1. decode + the cheap statistics + hashing, one process on one core: images/s per core, and ms per op (the engine
   runs one such process per core, and a shard never depends on another, so the run scales by cores);
2. OCR text detection (the ocr_text op at its default detection side, and at 1024; then with recognition);
3. the same cheap pipeline through `curate()` end to end (sources, shards cut by default, outputs, report) with the
   local pool at 1 and 2 workers and on Ray (2 CPUs): wall time, and Ray's start-up timed apart.

Per-core figures are images per second of this process's CPU time (time.process_time, one thread everywhere), so
they hold on a machine other jobs share; wall-clock figures are given beside them.

    python bench/bench_curation.py --n 48"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

from _common import command, machine

from qwenimage.training.data.curation import engine, pipeline as pl
from qwenimage.training.data.curation.op import Item
from qwenimage.training.data.curation.sources import read_inputs

CHEAP = [{"op": "broken"}, {"op": "file_size"}, {"op": "resolution"}, {"op": "exif_rotation"}, {"op": "clarity"},
         {"op": "luma"}, {"op": "saturation"}, {"op": "entropy"}, {"op": "texture"}, {"op": "compression"},
         {"op": "qr_code"}, {"op": "dedup"}]


def make_images(folder: str, n: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        base = np.linspace(rng.uniform(0, 120), rng.uniform(120, 255), w)[None, :, None] * np.ones((h, 1, 3))
        base = base * rng.uniform(0.5, 1.0, 3) + rng.normal(0, 12, (h, w, 3))
        im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(12):
            x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
            d.ellipse([x, y, x + int(rng.uniform(20, 300)), y + int(rng.uniform(20, 300))],
                      fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        im.save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)
        with open(os.path.join(folder, f"{i:05d}.txt"), "w") as fh:
            fh.write("a photo-like picture of coloured ellipses over a gradient")


def per_op(ops, records, clock=time.process_time) -> tuple[float, dict]:
    """Seconds for the decode, and for the analysis copy and each op, over the records, one process (the ops' own
    work, no engine around it); CPU seconds by default (one thread: a core's time, whatever else the machine runs)."""
    t_op = {"analysis copy": 0.0, **{op.name: 0.0 for op in ops}}
    t_decode = 0.0
    for r in records:
        item = Item(r)
        t = clock()
        item.pil   # noqa: B018  (decoded once, shared by the ops)
        t_decode += clock() - t
        t = clock()
        item.pixels, item.gray_u8   # noqa: B018  (the 512 px copy and its gray, shared by the ops)
        t_op["analysis copy"] += clock() - t
        for op in ops:
            t = clock()
            op.compute(item)
            t_op[op.name] += clock() - t
    return t_decode, t_op


def startup(code: str, runs: int = 3) -> tuple[float, float]:
    """(best, median) wall seconds of `python -c code` in a fresh process."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48, help="images")
    ap.add_argument("--size", type=int, nargs=2, default=(960, 720))
    ap.add_argument("--ocr", type=int, default=4, help="images for the OCR timing")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--cheap-only", action="store_true", help="only (1): decode + the cheap statistics per core")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2
    import torch
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"# {command()}\n# {machine()}; load average {os.getloadavg()[0]:.1f}")
    if not a.cheap_only:
        startup_times()
    tmp = tempfile.mkdtemp(prefix="bench_curation_")
    raw = os.path.join(tmp, "raw")
    os.makedirs(raw)
    make_images(raw, a.n, tuple(a.size))
    records = read_inputs([raw])
    cheap = pl.load_pipeline({"name": "cheap", "stage": [{"name": "s", "ops": CHEAP}]})
    cheap_path(cheap.stages[0].ops, records, a.n)
    if not a.cheap_only:
        ocr_and_curate(a, tmp, raw, records, cheap)


def startup_times():
    best, med = startup("from qwenimage.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    print(f"start-up: qwenimage --help {best:.2f} s (median of 3: {med:.2f} s)")
    best, med = startup("from qwenimage.training.data.curation.ops.captions import tokenizer\ntokenizer().encode('a')")
    print(f"start-up: import the ops and load caption_length's tokenizer {best:.2f} s (median of 3: {med:.2f} s)")


def cheap_path(ops, records, n: int, repeats: int = 3):
    """The fastest of `repeats` passes (other jobs on a shared machine only ever add time)."""
    per_op(ops, records[:2])   # warm-up: imports, OpenCV's first calls
    best = None
    for _ in range(repeats):
        wall = time.perf_counter()
        t_decode, t_op = per_op(ops, records)
        wall = time.perf_counter() - wall
        total = t_decode + sum(t_op.values())
        if best is None or total < best[0]:
            best = (total, t_decode, t_op, wall)
    total, t_decode, t_op, wall = best
    print(f"decode + {len(ops)} cheap ops + hashing: {n / total:.1f} images/s per core (CPU time, best of "
          f"{repeats}; {1000 * total / n:.1f} ms/image; the full decode {1000 * t_decode / n:.1f} ms), "
          f"wall {n / wall:.1f}")
    print("  ms/image per op: " + ", ".join(f"{k} {1000 * v / n:.2f}" for k, v in t_op.items()))


def ocr_and_curate(a, tmp, raw, records, cheap):
    ocr = pl.load_pipeline({"name": "ocr", "stage": [
        {"name": "s", "ops": [{"op": "ocr_text"}]}, {"name": "f", "ops": [{"op": "ocr_text", "det_side_len": 1024}]},
        {"name": "r", "ops": [{"op": "ocr_text", "recognize": True}]}]})
    (det,), (full,), (rec,) = (st.ops for st in ocr.stages)
    for op, what in ((det, f"at its default side {det.engine['det_side_len']}"), (full, "at 1024 (no scaling)")):
        per_op([op], records[:1])
        wall = time.perf_counter()
        _, t = per_op([op], records[:a.ocr])
        wall = time.perf_counter() - wall
        print(f"ocr_text detection {what}: {a.ocr / t['ocr_text']:.2f} images/s per core "
              f"({1000 * t['ocr_text'] / a.ocr:.0f} ms/image CPU), wall {a.ocr / wall:.2f}")
    _, t = per_op([rec], records[:max(1, a.ocr // 2)])
    print(f"ocr_text detection + recognition: {max(1, a.ocr // 2) / t['ocr_text']:.2f} images/s per core")

    runs = [("local, 1 worker", dict(workers=1)), ("local, 2 workers", dict(workers=2))]
    if not a.no_ray:
        import ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        print(f"ray.init(num_cpus=2): {time.perf_counter() - t:.1f} s")
        runs += [("Ray, 2 CPUs, first run (workers start, import)", dict(workers=2, ray=True)),
                 ("Ray, 2 CPUs, warm", dict(workers=2, ray=True))]
    manifests = set()
    for k, (name, kw) in enumerate(runs):
        out = os.path.join(tmp, f"out{k}")
        t = time.perf_counter()
        engine.curate([raw], out, cheap, progress=False, **kw)   # the default cut: shards for every worker
        dt = time.perf_counter() - t
        manifests.add(open(os.path.join(out, "manifest.jsonl"), "rb").read())
        print(f"curate(), {name}: {dt:.2f} s, {a.n / dt:.1f} images/s")
    print(f"manifests identical across engines: {len(manifests) == 1}")


if __name__ == "__main__":
    main()
