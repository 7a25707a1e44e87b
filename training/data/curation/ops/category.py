"""Categories in a curation pipeline (S6/S7): the `category` tag op writes each sample's taxonomy class and text
language; the `best_per_category` global op keeps the best N of every category. Both reuse training/data/taxonomy.py,
the same rules `qwenimage data balance` applies to a finished manifest.

    { op = "category" }                                              # stats: category, language
    { op = "best_per_category", top_n = 1000, rank_by = "aesthetic=1,clip_score=0.5" }

The category op reads the caption, the annotator's fields (a manifest row's `annotation`, kept in the record's
meta) and earlier statistics (`ocr_text`, `text_language` of the ocr_text op); it never decodes the image. Both
also read the statistics an input manifest row already carries (its `stats`, from an earlier curation run), this
run's winning where both have one."""
from __future__ import annotations

from ...taxonomy import Taxonomy, best_per_category, parse_rank_by
from ..op import GlobalOp, Item, Op, OpError, Record, register


@register("category")
class Category(Op):
    """Tag op: the sample's category ("text_rendering/poster") and language ("en" / "zh" / "other" / "none").
    Options: taxonomy (a TOML file replacing the built-in table), min_text_chars (text that makes it text rendering)."""

    stats = ("category", "language")

    def __init__(self, keep=None, drop_if=None, taxonomy: str | None = None, min_text_chars: int = 4, **options):
        super().__init__(keep, drop_if, **options)
        try:
            self.taxonomy = Taxonomy.load(taxonomy, min_text_chars)
        except ValueError as e:
            raise OpError(f"op {self.name!r}: {e}") from None

    def compute(self, item: Item) -> dict:
        rec = item.record
        ann = rec.meta.get("annotation") if isinstance(rec.meta.get("annotation"), dict) else {}
        caption = rec.meta.get("caption_recaption") or rec.caption or ""
        a = self.taxonomy.assign(caption, ann, _stats(rec))
        return {"category": a.category, "language": a.language}


@register("best_per_category")
class BestPerCategory(GlobalOp):
    """Keeps the best `top_n` samples of every category (the `category` statistic, else the row's own category),
    ranked by `rank_by`: a statistic, or a weighted sum "aesthetic=1,clip_score=0.5,blockiness=-1" of z-scores.
    A sample missing a ranked statistic ranks last."""

    stats = ("category",)

    def __init__(self, keep=None, drop_if=None, top_n: int = 1000, rank_by="aesthetic", **options):
        super().__init__(keep, drop_if, **options)
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise OpError(f"op {self.name!r}: top_n must be a positive integer, got {top_n!r}")
        try:
            self.rank_by = parse_rank_by(rank_by)
        except ValueError as e:
            raise OpError(f"op {self.name!r}: {e}") from None
        self.top_n = top_n

    def compute(self, item: Item) -> dict:
        return {}

    def decide_all(self, records: list[Record]) -> dict[str, str]:
        cats = [str(r.stats.get("category") or r.meta.get("category") or "default") for r in records]
        rows = [_stats(r) for r in records]
        dropped = best_per_category(rows, cats, self.top_n, self.rank_by, [r.key for r in records])
        by = ",".join(f"{s}={w:g}" if w != 1 else s for s, w in self.rank_by.items())
        return {records[i].key: f"rank {rank} in {cats[i]} by {by} (keeps the best {self.top_n})"
                for i, rank in dropped.items()}


def _stats(rec: Record) -> dict:
    """This run's statistics over those an input manifest row carried (a manifest curated before: `stats`)."""
    before = rec.meta.get("stats")
    return {**before, **rec.stats} if isinstance(before, dict) else rec.stats
