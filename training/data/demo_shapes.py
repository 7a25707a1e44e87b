"""The demo model's synthetic data: one solid shape of one colour on a plain background, or a short word, at one
fixed size, with a caption that names everything drawn ("a red circle on a blue background", 'the word "cat" in
white on black'). Deterministic from the seed (and the machine's FreeType, for the words)."""
from __future__ import annotations

import json
import os
import random

from PIL import Image, ImageDraw, ImageFont

# Far apart in RGB, so a nearest-colour classifier of generated pixels is unambiguous.
COLORS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 210, 20),
          "purple": (140, 40, 170), "orange": (245, 130, 20), "white": (245, 245, 245), "black": (15, 15, 15),
          "gray": (128, 128, 128)}
SHAPE_COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
BACKGROUNDS = ("white", "black", "gray", "blue", "green")
SHAPES = ("square", "circle", "triangle")
WORDS = ("cat", "dog", "sun", "qwen", "hi", "art")
WORD_COLORS = ("white", "black", "red", "yellow")
WORD_SHARE = 0.15  # of the images


def palette(name: str) -> tuple[int, int, int]:
    return COLORS[name]


def shape_caption(shape: str, color: str, background: str) -> str:
    article = "an" if color[0] in "aeiou" else "a"
    return f"{article} {color} {shape} on a {background} background"


def word_caption(word: str, color: str, background: str) -> str:
    return f'the word "{word}" in {color} on {background}'


def draw_demo_shape(shape: str, color: str, background: str, size: int, rng: random.Random) -> Image.Image:
    """A shape of 45-70% of the side, centred within a small jitter: the centre pixel is always the shape's."""
    side = int(size * rng.uniform(0.45, 0.7))
    jitter = size // 10
    x0 = (size - side) // 2 + rng.randint(-jitter, jitter)
    y0 = (size - side) // 2 + rng.randint(-jitter, jitter)
    x1, y1 = x0 + side, y0 + side
    im = Image.new("RGB", (size, size), COLORS[background])
    d, fill = ImageDraw.Draw(im), COLORS[color]
    if shape == "square":
        d.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "circle":
        d.ellipse((x0, y0, x1, y1), fill=fill)
    else:
        d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return im


def draw_word(word: str, color: str, background: str, size: int) -> Image.Image:
    font = ImageFont.load_default(size=size // 4)
    im = Image.new("RGB", (size, size), COLORS[background])
    ImageDraw.Draw(im).text((size // 2, size // 2), word, fill=COLORS[color], font=font, anchor="mm")
    return im


def sample_demo(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    if rng.random() < WORD_SHARE:
        word = rng.choice(WORDS)
        color, bg = _two(rng, WORD_COLORS, BACKGROUNDS)
        return draw_word(word, color, bg, size), word_caption(word, color, bg)
    shape = rng.choice(SHAPES)
    color, bg = _two(rng, SHAPE_COLORS, BACKGROUNDS)
    return draw_demo_shape(shape, color, bg, size, rng), shape_caption(shape, color, bg)


def _two(rng: random.Random, fg: tuple, bg: tuple) -> tuple[str, str]:
    """A foreground and a different background colour."""
    color = rng.choice(fg)
    return color, rng.choice([b for b in bg if b != color])


def make_demo_dataset(folder, n: int, size: int = 128, seed: int = 0) -> str:
    """n PNGs and a manifest.jsonl (image, caption, category = "shape" or "word") in `folder` -> the manifest."""
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(n):
        im, caption = sample_demo(rng, size)
        name = f"{i:05d}.png"
        im.save(os.path.join(folder, name))
        rows.append({"image": name, "caption": caption,
                     "category": "word" if caption.startswith("the word") else "shape"})
    path = os.path.join(folder, "manifest.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path
