"""Named colours (English and Chinese names, for captions) and the contrast rule that keeps rendered text legible:
the WCAG contrast ratio between text and what lies behind it."""
from __future__ import annotations

import random

# name: (RGB, Chinese name)
PALETTE = {
    "white": ((248, 248, 245), "白色"), "black": ((18, 18, 18), "黑色"), "gray": ((128, 128, 128), "灰色"),
    "light gray": ((210, 210, 210), "浅灰色"), "dark gray": ((60, 60, 60), "深灰色"), "red": ((200, 30, 35), "红色"),
    "dark red": ((120, 15, 20), "深红色"), "orange": ((240, 130, 20), "橙色"), "yellow": ((245, 210, 40), "黄色"),
    "cream": ((250, 240, 215), "米色"), "green": ((40, 150, 60), "绿色"), "dark green": ((20, 80, 40), "深绿色"),
    "light green": ((190, 230, 190), "浅绿色"), "blue": ((35, 80, 200), "蓝色"), "navy": ((20, 30, 80), "藏青色"),
    "light blue": ((185, 215, 245), "浅蓝色"), "purple": ((120, 50, 160), "紫色"), "pink": ((245, 180, 200), "粉色"),
    "brown": ((110, 70, 40), "棕色"), "teal": ((20, 130, 130), "青色"),
}
MIN_CONTRAST = 4.5  # WCAG AA for body text


def rgb(name: str) -> tuple[int, int, int]:
    return PALETTE[name][0]


def zh(name: str) -> str:
    return PALETTE[name][1]


def luminance(c) -> float:
    def lin(v):
        v /= 255.0
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    r, g, b = (lin(float(x)) for x in c[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a, b) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def pick_pair(rng: random.Random, min_contrast: float = MIN_CONTRAST) -> tuple[str, str]:
    """(background, text) colour names with at least `min_contrast` between them."""
    names = sorted(PALETTE)
    bg = rng.choice(names)
    return bg, pick_text(rng, PALETTE[bg][0], min_contrast)


def pick_text(rng: random.Random, behind, min_contrast: float = MIN_CONTRAST) -> str:
    """A text colour name legible on `behind` (an RGB); black or white when no other colour is."""
    ok = [n for n in sorted(PALETTE) if contrast(PALETTE[n][0], behind) >= min_contrast]
    if not ok:
        ok = [max(("black", "white"), key=lambda n: contrast(PALETTE[n][0], behind))]
    return rng.choice(ok)


def nearest(c) -> str:
    """The palette name closest to an RGB colour (for captions of textured or photographed backgrounds)."""
    return min(sorted(PALETTE), key=lambda n: sum((a - b) ** 2 for a, b in zip(PALETTE[n][0], c[:3])))
