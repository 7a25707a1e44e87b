"""Evaluation reports from hand-made run folders (run.json, images/, results.jsonl as the runner writes them):
summary means over recorded values, metrics.json / results.csv / report.html, escaped text, images embedded
(the page alone shows them), a malformed row listed not fatal, and two runs compared by (id, k) with a missing row
shown as missing."""
import csv
import json
import os
import re

import pytest
from PIL import Image

from qwenimage.training.eval.report import compare, summarize, write_reports

EVIL = 'a sign that says "<script>alert(1)</script>" & more'


def make_run(root, tag, rows, extra_lines=()):
    run = root / "cvtg" / tag
    (run / "images").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "suite": "cvtg", "model": f"/models/{tag}.safetensors", "model_tag": tag, "data_file": "/data/cvtg.json",
        "settings": {"steps": 4, "cfg": 4.0, "width": 64, "height": 64, "images_per_prompt": 2, "seed_base": 0},
        "scorers": [{"name": "text_rendering", "rule": "cvtg"}], "created": "2026-11-29T12:00:00Z"}))
    lines = []
    for r in rows:
        image = f"images/{r['id']}_{r['k']}.png"
        Image.new("RGB", (8, 8), (40 * r["k"], 90, 160)).save(run / image)
        lines.append(json.dumps({"seed": 100 + r["k"], "image": image, "inputs": [], "failures": {}, **r}))
    (run / "results.jsonl").write_text("\n".join(lines + list(extra_lines)) + "\n")
    return run


def row(id, k, category, acc, ned, prompt="a poster", failures=None):
    return {"id": id, "k": k, "prompt": prompt, "category": category,
            "metrics": {"word_accuracy": acc, "ned": ned}, "failures": failures or {}}


ROWS_A = [row("p1", 0, "2 regions", 1.0, 0.9), row("p1", 1, "2 regions", 0.5, 0.7),
          row("p2", 0, "3 regions", None, None, failures={"text_rendering": "no target text"}),
          {**row("p3", 0, "3 regions", 0.0, 0.2, prompt=EVIL), "details": {"text_rendering": {"read": "<b>SALE"}}}]
ROWS_B = [row("p1", 0, "2 regions", 0.75, 0.95), row("p1", 1, "2 regions", 0.5, 0.6),
          row("p3", 0, "3 regions", 0.5, 0.4, prompt=EVIL), row("p4", 0, "3 regions", 1.0, 1.0)]


def test_summarize_means_over_recorded_values():
    s = summarize(ROWS_A)
    assert s["n"] == 4 and s["scored"] == {"word_accuracy": 3, "ned": 3}
    assert s["overall"]["word_accuracy"] == pytest.approx(0.5) and s["overall"]["ned"] == pytest.approx(0.6)
    assert s["by_category"]["2 regions"]["word_accuracy"] == pytest.approx(0.75)
    assert s["by_category"]["3 regions"] == {"word_accuracy": 0.0, "ned": pytest.approx(0.2)}
    assert s["failures"] == {"text_rendering": 1}
    assert summarize([])["overall"] == {} and summarize([])["n"] == 0


def test_reports_of_one_run(tmp_path):
    run = make_run(tmp_path, "base", ROWS_A, extra_lines=["{not json", json.dumps({"k": 0, "metrics": {}}),
                                                          json.dumps(row("p1", 1, "2 regions", 0.25, 0.5))])
    paths = write_reports(run)
    assert set(paths) == {"metrics", "csv", "html"}
    m = json.loads(open(paths["metrics"], encoding="utf-8").read())
    assert m["suite"] == "cvtg" and m["settings"]["steps"] == 4 and m["n"] == 4   # p1#1 repeated: the last counts
    assert m["overall"]["word_accuracy"] == pytest.approx((1.0 + 0.25 + 0.0) / 3)
    assert [p.split("results.jsonl ", 1)[1] for p in m["problems"]] == [
        "line 5: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        "line 6: no 'id'"]
    with open(paths["csv"], newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["id"] for r in table] == ["p1", "p1", "p2", "p3"]
    assert table[2]["word_accuracy"] == "" and table[2]["failures"] == "text_rendering: no target text"
    assert table[3]["prompt"] == EVIL   # the CSV keeps the text as it is
    page = open(paths["html"], encoding="utf-8").read()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h2>Scores</h2>" in page and "<h2>By category</h2>" in page and "3 / 4" in page
    assert "word_accuracy: worst" in page and "ned: best" in page and "text_rendering: 1 image(s)" in page
    assert "not JSON" in page   # the problems are in the report
    assert "&quot;read&quot;: &quot;&lt;b&gt;SALE&quot;" in page   # a row's details, escaped
    assert_embedded(page, 6)   # 4 rows, 3 with metrics: worst and best of two metrics, each image once or more


def assert_embedded(page, at_least):
    """Every <img> is a JPEG inside the page (it was a relative link that broke when the page moved alone)."""
    import base64
    import io

    srcs = re.findall(r"<img[^>]* src='([^']+)'", page)
    assert len(srcs) >= at_least
    for src in srcs:
        assert src.startswith("data:image/jpeg;base64,"), src[:60]
        assert Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size == (8, 8)


def test_comparison_lines_up_prompts_and_seeds(tmp_path):
    a = make_run(tmp_path, "base", ROWS_A)
    Image.new("RGB", (8, 8), "white").save(tmp_path / "source.png")   # an edit input, by absolute path
    b = make_run(tmp_path, "lora", ROWS_B[:3] + [{**ROWS_B[3], "inputs": [str(tmp_path / "source.png")]}])
    paths = write_reports(a, compare_dir=b)
    assert paths["compare"] == str(tmp_path / "cvtg" / "compare_base_vs_lora.html")
    for page_path in (paths["html"], paths["compare"]):
        page = open(page_path, encoding="utf-8").read()
        assert "<script>" not in page
        by_cat = page.split("<td class='t'>3 regions</td>")[-1].split("</tr>")[0]   # the comparison's category row
        assert "<td>0</td><td>0.75</td><td class='up'>+0.75</td>" in by_cat
        side = page.split("Side by side")[1]
        rows = side.split("<tr>")[2:]
        assert len(rows) == 5   # p1#0, p1#1, p2#0 (only in base), p3#0, p4#0 (only in lora)
        p2 = next(r for r in rows if "p2 #0</code>" in r)
        p4 = next(r for r in rows if "p4 #0</code>" in r)
        assert p2.count(">missing<") == 3 and p4.count(">missing<") == 3   # its image and both metrics
        assert f"alt='input' title='{tmp_path / 'source.png'}'" in p4
        assert "<td title='text_rendering: no target text'><span class=missing>failed</span></td>" in p2
        p1 = next(r for r in rows if "p1 #0</code>" in r)
        assert "-0.25" in p1 and "+0.05" in p1    # deltas: lora - base
        assert_embedded(page, 8)
        assert "lora" in page and "base" in page
    out = compare(b, a, tmp_path / "elsewhere" / "b_vs_a.html")
    assert os.path.isfile(out) and "Comparison: lora vs base" in open(out, encoding="utf-8").read()


def test_a_run_without_results_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/results.jsonl: no results.jsonl in the run folder"):
        write_reports(tmp_path / "empty")
    assert os.listdir(tmp_path / "empty") == []   # nothing half-written
