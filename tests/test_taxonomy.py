"""Categories and balancing: taxonomy assignment from annotations, OCR and captions (English and Chinese), language
splits, the best N per category, category shares, `qwenimage data balance` read back by the trainer's config and
sampler, and the `category` / `best_per_category` curation ops."""
import json
import math

import pytest
from PIL import Image

from qwenimage.cli import main
from qwenimage.training.data import taxonomy as T
from qwenimage.training.data.curation import ops  # noqa: F401  (registers the ops)
from qwenimage.training.data.curation.op import Item, OpError, Record, build_op, run_op


@pytest.mark.parametrize("caption, ann, stats, category, language", [
    ('A red poster with the words "Grand Opening"',
     {"image_type": "poster", "image_style": "flat", "visible_text": ["Grand Opening"]}, {},
     "text_rendering/poster", "en"),
    ("一张海报，上面写着“通义千问图像生成”", {}, {}, "text_rendering/poster", "zh"),
    ("A scanned page of a contract", {"image_type": "document"}, {"ocr_text": "第一条 合同双方"},
     "text_rendering/document", "zh"),
    ("A phone screenshot of a chat app", {"image_type": "screenshot", "visible_text": ["Привет, как дела"]}, {},
     "text_rendering/screenshot", "other"),
    ("A shop front", {}, {"ocr_text": "OPEN 24 HOURS"}, "text_rendering/other", "en"),
    ("Two kittens sleeping on a sofa", {"image_type": "photograph", "image_style": "realistic"}, {},
     "general/animal", "none"),
    ("一只小猫坐在窗台上", {"image_type": "摄影"}, {}, "general/animal", "none"),
    ("Snowy mountains at sunset", {}, {"text_language": "none"}, "general/landscape", "none"),
    ("A close-up portrait of a smiling woman", {"image_type": "photograph"}, {}, "portrait/person", "none"),
    ("一群人在公园里合影", {}, {}, "portrait/group", "none"),
    ("A poster of a tiger", {"image_type": "poster"}, {}, "general/animal", "none"),   # a poster without text
    ("Abstract shapes", {}, {}, "general/other", "none"),
    ('A sign saying "12"', {}, {}, "general/other", "other"),   # 2 chars: not text rendering; digits: "other"
])
def test_assign(caption, ann, stats, category, language):
    a = T.Taxonomy().assign(caption, ann, stats)
    assert (a.category, a.language) == (category, language)


def test_language_and_custom_taxonomy(tmp_path):
    assert [T.text_language(t) for t in ("Hello world 世", "大减价 SALE", "こんにちは", "東京タワー", "2025 !!", "!?", "")] \
        == ["en", "zh", "other", "other", "other", "none", "none"]
    from qwenimage.training.data.curation.ops.text import text_language
    assert text_language is T.text_language   # one rule: the OCR op's statistic and the taxonomy never disagree
    (tmp_path / "t.toml").write_text('[general.boats]\nen = ["sailboat"]\nzh = ["帆船"]\n')
    tax = T.Taxonomy.load(str(tmp_path / "t.toml"))
    assert tax.assign("Sailboats on a lake").category == "general/boats"
    assert tax.assign("湖上的帆船").category == "general/boats"
    (tmp_path / "bad.toml").write_text('[misc.boats]\nen = ["boat"]\n')
    with pytest.raises(ValueError, match=r"unknown top-level class\(es\) \['misc'\]"):
        T.Taxonomy.load(str(tmp_path / "bad.toml"))
    with pytest.raises(ValueError, match="general.boats must be"):
        T.Taxonomy({"general": {"boats": {"en": "boat"}}})


