"""Stand-ins for the ComfyUI built-in nodes our workflows use, for the standalone server only.

Inside ComfyUI the real `LoadImage`, `SaveImage`, ... exist and these are never registered; `qwenimage serve`
registers them next to the node pack so the same workflow files run unchanged. Each class copies ComfyUI's
contract (class name, INPUT_TYPES, RETURN_TYPES, FUNCTION, CATEGORY, OUTPUT_NODE) and behaviour:

- `LoadImage`: IMAGE [B, H, W, 3] float in 0..1 and MASK [B, H, W] = 1 - alpha; with no alpha the mask is
  zeros of shape [1, 64, 64], exactly as ComfyUI returns it. IS_CHANGED is the file's sha256, VALIDATE_INPUTS
  checks the file exists. Names may carry an annotation ("name.png [output]") and a subfolder ("sub/name.png").
- `LoadImageMask`: one channel (alpha, red, green, blue) as MASK; alpha is inverted.
- `SaveImage`: `<prefix>_00001_.png` in the output folder (the counter continues after the highest existing one),
  with the API prompt and each extra_pnginfo entry (the frontend's `workflow`) as JSON tEXt chunks; written
  atomically. `PreviewImage`: the same into the temp folder with a random suffix, type "temp".
- `ImageScale`: resize (nearest-exact, bilinear, area, bicubic, lanczos), optional centre crop to the aspect.

Directories come from the host layer (`host.input_dir()`, `output_dir()`, `temp_dir()`); every file path is
confined to its folder.
"""
from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from . import host, limits

MAX_RESOLUTION = 16384
_ANNOTATIONS = {"[output]": host.output_dir, "[input]": host.input_dir, "[temp]": host.temp_dir}


# ------------------------------------------------------------------------------------------------ paths

def split_annotation(name: str):
    """'pic.png [output]' -> ('pic.png', output folder); no annotation -> the input folder."""
    name = str(name)
    for tag, folder in _ANNOTATIONS.items():
        if name.endswith(" " + tag):
            return name[: -len(tag) - 1], folder()
        if name.endswith(tag):  # ComfyUI also accepts it without the space
            return name[: -len(tag)], folder()
    return name, host.input_dir()


def confined(base, name: str) -> Path:
    """`base/name`, refusing anything that would leave `base` (absolute names, '..', symlinked escapes)."""
    base = Path(base).resolve()
    if not name or "\x00" in name or os.path.isabs(name) or Path(name).drive:
        raise ValueError(f"invalid file name {name!r}")
    path = (base / name).resolve()
    if path != base and base not in path.parents:
        raise ValueError(f"file name {name!r} leaves its folder")
    return path


def annotated_filepath(name: str) -> Path:
    """The full path of an (optionally annotated) image name, as ComfyUI's `folder_paths.get_annotated_filepath`."""
    name, base = split_annotation(name)
    return confined(base, name)


def annotated_exists(name: str) -> bool:
    try:
        return annotated_filepath(name).is_file()
    except ValueError:
        return False


