"""Evaluation suites read the benchmarks' published files (small files written here in the same formats): the
items, ids, categories and scorer metadata come out right, and a bad row or a missing file is an error naming the
file, the row and the field (or, with on_error="skip", a listed row)."""
import csv
import io
import json
import os

import pytest
from PIL import Image

from qwenimage.training.eval.suites import SUITES, SuiteFileError, get_suite


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def png(path, colour=(200, 30, 30), size=(24, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_every_suite_says_where_its_file_comes_from():
    official = {"geneval", "dpg", "oneig", "cvtg", "chineseword", "longtext", "gedit", "imgedit", "novel_view"}
    assert official <= set(SUITES)
    for s in SUITES.values():
        assert s.download and s.description and s.images_per_prompt >= 1


def test_geneval(tmp_path):
    f = jsonl(tmp_path / "evaluation_metadata.jsonl", [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
         "prompt": "a photo of two clocks"},
        {"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                        {"class": "dog", "count": 1, "position": ["right of", 0]}],
         "prompt": "a photo of a dog right of a teddy bear"}])
    items = get_suite("geneval").load(f).items
    assert [i.id for i in items] == ["00000", "00001", "00002"]
    assert [i.category for i in items] == ["single_object", "counting", "position"]
    spec = items[2].meta["geneval"]
    assert spec["include"][1]["position"] == ["right of", 0] and spec["tag"] == "position"
    assert items[1].meta["geneval"]["exclude"] == [{"class": "clock", "count": 3}]
    assert items[0].meta["geneval"]["include"] == [{"class": "bench", "count": 1}]
    assert len({i.seed for i in items}) == 3


def test_geneval_bad_rows_are_named_or_skipped(tmp_path):
    f = jsonl(tmp_path / "m.jsonl", [
        {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "pink"}], "prompt": "a pink car"},
        "{not json",
        {"tag": "colors", "include": [{"count": 1}], "prompt": "x"}])
    with pytest.raises(SuiteFileError, match=r"m\.jsonl:2: not valid JSON"):
        get_suite("geneval").load(f)
    loaded = get_suite("geneval").load(f, on_error="skip")
    assert [i.prompt for i in loaded.items] == ["a pink car"]
    assert [s["where"].rsplit(":", 1)[1] for s in loaded.skipped] == ["2", "3"]
    assert "'include'[0] needs a string \"class\"" in loaded.skipped[1]["error"]


def test_a_missing_file_names_it_and_where_to_get_it(tmp_path):
    with pytest.raises(SuiteFileError, match=r"nowhere\.jsonl: geneval file not found; .*djghosh13/geneval"):
        get_suite("geneval").load(tmp_path / "nowhere.jsonl")


DPG_HEADER = ["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
              "tuple", "question_natural_language"]


def test_dpg_groups_questions_with_their_dependencies(tmp_path):
    f = write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, [
        ["coco1", "a red bus beside a tree", "", 1, "0", "entity", "whole", "entity - whole (bus)", "Is there a bus?"],
        ["coco1", "a red bus beside a tree", "", 2, "1", "attribute", "color", "attribute - color (bus, red)",
         "Is the bus red?"],
        ["coco1", "a red bus beside a tree", "", 3, "1,2", "relation", "spatial", "relation (bus, tree)",
         "Is the red bus beside a tree?"],
        ["parti7", "a cat", "", 1, "0", "entity", "whole", "entity - whole (cat)", "Is there a cat?"]])
    suite = get_suite("dpg")
    items = suite.load(f).items
    assert [(i.id, i.category) for i in items] == [("coco1", "coco"), ("parti7", "parti")]
    qs = items[0].meta["questions"]
    assert [q["depends"] for q in qs] == [[], ["1"], ["1", "2"]]
    assert qs[1] == {"id": "2", "question": "Is the bus red?", "depends": ["1"], "category": "attribute",
                     "tuple": "attribute - color (bus, red)"}
    assert suite.default_scorers(items) == [{"name": "vlm_questions"}]


