"""Issue 23's criterion for curation: on a labelled set of real-looking pictures, the report preset (model ops and
OCR skipped, as where no weights are at hand) catches every bad category at least 90% of the time, keeps at least
90% of the clean pictures, and keeps the clean original of every near-duplicate group.

The pictures are procedural but photographic: a sky-to-ground gradient under a wavy horizon, fractal cloud and
grain shading, a dozen soft-edged objects lit like the scene, sensor noise, JPEG at ordinary qualities. Each bad
category is what a crawl holds: blurred, under- and overexposed, oversaturated (PIL's Color(6.0), issue 23.13),
EXIF-rotated, a QR code, too small, truncated, a captioner's refusal as caption, and near-duplicate groups whose
other copy outranks the original by size but is itself bad (issue 23.14: it used to win, then a later stage dropped
it and the picture was lost).

EXIF orientation, as the preset reads it: the trainer reads stored pixels, so a file that asks viewers to rotate
it does not show what its caption says and exif_rotation drops it (the report's rule). An EXIF-rotated file is
therefore "bad" on its own, and in a near-duplicate group with its upright original the original must be kept."""
import io
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from qwenimage.training.data.curation import engine
from qwenimage.training.data.curation import pipeline as pl
from qwenimage.training.data.curation.op import GlobalOp

MODEL_OPS = ["nsfw", "clip_alignment", "aesthetic", "watermark", "face_mosaic", "ocr_text"]   # weights: not here
PER_CATEGORY = 10
SIZES = [(704, 640), (768, 640), (640, 704), (720, 648)]   # the preset's S5 wants a short side of 640
CAPTIONS = ["a quiet field under a cloudy sky with a few shapes in the grass",
            "rolling hills at dusk, stones and bushes scattered in the foreground",
            "an overcast landscape with coloured objects near the horizon"]
REFUSALS = ["Sorry, I cannot provide a caption for this image.", "I'm unable to describe the image.",
            "As an AI language model, I can't see images.", "抱歉，我无法描述这张图片。"]


# ------------------------------------------------------------------------------------------------ pictures

