"""Image-quality statistics of the report's second and fifth stages: clarity (blur), luma (exposure), saturation,
entropy, texture complexity and JPEG blockiness. Each is a few OpenCV/numpy passes over the Item's shared analysis
image (`small`, long side <= 512), about a millisecond each; only blockiness reads stored pixels, because JPEG's
8x8 grid exists only there."""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..op import Item, Op, OpError, register

INF = float("inf")


def gray_u8(item: Item) -> np.ndarray:
    return np.asarray(item.small.convert("L"))


@register("clarity")
class Clarity(Op):
    """clarity: ln(1 + variance of the Laplacian) of the analysis image's gray levels (0..255): the energy of its
    finest detail, a standard blur measure. Blurred or flat images score ~0..3, ordinary photos ~4..7, sharp fine
    detail up to ~10 (the report's Fig. 11 examples span 2.4..10). A natural log, so +0.7 is twice the detail."""

    stats = ("clarity",)
    default_keep = {"clarity": (3.0, INF)}

    def compute(self, item: Item) -> dict:
        lap = cv2.Laplacian(item.gray, cv2.CV_32F)
        return {"clarity": math.log1p(float(lap.var()) * 255.0 ** 2)}


@register("luma")
class Luma(Op):
    """luma: mean brightness (Rec. 601 luma, 0 black .. 1 white; photos ~0.3..0.6); dark_fraction / bright_fraction:
    the share of pixels below 0.05 / above 0.95 (crushed shadows, blown highlights). The default drops only the
    extremes of the mean: a white page of text is bright everywhere and still a good sample, so the fractions come
    with no default rule (tune them by the report's histograms)."""

    stats = ("luma", "dark_fraction", "bright_fraction")
    default_keep = {"luma": (0.05, 0.95)}

    def compute(self, item: Item) -> dict:
        g = item.gray
        return {"luma": float(g.mean()), "dark_fraction": float((g < 0.05).mean()),
                "bright_fraction": float((g > 0.95).mean())}


@register("saturation")
class Saturation(Op):
    """saturation: mean HSV saturation, 0 (gray) .. 1 (pure colours). Photos ~0.2..0.6, the report's examples span
    0.29..0.93; above ~0.9 the colours are artificial (oversaturated edits, flat synthetic graphics). The default
    drops only that end: black-and-white photos are legitimate data; set keep = {saturation = [0.05, 0.9]} to
    drop them too."""

    stats = ("saturation",)
    default_keep = {"saturation": (0.0, 0.9)}

    def compute(self, item: Item) -> dict:
        hsv = cv2.cvtColor(item.rgb, cv2.COLOR_RGB2HSV)
        return {"saturation": float(hsv[..., 1].mean())}


@register("entropy")
class Entropy(Op):
    """entropy: Shannon entropy in bits of the histogram of all R, G and B values (256 bins, 0..8). Flat colour
    fields, blank pages and placeholders score < ~2; photos ~6.5..7.8 (the report's examples: 1.9..7.7)."""

    stats = ("entropy",)
    default_keep = {"entropy": (2.0, INF)}

    def compute(self, item: Item) -> dict:
        values = np.asarray(item.small).reshape(-1, 1)
        counts = cv2.calcHist([values], [0], None, [256], [0, 256]).ravel()   # ~10x np.bincount's speed
        p = counts[counts > 0] / counts.sum()
        return {"entropy": float(-(p * np.log2(p)).sum()) + 0.0}   # + 0.0: -0.0 for a one-colour image


@register("texture")
class Texture(Op):
    """texture: the share of the analysis image's pixels on a Canny edge (0..~0.5; thinned edges cannot be denser).
    Photos ~0.02..0.2 (a circuit board close-up 0.21), uniform noise ~0.37..0.4: the report drops images whose
    texture is too complex to learn anything from, by default above 0.3."""

    stats = ("texture",)
    default_keep = {"texture": (0.0, 0.3)}

    def compute(self, item: Item) -> dict:
        edges = cv2.Canny(gray_u8(item), 100, 200)
        return {"texture": float(np.count_nonzero(edges)) / edges.size}


@register("compression")
class Compression(Op):
    """blockiness: JPEG's 8x8 block artefacts, as the mean absolute step between neighbouring pixels across the 8x8
    grid's lines divided by the mean step everywhere else (both directions). 1.0 is no grid (any PNG, a JPEG at
    quality >= ~80); heavy compression (quality <= ~20) scores ~1.5..3 and more. Read on the stored pixels (the grid
    vanishes once resized), in a centred crop of at most `crop` (512) pixels a side: 4096 blocks are plenty."""

    stats = ("blockiness",)
    default_keep = {"blockiness": (0.0, 1.4)}

    def __init__(self, crop: int = 512, **kw):
        super().__init__(**kw)
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 64:
            raise OpError(f"op 'compression': crop must be a whole number of pixels >= 64, got {crop!r}")
        self.crop = crop // 8 * 8

    def compute(self, item: Item) -> dict:
        im = item.pil
        cw, ch = min(im.width, self.crop), min(im.height, self.crop)
        x0, y0 = (im.width - cw) // 16 * 8, (im.height - ch) // 16 * 8   # keep the crop on the 8x8 grid
        g = np.asarray(im.crop((x0, y0, x0 + cw, y0 + ch)).convert("L"))
        return {"blockiness": block_ratio(g)}


def block_ratio(g: np.ndarray) -> float:
    """Mean |step| across the 8x8 grid's lines over the mean |step| elsewhere, for a uint8 gray image whose (0, 0)
    is a block's corner. The whole-image sums run in OpenCV (no float copy); the grid's are 1/8 of the pixels."""
    h, w = g.shape
    if min(h, w) < 2 or max(h, w) < 9:
        return 1.0   # no grid line inside: nothing to see
    all_sum = cv2.norm(g[:, 1:], g[:, :-1], cv2.NORM_L1) + cv2.norm(g[1:], g[:-1], cv2.NORM_L1)
    all_n = h * (w - 1) + (h - 1) * w
    on_x = np.abs(g[:, 8::8].astype(np.int16) - g[:, 7:-1:8])
    on_y = np.abs(g[8::8].astype(np.int16) - g[7:-1:8])
    on_sum, on_n = float(on_x.sum()) + float(on_y.sum()), on_x.size + on_y.size
    off_sum, off_n = all_sum - on_sum, all_n - on_n
    eps = 0.5   # a flat image (both ~0) reads as no grid rather than 0/0
    return (on_sum / max(on_n, 1) + eps) / (off_sum / max(off_n, 1) + eps)
