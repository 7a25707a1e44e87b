"""Fonts for synthesis: found in the user's folders (else the system's), each with the exact set of characters it
maps, so a paragraph with a character the chosen font cannot draw is dropped whole (the report's rule) instead of
rendered as empty boxes; Pillow never falls back to another font, so the character map is the whole truth."""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import re
from dataclasses import dataclass

from PIL import ImageFont

from ....qwenimage_core.images import not_regular

log = logging.getLogger("qwenimage.synthesis")

FONT_EXTS = (".ttf", ".otf", ".ttc", ".otc")
MAX_FONT_BYTES = 256 << 20  # the largest CJK collections are ~100 MB
SYSTEM_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts", "/Library/Fonts",
               "/System/Library/Fonts", "C:/Windows/Fonts")
# Debian packages that give Chinese coverage, named in errors and the README.
CJK_PACKAGES = "fonts-noto-cjk or fonts-wqy-microhei"
LATIN = frozenset(map(ord, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-"))
COMMON_ZH = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"


class FontError(ValueError):
    """No usable font for a language; the message says where it looked and what to install."""


@dataclass(frozen=True)
class Font:
    path: str
    index: int                    # the face's index in a collection (.ttc), else 0
    family: str
    style: str                    # "Regular", "Bold", "Italic", ...
    cmap: frozenset               # code points the face maps to a glyph

    def missing(self, text: str) -> set[str]:
        """The characters of `text` this face cannot draw (white space is layout, never drawn)."""
        return {c for c in text if not c.isspace() and ord(c) not in self.cmap}

    def covers(self, text: str) -> bool:
        return not self.missing(text)

    @property
    def name(self) -> str:
        return f"{self.family} {self.style}".strip()

    @property
    def bold(self) -> bool:
        return bool(re.search(r"bold|black|heavy", self.style, re.I))

    @property
    def look(self) -> str:
        """A caption's word for the face: serif, sans-serif or monospace, with bold / italic."""
        fam = self.family.lower()
        serif = re.search(r"serif|song|ming|times", fam) and "sans" not in fam
        kind = "monospace" if "mono" in fam else "serif" if serif else "sans-serif"
        extra = [w for w, pat in (("bold", r"bold|black|heavy"), ("italic", r"italic|oblique"))
                 if re.search(pat, self.style, re.I)]
        return " ".join([*extra, kind])

    def pil(self, size: int) -> ImageFont.FreeTypeFont:
        return _pil_font(self.path, self.index, int(size))


@functools.lru_cache(maxsize=256)
def _pil_font(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    # Basic layout (FreeType with kerning): Latin and Chinese need no shaping, and measuring is ~5x faster than raqm
    return ImageFont.truetype(path, size, index=index, layout_engine=ImageFont.Layout.BASIC)


def font_files(dirs=(), files=()) -> list[str]:
    """Font files: `files` as given plus every font under `dirs` (the system folders when both are empty), sorted.
    A folder or file the user named that is not there is a FontError naming it (searching it found nothing, which
    read as "no font among 0"); a name that is not a regular file under MAX_FONT_BYTES (a FIFO blocks the reader)
    is left out with a warning."""
    for d in dirs:
        if not os.path.isdir(os.path.expanduser(d)):
            raise FontError(f"fonts.dirs: {d}: no such folder")
    for f in files:
        if not os.path.exists(os.path.expanduser(f)):
            raise FontError(f"fonts.files: {f}: no such file")
    found = [os.path.abspath(os.path.expanduser(f)) for f in files]
    for d in dirs or (() if files else SYSTEM_DIRS):
        d = os.path.expanduser(d)
        for root, subdirs, names in os.walk(d):
            subdirs.sort()
            found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(FONT_EXTS)]
    usable = []
    for path in sorted(set(found)):
        why = not_regular(path, MAX_FONT_BYTES)
        if why:
            log.warning("font %s: %s", path, why)
        else:
            usable.append(path)
    return usable


def load_fonts(dirs=(), files=(), exclude=()) -> list[Font]:
    """Every face of every font file (see font_files), with its character map. A file that cannot be read is
    skipped with a warning naming it; `exclude`: regular expressions on the family name ("Mono", "Emoji")."""
    try:
        import fontTools  # noqa: F401  (before the loop: a missing library is not a broken font file)
    except ImportError:
        raise ImportError("synthesis reads fonts' character maps with fontTools: "
                          "pip install 'qwenimage[data]'") from None
    fonts = []
    for path in font_files(dirs, files):
        try:
            faces = _read_faces(path, os.path.getmtime(path))
        except Exception as e:  # fontTools raises many types for broken files
            log.warning("font %s: not readable (%s: %s); skipped", path, type(e).__name__, e)
            continue
        fonts += [f for f in faces if not any(re.search(p, f.family, re.I) for p in exclude)]
    return fonts


@functools.lru_cache(maxsize=None)
def _read_faces(path: str, mtime: float) -> tuple[Font, ...]:
    """The faces of a font file; reading a CJK face's cmap takes ~0.2 s, so the result is kept on disk
    (~/.cache/qwenimage/fonts/, keyed by path, size and mtime) and read back in milliseconds."""
    cached = _cache_path(path, mtime)
    try:
        with open(cached, encoding="utf-8") as fh:
            rows = json.load(fh)
        return tuple(Font(path, r["index"], r["family"], r["style"], _from_ranges(r["cmap"])) for r in rows)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    faces = _parse_faces(path)
    rows = [{"index": f.index, "family": f.family, "style": f.style, "cmap": _to_ranges(f.cmap)} for f in faces]
    try:
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        tmp = f"{cached}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(rows, fh)
        os.replace(tmp, cached)
    except OSError:  # a read-only home: parse again next time
        pass
    return faces


def _cache_path(path: str, mtime: float) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha1(f"{path}|{os.path.getsize(path)}|{mtime}".encode()).hexdigest()[:20]
    return os.path.join(base, "qwenimage", "fonts", f"{key}.json")


def _to_ranges(cmap) -> list[list[int]]:
    out = []
    for c in sorted(cmap):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def _from_ranges(ranges) -> frozenset:
    return frozenset(itertools.chain.from_iterable(range(a, b + 1) for a, b in ranges))


def _parse_faces(path: str) -> tuple[Font, ...]:
    from fontTools.ttLib import TTCollection, TTFont

    if path.lower().endswith((".ttc", ".otc")):
        faces = TTCollection(path, lazy=True).fonts
    else:
        faces = [TTFont(path, lazy=True)]
    shared, out = {}, []
    for index, tt in enumerate(faces):
        # The faces of a collection share one cmap table: read it once (a CJK cmap takes ~0.25 s).
        offset = tt.reader.tables["cmap"].offset if "cmap" in tt.reader.tables else None
        if offset not in shared:
            shared[offset] = frozenset(tt.getBestCmap() or ()) if offset is not None else frozenset()
        name = tt["name"]
        family = name.getBestFamilyName() or os.path.basename(path)
        style = name.getBestSubFamilyName() or ""
        out.append(Font(path, index, str(family), str(style), shared[offset]))
    return tuple(out)


def for_language(fonts: list[Font], lang: str) -> list[Font]:
    """The faces fit for a language: English needs Latin letters, digits and punctuation; Chinese most of the
    common characters, and in a collection of regional CJK faces only the simplified-Chinese ones (the JP/KR/TC/HK
    faces draw the same code points in other regions' shapes, and would crowd out the other English faces)."""
    if lang == "en":
        fit = [f for f in fonts if LATIN <= f.cmap]
    elif lang == "zh":
        fit = [f for f in fonts if sum(ord(c) in f.cmap for c in COMMON_ZH) >= len(COMMON_ZH) - 2]
    else:
        raise ValueError(f"unknown language {lang!r} (known: en, zh)")
    sc = any(re.search(r"\b(SC|CN|GB)\b", f.family) for f in fit)
    return [f for f in fit if not (sc and re.search(r"\b(JP|KR|TC|HK)\b", f.family))]


def require(fonts: list[Font], lang: str, where: str = "", searched=()) -> list[Font]:
    """for_language, or a FontError naming the folders and files searched and the package to install."""
    usable = for_language(fonts, lang)
    if not usable:
        hint = f"; install {CJK_PACKAGES} (Debian) or point fonts.dirs at a folder with one" if lang == "zh" else ""
        places = f" in {', '.join(map(str, searched))}" if searched else ""
        raise FontError(f"{where or 'fonts'}: no font among {len(fonts)} found{places} can draw {lang!r} text{hint}")
    return usable
