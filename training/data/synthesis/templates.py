"""Template rendering (the report's third kind): slides and UI mockups whose placeholder text is replaced while the
layout is kept. A template is a JSON file (format below; shipped ones in templates/); each text slot's box never
moves: new text is wrapped and shrunk within the slot's size limits, or the sample is refused.

Template format (JSON):
    {"name": "slide_title", "category": "slide",             # category: the caption's and the balancer's word
     "description": {"en": "a presentation slide", "zh": "一张演示幻灯片"},
     "size": [1024, 768],                                      # canvas, pixels
     "background": "#f4f1ea",                                  # a colour, or [top, bottom] for a vertical gradient
     "shapes": [{"box": [0, 0, 1024, 200], "fill": "#1f3a68", "radius": 0, "outline": "#000000", "width": 0}],
     "slots": [{"name": "title", "label": {"en": "title", "zh": "标题"}, "box": [64, 40, 960, 180],
                "fill": "title",               # what replaces the placeholder: title | label | sentence | paragraph
                                               #   | number | date
                "placeholder": "Click to add title",
                "size": 64, "min_size": 36,    # the slot's font size and the smallest it may shrink to
                "max_lines": 2, "color": "#ffffff", "align": "left", "valign": "middle", "bold": true,
                "spacing": 1.2}]}
Fields after "box" in a slot are optional (defaults: fill "sentence", size 32, min_size 60% of size, max_lines 0 =
as many as fit, color "#000000", align "left", valign "top", bold false, spacing 1.2)."""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image, ImageColor, ImageDraw

from . import colors, layout
from .corpus import join
from .rendered import Rendered

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
FILLS = ("title", "label", "sentence", "paragraph", "number", "date")


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file and the field."""


class TemplateRefused(ValueError):
    """Replacement text that does not fit its slot within the slot's limits; names the slot."""


@dataclass
class Slot:
    name: str
    box: tuple
    label: dict = field(default_factory=dict)
    fill: str = "sentence"
    placeholder: str = ""
    size: int = 32
    min_size: int = 0
    max_lines: int = 0
    color: str = "#000000"
    align: str = "left"
    valign: str = "top"
    bold: bool = False
    spacing: float = 1.2


@dataclass
class Template:
    name: str
    size: tuple
    slots: list
    category: str = "slide"
    description: dict = field(default_factory=dict)
    background: object = "#ffffff"
    shapes: list = field(default_factory=list)
    path: str = ""


def shipped() -> list[str]:
    return sorted(os.path.join(HERE, n) for n in os.listdir(HERE) if n.endswith(".json"))


