"""Categories and balancing (S6/S7 of the report): a hierarchical taxonomy with general / portrait /
text_rendering at the top and finer classes below, a category and a text language per sample, the best N of
every category by a quality statistic, and per-category weights for the trainer's `data.category_weights`.

Assignment (`Taxonomy.assign`), from what the annotator and the curation ops wrote:
1. The sample's text: the annotator's Visible Text, else the OCR op's `ocr_text`, else the caption's quoted spans.
   Its language (`text_language`, the rule the OCR op's statistic uses too): "zh" (Han, each character counting as
   three letters), "en" (Latin), "other" (kana and Hangul, as much as Han; any other script; digits alone), or
   "none" (no letters or digits; the OCR op's `text_language` when there is no text).
2. Every class scores its keywords: 3 per hit in the Image Type, 1 per hit in the Image Style and the caption
   (English keywords as whole words, plural "s"/"es" allowed; Chinese ones as substrings, the longest first, so
   "海报" (poster) is not also "海" (sea)).
3. A sample with at least `min_text_chars` characters of text is text rendering; otherwise text_rendering classes
   are out. The best-scoring allowed class wins (ties: table order); no hit -> "<top>/other" ("general/other").

The table is `DEFAULT_TAXONOMY` below; `--taxonomy FILE.toml` replaces it with one of the same shape:
    [text_rendering.poster]
    en = ["poster", "flyer"]
    zh = ["海报"]"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import tomllib
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass

TOPS = ("general", "portrait", "text_rendering")

DEFAULT_TAXONOMY: dict[str, dict[str, dict[str, list[str]]]] = {
    "text_rendering": {
        "poster": {"en": ["poster", "flyer", "banner", "advertisement", "billboard", "cover"],
                   "zh": ["海报", "宣传", "广告", "横幅", "封面", "传单"]},
        "document": {"en": ["document", "page", "paper", "letter", "form", "receipt", "invoice", "certificate",
                            "book", "newspaper", "menu"],
                     "zh": ["文档", "文件", "页面", "书页", "信件", "表格", "收据", "发票", "证书", "报纸", "菜单"]},
        "screenshot": {"en": ["screenshot", "interface", "webpage", "website", "app"],
                       "zh": ["截图", "界面", "网页", "应用"]},
        "slide": {"en": ["slide", "presentation", "infographic", "chart", "diagram", "table"],
                  "zh": ["幻灯片", "演示", "信息图", "图表", "示意图"]},
        "sign": {"en": ["sign", "signboard", "storefront", "plaque", "street sign", "label", "packaging"],
                 "zh": ["招牌", "标牌", "路牌", "门牌", "标签", "包装"]},
        "handwriting": {"en": ["handwriting", "handwritten", "calligraphy", "blackboard", "whiteboard", "note"],
                        "zh": ["手写", "书法", "黑板", "白板", "笔记"]},
        "logo": {"en": ["logo", "emblem", "wordmark", "typography"], "zh": ["标志", "徽标", "字体设计"]},
    },
    "portrait": {
        "group": {"en": ["group", "crowd", "people", "family", "team", "couple"],
                  "zh": ["合影", "人群", "一群人", "家庭", "团队", "情侣"]},
        "person": {"en": ["portrait", "person", "man", "woman", "girl", "boy", "child", "face", "selfie", "model",
                          "headshot", "lady", "gentleman"],
                   "zh": ["人像", "肖像", "人物", "男人", "女人", "女孩", "男孩", "孩子", "脸", "自拍", "模特", "男子",
                          "女子"]},
    },
    "general": {
        "landscape": {"en": ["landscape", "scenery", "mountain", "beach", "ocean", "sea", "lake", "forest", "sky",
                             "sunset", "river", "field", "desert", "waterfall"],
                      "zh": ["风景", "景色", "山", "海滩", "海", "湖", "森林", "天空", "日落", "河", "田野", "沙漠",
                             "瀑布"]},
        "animal": {"en": ["animal", "dog", "cat", "bird", "horse", "fish", "wildlife", "pet", "puppy", "kitten",
                          "insect", "lion", "tiger"],
                   "zh": ["动物", "狗", "猫", "鸟", "马", "鱼", "野生", "宠物", "小狗", "小猫", "昆虫", "狮子", "老虎"]},
        "food": {"en": ["food", "dish", "meal", "fruit", "cake", "drink", "coffee", "dessert"],
                 "zh": ["食物", "美食", "菜", "水果", "蛋糕", "饮料", "咖啡", "甜点"]},
        "architecture": {"en": ["architecture", "building", "house", "city", "street", "interior", "room", "bridge",
                                "tower", "temple", "cityscape"],
                         "zh": ["建筑", "房子", "城市", "街道", "室内", "房间", "桥", "塔", "寺庙"]},
        "vehicle": {"en": ["car", "vehicle", "truck", "bus", "train", "airplane", "bicycle", "motorcycle", "boat",
                           "ship"],
                    "zh": ["汽车", "车辆", "卡车", "公交", "火车", "飞机", "自行车", "摩托车", "船"]},
        "plant": {"en": ["plant", "flower", "tree", "leaf", "garden", "rose"], "zh": ["植物", "花", "树", "叶", "花园"]},
        "art": {"en": ["illustration", "painting", "drawing", "cartoon", "anime", "artwork", "sketch", "render"],
                "zh": ["插画", "绘画", "油画", "素描", "卡通", "动漫", "艺术"]},
        "object": {"en": ["object", "product", "still life", "tool", "furniture", "device", "toy", "bottle", "cup",
                          "shoe", "bag"],
                   "zh": ["物体", "产品", "静物", "工具", "家具", "设备", "玩具", "瓶", "杯", "鞋", "包"]},
    },
}

def text_language(text: str) -> str:
    """"zh", "en", "other" or "none" by counting scripts: Han characters against Latin letters, a Han character
    weighing as much as three letters (a word's worth: "复杂文本渲染 Complex Rendering" is "zh"); kana and Hangul
    (as much as Han: Japanese mixes Han and kana) and other letters, or digits alone, are "other"; no letters or
    digits at all is "none"."""
    han = latin = other = 0
    for c in text:
        if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" or "\uf900" <= c <= "\ufaff":
            han += 1
        elif "\u3040" <= c <= "\u30ff" or "\uac00" <= c <= "\ud7af":   # kana, Hangul syllables
            other += 3
        elif c.isalpha() and (c.isascii() or "LATIN" in unicodedata.name(c, "")):
            latin += 1
        elif c.isalnum():
            other += 1
    if not han + latin + other:
        return "none"
    scores = {"zh": 3 * han, "en": latin, "other": other}
    return max(scores, key=scores.get)


def stat_of(row, name: str):
    """A statistic of a manifest row or record: its `stats` table first, then the row itself."""
    stats = row.get("stats") if isinstance(row, dict) else None
    if isinstance(stats, dict) and name in stats:
        return stats[name]
    return row.get(name) if isinstance(row, dict) else None


@dataclass
class Assignment:
    category: str
    language: str
    text: str


class Taxonomy:
    """The class table compiled to keyword patterns; `assign` gives (category, language) for a sample."""

    def __init__(self, table: dict | None = None, min_text_chars: int = 4):
        table = DEFAULT_TAXONOMY if table is None else table
        bad = sorted(set(table) - set(TOPS))
        if bad:
            raise ValueError(f"taxonomy: unknown top-level class(es) {bad} (known: {', '.join(TOPS)})")
        self.classes: list[str] = []
        words: dict[str, dict[str, list[int]]] = {"en": defaultdict(list), "zh": defaultdict(list)}
        for top, subs in table.items():
            if not isinstance(subs, dict):
                raise ValueError(f"taxonomy: {top} must be a table of classes, got {type(subs).__name__}")
            for sub, kw in subs.items():
                if not isinstance(kw, dict) or set(kw) - {"en", "zh"} or not all(
                        isinstance(v, list) and all(isinstance(w, str) and w for w in v) for v in kw.values()):
                    raise ValueError(f"taxonomy: {top}.{sub} must be {{en = [words], zh = [words]}}, got {kw!r}")
                for lang in ("en", "zh"):
                    for w in kw.get(lang, []):
                        words[lang][w.lower()].append(len(self.classes))
                self.classes.append(f"{top}/{sub}")
        # One alternation per language, longest words first: "海报" is one hit of poster, not also "海" of landscape.
        alt = {lang: "|".join(re.escape(w) for w in sorted(ws, key=len, reverse=True)) for lang, ws in words.items()}
        self._en = re.compile(rf"\b({alt['en']})(?:e?s)?\b") if alt["en"] else None
        self._zh = re.compile(f"({alt['zh']})") if alt["zh"] else None
        self._words = {w: c for ws in words.values() for w, c in ws.items()}
        self.min_text_chars = int(min_text_chars)

    @classmethod
    def load(cls, path: str | None = None, min_text_chars: int = 4) -> "Taxonomy":
        if not path:
            return cls(None, min_text_chars)
        try:
            with open(path, "rb") as fh:
                return cls(tomllib.load(fh), min_text_chars)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"taxonomy {path}: cannot read it ({e})") from None

    @property
    def categories(self) -> list[str]:
        return self.classes + [f"{t}/other" for t in TOPS]

    def _hits(self, text: str, weight: int, scores: list[int]) -> None:
        text = text.lower()
        for pattern in (self._en, self._zh):
            for w in pattern.findall(text) if pattern else ():
                for c in self._words[w]:
                    scores[c] += weight

    def assign(self, caption: str = "", annotation: dict | None = None, stats: dict | None = None) -> Assignment:
        ann, stats = annotation or {}, stats or {}
        text = sample_text(caption, ann, stats)
        language = text_language(text) if text else str(stats.get("text_language") or "none")
        is_text = len(re.sub(r"\s", "", text)) >= self.min_text_chars
        scores = [0] * len(self.classes)
        for field, weight in ((ann.get("image_type"), 3), (ann.get("image_style"), 1),
                              (caption or ann.get("caption"), 1)):
            if field:
                self._hits(str(field), weight, scores)
        best, best_score = None, 0
        for name, score in zip(self.classes, scores):
            if score > best_score and name.startswith("text_rendering/") == is_text:
                best, best_score = name, score
        return Assignment(best or ("text_rendering/other" if is_text else "general/other"), language, text)


def sample_text(caption: str, ann: dict, stats: dict) -> str:
    """The sample's visible text: the annotator's list, else OCR's reading, else the caption's quoted spans."""
    from ..eval.text_metrics import quoted_text

    if ann.get("visible_text"):
        return " ".join(ann["visible_text"])
    if stats.get("ocr_text"):
        return str(stats["ocr_text"])
    return " ".join(quoted_text(caption or ann.get("caption") or ""))


def assign_row(tax: Taxonomy, row: dict) -> Assignment:
    """A manifest row's assignment: its caption (the recaption when there is one), annotation and statistics."""
    ann = row.get("annotation") if isinstance(row.get("annotation"), dict) else {}
    stats = row.get("stats") if isinstance(row.get("stats"), dict) else {}
    caption = row.get("caption_recaption") or row.get("caption") or ""
    return tax.assign(caption, ann, stats)


# ------------------------------------------------------------------------------------------------ ranking

def parse_rank_by(spec) -> dict[str, float]:
    """"aesthetic" or "aesthetic=1,clip_score=0.5,blockiness=-1" (or a dict) -> {stat: weight}."""
    if isinstance(spec, dict):
        out = dict(spec)
    else:
        out = {}
        for part in filter(None, (p.strip() for p in str(spec).split(","))):
            name, eq, w = part.partition("=")
            try:
                out[name.strip()] = float(w) if eq else 1.0
            except ValueError:
                raise ValueError(f"rank-by: {part!r}: weight {w!r} is not a number") from None
    if not out or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in out.values()):
        raise ValueError(f"rank-by needs STAT or STAT=WEIGHT,... with finite weights, got {spec!r}")
    return out


