"""The file ops of the report's first stages: can the file be read at all, how big is it, how many pixels and what
shape, and does its EXIF ask a viewer to rotate or flip it. Size, shape and EXIF come from the file's header (no
pixel decode); `broken` is the one that decodes every pixel, so a truncated file is caught there."""
from __future__ import annotations

import io

from PIL import Image

from ..op import Item, Op, Undecodable, decode_problem, register

EXIF_ORIENTATION = 0x0112   # the EXIF tag: 1 = as stored; 2..8 = mirrored and/or rotated by 90/180/270 degrees


def header(item: Item) -> Image.Image:
    """The image opened lazily (size, format, EXIF; no pixels), or Undecodable naming why. Pixel-count bombs are
    refused here as `decode` refuses them, so no op reports the size of a file that must not be decoded. Opened once
    per sample: broken, resolution, exif_rotation share it."""
    if item.header is not None:
        return item.header
    try:
        im = Image.open(io.BytesIO(item.data))
    except Image.DecompressionBombError as e:
        raise Undecodable(f"decompression bomb: {e}") from None
    except Exception as e:
        raise Undecodable(f"not a readable image: {decode_problem(e)}") from None
    if im.width * im.height > Item.MAX_PIXELS:
        raise Undecodable(f"decompression bomb: {im.width}x{im.height} = {im.width * im.height} pixels "
                          f"> {Item.MAX_PIXELS}")
    item.header = im
    return im


@register("broken")
class Broken(Op):
    """Decodes every pixel (a truncated or corrupt file, or a decompression bomb, drops the sample as
    "broken: ..."). width, height: pixels as stored; format: PIL's name for the file type ("JPEG", "PNG", "WEBP")."""

    stats = ("width", "height", "format")

    def compute(self, item: Item) -> dict:
        fmt = header(item).format
        w, h = item.pil.size   # the full decode, shared with every later op of the sample
        return {"width": w, "height": h, "format": fmt}


@register("file_size")
class FileSize(Op):
    """file_bytes: the file's size in bytes. Tiny files are thumbnails, icons or placeholders; huge ones are scans
    or raw exports that cost more to read than they give. Typical photos: 50 KB .. 10 MB."""

    stats = ("file_bytes",)
    default_keep = {"file_bytes": (2048.0, 64.0 * 2**20)}

    def compute(self, item: Item) -> dict:
        return {"file_bytes": len(item.data)}


@register("resolution")
class Resolution(Op):
    """width, height, short_side, long_side: pixels as stored; aspect: long side / short side (>= 1; 1.78 is 16:9).
    The report's stages raise the short-side floor (256p, 640p, 1328p); the default is the first stage's 256 and
    an aspect of at most 3 (banners and strips crop badly into the training buckets)."""

    stats = ("width", "height", "short_side", "long_side", "aspect")
    default_keep = {"short_side": (256.0, float("inf")), "aspect": (1.0, 3.0)}

    def compute(self, item: Item) -> dict:
        w, h = header(item).size
        short, long = min(w, h), max(w, h)
        return {"width": w, "height": h, "short_side": short, "long_side": long,
                "aspect": long / short if short else float("inf")}


@register("exif_rotation")
class ExifRotation(Op):
    """exif_orientation: the EXIF Orientation tag (1..8; 1 when absent or invalid); exif_rotated: True when it is
    not 1, i.e. the pixels as stored are rotated or mirrored from how a viewer shows them. Training reads the stored
    pixels, so the caption ("a tall tower") would not match them: dropped by default, as the report does."""

    stats = ("exif_orientation", "exif_rotated")
    default_drop_if = {"exif_rotated": True}

    def compute(self, item: Item) -> dict:
        try:
            value = header(item).getexif().get(EXIF_ORIENTATION, 1)
        except Undecodable:
            raise
        except Exception:   # a malformed EXIF block: the pixels are what they are, nothing asks to rotate them
            value = 1
        orientation = value if isinstance(value, int) and 1 <= value <= 8 else 1
        return {"exif_orientation": orientation, "exif_rotated": orientation != 1}
