"""Compositional rendering (the report's second kind): text on a physical medium (paper, card, wood, chalkboard, a
painted sign), procedurally textured, then seen in perspective, lit unevenly, casting a shadow, and composited
into a background image the user gives, or a procedural scene when none is given."""
from __future__ import annotations

import logging
import os
import random
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from ....qwenimage_core.images import not_regular
from . import colors, layout
from .choose import text_and_font
from .corpus import join
from .rendered import Rendered

log = logging.getLogger("qwenimage.synthesis")

# medium: (base colour names, ink colour names, caption words EN, ZH)
MEDIA = {
    "paper": (("white", "cream"), ("black", "navy", "blue", "dark red", "dark gray"), "a sheet of paper", "一张纸"),
    "card": (("light blue", "pink", "light green", "cream", "yellow"), ("black", "navy", "dark red", "dark green",
                                                                        "brown"), "a card", "一张卡片"),
    "wood": (("brown",), ("white", "cream", "yellow", "black"), "a wooden board", "一块木板"),
    "chalkboard": (("dark green", "black"), ("white", "yellow", "pink", "light blue"), "a chalkboard", "一块黑板"),
    "sign": (("blue", "green", "red", "navy", "teal"), ("white", "yellow"), "a sign", "一块标牌"),
}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_BACKGROUND_BYTES = 256 << 20


def noise(rng: np.random.Generator, size, cells: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a cells x cells random grid upsampled bicubically."""
    w, h = size
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def texture(medium: str, base, size, rng: np.random.Generator) -> Image.Image:
    """The medium's surface: grain and blotches on paper and card, rings on wood, smudges on a chalkboard."""
    w, h = size
    img = np.ones((h, w, 3), np.float32) * np.array(base, np.float32)
    grain = rng.standard_normal((h, w, 1), dtype=np.float32)
    if medium == "wood":
        warp = noise(rng, size, 6)[..., None]
        y = np.arange(h, dtype=np.float32)[:, None, None] / h
        rings = 0.5 + 0.5 * np.sin((y + 0.15 * warp) * rng.uniform(25, 45) * np.pi)
        img = img * (0.75 + 0.3 * rings) + grain * 4
    elif medium == "chalkboard":
        img = img + (noise(rng, size, 10)[..., None] - 0.5) * 30 + grain * 6
    else:
        img = img + (noise(rng, size, 8)[..., None] - 0.5) * (10 if medium == "paper" else 14) + grain * 3
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def procedural_scene(size, rng: np.random.Generator, prng: random.Random) -> tuple[Image.Image, str]:
    """A stand-in scene: a wall colour over a floor band, soft blobs and grain; -> (image, wall colour name)."""
    wall = prng.choice(("gray", "light gray", "cream", "light blue", "light green", "dark gray", "brown", "teal"))
    w, h = size
    img = np.ones((h, w, 3), np.float32) * np.array(colors.rgb(wall), np.float32)
    floor = int(h * prng.uniform(0.65, 0.9))
    img[floor:] *= 0.6
    img += (noise(rng, size, 4)[..., None] - 0.5) * 50 + 3 * rng.standard_normal((h, w, 1), dtype=np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), wall


def user_background(path: str, size) -> Image.Image:
    """A background image cropped to the canvas's aspect and resized."""
    with Image.open(path) as im:
        return ImageOps.fit(im.convert("RGB"), size, Image.BICUBIC)


def background_files(folder: str) -> list[str]:
    """The images under `folder`; a name that is not a regular file under MAX_BACKGROUND_BYTES (a FIFO would block
    the worker that opens it, a link to /dev/zero never ends) is left out with a warning naming it."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for path in (os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTS)):
            why = not_regular(path, MAX_BACKGROUND_BYTES)
            if why:
                log.warning("compositional.backgrounds: %s: %s", path, why)
            else:
                out.append(path)
    return out


def perspective_coeffs(src, dst) -> list[float]:
    """Pillow's PERSPECTIVE coefficients mapping output points `dst` back to input points `src` (4 pairs)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    return np.linalg.solve(np.array(rows, np.float64), np.array(rhs, np.float64)).tolist()


def lighting(img: Image.Image, prng: random.Random) -> Image.Image:
    """Uneven light: a linear ramp of brightness across the medium in a random direction."""
    w, h = img.size
    angle = prng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) + 0.5
    lo, hi = prng.uniform(0.7, 0.9), prng.uniform(1.0, 1.12)
    gain = (lo + (hi - lo) * np.clip(t, 0, 1))[..., None]
    return Image.fromarray(np.clip(np.asarray(img, np.float32) * gain, 0, 255).astype(np.uint8))