def test_dpg_bad_dependency_and_prompts_folder(tmp_path):
    f = write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER,
                  [["a1", "p", "", 1, "zero", "entity", "", "", "Is there?"]])
    with pytest.raises(SuiteFileError, match=r"dpg_bench\.csv:2: field 'dependency' must be numbers"):
        get_suite("dpg").load(f)
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "x1.txt").write_text("a dense prompt\n", encoding="utf-8")
    items = get_suite("dpg").load(tmp_path / "prompts").items
    assert items[0].prompt == "a dense prompt" and get_suite("dpg").default_scorers(items) == \
        [{"name": "prompt_following"}]
    write_csv(tmp_path / "short.csv", ["item_id", "text"], [["a", "b"]])
    with pytest.raises(SuiteFileError, match="missing column"):
        get_suite("dpg").load(tmp_path / "short.csv")


def test_oneig_reads_the_clone_questions_and_texts(tmp_path):
    f = write_csv(tmp_path / "OneIG-Bench.csv", ["category", "id", "prompt_en", "type", "prompt_length", "class"], [
        ["General_Object", "000", "a blue vase", "T", "short", "None"],
        ["Text_Rendering", "000", 'a sign reading "HELLO WORLD"', "T", "short", "None"],
        ["Knowledge_Reasoning", "001", "the boiling point of water", "T", "short", "None"]])
    qd = tmp_path / "scripts" / "alignment" / "Q_D"
    qd.mkdir(parents=True)
    (qd / "object.json").write_text(json.dumps({"000": {"question": json.dumps({"1": "Is there a vase?",
                                                                                "2": "Is the vase blue?"}),
                                                        "dependency": json.dumps({"1": [0], "2": [1]})}}))
    (tmp_path / "scripts" / "text").mkdir(parents=True)
    write_csv(tmp_path / "scripts" / "text" / "text_content.csv", ["id", "text_content"], [["000", "HELLO WORLD"]])
    suite = get_suite("oneig")
    items = suite.load(f).items
    assert [i.id for i in items] == ["object_000", "text_000", "reasoning_001"]
    assert items[0].meta["questions"][1] == {"id": "2", "question": "Is the vase blue?", "depends": ["1"]}
    assert items[1].meta["texts"] == ["HELLO WORLD"] and items[1].meta["text_rule"] == "longtext"
    assert [s["name"] for s in suite.default_scorers(items)] == ["vlm_questions", "text_rendering", "prompt_following"]
    zh = write_csv(tmp_path / "OneIG-Bench-ZH.csv", ["category", "id", "prompt_cn"], [["Portrait", "003", "一位老人"]])
    item = suite.load(zh).items[0]
    assert (item.id, item.prompt, item.meta["language"]) == ("human_003", "一位老人", "zh")
    bad = write_csv(tmp_path / "b.csv", ["category", "id", "prompt_en"], [["Sculpture", "1", "x"]])
    with pytest.raises(SuiteFileError, match=r"b\.csv:2: field 'category' is 'Sculpture'"):
        suite.load(bad)


def test_cvtg_folder_with_both_file_forms(tmp_path):
    root = tmp_path / "CVTG-2K"
    (root / "CVTG").mkdir(parents=True)
    (root / "CVTG-Style").mkdir()
    (root / "CVTG" / "2.json").write_text(json.dumps({"data_list": [
        {"index": 0, "prompt": 'A shop sign reads "OPEN DAILY" and a poster says "BIG SALE".',
         "carrier_list": ["shop sign", "poster"], "sentence_list": ['sign "OPEN DAILY"', 'poster "BIG SALE"']}]}))
    (root / "CVTG" / "2_combined.json").write_text(json.dumps({"0": 'A shop sign reads "OPEN DAILY"'}))
    (root / "CVTG-Style" / "3.json").write_text(json.dumps({"data_list": [
        {"index": 5, "prompt": 'Red "A", blue "B" and bold "C".'}]}))
    items = get_suite("cvtg").load(root).items
    assert [(i.id, i.category) for i in items] == [("CVTG_2_0", "2 regions"), ("CVTG-Style_3_5", "3 regions")]
    assert items[0].meta["texts"] == ["OPEN DAILY", "BIG SALE"] and items[0].meta["text_rule"] == "cvtg"
    only = get_suite("cvtg").load(root / "CVTG" / "2_combined.json").items
    assert only[0].id == "CVTG_2_0" and only[0].meta["texts"] == ["OPEN DAILY"]
    (tmp_path / "4.json").write_text(json.dumps({"data_list": [{"index": 1, "prompt": "no quotes here"}]}))
    with pytest.raises(SuiteFileError, match=r"4\.json data_list\[0\]: field 'prompt' quotes no text"):
        get_suite("cvtg").load(tmp_path / "4.json")