def test_best_per_category_keeps_the_best_by_a_stat_or_a_weighted_sum():
    rows = [{"stats": {"aesthetic": a, "clip_score": c}} for a, c in [(5, 0.1), (7, 0.2), (6, 0.9), (1, 0.3)]]
    rows.append({"stats": {"clip_score": 0.99}})                     # no aesthetic: ranks last
    cats = ["a", "a", "a", "b", "a"]
    assert T.best_per_category(rows, cats, 2, T.parse_rank_by("aesthetic")) == {0: 3, 4: 4}
    # clip_score spread is small in value but large in z: the weighted sum of z-scores favours it.
    assert T.best_per_category(rows, cats, 1, T.parse_rank_by("aesthetic=1,clip_score=2")) == {0: 3, 1: 2, 4: 4}
    assert T.best_per_category(rows, cats, 1, T.parse_rank_by("aesthetic=-1")) == {2: 2, 1: 3, 4: 4}
    with pytest.raises(ValueError, match="rank-by"):
        T.parse_rank_by("aesthetic=high")


def test_category_shares():
    counts = {"general/animal": 900, "portrait/person": 90, "text_rendering/poster": 10}
    nat = T.category_shares(counts, "natural")
    assert nat == pytest.approx({"general/animal": 0.9, "portrait/person": 0.09, "text_rendering/poster": 0.01})
    assert T.category_shares(counts, "uniform", max_boost=0) == pytest.approx({c: 1 / 3 for c in counts})
    capped = T.category_shares(counts, "uniform", max_boost=5)     # the poster class: at most 5 x 1%
    assert capped["text_rendering/poster"] == pytest.approx(0.05) and sum(capped.values()) == pytest.approx(1)
    sq = T.category_shares(counts, "power:0.5", max_boost=0)
    assert sq["general/animal"] / sq["text_rendering/poster"] == pytest.approx(math.sqrt(90))
    tops = T.category_shares({**counts, "general/food": 100}, T.parse_target("general=0.5,portrait=0.2,"
                                                                             "text_rendering=0.3"), max_boost=0)
    assert tops == pytest.approx({"general/animal": 0.45, "general/food": 0.05, "portrait/person": 0.2,
                                  "text_rendering/poster": 0.3})
    with pytest.raises(ValueError, match="no share for category 'text_rendering/poster'"):
        T.category_shares(counts, {"general": 1, "portrait": 1})
    with pytest.raises(ValueError, match="power:ALPHA needs a number"):
        T.parse_target("power:x")


def _manifest(tmp_path):
    """12 images: 6 animal photos (aesthetic 1..6), 4 posters with text, 2 portraits."""
    rows = []
    for i in range(12):
        Image.new("RGB", (64, 64), (20 * i, 0, 0)).save(tmp_path / f"{i}.png")
        if i < 6:
            row = {"caption": "A dog on the grass", "stats": {"aesthetic": float(i + 1)}}
        elif i < 10:
            row = {"caption": "A poster", "annotation": {"image_type": "poster", "visible_text": ["大减价 SALE"]},
                   "stats": {"aesthetic": 3.0}}
        else:
            row = {"caption": "A portrait of a man", "stats": {"aesthetic": 4.0}}
        rows.append({"image": f"{i}.png", **row})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return tmp_path / "m.jsonl"


