"""Routes of the input, output and temp folders: /upload/image, /upload/mask, /view and /internal/files.

Names are sanitised and every path is confined to its folder (no absolute paths, no '..', no symlink escapes);
an upload never overwrites unless asked and is written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from io import BytesIO
from pathlib import Path
from typing import Optional

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .. import host
from .. import limits
from ..limits import PixelLimitError, check_image_size
from .replies import INERT_HEADERS, ascii_name, atomic_write, server_of, write_refused

routes = web.RouteTableDef()

_BAD_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/]')
MAX_NAME_BYTES = 200  # file systems allow 255 bytes; the rest is room for a " (12)" de-duplicating suffix
MAX_PATH_BYTES = 3000  # Linux allows 4096 for a whole path: the rest is room for the folder and a file name


def sanitize_filename(name: str) -> str:
    """A bare file name: no folders, no control or reserved characters, not hidden, not '.'/'..', at most
    MAX_NAME_BYTES in UTF-8 with its extension kept."""
    name = os.path.basename(str(name).replace("\\", "/")).strip()
    name = "".join("_" if _unprintable(c) else c for c in _BAD_CHARS.sub("_", name)).lstrip(".").strip()
    if not name or name in (".", ".."):
        raise ValueError("invalid file name")
    return shorten_name(name)


def _unprintable(c: str) -> bool:
    """Controls (\x85), lone surrogates (a name that was not UTF-8), line separators and format characters
    such as the right-to-left override that shows 'x\u202egnp.exe' as 'xexe.png' (joiners kept, for emoji)."""
    cat = unicodedata.category(c)
    return cat in ("Cc", "Cs", "Co", "Zl", "Zp") or (cat == "Cf" and c not in "\u200c\u200d")


def shorten_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """`name` cut to `limit` UTF-8 bytes by shortening its stem (never mid-character), keeping the extension."""
    if len(name.encode()) <= limit:
        return name
    stem, ext = os.path.splitext(name)
    if len(ext.encode()) > 16:  # not an extension
        stem, ext = name, ""
    stem = stem.encode()[: limit - len(ext.encode())].decode("utf-8", "ignore").rstrip() or "file"
    return stem + ext


def safe_join(base, *parts) -> Path:
    """base/parts..., refusing absolute parts, '..' and anything resolving outside base (symlinks included)."""
    base = Path(base).resolve()
    rel = "/".join(p for p in parts if p)
    if "\x00" in rel or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise PermissionError("absolute path")
    segments = re.split(r"[\\/]", rel)
    if any(seg == ".." for seg in segments):
        raise PermissionError("path escapes its folder")
    if any(len(seg.encode()) > MAX_NAME_BYTES for seg in segments):
        raise PermissionError(f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
    path = (base / rel).resolve() if rel else base
    if len(str(path).encode()) > MAX_PATH_BYTES:  # else every stat() of it is an OSError (ENAMETOOLONG)
        raise PermissionError(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if path != base and base not in path.parents:
        raise PermissionError("path escapes its folder")
    return path


def dir_by_type(kind: Optional[str]) -> Optional[Path]:
    kind = kind or "input"
    return {"input": host.input_dir, "output": host.output_dir, "temp": host.temp_dir}.get(kind, lambda: None)()


def split_annotated(name: str):
    """'x.png [output]' -> ('x.png', 'output'), as ComfyUI annotates a file's folder in a name."""
    for tag in ("output", "input", "temp"):
        if name.endswith(f" [{tag}]"):
            return name[: -len(tag) - 3], tag
        if name.endswith(f"[{tag}]"):
            return name[: -len(tag) - 2], tag
    return name, None


# ---- uploads

@routes.post("/upload/image")
async def upload_image(request):
    return await _upload(request, mask=False)


@routes.post("/upload/mask")
async def upload_mask(request):
    return await _upload(request, mask=True)