def test_longtext_and_chineseword(tmp_path):
    f = jsonl(tmp_path / "text_prompts_zh.jsonl", [
        {"prompt_id": 7, "prompt": "一张海报，写着……", "text": "春眠不觉晓", "category": "poster", "length": "short",
         "text_length": 5},
        {"prompt_id": 8, "prompt": "x"}])
    loaded = get_suite("longtext").load(f, on_error="skip")
    item = loaded.items[0]
    assert (item.id, item.category, item.meta["texts"], item.meta["language"]) == ("0007", "poster", ["春眠不觉晓"], "zh")
    assert "field 'text'" in loaded.skipped[0]["error"]
    words = tmp_path / "words.txt"
    words.write_text("# level 1\n1\t永\n3\t鬱\n", encoding="utf-8")
    items = get_suite("chineseword").load(words).items
    assert [(i.category, i.meta["texts"]) for i in items] == [("level-1", ["永"]), ("level-3", ["鬱"])]
    assert "“永”" in items[0].prompt and items[0].meta["text_rule"] == "chineseword"
    (tmp_path / "bad.txt").write_text("abc\n", encoding="utf-8")
    with pytest.raises(SuiteFileError, match=r"bad\.txt:1: field 'text' 'abc' holds no Chinese"):
        get_suite("chineseword").load(tmp_path / "bad.txt")


def test_gedit_parquet_images_are_written_once(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (20, 12), (10, 200, 10)).save(buf, format="PNG")
    rows = [{"key": "k1", "task_type": "color_alter", "instruction": "make it red", "instruction_language": "en",
             "input_image": {"bytes": buf.getvalue(), "path": None}},
            {"key": "k1", "task_type": "color_alter", "instruction": "把它变成红色", "instruction_language": "cn",
             "input_image": {"bytes": buf.getvalue(), "path": None}}]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train-00000-of-00001.parquet")
    cache = tmp_path / "inputs"
    items = get_suite("gedit").load(tmp_path / "data", cache_dir=str(cache)).items
    assert [(i.id, i.category) for i in items] == [("k1_en", "color_alter"), ("k1_cn", "color_alter")]
    assert Image.open(items[0].inputs[0]).size == (20, 12) and items[0].meta["source"] == items[0].inputs[0]
    assert items[1].meta["language"] == "zh" and items[1].meta["instruction"] == "把它变成红色"
    en = get_suite("gedit-en").load(tmp_path / "data", cache_dir=str(cache)).items
    assert [i.id for i in en] == ["k1_en"]
    bad = jsonl(tmp_path / "g.jsonl", [{"key": "k2", "task_type": "style_change", "instruction": "x",
                                       "instruction_language": "en", "input_image": "missing.png"}])
    with pytest.raises(SuiteFileError, match=r"g\.jsonl:1: field 'input_image' not found: .*missing\.png"):
        get_suite("gedit").load(bad)


def test_imgedit_finds_images_under_singleturn(tmp_path):
    bench = tmp_path / "Benchmark"
    png(bench / "singleturn" / "animal" / "000342021.jpg")
    (bench / "Basic").mkdir()
    f = bench / "Basic" / "basic_edit.json"
    f.write_text(json.dumps({"1082": {"id": "animal/000342021.jpg", "prompt": "Replace the cat with a dog.",
                                      "edit_type": "replace"},
                             "1083": {"id": "animal/nope.jpg", "prompt": "Remove it.", "edit_type": "remove"}}))
    loaded = get_suite("imgedit").load(f, on_error="skip")
    item = loaded.items[0]
    assert (item.id, item.category, item.prompt) == ("1082", "replace", "Replace the cat with a dog.")
    assert item.inputs[0].endswith("000342021.jpg")
    assert loaded.skipped[0]["where"].endswith("key 1083") and "nope.jpg" in loaded.skipped[0]["error"]