def load(path: str) -> Template:
    """Read and check one template file; every problem is a TemplateError naming the file and the field."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        raise TemplateError(f"{path}: template file not found") from None
    except (OSError, ValueError) as e:
        raise TemplateError(f"{path}: not a readable JSON template ({e})") from None
    where = lambda f: f"{path}: {f}"
    if not isinstance(raw, dict):
        raise TemplateError(where("expected a JSON object"))
    for key in ("name", "size", "slots"):
        if key not in raw:
            raise TemplateError(where(f"{key}: missing"))
    known = {"name", "size", "slots", "category", "description", "background", "shapes"}
    if set(raw) - known:
        raise TemplateError(where(f"unknown field(s) {', '.join(sorted(set(raw) - known))}"))
    size = raw["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 64 for v in size)):
        raise TemplateError(where(f"size: expected [width, height] of at least 64 px, got {size!r}"))
    _colour(raw.get("background", "#ffffff"), where("background"), many=True)
    for i, sh in enumerate(raw.get("shapes", [])):
        _box(sh.get("box"), size, where(f"shapes[{i}].box"))
        for key in ("fill", "outline"):
            if sh.get(key):
                _colour(sh[key], where(f"shapes[{i}].{key}"))
    slots = []
    if not isinstance(raw["slots"], list) or not raw["slots"]:
        raise TemplateError(where("slots: expected a non-empty list"))
    names = Counter()
    slot_fields = set(Slot.__dataclass_fields__)
    for i, s in enumerate(raw["slots"]):
        w = lambda f: where(f"slots[{i}].{f}")
        if not isinstance(s, dict) or "name" not in s or "box" not in s:
            raise TemplateError(w("name/box: every slot needs a name and a box"))
        if set(s) - slot_fields:
            raise TemplateError(w(f"unknown field(s) {', '.join(sorted(set(s) - slot_fields))}"))
        for key, types in (("size", int), ("min_size", int), ("max_lines", int), ("spacing", (int, float)),
                           ("bold", bool), ("name", str), ("placeholder", str), ("label", dict)):
            if key in s and (not isinstance(s[key], types) or isinstance(s[key], bool) and types is not bool):
                raise TemplateError(w(f"{key}: {s[key]!r} has the wrong type"))
        slot = Slot(**{**s, "box": tuple(_box(s["box"], size, w("box")))})
        names[slot.name] += 1
        if slot.fill not in FILLS:
            raise TemplateError(w(f"fill: {slot.fill!r} is not one of {', '.join(FILLS)}"))
        if slot.align not in ("left", "center", "right") or slot.valign not in ("top", "middle", "bottom"):
            raise TemplateError(w(f"align/valign: {slot.align!r}/{slot.valign!r}"))
        slot.min_size = slot.min_size or max(8, int(slot.size * 0.6))
        if not 4 <= slot.min_size <= slot.size:
            raise TemplateError(w(f"min_size: {slot.min_size} must be between 4 and size {slot.size}"))
        _colour(slot.color, w("color"))
        slots.append(slot)
    dup = [n for n, k in names.items() if k > 1]
    if dup:
        raise TemplateError(where(f"slots: duplicate name(s) {', '.join(dup)}"))
    return Template(raw["name"], tuple(size), slots, raw.get("category", "slide"), raw.get("description", {}),
                    raw.get("background", "#ffffff"), raw.get("shapes", []), path)


def _box(box, size, where):
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)):
        raise TemplateError(f"{where}: expected [x0, y0, x1, y1] in whole pixels, got {box!r}")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]):
        raise TemplateError(f"{where}: {box} is not a box inside the {size[0]}x{size[1]} canvas")
    return box


def _colour(value, where, many=False):
    values = value if many and isinstance(value, list) else [value]
    try:
        return [ImageColor.getrgb(v) for v in values]
    except (ValueError, AttributeError, TypeError):
        raise TemplateError(f"{where}: {value!r} is not a colour") from None


def fit_slot(slot: Slot, text: str, font) -> layout.Block:
    """The slot's text laid out in its unchanged box: wrapped, shrunk down to min_size at most, or refused."""
    try:
        return layout.fit(text, font.pil, slot.box, max_size=slot.size, min_size=slot.min_size, align=slot.align,
                          valign=slot.valign, spacing=slot.spacing, max_lines=slot.max_lines)
    except layout.FitError:
        raise TemplateRefused(f"slot {slot.name!r}: {text[:40]!r} does not fit its {slot.box} box at the smallest "
                              f"size allowed ({slot.min_size})") from None


def fill(template: Template, texts: dict, font, bold_font=None) -> tuple[Image.Image, list[layout.Block]]:
    """Render `template` with `texts` (slot name -> text; a slot not given keeps its placeholder). Raises
    TemplateRefused when a text does not fit; the template's boxes and shapes are never moved."""
    blocks, faces = [], []
    for slot in template.slots:
        face = bold_font if slot.bold and bold_font is not None else font
        blocks.append(fit_slot(slot, texts.get(slot.name, slot.placeholder), face))
        faces.append(face)
    image = _canvas(template)
    d = ImageDraw.Draw(image)
    for slot, block, face in zip(template.slots, blocks, faces):
        layout.draw(d, block, face.pil(block.size), ImageColor.getrgb(slot.color))
    return image, blocks


