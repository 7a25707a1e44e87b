"""Reward time per image: the offline scorers (OCR, JPEG) and the HTTP reward through the reference server, on
images of text-rendering prompts (two lines of text drawn with Pillow's own font) at the sampling resolution.

    python bench/bench_rewards.py --size 512 --n 8
    python bench/bench_rewards.py --size 1328 --n 4 --scorers ocr

The first call of each scorer (model loading, server start) is not timed; its time is printed apart."""
import argparse
import os
import subprocess
import sys
import time

from PIL import Image, ImageDraw, ImageFont

from _common import command, machine

from qwenimage.training.rewards import build, score

WORDS = ["OPEN DAILY", "Qwen Image", "FRESH BREAD", "SALE 50%", "Hello 2026", "NO PARKING", "CAFE", "EXIT"]


def poster(i: int, size: int) -> tuple[Image.Image, str]:
    text = [WORDS[i % len(WORDS)], WORDS[(i + 3) % len(WORDS)]]
    im = Image.new("RGB", (size, size), (240, 235, 220))
    font = ImageFont.load_default(size=size // 10)
    draw = ImageDraw.Draw(im)
    for k, line in enumerate(text):
        draw.text((size // 2, size * (2 + k) // 5), line, fill=(20, 20, 60), font=font, anchor="mm")
    return im, f'a poster that says "{text[0]}" and "{text[1]}"'


def start_server():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, os.path.join(root, "scripts", "reward_server.py"), "--scorer",
                          "jpeg_compressibility", "--port", "0"], stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().split()[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--scorers", nargs="+", default=["ocr", "jpeg_compressibility", "http"])
    a = ap.parse_args()
    images, prompts = zip(*(poster(i, a.size) for i in range(a.n)))
    print(command(), "|", machine(), f"| load {os.getloadavg()[0]:.1f}")
    server = None
    for name in a.scorers:
        t0 = time.perf_counter()
        if name == "http":
            server, url = start_server()
            spec = {"name": "http", "url": url}
        else:
            spec = name
        fn = build(spec)[1]
        score(name, fn, images[:1], prompts[:1])  # warm-up
        t1 = time.perf_counter()
        values = score(name, fn, images, prompts)
        t2 = time.perf_counter()
        print(f"{name}: {(t2 - t1) / a.n * 1000:.0f} ms/image at {a.size}x{a.size} (first call {t1 - t0:.1f} s), "
              f"mean score {sum(values) / len(values):.3f}")
    if server is not None:
        server.terminate()


if __name__ == "__main__":
    main()
