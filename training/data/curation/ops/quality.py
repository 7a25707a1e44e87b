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


LEVELS = np.arange(256, dtype=np.float32) / 255   # a uint8 gray level as the [0, 1] value the rules read


def histogram(a: np.ndarray) -> np.ndarray:
    """Counts of the 256 values of a uint8 array (any shape), as float64: OpenCV's histogram is ~10x np.bincount's
    speed, and on a wide 2-D array (not a column of single values) another ~5x."""
    a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    return cv2.calcHist([np.ascontiguousarray(a)], [0], None, [256], [0, 256]).ravel().astype(np.float64)


@register("clarity")
class Clarity(Op):
    """clarity: ln(1 + variance of the Laplacian) of the analysis image's gray levels (0..255): the energy of its
    finest detail, a standard blur measure. Blurred or flat images score ~0..3, ordinary photos ~4..7, sharp fine
    detail up to ~10 (the report's Fig. 11 examples span 2.4..10). A natural log, so +0.7 is twice the detail."""

    stats = ("clarity",)
    default_keep = {"clarity": (3.0, INF)}

    def compute(self, item: Item) -> dict:
        lap = cv2.Laplacian(item.gray_u8, cv2.CV_16S)   # exact integers: the levels' Laplacian, 0..255 scale
        _, std = cv2.meanStdDev(lap)
        return {"clarity": math.log1p(float(std[0, 0]) ** 2)}


@register("luma")
class Luma(Op):
    """luma: mean brightness (Rec. 601 luma, 0 black .. 1 white; photos ~0.3..0.6); dark_fraction / bright_fraction:
    the share of pixels below 0.05 / above 0.95 (crushed shadows, blown highlights). The default drops only the
    extremes of the mean: a white page of text is bright everywhere and still a good sample, so the fractions come
    with no default rule (tune them by the report's histograms)."""

    stats = ("luma", "dark_fraction", "bright_fraction")
    default_keep = {"luma": (0.05, 0.95)}

    def compute(self, item: Item) -> dict:
        counts = histogram(item.gray_u8)   # one pass; the three statistics are sums over its 256 levels
        n = counts.sum()
        return {"luma": float(counts @ LEVELS / n), "dark_fraction": float(counts[LEVELS < 0.05].sum() / n),
                "bright_fraction": float(counts[LEVELS > 0.95].sum() / n)}