def _canvas(t: Template) -> Image.Image:
    w, h = t.size
    bg = [ImageColor.getrgb(c) for c in (t.background if isinstance(t.background, list) else [t.background])]
    image = Image.new("RGB", (w, h), bg[0])
    if len(bg) > 1:
        grad = Image.linear_gradient("L").resize((w, h))
        image = Image.composite(Image.new("RGB", (w, h), bg[1]), image, grad)
    d = ImageDraw.Draw(image)
    for sh in t.shapes:
        d.rounded_rectangle(sh["box"], radius=sh.get("radius", 0), fill=sh.get("fill"), outline=sh.get("outline"),
                            width=sh.get("width", 1 if sh.get("outline") else 0))
    return image


def replacement(rng: random.Random, slot: Slot, corpus, lang: str) -> list[str]:
    """Corpus text for a slot by its fill kind, as sentences (a paragraph may lose its last ones to fit)."""
    if slot.fill == "title":
        return [corpus.phrase(rng, lang, (2, 6))]
    if slot.fill == "label":
        return [corpus.phrase(rng, lang, (1, 3))]
    if slot.fill == "number":
        return [rng.choice(("$", "¥", "€", "")) + f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}"]
    if slot.fill == "date":
        y, m, d = rng.randint(2020, 2030), rng.randint(1, 12), rng.randint(1, 28)
        return [f"{y}年{m}月{d}日" if lang == "zh" else f"{y}-{m:02d}-{d:02d}"]
    return corpus.paragraph(rng, lang, (1, 1) if slot.fill == "sentence" else (2, 3))


def distinct_replacements(rng: random.Random, t: Template, corpus, lang: str, tries: int = 10) -> dict:
    """Replacement text for every slot, each slot's text unlike the others' (a slide repeated a bullet): a repeat
    is drawn again, up to `tries` times (a tiny corpus may leave one, which render refuses)."""
    parts, seen = {}, set()
    for slot in t.slots:
        for _ in range(tries):
            p = replacement(rng, slot, corpus, lang)
            if join(p, lang) not in seen:
                break
        parts[slot.name] = p
        seen.add(join(p, lang))
    return parts


def render(rng: random.Random, corpus, fonts: list, lang: str, templates: list[Template], stats: Counter,
           attempts: int = 20) -> Rendered:
    """A template with its placeholders replaced by corpus text in `lang`, one font family for all slots (the
    bold slots in its bold face when it has one)."""
    for _ in range(attempts):
        t = rng.choice(templates)
        parts = distinct_replacements(rng, t, corpus, lang)
        font = rng.choice(fonts)
        if font.missing("".join(join(p, lang) for p in parts.values())):
            stats["dropped: glyph missing"] += 1
            continue
        bold = next((f for f in fonts if f.family == font.family and f.bold), font)
        try:
            texts = {}
            for slot in t.slots:  # paragraphs lose sentences from the end until they fit; others are refused
                p = parts[slot.name]
                while True:
                    try:
                        fit_slot(slot, join(p, lang), bold if slot.bold else font)
                        break
                    except TemplateRefused:
                        if len(p) == 1:
                            raise
                        p = p[:-1]
                texts[slot.name] = join(p, lang)
            if len(set(texts.values())) < len(texts):  # a paragraph cut to fit can equal another slot's text
                stats["refused: a text repeats"] += 1
                continue
            image, blocks = fill(t, texts, font, bold)
        except TemplateRefused:
            stats["refused: text does not fit a slot"] += 1
            continue
        return Rendered(image, "template", lang, [texts[s.name] for s in t.slots], blocks,
                        {"template": t.name, "category": t.category, "description": t.description,
                         "background": colors.nearest(_colour(t.background, "", many=True)[0]),
                         "slots": [{"name": s.name, "label": s.label or {"en": s.name, "zh": s.name},
                                    "color": colors.nearest(ImageColor.getrgb(s.color)), "bold": s.bold and bold.bold,
                                    "box": list(s.box), "text": texts[s.name]} for s in t.slots],
                         "font": font.name, "look": font.look})
    raise TemplateRefused(f"{attempts} {lang} samples in a row were refused or dropped: the templates' slots are too "
                          "small for this corpus (raise their size limits) or the fonts cannot draw it")
