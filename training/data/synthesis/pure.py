"""Pure rendering (the report's first kind): a paragraph on a clean background, laid out dynamically: font, size
(the largest that fits), line breaking, alignment, one or two columns, and colours with enough contrast."""
from __future__ import annotations

import random
from collections import Counter

from PIL import Image, ImageDraw

from . import colors, layout
from .choose import text_and_font
from .corpus import join
from .rendered import Rendered


def background(size, base, rng: random.Random) -> Image.Image:
    """A clean background: flat, or a gentle vertical gradient between two tints of one colour."""
    w, h = size
    if rng.random() < 0.6:
        return Image.new("RGB", size, base)
    shade = rng.uniform(-0.12, 0.12)
    other = tuple(max(0, min(255, int(c + 255 * shade))) for c in base)
    grad = Image.linear_gradient("L").resize((w, h))
    return Image.composite(Image.new("RGB", size, other), Image.new("RGB", size, base), grad)


def render(rng: random.Random, corpus, fonts: list, lang: str, size, stats: Counter, *, coverage: float = 0.0,
           min_size: int = 0) -> Rendered:
    """One pure render of a paragraph in `lang` on a `size` canvas. Sentences that do not fit are left off the
    end (the caption quotes what was drawn); a paragraph whose first sentence does not fit is dropped."""
    w, h = size
    while True:
        sentences, font = text_and_font(rng, corpus, fonts, lang, stats, coverage=coverage)
        bg_name, fg_name = colors.pick_pair(rng)
        mx, my = int(w * rng.uniform(0.05, 0.12)), int(h * rng.uniform(0.05, 0.12))
        box = (mx, my, w - mx, h - my)
        columns = 2 if w >= 1.2 * h and len(sentences) > 2 and rng.random() < 0.4 else 1
        kw = dict(align=rng.choices(("left", "center", "right"), (5, 3, 1))[0],
                  valign=rng.choice(("top", "middle")), spacing=rng.uniform(1.15, 1.5), columns=columns)
        lo = min_size or max(12, h // 40)
        hi = max(lo, int(h * rng.uniform(1 / 14, 1 / 6)))
        while sentences:
            try:
                block = layout.fit(join(sentences, lang), font.pil, box, max_size=hi, min_size=lo, **kw)
                break
            except layout.FitError:
                sentences = sentences[:-1]
        if not sentences:
            stats["dropped: does not fit"] += 1
            continue
        image = background(size, colors.rgb(bg_name), rng)
        layout.draw(ImageDraw.Draw(image), block, font.pil(block.size), colors.rgb(fg_name))
        text = join(sentences, lang)
        return Rendered(image, "pure", lang, [text], [block],
                        {"background": bg_name, "color": fg_name, "font": font.name, "look": font.look,
                         "align": kw["align"], "columns": columns, "font_size": block.size})