def _file_hash(name: str) -> str:
    m = hashlib.sha256()
    with open(annotated_filepath(name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            m.update(chunk)
    return m.digest().hex()


def _image_files(folder: Path) -> list[str]:
    """Top-level files of the folder whose type is an image (ComfyUI's filter_files_content_types)."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        mime = mimetypes.guess_type(n, strict=False)[0] or ""
        if mime.split("/")[0] == "image" or n.lower().endswith(".webp"):
            out.append(n)
    return sorted(out)


def _check_pixels(img, name: str) -> None:
    """Refuse a file whose frames together hold more than --max-image-pixels, from its header, before decoding."""
    frames = getattr(img, "n_frames", 1) or 1
    w, h = img.size
    limits.check_image_size(w, h, what=f"image {name!r}", frames=frames)


def _open(path):
    try:
        return Image.open(path)
    except OSError:  # ComfyUI retries once with truncated images allowed
        from PIL import ImageFile

        prev = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return Image.open(path)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = prev


# ------------------------------------------------------------------------------------------------ loaders

class _InputImage:
    """A node reading a file of the input folder: re-run when its bytes change; refused if it is not there."""

    @classmethod
    def IS_CHANGED(cls, image, **_):
        return _file_hash(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        if not annotated_exists(image):
            return "Invalid image file: {}".format(image)
        try:  # the header only: a huge image is refused before the run, naming the limit
            _check_pixels(_open(annotated_filepath(image)), image)
        except limits.PixelLimitError as e:
            return str(e)
        except Exception:  # noqa: BLE001 - an unreadable file fails when loaded, with PIL's reason
            pass
        return True


class LoadImage(_InputImage):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_image_files(host.input_dir()), {"image_upload": True})}}

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image):
        img = _open(annotated_filepath(image))
        _check_pixels(img, image)
        images, masks = [], []
        w = h = None
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if w is None:
                w, h = rgb.size
            if rgb.size != (w, h):
                continue
            images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None])
            if "A" in frame.getbands():
                a = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(a)
            elif frame.mode == "P" and "transparency" in frame.info:
                a = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                mask = 1.0 - torch.from_numpy(a)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            masks.append(mask[None])
        if len(images) > 1 and img.format not in ("MPO",):
            return (torch.cat(images, 0), torch.cat(masks, 0))
        return (images[0], masks[0])



class LoadImageMask(_InputImage):
    _color_channels = ["alpha", "red", "green", "blue"]

    @classmethod
    def INPUT_TYPES(cls):
        folder = host.input_dir()
        try:
            files = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
        except FileNotFoundError:
            files = []
        return {"required": {"image": (files, {"image_upload": True}), "channel": (cls._color_channels,)}}

    CATEGORY = "mask"
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"

    def load_image(self, image, channel):
        i = _open(annotated_filepath(image))
        _check_pixels(i, image)
        i = ImageOps.exif_transpose(i)
        if i.getbands() != ("R", "G", "B", "A"):
            if i.mode == "I":
                i = i.point(lambda v: v * (1 / 255))
            i = i.convert("RGBA")
        c = channel[0].upper()
        if c in i.getbands():
            mask = torch.from_numpy(np.array(i.getchannel(c)).astype(np.float32) / 255.0)
            if c == "A":
                mask = 1.0 - mask
        else:
            mask = torch.zeros((64, 64), dtype=torch.float32)
        return (mask[None],)



# ------------------------------------------------------------------------------------------------ savers

def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for k, v in (("%width%", width), ("%height%", height), ("%year%", now.tm_year),
                 ("%month%", f"{now.tm_mon:02d}"), ("%day%", f"{now.tm_mday:02d}"),
                 ("%hour%", f"{now.tm_hour:02d}"), ("%minute%", f"{now.tm_min:02d}"),
                 ("%second%", f"{now.tm_sec:02d}")):
        prefix = prefix.replace(k, str(v))
    return prefix


def save_image_path(filename_prefix: str, output_dir, width: int = 0, height: int = 0):
    """ComfyUI's folder_paths.get_save_image_path: (folder, filename, counter, subfolder, prefix); the counter is
    one more than the highest `<filename>_NNNNN_` already in the folder. A prefix leaving the folder is an error."""
    if "%" in filename_prefix:
        filename_prefix = _compute_vars(filename_prefix, width, height)
    norm = os.path.normpath(filename_prefix.replace("\\", "/"))
    subfolder, filename = os.path.dirname(norm), os.path.basename(norm)
    base = Path(output_dir).resolve()
    try:
        folder = confined(base, subfolder) if subfolder else base
    except ValueError:
        raise ValueError(f"Saving image outside the output folder is not allowed (prefix {filename_prefix!r})")
    if not filename or filename in (".", ".."):
        raise ValueError(f"invalid filename_prefix {filename_prefix!r}")
    folder.mkdir(parents=True, exist_ok=True)
    counter = 0
    start = filename + "_"
    for f in os.listdir(folder):
        if os.path.normcase(f[: len(start)]) == os.path.normcase(start):
            try:
                counter = max(counter, int(f[len(start):].split("_")[0]))
            except ValueError:
                pass
    return str(folder), filename, counter + 1, subfolder.replace(os.sep, "/"), filename_prefix


def _write_png_new(img: Image.Image, folder: str, name_for, counter: int, metadata, compress_level: int):
    """Write atomically under the first free `name_for(counter)`: a temporary file linked into place, so neither a
    half-written PNG nor an overwrite of an existing file can happen. Returns (file name, next counter)."""
    from ..qwenimage_core.images import create_temp  # 0666 less the umask, as ComfyUI's saves (mkstemp: 0600)

    fd, tmp = create_temp(folder, ".png")
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format="PNG", pnginfo=metadata, compress_level=compress_level)
        while True:
            name = name_for(counter)
            try:
                os.link(tmp, os.path.join(folder, name))
                break
            except FileExistsError:
                counter += 1
            except OSError:  # no hard links on this file system: the rename is still atomic
                if os.path.exists(os.path.join(folder, name)):
                    counter += 1
                    continue
                os.replace(tmp, os.path.join(folder, name))
                break
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return name, counter + 1


class SaveImage:
    def __init__(self):
        self.output_dir = str(host.output_dir())
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": (
                    "The prefix for the file to save. This may include formatting information such as "
                    "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.")}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        filename_prefix += self.prefix_append
        folder, filename, counter, subfolder, _ = save_image_path(
            filename_prefix, self.output_dir, images[0].shape[1], images[0].shape[0])
        results = []
        for batch_number, image in enumerate(images):
            a = 255.0 * image.detach().float().cpu().numpy()
            img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for k in extra_pnginfo:
                    metadata.add_text(k, json.dumps(extra_pnginfo[k]))
            stem = filename.replace("%batch_num%", str(batch_number))
            file, counter = _write_png_new(img, folder, lambda c: f"{stem}_{c:05}_.png", counter, metadata,
                                           self.compress_level)
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    def __init__(self):
        self.output_dir = str(host.temp_dir())
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    DESCRIPTION = "Saves the input images to your ComfyUI temp directory."


# ------------------------------------------------------------------------------------------------ resize

def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, height, width], first centre-cropping to the new aspect when crop == "center"."""
    if crop == "center":
        old_w, old_h = samples.shape[-1], samples.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    if method == "lanczos":
        out = []
        for im in samples.movedim(1, -1):
            arr = np.clip(255.0 * im.float().cpu().numpy(), 0, 255).round().astype(np.uint8)
            pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
            pil = pil.resize((width, height), resample=Image.LANCZOS)
            t = torch.from_numpy(np.array(pil).astype(np.float32) / 255.0)
            out.append(t[..., None] if t.ndim == 2 else t)
        return torch.stack(out).movedim(-1, 1).to(samples.dtype)
    return F.interpolate(samples, size=(height, width), mode=method)


class ImageScale:
    upscale_methods = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    crop_methods = ["disabled", "center"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE",),
            "upscale_method": (cls.upscale_methods,),
            "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            "crop": (cls.crop_methods,),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    def upscale(self, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        samples = image.movedim(-1, 1)
        if width == 0:
            width = max(1, round(samples.shape[3] * height / samples.shape[2]))
        elif height == 0:
            height = max(1, round(samples.shape[2] * width / samples.shape[3]))
        limits.check_image_size(width, height, what="scaled image")
        return (common_upscale(samples, width, height, upscale_method, crop).movedim(1, -1),)


BUILTIN_NODE_CLASS_MAPPINGS = {
    "LoadImage": LoadImage,
    "LoadImageMask": LoadImageMask,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "ImageScale": ImageScale,
}
BUILTIN_NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadImage": "Load Image",
    "LoadImageMask": "Load Image (as Mask)",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
    "ImageScale": "Upscale Image",
}
