"""Tiny synthetic datasets for tests and smoke runs: solid shapes of solid colours on a plain background, with
captions naming them, in several aspect ratios (so bucketing is exercised). Deterministic from the seed."""
from __future__ import annotations

import json
import os
import random

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 210, 20),
          "purple": (140, 40, 170), "orange": (245, 130, 20)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ("square", "circle", "triangle")


def _aspects(size: int) -> list[tuple[int, int]]:
    return [(size, size), (size * 3 // 2, size), (size, size * 3 // 2)]


def draw_shape(shape: str, color: str, background: str, width: int, height: int, box) -> Image.Image:
    """One solid `color` `shape` inside `box` (x0, y0, x1, y1) on a plain `background`."""
    im = Image.new("RGB", (width, height), BACKGROUNDS[background])
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = box
    if shape == "square":
        d.rectangle(box, fill=COLORS[color])
    elif shape == "circle":
        d.ellipse(box, fill=COLORS[color])
    else:
        d.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=COLORS[color])
    return im


def _layout(rng: random.Random, size: int):
    """A random canvas size, background and a shape box of 40-70% of the short side."""
    w, h = rng.choice(_aspects(size))
    side = int(min(w, h) * rng.uniform(0.4, 0.7))
    x0, y0 = rng.randint(0, w - side - 1), rng.randint(0, h - side - 1)
    return w, h, rng.choice(sorted(BACKGROUNDS)), (x0, y0, x0 + side, y0 + side)


def _write_manifest(folder: str, rows: list[dict]) -> str:
    path = os.path.join(folder, "manifest.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def make_shapes_dataset(folder, n: int = 32, size: int = 64, seed: int = 0, *, manifest: bool = False,
                        categories: bool = False) -> list[tuple[str, str]]:
    """n PNGs with same-stem .txt captions ("a red square") -> [(image path, caption)]. With categories=True each
    image goes in a subfolder named after its shape (the folder loader's category); with manifest=True a
    manifest.jsonl (category = shape) is written too."""
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    out, rows = [], []
    for i in range(n):
        shape, color = rng.choice(SHAPES), rng.choice(sorted(COLORS))
        w, h, bg, box = _layout(rng, size)
        sub = os.path.join(folder, shape) if categories else folder
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"{i:04d}.png")
        caption = f"a {color} {shape}"
        draw_shape(shape, color, bg, w, h, box).save(path)
        with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as fh:
            fh.write(caption)
        out.append((path, caption))
        rows.append({"image": os.path.relpath(path, folder), "caption": caption, "category": shape})
    if manifest:
        _write_manifest(folder, rows)
    return out


def make_edit_dataset(folder, n: int = 16, size: int = 64, seed: int = 0) -> list[tuple[str, str, str]]:
    """n edit triples: a shape (reference), "make it <colour>" (instruction), the same shape recoloured (target),
    written as <i>_ref.png / <i>_target.png and manifest.jsonl with "references" -> [(reference, instruction,
    target)]."""
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    out, rows = [], []
    for i in range(n):
        shape = rng.choice(SHAPES)
        before, after = rng.sample(sorted(COLORS), 2)
        w, h, bg, box = _layout(rng, size)
        ref, target = (os.path.join(folder, f"{i:04d}_{k}.png") for k in ("ref", "target"))
        draw_shape(shape, before, bg, w, h, box).save(ref)
        draw_shape(shape, after, bg, w, h, box).save(target)
        instruction = f"make it {after}"
        out.append((ref, instruction, target))
        rows.append({"image": os.path.basename(target), "caption": instruction,
                     "references": [os.path.basename(ref)], "category": shape})
    _write_manifest(folder, rows)
    return out