@register("saturation")
class Saturation(Op):
    """saturation: mean HSV saturation, 0 (gray) .. 1 (pure colours); photos ~0.2..0.6, the report's examples span
    0.29..0.93. colourfulness: Hasler and Suesstrunk's colourfulness metric ("Measuring colourfulness in natural
    images", SPIE 2003): the spread plus 0.3 x the mean of the opponent channels rg = R - G and yb = (R + G)/2 - B on
    0..255, their scale reading 15 "slightly", 33 "moderately", 59 "quite", 82 "highly" and 109 "extremely"
    colourful.

    Oversaturated edits are caught by colourfulness, not by the mean saturation: a photo of muted colours pushed 6x
    (PIL ImageEnhance.Color(6.0)) has a mean saturation of only 0.6..0.9, where a genuinely vivid photo (a pink
    flower close-up) already reads 0.83, while its colourfulness jumps past 110. Measured on the colour photos that
    ship with scikit-image 0.26 and scikit-learn 1.9 (astronaut, chelsea, coffee, motorcycle, rocket, china, flower,
    retina, hubble, ihc): as shot 12..99 (retina the highest); Color(6.0) 118..197 (bar hubble_deep_field, a near-gray
    star field: 54). The default keeps up to 110, just past the scale's "extremely colourful"; flat synthetic
    graphics in pure colours (logos, colour charts) score 110..135 and go too. Black-and-white photos are legitimate
    data (both ~0): set keep = {saturation = [0.05, 1]} to drop them."""

    stats = ("saturation", "colourfulness")
    default_keep = {"colourfulness": (0.0, 110.0)}

    def compute(self, item: Item) -> dict:
        hsv = cv2.cvtColor(item.pixels, cv2.COLOR_RGB2HSV)   # S in 0..255 (rounded: the mean moves < 0.001)
        counts = cv2.calcHist([hsv], [1], None, [256], [0, 256]).ravel().astype(np.float64)
        return {"saturation": float(counts @ LEVELS / counts.sum()), "colourfulness": colourfulness(item.pixels)}


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler-Suesstrunk M of a uint8 RGB image, on their 0..255 scale. Global means and spreads: every 4th row and
    column (~15,000 pixels of the analysis image) estimate them to within ~1%, at 1/16 of the cost."""
    x = rgb[::4, ::4].reshape(-1, 3).astype(np.float32)
    rg, yb = x[:, 0] - x[:, 1], 0.5 * (x[:, 0] + x[:, 1]) - x[:, 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


@register("entropy")
class Entropy(Op):
    """entropy: Shannon entropy in bits of the histogram of all R, G and B values (256 bins, 0..8). Flat colour
    fields, blank pages and placeholders score < ~2; photos ~6.5..7.8 (the report's examples: 1.9..7.7)."""

    stats = ("entropy",)
    default_keep = {"entropy": (2.0, INF)}

    def compute(self, item: Item) -> dict:
        counts = histogram(item.pixels)
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
        edges = cv2.Canny(item.gray_u8, 100, 200)
        return {"texture": float(np.count_nonzero(edges)) / edges.size}


@register("compression")
class Compression(Op):
    """blockiness: JPEG's 8x8 block artefacts, as how much stronger the steps across the 8x8 grid's lines are than
    across any other line of the same period (`block_ratio`). ~1.0 is no grid: any PNG, a JPEG at quality >= 80
    (0.70..1.28), noise, and textures of any period but 8 (stripes, checks, fabric) alike; heavy compression scores
    1.4..4 on photos at quality 10 (finely textured ones hide their blocks: grass 1.32), 1.9..4.5 on smoother
    pictures, where blocks show the most. Read on the stored pixels (the grid vanishes once resized), in a centred
    crop of at most `crop` (512) pixels a side: 4096 blocks are plenty. The default keeps up to 1.35: above every
    quality-80 picture measured (block_ratio says on what)."""

    stats = ("blockiness",)
    default_keep = {"blockiness": (0.0, 1.35)}

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
    """For a uint8 gray image whose (0, 0) is a block's corner: the step across the 8x8 grid's lines over the
    strongest step across the lines of the seven other phases, in the weaker of the two directions.

    Three choices make it measure JPEG's grid and nothing else. Steps are signed and averaged along each 8-pixel
    block edge before their magnitude is taken: quantization shifts a block's whole edge together, where noise (and
    the noise that quantization smooths away inside a block) cancels out, so noisy pictures at quality 80 read
    0.95..0.99 (the plain ratio of mean steps read them 1.25..1.5). Phase 0 is compared with the strongest of the
    other seven phases, not their mean: a texture of period 2 or 4 has edges at phase 4 too and reads 1.0 (2.1
    before). And the weaker direction counts: JPEG's grid runs both ways, stripes on the 8-pixel grid only one.

    Calibration, PIL's encoder at its default 4:2:0 on the 14 photos that ship with scikit-image 0.26 and
    scikit-learn 1.9 (astronaut, camera, chelsea, coffee, rocket, retina, flower, china, brick, grass, ...), on
    procedural pictures with noise 2..20 (as in tests/test_curation_labelled.py) and on stripes and checks of
    period 2..6: lossless 0.93..1.02; quality 90 0.82..1.10; quality 80 0.70..1.28 (the smooth, dark retina
    photo the highest); quality 70 up to 1.8 (flat pictures); quality 20 1.05..4.2 on photos (9 of 14 over 1.35),
    1.7..2.8 on the others; quality 10 1.32..5.3 (13 of 14 photos over 1.35)."""
    h, w = g.shape
    if min(h, w) < 16:
        return 1.0   # not one whole block and its neighbour: nothing to compare
    g = g[: h // 8 * 8, : w // 8 * 8]
    h, w = g.shape   # the sum of 8 steps is the step of the 8 pixels' sums: sum runs of 8 first (exact integers)
    rows = g.reshape(h // 8, 8, w).sum(axis=1, dtype=np.int32)                          # down a block's rows
    cols = cv2.transpose(g).reshape(w // 8, 8, h).sum(axis=1, dtype=np.int32)   # along its columns
    return min(_phase_ratio(np.diff(rows, axis=1)), _phase_ratio(np.diff(cols, axis=1)))


def _phase_ratio(d: np.ndarray) -> float:
    """d[:, j] = 8 x the signed step from column j to j + 1 (sums over 8 pixels); the grid's lines are the steps
    from 8k - 1 to 8k."""
    k = (d.shape[1] - 7) // 8
    steps = np.abs(d[:, 7:7 + 8 * k]).reshape(-1, 8)      # column 0: across the grid; 1..7: the other phases
    sample = steps.ravel()[::3]   # the 97th percentile of a third of them is as good, at a third of the cost
    cap = np.partition(sample, int(sample.size * 0.97))[int(sample.size * 0.97)]
    phases = np.minimum(steps, cap, out=steps).sum(axis=0) / len(steps)   # capped: a few straight edges cannot
    #                                                                       outweigh thousands of steps
    eps = 0.8   # 0.1 gray levels, x 8: a flat image (every phase ~0) reads as no grid rather than 0/0
    return float((phases[0] + eps) / (phases[1:].max() + eps))