def quality_scores(rows, rank_by: dict[str, float]) -> list[float]:
    """Each row's quality: the weighted sum of its statistics as z-scores over all rows (so stats of different
    scales add up); a row missing any ranked statistic scores -inf (last)."""
    values = {s: [stat_of(r, s) for r in rows] for s in rank_by}
    z = {}
    for s, vs in values.items():
        nums = [float(v) for v in vs if _number(v)]
        mean = sum(nums) / len(nums) if nums else 0.0
        std = math.sqrt(sum((v - mean) ** 2 for v in nums) / len(nums)) if nums else 0.0
        z[s] = [((float(v) - mean) / std if std > 0 else 0.0) if _number(v) else None for v in vs]
    scores = []
    for i in range(len(rows)):
        parts = [z[s][i] for s in rank_by]
        missing = any(p is None for p in parts)
        scores.append(-math.inf if missing else sum(w * p for w, p in zip(rank_by.values(), parts)))
    return scores


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def best_per_category(rows, categories: list[str], top_n: int, rank_by: dict[str, float], keys=None
                      ) -> dict[int, int]:
    """{row index: its rank in its category (1 = best)} for rows past the best `top_n` of their category (the ones
    to drop); ties keep the earlier key."""
    scores = quality_scores(rows, rank_by)
    keys = keys or [str(i) for i in range(len(rows))]
    by_cat = defaultdict(list)
    for i, c in enumerate(categories):
        by_cat[c].append(i)
    dropped = {}
    for idx in by_cat.values():
        idx.sort(key=lambda i: (-scores[i], keys[i]))
        for rank, i in enumerate(idx[top_n:], top_n + 1):
            dropped[i] = rank
    return dropped


