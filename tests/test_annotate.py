"""`qwenimage data annotate`: the annotator's answers parsed and typed, malformed ones retried then recorded as
failures, batches appended so a resumed run skips finished rows, caption splits, and one real generate call on a
tiny random Qwen2.5-VL (the bundled Qwen2.5 tokenizer) through the batched, left-padded input path."""
import json

import pytest
import torch
from PIL import Image

from qwenimage.cli import main
from qwenimage.qwenimage_core.text_encoder import bundled_tokenizer_dir
from qwenimage.training.data import annotate as A

GOOD = ('Sure! ```json\n{"Caption": "A red poster that says \\"SALE\\" in white letters.", "Image Type": "poster", '
        '"Image Style": "flat design", "Watermark List": ["stock.com, bottom right"], "Abnormal Element": "no", '
        '"Visible Text": ["SALE"]}\n```')


def test_parse_annotation_types_the_fields_and_names_what_is_wrong():
    ann = A.parse_annotation(GOOD)
    assert ann.to_dict() == {"caption": 'A red poster that says "SALE" in white letters.', "image_type": "poster",
                             "image_style": "flat design", "watermark_list": ["stock.com, bottom right"],
                             "abnormal_element": "no", "visible_text": ["SALE"]}
    # Loose keys, a bool for yes/no, "none" as an empty list, visible text from the caption's quotes.
    ann = A.parse_annotation('{"caption": "一张海报，上面写着“通义千问”和\\"Qwen\\"", "image_type": "海报", '
                             '"imageStyle": "简约", "watermark_list": "none", "abnormal_element": true}')
    assert (ann.abnormal_element, ann.watermark_list, ann.visible_text) == ("yes", [], ["通义千问", "Qwen"])
    for answer, why in [("I cannot describe this image.", "no JSON object"),
                        ('{"Caption": "", "Image Type": "photo", "Image Style": "real"}', "caption: expected"),
                        ('{"Caption": "a cat", "Image Style": "real", "Abnormal Element": "no"}',
                         "image_type: .*missing"),
                        ('{"Caption": "a cat", "Image Type": "photo", "Image Style": "real", "Abnormal Element": '
                         '"maybe"}', "abnormal_element"),
                        ('{"Caption": "a cat", "Image Type": "photo", "Image Style": "real", "Abnormal Element": "no",'
                         ' "Watermark List": [{"x": 1}]}', "watermark_list: expected a list of strings")]:
        with pytest.raises(A.MalformedAnswer, match=why):
            A.parse_annotation(answer)


def test_caption_splits_fuse_rule_and_ratios():
    assert A.fuse_rule("Eiffel Tower, Paris 2019", "A tall iron tower under a blue sky.") == \
        "A tall iron tower under a blue sky. Eiffel Tower, Paris 2019"
    assert A.fuse_rule("a tower", "A tall iron tower.") == "A tall iron tower."   # nothing new: recaption alone
    assert A.fuse_rule("", "一座铁塔。") == "一座铁塔。" and A.fuse_rule("巴黎", "一座铁塔") == "一座铁塔。巴黎"
    ratios = A.parse_ratios("raw=1,recaption=2,fused=1")
    assert ratios == {"raw": 0.25, "recaption": 0.5, "fused": 0.25}
    picks = [A.choose_split(f"img{i}.png", ratios) for i in range(2000)]
    assert [A.choose_split(f"img{i}.png", ratios) for i in range(5)] == picks[:5]   # deterministic by key
    assert abs(picks.count("recaption") / 2000 - 0.5) < 0.05 and abs(picks.count("raw") / 2000 - 0.25) < 0.05
    assert "raw" not in {A.choose_split(f"k{i}", ratios, ["recaption", "fused"]) for i in range(200)}
    for bad in ("raw=x", "raw", "fancy=1", "raw=0"):
        with pytest.raises(ValueError, match="caption split ratios"):
            A.parse_ratios(bad)


# ---------------------------------------------------------------------------------------- the tiny model