async def _upload(request, mask: bool):
    s = server_of(request)
    try:
        post = await request.post()
    except web.HTTPRequestEntityTooLarge:
        return web.json_response({"error": f"upload larger than {s.max_upload} bytes"}, status=413)
    except ValueError:
        return web.Response(status=400, text="expected multipart form data")
    except HttpProcessingError as e:  # a part header over 8 KB (a 10,000-character name), control characters
        return web.Response(status=400, text=f"malformed multipart upload: {e.message[:300]}")
    image = post.get("image")
    if image is None or not hasattr(image, "file"):
        return web.Response(status=400, text="no image")
    kind = str(post.get("type") or "input")
    base = dir_by_type(kind)
    if base is None:
        return web.Response(status=400, text="invalid type")
    try:
        name = sanitize_filename(image.filename or "")
        subfolder = str(post.get("subfolder", "") or "")
        folder = safe_join(base, subfolder)
    except (ValueError, PermissionError) as e:
        return web.Response(status=400, text=f"invalid file name: {e}")
    data = image.file.read()
    if len(data) > s.max_upload:
        return web.json_response({"error": "file too large"}, status=413)
    overwrite = str(post.get("overwrite", "")).lower() in ("true", "1")
    try:
        if mask:
            data = merge_mask(post.get("original_ref"), data)
        else:
            check_image(BytesIO(data), f"uploaded image {name!r}", verify=True)
    except PermissionError as e:
        return web.Response(status=403, text=str(e))
    except PixelLimitError as e:
        return web.Response(status=400, text=str(e))
    except (ValueError, OSError) as e:
        return web.Response(status=400, text=f"bad {'mask' if mask else 'image'} upload: {e}")
    try:
        name = _store(folder, image_name(name, data), data, overwrite)
    except ValueError as e:
        return web.Response(status=400, text=str(e))
    except OSError as e:
        raise write_refused(e, f"{name!r} into subfolder {subfolder[:100]!r}") from None
    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


# Types /view serves inline, and the only ones an upload may be named as: raster images, which a browser never
# runs. An .html, .svg or .js file served inline from this origin could script the API (stored XSS).
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
_FORMAT_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tiff"}


def image_name(name: str, data: bytes) -> str:
    """An upload's name with an image extension: the format's own when it has none; ValueError when its
    extension is not an image type (x.html, x.svg)."""
    from PIL import Image

    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_TYPES:
        return name
    if ext:
        raise ValueError(f"{name[:100]!r} is not an image file name: uploads here must be named "
                         f"{', '.join(IMAGE_TYPES)}")
    with Image.open(BytesIO(data)) as im:
        fmt = im.format
    if fmt not in _FORMAT_EXT:
        raise ValueError(f"{name[:100]!r}: {fmt} images are not accepted here, only {', '.join(_FORMAT_EXT)}")
    return shorten_name(name, MAX_NAME_BYTES - len(_FORMAT_EXT[fmt])) + _FORMAT_EXT[fmt]


def _store(folder: Path, name: str, data: bytes, overwrite: bool) -> str:
    """Write an upload as folder/name, or as "stem (n).ext" when another file has that name (unless
    `overwrite`); the same bytes again reuse the file. Returns the name used."""
    folder.mkdir(parents=True, exist_ok=True)
    stem, ext = os.path.splitext(name)
    path = folder / name
    i = 1
    while path.exists() and not overwrite:
        if path.is_file() and hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
            return name  # the same file again: reuse it
        name = f"{stem} ({i}){ext}"
        path = folder / name
        i += 1
    atomic_write(path, data)
    return name