# ------------------------------------------------------------------------------------------------ weights

def parse_target(spec: str) -> str | dict[str, float]:
    """ "natural" | "uniform" | "power:ALPHA" | "CAT=SHARE,..." (top-level or full categories) | a TOML file."""
    spec = spec.strip()
    if spec in ("natural", "uniform") or spec.startswith("power:"):
        if spec.startswith("power:"):
            try:
                float(spec[6:])
            except ValueError:
                raise ValueError(f"target {spec!r}: power:ALPHA needs a number, e.g. power:0.5") from None
        return spec
    if os.path.isfile(spec):
        with open(spec, "rb") as fh:
            raw = tomllib.load(fh)
        raw = raw.get("data", raw).get("category_weights", raw)
    else:
        raw = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, eq, w = part.partition("=")
            if not eq:
                raise ValueError(f"target {part!r}: expected natural, uniform, power:ALPHA, CATEGORY=SHARE,... "
                                 "or a TOML file")
            try:
                raw[name.strip()] = float(w)
            except ValueError:
                raise ValueError(f"target {part!r}: {w!r} is not a number") from None
    if not raw or not all(_number(v) and v >= 0 for v in raw.values()):
        raise ValueError(f"target {spec!r}: shares must be non-negative numbers")
    return raw


def category_shares(counts: dict[str, int], target="power:0.5", max_boost: float = 10.0) -> dict[str, float]:
    """Each category's share of the draws, summing to 1. natural = its share of the samples; uniform = equal;
    power:ALPHA = proportional to count**ALPHA (0.5 lifts small classes, the usual temperature sampling); a dict
    of shares per top-level class (split among its categories by count) or per category. No category gets more
    than `max_boost` times its natural share (0 = no cap): a class of 3 images must not be a third of every epoch."""
    counts = {c: n for c, n in counts.items() if n > 0}
    total = sum(counts.values())
    if not total:
        raise ValueError("no samples to weight")
    if isinstance(target, str):
        alpha = {"natural": 1.0, "uniform": 0.0}.get(target) if not target.startswith("power:") else float(target[6:])
        raw = {c: n ** alpha for c, n in counts.items()}
    else:
        raw = {}
        for c, n in counts.items():
            top = c.split("/", 1)[0]
            if c in target:
                raw[c] = target[c]
            elif top in target:
                raw[c] = target[top] * n / sum(m for d, m in counts.items() if d.split("/", 1)[0] == top
                                                and d not in target)
            else:
                raise ValueError(f"target gives no share for category {c!r} (nor for {top!r}); have {sorted(target)}")
    s = sum(raw.values())
    if s <= 0:
        raise ValueError(f"target {target!r} gives every category a zero share")
    shares = {c: v / s for c, v in raw.items()}
    return _cap(shares, {c: n / total for c, n in counts.items()}, max_boost) if max_boost > 0 else shares