def _fractal(rng, h: int, w: int, cells: int, octaves: int) -> np.ndarray:
    """Fractal noise (bicubically upsampled Gaussian grids, each octave half the last's weight), spread ~1."""
    out = np.zeros((h, w), np.float32)
    for o in range(octaves):
        n = cells * 2 ** o
        grid = rng.normal(0, 0.5 ** o, (n + 1, n * w // h + 1)).astype(np.float32)
        out += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out


def _colour(rng, hue, sat, val) -> np.ndarray:
    hsv = np.uint8([[[rng.uniform(*hue) * 180, rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255


def picture(seed: int, size=(704, 640), noise: float = 3.0) -> Image.Image:
    """A photo-like landscape: gradient sky and ground, fractal shading, soft-edged lit objects (drawn at half size:
    they are smooth), then full-size fine texture (grass, foliage; strongest on the ground) and sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size[0] // 2, size[1] // 2
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    wave = cv2.resize(rng.normal(0, 1, (1, 9)).astype(np.float32), (w, 1), interpolation=cv2.INTER_CUBIC)
    horizon = rng.uniform(0.3, 0.6) + 0.04 * wave[0][None, :, None]
    sky = [_colour(rng, (0.5, 0.65), (0.1, 0.5), (0.6, 0.95)), _colour(rng, (0.0, 0.6), (0.05, 0.3), (0.7, 1.0))]
    ground = [_colour(rng, (0.05, 0.35), (0.25, 0.6), (0.3, 0.6)), _colour(rng, (0.05, 0.35), (0.2, 0.5), (0.15, 0.4))]
    below = y >= horizon
    img = np.where(below, ground[0] + (ground[1] - ground[0]) * np.clip((y - horizon) / (1 - horizon), 0, 1),
                   sky[1] + (sky[0] - sky[1]) * np.clip(y / horizon, 0, 1))
    shade = 1 + 0.12 * _fractal(rng, h, w, 4, 2)[..., None] + 0.06 * _fractal(rng, h, w, 20, 3)[..., None]
    img = np.concatenate([img * shade, np.where(below, 0.2, 0.05).astype(np.float32)], axis=2)  # 4th: texture
    for _ in range(rng.integers(8, 16)):
        r = int(rng.uniform(8, 65))
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(h * 0.25, h))
        x0, y0, x1, y1 = max(cx - 2 * r, 0), max(cy - 2 * r, 0), min(cx + 2 * r, w), min(cy + 2 * r, h)
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.float32)
        if rng.random() < 0.5:
            cv2.ellipse(mask, (cx - x0, cy - y0), (r, int(r * rng.uniform(0.4, 1.2))), float(rng.uniform(0, 180)),
                        0, 360, 1.0, -1, cv2.LINE_AA)
        else:
            a = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 8)))
            pts = np.stack([cx - x0 + r * rng.uniform(0.5, 1.5, len(a)) * np.cos(a),
                            cy - y0 + r * rng.uniform(0.5, 1.5, len(a)) * np.sin(a)], 1).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_AA)
        mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.2, 1.0))[..., None]
        colour = np.append(_colour(rng, (0, 1), (0.1, 0.6), (0.15, 0.9)), rng.uniform(0.05, 0.25))
        box = img[y0:y1, x0:x1]
        box += mask * (colour * np.concatenate([shade[y0:y1, x0:x1]] * 3 + [np.ones_like(mask)], axis=2) - box)
    full = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    detail = 1 + full[..., 3:] * _fractal(rng, size[1], size[0], 120, 2)[..., None]
    out = full[..., :3] * detail * 255 + noise * rng.standard_normal((size[1], size[0], 3), dtype=np.float32)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, quality: int = 90, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def with_qr(im: Image.Image, rng) -> Image.Image:
    a = np.asarray(im).copy()
    side = int(min(a.shape[:2]) * rng.uniform(0.3, 0.45))
    code = cv2.resize(cv2.QRCodeEncoder.create().encode(f"https://example.com/{rng.integers(1e6)}"), (side, side),
                      interpolation=cv2.INTER_NEAREST)
    x, y, q = int(rng.uniform(30, a.shape[1] - side - 30)), int(rng.uniform(30, a.shape[0] - side - 30)), side // 12
    a[y - q:y + side + q, x - q:x + side + q] = 255   # the quiet zone
    a[y:y + side, x:x + side] = code[..., None]
    return Image.fromarray(a)


def fine_texture(im: Image.Image, rng) -> Image.Image:
    """A fence or fabric: a region of 4-pixel-periodic stripes (issue 23.15 read such edges as JPEG blocks)."""
    a = np.asarray(im, np.float32).copy()
    h, w = a.shape[:2]
    y0, x0 = int(rng.uniform(0.5, 0.7) * h), int(rng.uniform(0, 0.4) * w)
    stripes = 40 * ((np.arange(w - x0) // 2) % 2)[None, :, None]
    a[y0:, x0:] = a[y0:, x0:] * 0.8 + stripes
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def labelled_set(folder) -> dict[str, tuple[str, str]]:
    """Writes the pictures and their captions into `folder` -> {file name: (category, expectation)}, expectation
    "keep" or "drop"; near-duplicate groups are "dup<i>/orig" (keep) and "dup<i>/copy" (drop)."""
    labels = {}
    seed = iter(range(10_000))

    def put(name, data: bytes, category, expect, caption=None):
        (folder / name).write_bytes(data)
        (folder / (os.path.splitext(name)[0] + ".txt")).write_text(caption or CAPTIONS[len(labels) % len(CAPTIONS)])
        labels[name] = (category, expect)

    def pic(i, **kw):
        s = next(seed)
        return picture(s, SIZES[i % len(SIZES)], **kw), np.random.default_rng(s + 50_000)

    for i in range(PER_CATEGORY):
        im, rng = pic(i, noise=rng_noise(i))
        if i % 4 == 3:
            im = fine_texture(im, rng)
        put(f"clean{i:02d}.jpg", jpeg(im, (80, 85, 90, 95)[i % 4]), "clean", "keep")
        im, rng = pic(i)
        put(f"blurred{i:02d}.jpg", jpeg(im.filter(ImageFilter.GaussianBlur(rng.uniform(3, 6)))), "blurred", "drop")
        im, rng = pic(i)
        dark = np.asarray(im, np.float32) * rng.uniform(0.05, 0.12) + rng.normal(0, 1.5, (im.height, im.width, 3))
        put(f"dark{i:02d}.jpg", jpeg(Image.fromarray(np.clip(dark, 0, 255).astype(np.uint8))), "dark", "drop")
        im, rng = pic(i)
        bright = np.asarray(im, np.float32) * rng.uniform(4.0, 6.0)   # +2 to +2.6 stops
        put(f"bright{i:02d}.jpg", jpeg(Image.fromarray(np.clip(bright, 0, 255).astype(np.uint8))), "overexposed",
            "drop")
        im, rng = pic(i)
        put(f"garish{i:02d}.jpg", jpeg(ImageEnhance.Color(im).enhance(6.0)), "oversaturated", "drop")
        im, rng = pic(i)   # a camera held sideways: stored on its side, the tag asks viewers to turn it upright
        put(f"rotated{i:02d}.jpg", jpeg(im.transpose(Image.Transpose.ROTATE_90), exif=exif((6, 8)[i % 2])),
            "exif_rotated", "drop")
        im, rng = pic(i)
        put(f"qr{i:02d}.jpg", jpeg(with_qr(im, rng)), "qr", "drop")
        im, rng = pic(i)
        short = int(rng.uniform(120, 600))
        put(f"small{i:02d}.jpg", jpeg(im.resize((short * im.width // im.height, short), Image.LANCZOS)), "small",
            "drop")
        im, rng = pic(i)
        data = jpeg(im)
        put(f"truncated{i:02d}.jpg", data[: int(len(data) * rng.uniform(0.3, 0.85))], "truncated", "drop")
        im, rng = pic(i)
        put(f"refusal{i:02d}.jpg", jpeg(im), "bad_caption", "drop", caption=REFUSALS[i % len(REFUSALS)])
        im, rng = pic(i)   # a near-duplicate group: the clean original and a bad copy that outranks it by size
        put(f"dup{i:02d}_a.jpg", jpeg(im, 88), "dup_original", "keep")
        kind = i % 4
        if kind == 0:      # the same pixels with an orientation tag, re-saved at a higher quality
            put(f"dup{i:02d}_b.jpg", jpeg(im, 95, exif=exif(6)), "dup_copy", "drop")
        elif kind == 1:    # an oversaturated edit
            put(f"dup{i:02d}_b.jpg", jpeg(ImageEnhance.Color(im).enhance(6.0), 95), "dup_copy", "drop")
        elif kind == 2:    # upscaled and soft: more pixels, less picture
            big = im.resize((im.width * 5 // 4, im.height * 5 // 4), Image.BICUBIC).filter(ImageFilter.GaussianBlur(5))
            put(f"dup{i:02d}_b.jpg", jpeg(big, 95), "dup_copy", "drop")
        else:              # the same picture, a higher quality file, a captioner's refusal for caption
            put(f"dup{i:02d}_b.jpg", jpeg(im, 97), "dup_copy", "drop", caption=REFUSALS[i % len(REFUSALS)])
    return labels


def rng_noise(i: int) -> float:
    return (2.0, 4.0, 8.0, 12.0)[i % 4]


# ------------------------------------------------------------------------------------------------ the criterion

@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    raw = tmp_path_factory.mktemp("labelled")
    labels = labelled_set(raw)
    out = tmp_path_factory.mktemp("out")
    pipeline = pl.load_pipeline("report", ["best_per_category.rank_by=clarity"], MODEL_OPS)
    engine.curate([raw], str(out), pipeline, workers=1, progress=False, report=False)
    dropped = {os.path.basename(d["key"]): d["reason"] for d in map(json.loads, open(out / "dropped.jsonl"))}
    return labels, dropped


CAUGHT_BY = {   # category: the ops whose drop counts as catching it (dark pictures have no detail left either)
    "blurred": {"clarity"}, "dark": {"clarity", "luma"}, "overexposed": {"luma", "clarity", "entropy"},
    "oversaturated": {"saturation"}, "exif_rotated": {"exif_rotation"}, "qr": {"qr_code"}, "small": {"resolution"},
    "truncated": {"broken"}, "bad_caption": {"invalid_caption"},
    "dup_copy": {"exif_rotation", "saturation", "clarity", "invalid_caption", "dedup"}}


def test_every_bad_category_is_caught_and_clean_pictures_are_kept(curated):
    labels, dropped = curated
    rates, wrong = {}, {}
    for name, (category, expect) in labels.items():
        by = dropped[name].partition(":")[0] if name in dropped else None
        ok = by is None if expect == "keep" else by in CAUGHT_BY[category]
        rates.setdefault(category, []).append(ok)
        if not ok:
            wrong[name] = dropped.get(name, "kept")
    summary = {c: sum(v) / len(v) for c, v in rates.items()}
    assert len(summary) == 12 and all(len(v) == PER_CATEGORY for v in rates.values())
    assert all(rate >= 0.9 for rate in summary.values()), (summary, wrong)


def test_each_near_duplicate_group_keeps_its_clean_original(curated):
    labels, dropped = curated
    for i in range(PER_CATEGORY):
        orig, copy = f"dup{i:02d}_a.jpg", f"dup{i:02d}_b.jpg"
        assert orig not in dropped, (orig, dropped[orig])
        assert copy in dropped, copy


def test_the_report_preset_runs_dedup_after_every_per_image_filter():
    """Issue 23.14: dedup ranks copies by size, so it must only see copies every per-image rule keeps; a later
    filter dropping the copy it kept would lose the picture."""
    steps = pl.load_pipeline("report").steps()
    at = next(i for i, (_, op) in enumerate(steps) if op.name == "dedup")
    filters_after = [f"{stage}.{op.name}" for stage, op in steps[at + 1:]
                     if not isinstance(op, GlobalOp) and (op.keep or op.drop_if)]
    assert filters_after == []