def test_novel_view_pairs(tmp_path):
    png(tmp_path / "views" / "mug_000.png")
    png(tmp_path / "views" / "mug_030.png", (0, 0, 255))
    f = jsonl(tmp_path / "nvs.jsonl", [{"id": "mug_030", "source": "views/mug_000.png", "target": "views/mug_030.png",
                                        "instruction": "Rotate the camera 30 degrees to the right.",
                                        "category": "rotate_30"},
                                       {"id": "mug_060", "source": "views/mug_000.png",
                                        "instruction": "Rotate 60 degrees."}])
    with pytest.raises(SuiteFileError, match=r"nvs\.jsonl:2: field 'target' is missing"):
        get_suite("novel_view").load(f)
    item = get_suite("novel_view").load(f, on_error="skip").items[0]
    assert item.meta["target"].endswith("mug_030.png") and item.inputs == (item.meta["source"],)


def test_repeated_ids_are_refused(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}])
    with pytest.raises(SuiteFileError, match=r"p\.jsonl prompt 2: id 'x' repeats the one at .*prompt 1"):
        get_suite("prompts").load(f)


def test_a_csv_field_over_the_csv_limit_is_a_named_row(tmp_path, capsys):
    # a field over the csv module's 131,072 characters raised a bare _csv.Error traceback
    f = write_csv(tmp_path / "dpg_bench.csv", DPG_HEADER, [
        ["a1", "x" * 140_000, "", 1, "0", "entity", "", "", "Is there?"],
        ["b2", "a cat", "", 1, "0", "entity", "", "", "Is there a cat?"]])
    with pytest.raises(SuiteFileError, match=r"dpg_bench\.csv:2: not readable CSV \(field larger than field limit"):
        get_suite("dpg").load(f)
    loaded = get_suite("dpg").load(f, on_error="skip")
    assert [i.id for i in loaded.items] == ["b2"] and loaded.skipped[0]["where"].endswith("dpg_bench.csv:2")
    from qwenimage.cli import main

    model = tmp_path / "model"
    model.mkdir()
    assert main(["eval", "dpg", "--model", str(model), "--data", str(f), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "dpg_bench.csv:2: not readable CSV" in err and "Traceback" not in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")
def test_only_regular_files_are_read(tmp_path):
    # a FIFO blocked open() forever; a link to /dev/zero was read until memory ran out
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(SuiteFileError, match=r"fifo\.jsonl: a FIFO, not a regular file"):
        get_suite("prompts").load(tmp_path / "fifo.jsonl")
    os.symlink("/dev/zero", tmp_path / "zero.jsonl")
    with pytest.raises(SuiteFileError, match=r"zero\.jsonl: a device, not a regular file"):
        get_suite("longtext").load(tmp_path / "zero.jsonl")
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "x1.txt").write_text("a dense prompt\n", encoding="utf-8")
    os.mkfifo(tmp_path / "prompts" / "x2.txt")
    with pytest.raises(SuiteFileError, match=r"x2\.txt: .*a FIFO, not a regular file"):
        get_suite("dpg").load(tmp_path / "prompts")
    assert [i.id for i in get_suite("dpg").load(tmp_path / "prompts", on_error="skip").items] == ["x1"]
    from qwenimage.training.eval.suites import base

    big = jsonl(tmp_path / "big.jsonl", [{"prompt": "a"}])
    # an edit's input image that is a link to /dev/zero (PIL would read it to the end): a named row error
    png(tmp_path / "views" / "a.png")
    os.symlink("/dev/zero", tmp_path / "views" / "b.png")
    f = jsonl(tmp_path / "nvs.jsonl", [{"id": "x", "source": "views/b.png", "target": "views/a.png",
                                        "instruction": "turn"}])
    with pytest.raises(SuiteFileError, match=r"nvs\.jsonl:1: field 'source': image .*b\.png: a device, not a regular"):
        get_suite("novel_view").load(f)
    base.MAX_FILE_BYTES, before = 4, base.MAX_FILE_BYTES
    try:
        with pytest.raises(SuiteFileError, match=r"big\.jsonl: 16 bytes, over the 4-byte limit"):
            get_suite("prompts").load(big)
    finally:
        base.MAX_FILE_BYTES = before