def render(rng: random.Random, corpus, fonts: list, lang: str, size, stats: Counter, *, backgrounds=(),
           media=tuple(MEDIA), coverage: float = 0.0, min_size: int = 0) -> Rendered:
    """Text on a medium, in perspective with light and shadow, in a scene of `size`."""
    nrng = np.random.default_rng(rng.getrandbits(63))
    W, H = size
    medium = rng.choice(list(media))
    bases, inks, en_word, zh_word = MEDIA[medium]
    base = colors.rgb(rng.choice(bases))
    mw = int(W * rng.uniform(0.5, 0.8))
    mh = int(min(H * 0.8, mw * rng.uniform(0.55, 1.1)))
    surface = texture(medium, base, (mw, mh), nrng)
    mean = tuple(np.asarray(surface).reshape(-1, 3).mean(0))
    ok = [c for c in inks if colors.contrast(colors.rgb(c), mean) >= colors.MIN_CONTRAST] \
        or [colors.pick_text(rng, mean)]
    ink = rng.choice(ok)
    pad = int(min(mw, mh) * rng.uniform(0.08, 0.14))
    box = (pad, pad, mw - pad, mh - pad)
    lo = min_size or max(12, H // 40)
    while True:
        sentences, font = text_and_font(rng, corpus, fonts, lang, stats, coverage=coverage, sentences=(1, 3))
        kw = dict(align=rng.choice(("left", "center")), valign="middle", spacing=rng.uniform(1.1, 1.35))
        hi = max(lo, int(mh / rng.uniform(3, 6)))
        block = None
        while sentences and block is None:
            try:
                block = layout.fit(join(sentences, lang), font.pil, box, max_size=hi, min_size=lo, **kw)
            except layout.FitError:
                sentences = sentences[:-1]
        if block is not None:
            break
        stats["dropped: does not fit"] += 1

    # the medium with its text, then the chalk's or paint's roughness
    text_layer = Image.new("L", (mw, mh), 0)
    layout.draw(ImageDraw.Draw(text_layer), block, font.pil(block.size), 255)
    if medium in ("chalkboard", "wood"):
        rough = (noise(nrng, (mw, mh), max(8, mw // 6)) * 0.5 + 0.6).clip(0, 1)
        text_layer = Image.fromarray((np.asarray(text_layer, np.float32) * rough).astype(np.uint8))
    surface.paste(Image.new("RGB", (mw, mh), colors.rgb(ink)), (0, 0), text_layer)
    if medium == "sign":
        d = ImageDraw.Draw(surface)
        inset = max(3, pad // 4)
        d.rectangle((inset, inset, mw - inset - 1, mh - inset - 1), outline=colors.rgb(ink), width=max(2, inset // 2))
    surface = lighting(surface, rng)

    # perspective: the medium's corners moved by up to 10% of its size, placed in the scene
    x0, y0 = rng.randint(0, W - mw), rng.randint(0, H - mh)
    j = lambda s: rng.uniform(-0.1, 0.1) * s
    src = [(0, 0), (mw, 0), (mw, mh), (0, mh)]
    dst = [(x0 + j(mw), y0 + j(mh)), (x0 + mw + j(mw), y0 + j(mh)), (x0 + mw + j(mw), y0 + mh + j(mh)),
           (x0 + j(mw), y0 + mh + j(mh))]
    dst = [(min(max(x, 0), W - 1), min(max(y, 0), H - 1)) for x, y in dst]
    coeffs = perspective_coeffs(src, dst)
    surface.putalpha(255)              # warped once with its coverage: the medium's edge is antialiased
    warped = surface.transform((W, H), Image.PERSPECTIVE, coeffs, Image.BICUBIC)
    alpha = warped.getchannel("A")

    if backgrounds:
        scene, scene_name = user_background(rng.choice(list(backgrounds)), size), "photo"
    else:
        scene, wall = procedural_scene(size, nrng, rng)
        scene_name = wall
    # shadow: the medium's silhouette, offset and blurred, darkening the scene beneath it
    off = (int(W * rng.uniform(0.005, 0.02)), int(H * rng.uniform(0.01, 0.03)))
    shadow = Image.new("L", (W, H), 0)
    shadow.paste(alpha, off)
    small = shadow.resize((W // 4, H // 4), Image.BILINEAR)          # blurred at a quarter size: 16x cheaper
    shadow = small.filter(ImageFilter.GaussianBlur(max(1, W // 400))).resize((W, H), Image.BILINEAR)
    dark = np.asarray(scene, np.float32) * (1 - 0.55 * np.asarray(shadow, np.float32)[..., None] / 255)
    scene = Image.fromarray(dark.clip(0, 255).astype(np.uint8))
    scene.paste(warped.convert("RGB"), (0, 0), alpha)
    return Rendered(scene, "compositional", lang, [join(sentences, lang)], [block],
                    {"medium": medium, "medium_en": en_word, "medium_zh": zh_word, "surface": colors.nearest(mean),
                     "color": ink, "scene": scene_name, "font": font.name, "look": font.look,
                     "font_size": block.size, "quad": [list(map(float, p)) for p in dst]})