@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    """A tiny random Qwen2.5-VL over the bundled Qwen2.5 tokenizer's vocabulary (its special token ids read from
    the tokenizer's config, so the tokenizer is loaded once, by the annotator)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with open(bundled_tokenizer_dir() / "tokenizer_config.json", encoding="utf-8") as fh:
        added = {v["content"]: int(k) for k, v in json.load(fh)["added_tokens_decoder"].items()}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=max(added.values()) + 1, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e4}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[0], window_size=112),
        image_token_id=added["<|image_pad|>"], video_token_id=added["<|video_pad|>"],
        vision_start_token_id=added["<|vision_start|>"], vision_end_token_id=added["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # weights far from init, so the answer depends on the image and every position
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g))
    d = tmp_path_factory.mktemp("annotator")
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def annotator(tiny_vl):
    return A.Annotator(str(tiny_vl), tokenizer=str(bundled_tokenizer_dir()), offline=True, dtype="float32",
                       max_new_tokens=4, retries=2,
                       min_pixels=28 * 28, max_pixels=16 * 28 * 28)


def test_real_generate_batched_with_left_padding_matches_one_by_one(annotator):
    images = [Image.new("RGB", (56, 56), "red"), Image.new("RGB", (112, 84), "blue")]   # 4 and 12 image tokens
    question = "Describe the image."   # short: the tiny model's answer then depends on the image
    batched = annotator.generate(images, [question] * 2, 0)
    alone = [annotator.generate([im], [question], 0)[0] for im in images]
    assert len(batched) == 2 and all(isinstance(a, str) for a in batched) and batched[0] != batched[1]
    assert batched == alone      # left padding: each row's answer is what it gets alone
    # A random model's answer is no JSON: asked again (sampled), then a failure with its last answer; an image the
    # processor refuses (aspect ratio over 200) fails alone, its batch-mate still asked.
    (ann, answer, error), (_, _, refused) = A._annotate_safely(annotator, [images[0], Image.new("RGB", (900, 4))])
    assert ann is None and error.startswith("malformed answer after 3 tries: no JSON object") and answer
    assert refused.startswith("error: ValueError: ") and "200" in refused


def _manifest(tmp_path, names=("good", "retry", "never")):
    colors = {"good": "red", "retry": "green", "never": "blue"}
    rows = []
    for n in names:
        Image.new("RGB", (64, 48), colors[n]).save(tmp_path / f"{n}.png")
        rows.append({"image": f"{n}.png", "caption": f"raw {n} caption", "weight": 2.0})
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows.append({"image": "bad.png", "caption": "x"})
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _scripted(annotator, monkeypatch, calls):
    """generate() answers by the image's colour: red good, green malformed once, blue always malformed."""
    def answer(im, attempt):
        color = im.getpixel((0, 0))
        if color == (255, 0, 0) or (color == (0, 128, 0) and attempt >= 1):
            return GOOD
        return '{"Caption": "cut off' if color == (0, 128, 0) else f"no json here {attempt}"

    def generate(images, questions, attempt):
        calls.append((attempt, len(images)))
        return [answer(im, attempt) for im in images]
    monkeypatch.setattr(annotator, "generate", generate)