def test_data_balance_writes_what_the_trainer_reads(tmp_path, capsys):
    from qwenimage.training.config import load_config
    from qwenimage.training.data.buckets import category_weights
    from qwenimage.training.data.dataset import load_samples

    src, out = _manifest(tmp_path), tmp_path / "out"
    assert main(["data", "balance", str(src), "--out", str(out), "--top-n", "4", "--target", "uniform",
                 "--max-boost", "0"]) == 0
    printed = capsys.readouterr().out
    assert "general/animal" in printed and "10 of 12 rows kept" in printed
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    animals = sorted(r["image"] for r in rows if r["category"] == "general/animal")
    assert animals == ["../2.png", "../3.png", "../4.png", "../5.png"]          # the best 4 by aesthetic
    assert {r["category"] for r in rows} == {"general/animal", "text_rendering/poster", "portrait/person"}
    assert {r["language"] for r in rows if r["category"] == "text_rendering/poster"} == {"zh"}
    csv = (out / "counts.csv").read_text().splitlines()
    assert csv[0] == "category,en,zh,other,none,total,kept,share"
    assert "general/animal,0,0,0,6,6,4,0.333333" in csv and "text_rendering/poster,0,4,0,0,4,4,0.333333" in csv
    # The weights snippet goes into a training config as it is; the sampler then draws each category a third.
    (tmp_path / "train.toml").write_text(f'[model]\npreset = "tiny"\n[train]\nmode = "pretrain"\n'
                                         f'[data]\npath = "{out / "manifest.jsonl"}"\n\n'
                                         + (out / "category_weights.toml").read_text())
    cfg = load_config(str(tmp_path / "train.toml"))
    assert cfg.data.category_weights == pytest.approx({c: 1 / 3 for c in
                                                       ("general/animal", "portrait/person", "text_rendering/poster")},
                                                      rel=1e-5)
    samples = load_samples(cfg.data.path, min_size=8)
    w = category_weights(samples, cfg.data.category_weights)
    per_cat = {c: sum(x for x, s in zip(w, samples) if s.category == c) for c in cfg.data.category_weights}
    assert per_cat == pytest.approx({c: 1 / 3 for c in per_cat}, rel=1e-5)
    assert main(["data", "balance", str(src), "--out", str(out), "--target", "poster=1"]) == 2
    assert "no share for category" in capsys.readouterr().err
    # The annotator's quality flags: 1 poster marked abnormal, 2 with a watermark.
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    rows[6]["annotation"]["abnormal_element"] = "yes"
    rows[7]["annotation"]["watermark_list"] = ["stock.com"]
    rows[8]["annotation"]["watermark_list"] = ["stock.com"]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert main(["data", "balance", str(src), "--out", str(tmp_path / "o2"), "--drop-abnormal",
                 "--drop-watermarked"]) == 0
    assert "1 rows dropped: annotated abnormal\n2 rows dropped: annotated watermarked\n9 of 12 rows kept" in \
        capsys.readouterr().out


def test_category_and_best_per_category_ops():
    recs = [Record(key="a", image="a.png", caption="一张海报", meta={"annotation": {"visible_text": ["限时优惠"]}}),
            Record(key="b", image="b.png", caption="A cat", stats={"aesthetic": 2.0}),
            Record(key="c", image="c.png", caption="A dog", stats={"aesthetic": 5.0}),
            Record(key="d", image="d.png", caption="A poster", stats={"ocr_text": "BIG SALE"},
                   meta={"stats": {"aesthetic": 9.0, "ocr_text": "stale"}})]   # an earlier run's, under this run's
    run_op(build_op({"op": "category"}), [Item(r, data=b"never decoded") for r in recs])
    assert [(r.stats["category"], r.stats["language"], r.dropped) for r in recs] == [
        ("text_rendering/poster", "zh", None), ("general/animal", "none", None), ("general/animal", "none", None),
        ("text_rendering/poster", "en", None)]
    op = build_op({"op": "best_per_category", "top_n": 1, "rank_by": "aesthetic"})
    assert op.decide_all(recs) == {"b": "rank 2 in general/animal by aesthetic (keeps the best 1)",
                                   "a": "rank 2 in text_rendering/poster by aesthetic (keeps the best 1)"}
    recs[3].meta["stats"]["aesthetic"], recs[0].stats["aesthetic"] = 0.0, 0.5
    assert op.decide_all(recs)["d"] == "rank 2 in text_rendering/poster by aesthetic (keeps the best 1)"
    for table, why in [({"op": "best_per_category", "top_n": 0}, "top_n must be a positive integer"),
                       ({"op": "best_per_category", "rank_by": "x=y"}, "rank-by"),
                       ({"op": "category", "colour": 1}, "unknown option"),
                       ({"op": "category", "taxonomy": "/nope.toml"}, "cannot read it")]:
        with pytest.raises(OpError, match=why):
            build_op(table)