def _cap(shares: dict[str, float], natural: dict[str, float], max_boost: float) -> dict[str, float]:
    """Shares capped at max_boost x natural, the excess given to the uncapped categories in proportion."""
    shares, capped = dict(shares), set()
    for _ in range(len(shares)):
        over = {c for c, v in shares.items() if c not in capped and v > max_boost * natural[c] + 1e-12}
        if not over:
            break
        capped |= over
        for c in over:
            shares[c] = max_boost * natural[c]
        free = [c for c in shares if c not in capped]
        rest = 1.0 - sum(shares[c] for c in capped)
        s = sum(shares[c] for c in free)
        if not free or s <= 0:
            break
        for c in free:
            shares[c] *= rest / s
    total = sum(shares.values())
    return {c: v / total for c, v in shares.items()}


def weights_toml(shares: dict[str, float], section: str = "data.category_weights") -> str:
    """The TOML snippet the trainer reads: [data.category_weights] with quoted category keys."""
    lines = [f"# each category's share of the draws (the trainer divides it by the category's sample count)",
             f"[{section}]"]
    lines += [f"{json.dumps(c)} = {v:.6g}" for c, v in sorted(shares.items())]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ the command

def balance(manifest: str, out_dir: str, *, top_n: int = 0, rank_by="aesthetic", target="power:0.5",
            max_boost: float = 10.0, taxonomy: str | None = None, min_text_chars: int = 4,
            keep_categories: bool = False, drop_abnormal: bool = False, drop_watermarked: bool = False) -> dict:
    """Categorise, keep the best `top_n` per category (0: all), weight the categories; writes OUT/manifest.jsonl,
    OUT/category_weights.toml, OUT/counts.csv and returns the counts table. drop_abnormal / drop_watermarked
    leave out rows whose annotation says "Abnormal Element: yes" / lists a watermark, before the ranking."""
    from .curation.rows import read_rows, relative_paths

    tax = Taxonomy.load(taxonomy, min_text_chars)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    rows, problems = read_rows(manifest, out_dir)
    for p in problems:
        print(f"skipping {p}", file=sys.stderr)
    if not rows:
        raise ValueError(f"{manifest}: no usable rows ({len(problems)} skipped)")
    for row in rows:
        a = assign_row(tax, row)
        if not (keep_categories and row.get("category") not in (None, "", "default")):
            row["category"] = a.category
        row["language"] = a.language
    flagged = Counter()
    live = []
    for r in rows:
        ann = r.get("annotation") if isinstance(r.get("annotation"), dict) else {}
        if drop_abnormal and ann.get("abnormal_element") == "yes":
            flagged["abnormal"] += 1
        elif drop_watermarked and ann.get("watermark_list"):
            flagged["watermarked"] += 1
        else:
            live.append(r)
    cats = [r["category"] for r in live]
    dropped = best_per_category(live, cats, top_n, parse_rank_by(rank_by),
                                [str(r.get("key") or r["image"]) for r in live]) if top_n > 0 else {}
    kept = [r for i, r in enumerate(live) if i not in dropped]
    if not kept:
        raise ValueError(f"{manifest}: no rows left to balance ({dict(flagged)} dropped by their annotation)")
    counts = Counter(r["category"] for r in kept)
    shares = category_shares(dict(counts), parse_target(target) if isinstance(target, str) else target, max_boost)
    table = counts_table(rows, kept, shares)
    _write(os.path.join(out_dir, "manifest.jsonl"),
           "".join(json.dumps(relative_paths(r, out_dir), ensure_ascii=False) + "\n" for r in kept))
    _write(os.path.join(out_dir, "category_weights.toml"), weights_toml(shares))
    _write(os.path.join(out_dir, "counts.csv"), format_csv(table))
    return {"rows": len(rows), "kept": len(kept), "skipped_bad_rows": len(problems), "table": table,
            "abnormal": flagged["abnormal"], "watermarked": flagged["watermarked"],
            "shares": shares}


def counts_table(rows, kept, shares) -> list[dict]:
    """One row per category: samples per language before top-N, kept, and the category's share of the draws."""
    langs = ("en", "zh", "other", "none")
    out = []
    for c in sorted({r["category"] for r in rows}):
        mine = [r for r in rows if r["category"] == c]
        lang = Counter(r["language"] for r in mine)
        out.append({"category": c, **{lang_: lang.get(lang_, 0) for lang_ in langs}, "total": len(mine),
                    "kept": sum(r["category"] == c for r in kept), "share": round(shares.get(c, 0.0), 6)})
    return out


def format_csv(table: list[dict]) -> str:
    cols = list(table[0]) if table else ["category"]
    return "\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in table]) + "\n"


def format_table(table: list[dict]) -> str:
    cols = list(table[0]) if table else ["category"]
    widths = [max(len(c), *(len(str(r[c])) for r in table)) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) for r in table]
    return "\n".join(lines)


def _write(path: str, text: str) -> None:
    """Whole file or nothing: a temporary file beside it, renamed over it."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
