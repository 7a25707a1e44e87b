"""Text layout in a box: line breaking that is right for English (between words; a word wider than the line is
split) and for Chinese (between any two characters, but never a closing mark at a line's start nor an opening mark
at its end: the kinsoku rule), columns, alignment, and fitting by shrinking the font within limits.

Every line's box is computed from the glyphs' ink, so a caller can check that no text leaves its box and no two
lines overlap."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

# Marks that must not begin a line (they stick to what precedes them) and marks that must not end one.
NO_START = set("，。、；：？！）》」』】〕〉”’,.;:?!)]}%…—·～")
NO_END = set("（《「『【〔〈“‘([{")
_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")


@dataclass
class Line:
    text: str
    box: tuple[int, int, int, int]      # the ink's box on the canvas (x0, y0, x1, y1)
    origin: tuple[float, float]         # where to draw it (left, ascender: Pillow's anchor "la")


@dataclass
class Block:
    lines: list[Line]
    size: int                           # the font size used
    box: tuple[int, int, int, int]      # the box the text was fitted into (unchanged)
    align: str = "left"
    columns: int = 1
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


class FitError(ValueError):
    """The text does not fit its box even at the smallest size allowed."""


def units(text: str) -> list[str]:
    """Break opportunities: a CJK character is a unit, a Latin word with its following spaces is one; closing
    marks join the unit before them and opening marks the unit after."""
    raw = re.findall(r"[\u2e80-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]|[^\s\u2e80-\u9fff\uf900-\ufaff"
                     r"\u3000-\u303f\uff00-\uffef]+\s*|\s+", text)
    out: list[str] = []
    for u in raw:
        if out and (u[0] in NO_START or out[-1].rstrip()[-1:] in NO_END and not out[-1].endswith(" ")):
            out[-1] += u
        elif u.isspace() and out:
            out[-1] += u
        else:
            out.append(u)
    return out


def break_lines(text: str, font, width: float) -> list[str]:
    """Greedy line breaking of `text` (explicit newlines kept) so that each line's advance fits `width` pixels.
    A line's width is the sum of its units' (each measured once: no kerning across a break opportunity, which
    ends in a space or sits between CJK characters); place() then checks every line's real ink."""
    measure = functools.lru_cache(maxsize=None)(font.getlength)
    lines: list[str] = []
    for para in text.split("\n"):
        cur, cur_w = "", 0.0
        for u in units(para):
            if cur and cur_w + measure(u.rstrip()) > width:
                lines.append(cur.rstrip())
                cur, cur_w = "", 0.0
                u = u.lstrip()
            if not cur and measure(u.rstrip()) > width:   # wider than a whole line: cut between characters
                for ch in u:
                    if cur and measure(cur + ch) > width:
                        lines.append(cur)
                        cur = ""
                    cur += ch
                cur_w = measure(cur)
                continue
            cur += u
            cur_w += measure(u)
        lines.append(cur.rstrip())
    return [ln for ln in lines if ln] or [""]


def ink_width(font, s: str) -> float:
    if not s:
        return 0.0
    x0, _, x1, _ = font.getbbox(s, anchor="ls")
    return max(x1, font.getlength(s)) - min(0, x0)


def line_height(font, spacing: float) -> int:
    ascent, descent = font.getmetrics()
    return int(round((ascent + descent) * spacing))


def place(text: str, font, box, *, align: str = "left", valign: str = "top", spacing: float = 1.25,
          columns: int = 1, gutter: float = 0.06, max_lines: int = 0) -> Block | None:
    """Lay `text` out in `box` at this font's size, or None when it needs more room (or more than max_lines)."""
    x0, y0, x1, y1 = box
    gap = int((x1 - x0) * gutter) if columns > 1 else 0
    col_w = ((x1 - x0) - gap * (columns - 1)) / columns
    lines = break_lines(text, font, col_w)
    step = line_height(font, spacing)
    ascent, descent = font.getmetrics()
    per_col = max(0, ((y1 - y0) - (ascent + descent)) // step + 1) if (y1 - y0) >= ascent + descent else 0
    if per_col == 0 or len(lines) > per_col * columns or (max_lines and len(lines) > max_lines):
        return None
    rows = min(len(lines), per_col) if columns == 1 else -(-len(lines) // columns)
    used_h = (rows - 1) * step + ascent + descent
    top = y0 + {"top": 0, "middle": ((y1 - y0) - used_h) // 2, "bottom": (y1 - y0) - used_h}[valign]
    placed = []
    for i, s in enumerate(lines):
        col, row = divmod(i, rows)
        cx0 = x0 + col * (col_w + gap)
        w = ink_width(font, s)
        lx = cx0 + {"left": 0, "center": (col_w - w) / 2, "right": col_w - w}[align]
        bx0, by0, bx1, by1 = font.getbbox(s, anchor="la") if s else (0, 0, 0, 0)
        ox = lx - min(0, bx0)            # a glyph hanging left of its origin (italic j) stays inside
        oy = top + row * step
        ink = (int(ox + bx0), int(oy + by0), int(-(-(ox + bx1) // 1)), int(-(-(oy + by1) // 1)))
        # ink past its own line slot (a tall accent) or out of the box would overlap: call it not fitting
        if ink[1] < oy or ink[3] > oy + ascent + descent or ink[0] < x0 or ink[2] > x1 or ink[3] > y1:
            return None
        placed.append(Line(s, ink, (ox, oy)))
    return Block(placed, getattr(font, "size", 0), tuple(box), align, columns)


def fit(text: str, font_at, box, *, max_size: int, min_size: int, **kw) -> Block:
    """The largest size in [min_size, max_size] at which `text` fits `box` (font_at(size) -> a Pillow font); a
    FitError when even min_size does not fit. Sizes are searched by bisection (fitting is monotone in size)."""
    lo, hi, best = min_size, max_size, None
    while lo <= hi:
        mid = (lo + hi) // 2
        block = place(text, font_at(mid), box, **kw)
        if block is not None:
            best, lo = block, mid + 1
        else:
            hi = mid - 1
    if best is None:
        w, h = box[2] - box[0], box[3] - box[1]
        raise FitError(f"{len(text)} characters do not fit a {w}x{h} box at size {min_size}")
    return best


def draw(canvas_draw, block: Block, font, fill) -> None:
    """Draw a placed block with the font it was fitted at."""
    for line in block.lines:
        if line.text:
            canvas_draw.text(line.origin, line.text, font=font, fill=fill, anchor="la")


def is_cjk(ch: str) -> bool:
    return bool(_CJK.match(ch))
