"""The shipped demo model: time per image on this machine, and the picture grid the README shows.

    python bench/bench_demo.py                        # times 12 prompts; writes docs/demo_grid.png

Each image: encode the prompt (and " " for true CFG when --cfg > 1; the demo runs at 1), 20 steps at 64 x 64 px, decode;
the pipeline loaded once (load time reported apart). Median over the prompts."""
import argparse
import os
import statistics
import time

import torch
from PIL import Image, ImageDraw, ImageFont

from _common import command, machine
from qwenimage.qwenimage_core import load_pipeline
from qwenimage.training.demo import demo_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red circle on a blue background", "a yellow triangle on a black background",
           "a green square on a white background", "a purple circle on a gray background",
           "an orange square on a green background", "a blue triangle on a white background",
           "a yellow circle on a green background", "a red square on a black background",
           "a green triangle on a gray background", "a blue circle on a black background",
           "an orange triangle on a blue background", 'the word "cat" in white on black']


def grid(images, captions, scale=3, cols=4) -> Image.Image:
    side = images[0].width * scale
    font = ImageFont.load_default(size=11)
    rows = (len(images) + cols - 1) // cols
    out = Image.new("RGB", (cols * side, rows * (side + 30)), "white")
    d = ImageDraw.Draw(out)
    for i, (im, cap) in enumerate(zip(images, captions)):
        x, y = (i % cols) * side, (i // cols) * (side + 30)
        out.paste(im.resize((side, side), Image.NEAREST), (x, y))
        words = cap.split()
        lines = [" ".join(words[: len(words) // 2 + 1]), " ".join(words[len(words) // 2 + 1:])]
        for j, line in enumerate(lines):
            d.text((x + 4, y + side + 2 + 13 * j), line, fill="black", font=font)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=1.0)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "demo_grid.png"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    paths = demo_paths()
    t0 = time.perf_counter()
    pipe = load_pipeline([paths["diffusion_models"], paths["text_encoders"], paths["vae"]], dtype=torch.float32)
    load_s = time.perf_counter() - t0
    images, times = [], []
    for i, prompt in enumerate(PROMPTS):
        t = time.perf_counter()
        images.append(pipe.generate(prompt, width=64, height=64, steps=a.steps, cfg=a.cfg, seed=i)[0])
        times.append(time.perf_counter() - t)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    grid(images, PROMPTS).save(a.out)
    print(f"command: {command()}\nmachine: {machine()}")
    print(f"load: {load_s:.2f} s; per image ({a.steps} steps, cfg {a.cfg}, 64x64): median "
          f"{statistics.median(times):.3f} s, min {min(times):.3f} s over {len(times)} prompts; grid: {a.out}")


if __name__ == "__main__":
    main()