def check_image(file, what: str, verify: bool = False):
    """(width, height) of an image file from its header, refusing a non-image (ValueError) or one over
    --max-image-pixels (PixelLimitError) before anything is decoded; `verify` also checks the whole file."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            size = im.size
            check_image_size(*size, what=what)
            if verify:
                im.verify()
    except PixelLimitError:
        raise
    except Image.DecompressionBombError as e:
        raise PixelLimitError(f"{what} is more than this server's limit of {limits.LIMITS.max_image_pixels} "
                              f"pixels (--max-image-pixels): {e}") from None
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a file that is not an image
        raise ValueError(f"{what} is not an image ({type(e).__name__}: {e})") from None
    return size


def merge_mask(original_ref, mask_bytes: bytes) -> bytes:
    """The original image with the uploaded mask's alpha (ComfyUI's mask editor protocol)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    ref = json.loads(str(original_ref or "{}"))
    if not isinstance(ref, dict):
        raise ValueError("original_ref must be a JSON object with filename, subfolder and type")
    fname, tag = split_annotated(str(ref.get("filename", "")))
    base = dir_by_type(tag or ref.get("type") or "output")
    if base is None:
        raise ValueError("invalid type")
    path = safe_join(base, str(ref.get("subfolder", "") or ""), fname)
    check_image(path, f"mask's original image {fname!r}")
    check_image(BytesIO(mask_bytes), "uploaded mask")
    with Image.open(path) as orig:
        meta = PngInfo()
        for k, v in (getattr(orig, "text", None) or {}).items():
            meta.add_text(k, v)
        orig = orig.convert("RGBA")
        with Image.open(BytesIO(mask_bytes)) as m:
            orig.putalpha(m.convert("RGBA").getchannel("A").resize(orig.size))
        buf = BytesIO()
        orig.save(buf, format="PNG", compress_level=4, pnginfo=meta)
        return buf.getvalue()


# ---- views

@routes.get("/view")
async def view(request):
    q = request.rel_url.query
    if "filename" not in q:
        return web.Response(status=404)
    filename, tag = split_annotated(q["filename"])
    if not filename or filename.startswith(("/", "\\")) or ".." in filename:
        return web.Response(status=400)
    base = dir_by_type(tag or q.get("type", "output"))
    if base is None:
        return web.Response(status=400)
    try:
        folder = safe_join(base, q.get("subfolder", ""))
        path = safe_join(folder, os.path.basename(filename))
    except PermissionError:
        return web.Response(status=403)
    if not path.is_file():
        return web.Response(status=404)
    name = path.name
    headers = {"Content-Disposition": f'filename="{ascii_name(name)}"', **INERT_HEADERS}
    channel = q.get("channel", "rgba")
    if "preview" in q or channel in ("rgb", "a"):  # re-encoded: only images, only up to the pixel limit
        try:
            check_image(path, f"{name!r}")
        except (ValueError, OSError) as e:
            return web.Response(status=400, text=f"cannot preview: {e}")
        if "preview" in q:
            return _view_preview(path, q, headers)
        return _view_channel(path, channel, headers)
    ctype = IMAGE_TYPES.get(os.path.splitext(name)[1].lower())
    if ctype is None:  # anything else (an .html or .svg left by an older server) is only ever a download
        ctype = "application/octet-stream"
        headers["Content-Disposition"] = "attachment; " + headers["Content-Disposition"]
    return web.FileResponse(path, headers={**headers, "Content-Type": ctype})


def _view_preview(path: Path, q, headers):
    """The image re-encoded as webp or jpeg (`preview=webp;90`), as the frontend asks for thumbnails."""
    from PIL import Image

    info = q["preview"].split(";")
    fmt = info[0] if info[0] in ("webp", "jpeg") and "a" not in q.get("channel", "") else "webp"
    quality = min(100, max(1, int(info[-1]))) if info[-1].isdigit() else 90
    with Image.open(path) as img:
        if fmt == "jpeg" or q.get("channel") == "rgb":
            img = img.convert("RGB")
        buf = BytesIO()
        img.save(buf, format=fmt, quality=quality)
    return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}", headers=headers)


def _view_channel(path: Path, channel: str, headers):
    """Only the colour (`channel=rgb`) or only the alpha (`channel=a`) of an image, as PNG."""
    from PIL import Image

    with Image.open(path) as img:
        if channel == "rgb":
            out = img.convert("RGB")
        else:
            a = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size)
            out.putalpha(a)
        buf = BytesIO()
        out.save(buf, format="PNG")
    return web.Response(body=buf.getvalue(), content_type="image/png", headers=headers)


@routes.get("/internal/files/{directory_type}")
async def internal_files(request):
    base = dir_by_type(request.match_info["directory_type"])
    if base is None:
        return web.json_response("Invalid directory type", status=400)
    files = sorted((p for p in Path(base).glob("*") if p.is_file()), key=lambda p: p.stat().st_mtime,
                   reverse=True) if Path(base).is_dir() else []
    return web.json_response([p.name for p in files])
