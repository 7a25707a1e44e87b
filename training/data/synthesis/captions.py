"""Captions for synthetic text images, in English and Chinese, after the report's templates (e.g. 'On a
<background_color> background, displaying <word_color> text "<word>".'): every caption quotes the drawn text
verbatim and says the medium, the colours and the type's style; tags give the balancer language and category."""
from __future__ import annotations

import random
import re

from . import colors
from .rendered import Rendered

LOOK_ZH = {"serif": "衬线体", "sans-serif": "无衬线体", "monospace": "等宽字体", "bold": "粗体", "italic": "斜体"}

PURE = {
    "en": ('On a {bg} background, displaying {color} text "{text}".',
           'The background is {bg}, and the {color} {look} text reads "{text}".',
           'A plain {bg} background with {color} {look} text, {align}-aligned, that says "{text}".'),
    "zh": ("在{bg}背景上，显示着{color}的文字“{text}”。",
           "背景是{bg}，{color}的{look}文字写着“{text}”。",
           "纯{bg}背景上，{align}对齐的{color}{look}文字写着“{text}”。"),
}
COMPOSITIONAL = {
    "en": ('{medium} with {color} text that reads "{text}", seen at an angle in {scene}, casting a soft shadow.',
           'A photo of {medium} in {scene}; written on it in {color} {look} letters: "{text}".'),
    "zh": ("{scene}中有{medium}，上面用{color}写着“{text}”，带有透视角度和柔和的阴影。",
           "一张照片：{scene}里的{medium}上写着{color}{look}文字“{text}”。"),
}
ALIGN_ZH = {"left": "左", "center": "居中", "right": "右"}


def _look(look: str, lang: str) -> str:
    return "".join(LOOK_ZH[w] for w in look.split()) if lang == "zh" else look


def _colour(name: str, lang: str) -> str:
    return colors.zh(name) if lang == "zh" else name


def caption(r: Rendered, lang: str, rng: random.Random) -> str:
    """A caption of `r` in `lang` ("en" or "zh"), the template picked by `rng`; no doubled full stop after a
    quoted sentence ('..." .' and '。”。')."""
    s = _caption(r, lang, rng)
    return re.sub(r'([.!?])"\.', r'\1"', s) if lang == "en" else re.sub(r"([。！？])”。", r"\1”", s)


def _caption(r: Rendered, lang: str, rng: random.Random) -> str:
    f = r.facts
    if r.kind == "pure":
        return rng.choice(PURE[lang]).format(bg=_colour(f["background"], lang), color=_colour(f["color"], lang),
                                             look=_look(f["look"], lang), text=r.texts[0],
                                             align=ALIGN_ZH[f["align"]] if lang == "zh" else f["align"])
    if r.kind == "compositional":
        medium = f["medium_zh"] if lang == "zh" else f["medium_en"]
        if f["medium"] == "chalkboard" and lang == "en":
            medium = "a chalkboard, in chalk,"
        scene = ("一张照片" if lang == "zh" else "a photograph") if f["scene"] == "photo" else \
            (f"{colors.zh(f['scene'])}墙面的房间" if lang == "zh" else f"a room with a {f['scene']} wall")
        s = rng.choice(COMPOSITIONAL[lang]).format(medium=medium, color=_colour(f["color"], lang), scene=scene,
                                                   look=_look(f["look"], lang), text=r.texts[0])
        return s[0].upper() + s[1:]
    if r.kind == "template":
        return _template(f, lang)
    raise ValueError(f"unknown kind {r.kind!r}")


def _template(f: dict, lang: str) -> str:
    desc = f["description"].get(lang) or f["category"]
    if lang == "zh":
        parts = [f"{desc}，背景为{colors.zh(f['background'])}。"]
        for s in f["slots"]:
            parts.append(f"{s['label'].get('zh', s['name'])}用{'粗体' if s['bold'] else ''}{colors.zh(s['color'])}"
                         f"文字写着“{s['text']}”。")
        return "".join(parts)
    parts = [f"{desc[0].upper() + desc[1:]} on a {f['background']} background."]
    for s in f["slots"]:
        parts.append(f'The {s["label"].get("en", s["name"])} reads "{s["text"]}" in {"bold " if s["bold"] else ""}'
                     f'{s["color"]} text.')
    return " ".join(parts)


def tags(r: Rendered) -> dict:
    """What the balancer groups by: language, the kind of rendering, and its sub-category."""
    sub = {"pure": "plain background", "compositional": r.facts.get("medium"),
           "template": r.facts.get("category")}[r.kind]
    return {"language": r.lang, "kind": r.kind, "subcategory": sub}