def test_annotate_manifest_retries_records_failures_and_resumes(annotator, tmp_path, monkeypatch):
    calls = []
    _scripted(annotator, monkeypatch, calls)
    src, out = _manifest(tmp_path), tmp_path / "out" / "ann.jsonl"
    counts = A.annotate_manifest(str(src), str(out), annotator, batch=4, progress=False,
                                 ratios={"raw": 0, "recaption": 1, "fused": 0})
    assert counts == {"done": 0, "annotated": 2, "failed": 2, "skipped_bad_rows": 0}
    assert calls == [(0, 3), (1, 2), (2, 1)]     # one batch; only the malformed answers asked again
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"].rsplit("/", 1)[-1] for r in rows] == ["good.png", "retry.png"]
    r = rows[0]
    assert r["annotation"]["image_type"] == "poster" and r["annotation"]["visible_text"] == ["SALE"]
    assert r["caption_raw"] == "raw good caption" and r["caption_split"] == "recaption"
    assert r["caption"] == r["caption_recaption"] == 'A red poster that says "SALE" in white letters.'
    assert r["caption_fused"] == r["caption_recaption"] + " raw good caption" and r["weight"] == 2.0
    assert r["image"] == "../good.png"          # relative to the output's folder, as the trainer resolves it
    fails = {json.loads(line)["key"].rsplit("/", 1)[-1]: json.loads(line)
             for line in (tmp_path / "out" / "ann.failures.jsonl").read_text().splitlines()}
    assert fails["never.png"]["answer"] == "no json here 2"
    assert fails["never.png"]["error"] == "malformed answer after 3 tries: no JSON object in the answer"
    assert fails["bad.png"]["error"].startswith("unreadable image: ")
    # Resume: nothing left to do, nothing generated.
    calls.clear()
    assert A.annotate_manifest(str(src), str(out), annotator, progress=False)["done"] == 4 and calls == []
    # A run killed mid-write left a torn line: it is cut off and that row done again; failures can be redone.
    text = out.read_text().splitlines(keepends=True)
    out.write_text(text[0] + text[1][:20])
    counts = A.annotate_manifest(str(src), str(out), annotator, batch=1, progress=False, redo_failures=True)
    assert counts == {"done": 1, "annotated": 1, "failed": 2, "skipped_bad_rows": 0}
    assert calls == [(0, 1), (1, 1), (2, 1), (0, 1), (1, 1)]    # never.png three times, then retry.png twice
    assert len((tmp_path / "out" / "ann.failures.jsonl").read_text().splitlines()) == 2   # not listed twice
    assert A.annotate_manifest(str(src), str(tmp_path / "l.jsonl"), annotator, progress=False, limit=1) == \
        {"done": 0, "annotated": 0, "failed": 1, "skipped_bad_rows": 0}             # bad.png comes first by key
    assert [json.loads(line)["key"] == rows[i]["key"] for i, line in enumerate(out.read_text().splitlines())] == \
        [True, True]


def test_data_annotate_command(annotator, tiny_vl, tmp_path, monkeypatch, capsys):
    src = _manifest(tmp_path, ("good",))
    monkeypatch.setattr(A, "Annotator", lambda *a, **k: annotator)
    _scripted(annotator, monkeypatch, [])
    out = tmp_path / "a.jsonl"
    assert main(["data", "annotate", str(src), "--out", str(out), "--model", str(tiny_vl), "--no-progress",
                 "--split", "raw=1"]) == 0
    assert "1 annotated, 1 failed" in capsys.readouterr().out
    row = json.loads(out.read_text())
    assert row["caption_split"] == "raw" and row["caption"] == "raw good caption"
    monkeypatch.undo()
    assert main(["data", "annotate", str(src), "--out", str(out), "--model", str(tmp_path / "nope"), "--offline"]) == 2
    assert "error: Qwen2.5-VL annotator tokenizer" in (err := capsys.readouterr().err) and "no such folder" in err


def test_fused_caption_by_the_fuse_prompt(annotator, tmp_path, monkeypatch):
    asked = []

    def generate(images, questions, attempt):
        asked.extend(q.split("\n")[0] for q in questions)
        return ["A poster saying \"SALE\" by stock.com." if q.startswith("# Caption Fusion") else GOOD
                for q in questions]
    monkeypatch.setattr(annotator, "generate", generate)
    monkeypatch.setattr(annotator, "fuse", "model")
    src, out = _manifest(tmp_path, ("good",)), tmp_path / "f.jsonl"
    A.annotate_manifest(str(src), str(out), annotator, progress=False, ratios="fused=1")
    row = json.loads(out.read_text())
    assert asked == ["# Image Annotator", "# Caption Fusion"]
    assert row["caption"] == row["caption_fused"] == 'A poster saying "SALE" by stock.com.'
