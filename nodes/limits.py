"""The server's resource limits: pixels per image, pixels per latent batch, and the memory the output cache keeps.

One set per process (the standalone server installs its own at start; the defaults hold otherwise). They are
checked where the size is first known: an upload's header, an image file's header before it is decoded, a
graph's width/height/batch widgets at validation, and a node's output at run time. Each refusal names the flag
that raises the limit."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    max_image_pixels: int = 32 * 2 ** 20    # per image: 8192 x 4096 (a float IMAGE of that is 384 MB)
    max_latent_pixels: int = 16 * 2 ** 20   # width x height x batch of a latent: e.g. 4 x 2048 x 2048
    max_cache_mb: float = 2048              # tensors the output cache may keep between runs


LIMITS = Limits()


class PixelLimitError(ValueError):
    """A size beyond the server's limits."""


def install(limits: Limits) -> Limits:
    """Make `limits` the process's limits (the server calls this once at start); returns the previous ones."""
    global LIMITS
    previous, LIMITS = LIMITS, limits
    return previous


def check_image_size(width: int, height: int, what: str = "image", frames: int = 1) -> None:
    """Refuse an image (a file's frames together) of more than --max-image-pixels, before it is made."""
    n = width * height * max(1, frames)
    if n > LIMITS.max_image_pixels:
        size = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
        raise PixelLimitError(f"{what} is {size} = {n} pixels, more than this server's limit of "
                              f"{LIMITS.max_image_pixels} (--max-image-pixels)")


def check_latent_size(width: int, height: int, batch: int = 1, what: str = "latent") -> None:
    """Refuse a latent batch of more than --max-latent-pixels (image pixels: width x height x batch)."""
    n = width * height * max(1, batch)
    if n > LIMITS.max_latent_pixels:
        raise PixelLimitError(f"{what} of {batch} x {width}x{height} = {n} pixels is more than this server's "
                              f"limit of {LIMITS.max_latent_pixels} (--max-latent-pixels)")
