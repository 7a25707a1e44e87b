"""Synthetic text rendering (training/data/synthesis): line breaking and layout (inside the box, no overlapping
lines, long English and Chinese paragraphs wrapped), the glyph rule (a paragraph the font cannot draw is dropped
whole), template replacement (boxes and everything outside them unchanged; text fitted or the sample refused),
captions, determinism from the seed (any worker count), OCR read-back on clean pure renders in both languages,
the contact sheet, and that `qwenimage train` reads the output and runs a step.

Fonts are the system's: Chinese checks need a CJK font (Debian: fonts-noto-cjk or fonts-wqy-microhei, which
.ci/run installs) and are skipped with that reason without one."""
import json
import os
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from qwenimage.cli import main
from qwenimage.training.data.dataset import load_samples
from qwenimage.training.data.synthesis import captions, compositional, layout, pure, templates
from qwenimage.training.data.synthesis import fonts as fontlib
from qwenimage.training.data.synthesis import generate as gen
from qwenimage.training.data.synthesis.choose import NothingToDraw, text_and_font
from qwenimage.training.data.synthesis.corpus import Corpus, common_hanzi

EN_LONG = ("Open source software is built by people all over the world, and every great story begins with a single "
           "page. Supercalifragilisticexpialidocious words must still be cut to fit the line. ") * 3
ZH_LONG = "开源软件由世界各地的人们共同建设。“每一个伟大的故事，都从第一页开始！”（括号里的话）夜空中的每一颗星星都是一个遥远的太阳。" * 3


@pytest.fixture(scope="module")
def faces():
    found = fontlib.load_fonts(exclude=gen.FontsConfig().exclude)   # as synthesis does: no Math or Symbol faces
    if not fontlib.for_language(found, "en"):
        pytest.skip("no font with Latin letters on this machine (Debian: fonts-dejavu-core)")
    return found


@pytest.fixture(scope="module")
def en_font(faces):
    return next(f for f in fontlib.for_language(faces, "en") if not f.bold and "Oblique" not in f.style)


@pytest.fixture(scope="module")
def zh_font(faces):
    fit = fontlib.for_language(faces, "zh")
    if not fit:
        pytest.skip(f"no Chinese font on this machine: install {fontlib.CJK_PACKAGES} (Debian)")
    return next((f for f in fit if not f.bold), fit[0])


def _config(tmp_path, **kw):
    raw = {"output": str(tmp_path / "out"), "seed": 3, "sizes": [[128, 128], [192, 128]], "shard_size": 4,
           "count": {"pure": 3, "compositional": 2, "template": 1}, "min_font_size": 10}
    raw.update(kw)
    return gen.load_config(raw)


def _zh_or_en(faces):
    return {"en": 0.5, "zh": 0.5} if fontlib.for_language(faces, "zh") else {"en": 1.0}


# ------------------------------------------------------------------------------------------------- layout

def test_english_lines_break_between_words_and_fit(en_font):
    font = en_font.pil(20)
    lines = layout.break_lines(EN_LONG, font, 300)
    assert len(lines) > 6 and all(layout.ink_width(font, ln) <= 300 for ln in lines)
    words = set(EN_LONG.split())
    cut = [w for ln in lines for w in ln.split() if w not in words]
    assert cut and all(w in "Supercalifragilisticexpialidocious" for w in cut)  # only the too-long word is cut
    assert "".join(lines).replace(" ", "") == EN_LONG.replace(" ", "")


def test_chinese_lines_follow_the_kinsoku_rule(zh_font):
    font = zh_font.pil(22)
    lines = layout.break_lines(ZH_LONG, font, 260)
    assert len(lines) > 8 and "".join(lines) == ZH_LONG
    assert all(layout.ink_width(font, ln) <= 260 for ln in lines)
    assert not [ln for ln in lines if ln[0] in layout.NO_START], "a line starts with a closing mark"
    assert not [ln for ln in lines if ln[-1] in layout.NO_END], "a line ends with an opening mark"


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("columns,align", [(1, "left"), (1, "right"), (2, "center")])
def test_fitted_text_stays_in_its_box_and_lines_do_not_overlap(request, lang, columns, align):
    face = request.getfixturevalue(f"{lang}_font")
    text = EN_LONG if lang == "en" else ZH_LONG
    box = (30, 20, 470, 330)
    block = layout.fit(text, face.pil, box, max_size=60, min_size=8, align=align, columns=columns, spacing=1.2)
    assert block.size < 60 and block.box == box
    for ln in block.lines:
        assert box[0] <= ln.box[0] and ln.box[2] <= box[2] and box[1] <= ln.box[1] and ln.box[3] <= box[3]
    for a in block.lines:  # no two lines' ink boxes intersect
        for b in block.lines:
            if a is not b:
                assert a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
    image = Image.new("L", (500, 350), 255)
    layout.draw(ImageDraw.Draw(image), block, face.pil(block.size), 0)
    ys, xs = np.nonzero(np.asarray(image) < 250)
    assert box[0] <= xs.min() and xs.max() < box[2] and box[1] <= ys.min() and ys.max() < box[3]
    assert "".join(ln.text for ln in block.lines).replace(" ", "") == text.replace(" ", "")


def test_fit_shrinks_to_the_box_or_refuses(en_font):
    big = layout.fit(EN_LONG, en_font.pil, (0, 0, 800, 800), max_size=80, min_size=8)
    small = layout.fit(EN_LONG, en_font.pil, (0, 0, 300, 300), max_size=80, min_size=8)
    assert small.size < big.size
    with pytest.raises(layout.FitError, match="do not fit"):
        layout.fit(EN_LONG * 5, en_font.pil, (0, 0, 200, 100), max_size=40, min_size=12)


# ------------------------------------------------------------------------------------------------- glyphs

def test_a_paragraph_the_font_cannot_draw_is_dropped_whole(en_font):
    assert en_font.missing("Hello \ue000 world") == {"\ue000"}
    corpus = Corpus({"en": ["Plain words only.", "Tofu \ue000 here.", "More plain words."], "zh": ["。"]}, "")
    stats, rng = Counter(), random.Random(0)
    drawn = [text_and_font(rng, corpus, [en_font], "en", stats, sentences=(1, 1))[0] for _ in range(30)]
    assert all("\ue000" not in s for p in drawn for s in p)
    assert stats["dropped: glyph missing"] > 0
    bad = Corpus({"en": ["Only \ue000 tofu."], "zh": ["。"]}, "")
    with pytest.raises(NothingToDraw, match="lacks"):
        text_and_font(random.Random(0), bad, [en_font], "en", Counter(), sentences=(1, 1))


def test_unrenderable_characters_never_reach_the_dataset(tmp_path, faces):
    en = fontlib.for_language(faces, "en")  # a character no English face here maps (DejaVu draws some emoji)
    bad = next(c for c in ("\U0001F600", "\ue000", "\u0378") if not any(ord(c) in f.cmap for f in en))
    corpus = tmp_path / "en.txt"
    corpus.write_text(f"Good line one.\nBad line {bad} here.\nGood line two.\n", encoding="utf-8")
    cfg = _config(tmp_path, languages={"en": 1.0}, corpus={"en": [str(corpus)]},
                  count={"pure": 6, "compositional": 0, "template": 0})
    summary = gen.generate(cfg, progress=False)
    rows = [json.loads(x) for x in open(os.path.join(cfg.output, "manifest.jsonl"), encoding="utf-8")]
    assert len(rows) == 6 and not any(bad in r["text"] or bad in r["caption"] for r in rows)
    assert summary["dropped_or_refused"]["dropped: glyph missing"] > 0


def test_fonts_report_what_to_install_for_chinese():
    latin_only = [fontlib.Font("x.ttf", 0, "Latin", "Regular", frozenset(fontlib.LATIN))]
    with pytest.raises(fontlib.FontError, match="fonts-noto-cjk"):
        fontlib.require(latin_only, "zh")


def test_common_hanzi_list_ships():
    chars = common_hanzi()
    assert len(chars) == 3500 and len(set(chars)) == 3500 and chars[:4] == "一乙二十"
    s = "".join(Corpus({"en": ["x"], "zh": ["x"]}, chars).coverage(random.Random(0)))
    assert set(s) - {"、", "。"} <= set(chars)


# ---------------------------------------------------------------------------------------------- templates

def test_shipped_templates_replace_text_and_keep_the_layout(en_font):
    for path in templates.shipped():
        t = templates.load(path)
        base, _ = templates.fill(t, {}, en_font)
        short = {"title": "Spring garden", "label": "Spring garden", "number": "$12.50", "date": "2026-05-01"}
        texts = {s.name: short.get(s.fill, "Fresh bread every day.") for s in t.slots}   # a price slot is short
        image, blocks = templates.fill(t, texts, en_font)
        assert [b.box for b in blocks] == [s.box for s in t.slots]          # the boxes did not move
        for slot, block in zip(t.slots, blocks):
            assert block.text.replace("\n", " ") == texts[slot.name] and slot.min_size <= block.size <= slot.size
            for ln in block.lines:
                x0, y0, x1, y1 = slot.box
                assert x0 <= ln.box[0] and ln.box[2] <= x1 and y0 <= ln.box[1] and ln.box[3] <= y1
        # outside the slots' boxes not a pixel changed: shapes, background and alignment are the template's
        outside = np.ones((t.size[1], t.size[0]), bool)
        for s in t.slots:
            outside[s.box[1]:s.box[3], s.box[0]:s.box[2]] = False
        assert (np.asarray(base)[outside] == np.asarray(image)[outside]).all(), t.name


def test_text_too_long_for_a_slot_is_refused(en_font):
    t = templates.load(os.path.join(templates.HERE, "slide_title.json"))
    title = next(s for s in t.slots if s.name == "title")
    block = templates.fit_slot(title, "A much longer title that has to shrink", en_font)
    assert title.min_size <= block.size < title.size                       # shrunk within the limits
    with pytest.raises(templates.TemplateRefused, match="'title'"):
        templates.fill(t, {"title": EN_LONG}, en_font)


def test_a_bad_template_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "size": [200, 100], "slots": [{"name": "a", "box": [0, 0, 300, 50]}]}))
    with pytest.raises(templates.TemplateError, match=r"bad.json: slots\[0\].box"):
        templates.load(str(bad))


def test_compositional_uses_the_given_backgrounds(tmp_path, en_font):
    photo = Image.new("RGB", (300, 200), (200, 40, 160))            # a magenta "photo" no procedural scene has
    os.makedirs(tmp_path / "bg" / "sub")
    photo.save(tmp_path / "bg" / "sub" / "room.jpg", quality=95)
    files = compositional.background_files(str(tmp_path / "bg"))
    r = compositional.render(random.Random(0), Corpus.load(), [en_font], "en", (256, 256), Counter(), backgrounds=files)
    assert r.facts["scene"] == "photo" and r.facts["medium"] in compositional.MEDIA
    px = np.asarray(r.image).reshape(-1, 3).astype(int)
    magenta = (abs(px - [200, 40, 160]).max(1) < 40).mean()
    assert 0.1 < magenta < 0.9                                         # the photo around, the medium on it
    assert "photograph" in captions.caption(r, "en", random.Random(0))


# ------------------------------------------------------------------------------------------------ captions

def test_captions_quote_the_text_in_english_and_chinese(faces, en_font):
    corpus = Corpus.load()
    r = pure.render(random.Random(1), corpus, [en_font], "en", (256, 256), Counter())
    for lang in ("en", "zh"):
        cap = captions.caption(r, lang, random.Random(0))
        assert r.texts[0].rstrip(".") in cap
    assert "background" in captions.caption(r, "en", random.Random(0))
    assert "背景" in captions.caption(r, "zh", random.Random(0))
    r = compositional.render(random.Random(2), corpus, [en_font], "en", (256, 256), Counter())
    assert r.texts[0].rstrip(".") in captions.caption(r, "en", random.Random(0))
    assert captions.tags(r) == {"language": "en", "kind": "compositional", "subcategory": r.facts["medium"]}


# ------------------------------------------------------------------------------------ the run, determinism

def test_same_seed_same_bytes_any_worker_count(tmp_path, faces):
    langs = _zh_or_en(faces)
    a = _config(tmp_path / "a", languages=langs)
    gen.generate(a, progress=False)
    b = _config(tmp_path / "b", languages=langs, workers=2)
    gen.generate(b, progress=False)
    c = _config(tmp_path / "c", languages=langs, seed=4, count={"pure": 1, "compositional": 1, "template": 0})
    gen.generate(c, progress=False)

    def files(cfg):
        rows = [json.loads(x) for x in open(os.path.join(cfg.output, "manifest.jsonl"), encoding="utf-8")]
        return rows, [open(os.path.join(cfg.output, r["image"]), "rb").read() for r in rows]

    (ra, ia), (rb, ib), (rc, ic) = files(a), files(b), files(c)
    assert ra == rb and ia == ib
    assert not set(ia) & set(ic)
    assert {r["category"].split("/")[1] for r in ra} == {"pure", "compositional", "template"}
    assert sorted(os.listdir(a.output)) == ["manifest.jsonl", "shard-00000", "shard-00001", "synth.json"]
    shard = [json.loads(x) for x in open(os.path.join(a.output, "shard-00001", "manifest.jsonl"), encoding="utf-8")]
    assert [r["image"] for r in shard] == ["000004.png", "000005.png"]
    # --ocr picks the first sample of each kind and language from the dataset's own plan, re-rendered exactly
    from qwenimage.training.data.synthesis import review

    jobs = review.dataset_jobs(gen.Synthesizer(a), gen.plan(a), 1)
    assert sorted(ra[i]["category"] for i, _, _ in jobs) == sorted({r["category"] for r in ra})
    r, row, _ = gen.Synthesizer(a).make(jobs[0][0], jobs[0][1])
    assert row["caption"] == ra[jobs[0][0]]["caption"]


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"sizes\[0\]"):
        _config(tmp_path, sizes=[[100, 128]])
    with pytest.raises(ValueError, match="languages"):
        _config(tmp_path, languages={"fr": 1.0})
    with pytest.raises(ValueError, match="count.bogus"):
        _config(tmp_path, count={"bogus": 1})


def test_ocr_reads_clean_pure_renders_back(faces, en_font, zh_font):
    pytest.importorskip("rapidocr", reason="OCR read-back needs the data extra (rapidocr, onnxruntime)")
    from qwenimage.training.data.synthesis import quality

    corpus = Corpus.load()
    for lang, font in (("en", en_font), ("zh", zh_font)):
        scores = [quality.score(pure.render(random.Random(k), corpus, [font], lang, (448, 320), Counter(),
                                            min_size=20)) for k in range(1)]
        assert min(scores) >= 0.95, (lang, scores)
    assert quality.char_accuracy("Helo world", "Hello, world!") == pytest.approx(0.9)


def test_output_trains_and_the_command_writes_a_contact_sheet(tmp_path, faces, tokenizer, capsys):
    toml = tmp_path / "synth.toml"
    toml.write_text(f'output = "{tmp_path / "data"}"\nseed = 1\nsizes = [[128, 128]]\nmin_font_size = 10\n'
                    f'languages = {json.dumps(_zh_or_en(faces)).replace(":", " =")}\n'
                    "[count]\npure = 4\ncompositional = 3\ntemplate = 1\n")
    assert main(["data", "synth", str(toml), "--no-progress"]) == 0
    assert "8 images" in capsys.readouterr().out
    assert main(["data", "synth", str(toml), "--preview", "1"]) == 0
    sheet = Image.open(tmp_path / "data" / "preview.png")
    assert sheet.width > 300 and sheet.height > 3 * 300                       # a row per kind
    assert main(["data", "synth", str(toml), "--set", "count.pure=-1"]) == 2
    assert "count.pure" in capsys.readouterr().err

    samples = load_samples(tmp_path / "data" / "manifest.jsonl", on_error="error")
    assert len(samples) == 8 and {s.category.split("/")[1] for s in samples} == {"pure", "compositional", "template"}
    models = _tiny_te_and_vae(tmp_path / "models", len(tokenizer))
    train = tmp_path / "train.toml"
    train.write_text(f"""[model]
preset = "tiny"
preset_overrides = {{ joint_attention_dim = 64 }}
vae = "{models['vae']}"
text_encoder = "{models['text_encoder']}"
[data]
path = "{tmp_path / 'data' / 'manifest.jsonl'}"
area = 4096
batch_size = 2
cache_dir = "{tmp_path / 'cache'}"
[train]
mode = "pretrain"
steps = 1
[output]
dir = "{tmp_path / 'run'}"
formats = ["comfyui"]
[logging]
tensorboard = false
progress = false
""")
    assert main(["train", str(train)]) == 0
    assert os.path.isfile(tmp_path / "run" / "qwen_image_trained_comfyui.safetensors")


def _tiny_te_and_vae(root, vocab_size) -> dict:
    """A random tiny text encoder (with the tokenizer beside it) and VAE: all that pretraining reads."""
    import shutil

    import torch
    import transformers
    from _tiny import TOKENIZER_DIR, tiny_te_config

    from qwenimage.qwenimage_core import QwenImageVAE, VAEConfig, save_vae
    from qwenimage.qwenimage_core.text_encoder import save_text_encoder_file

    torch.manual_seed(0)
    os.makedirs(root / "te")
    save_text_encoder_file(transformers.Qwen2_5_VLForConditionalGeneration(tiny_te_config(vocab_size)).eval(),
                           str(root / "te" / "te.safetensors"))
    shutil.copytree(TOKENIZER_DIR, root / "te" / "qwen25_tokenizer")
    save_vae(QwenImageVAE(VAEConfig.tiny()), root / "vae")
    return {"text_encoder": str(root / "te" / "te.safetensors"), "vae": str(root / "vae")}


# ------------------------------------------------------------------------------------- corpus and inputs

def test_titles_and_labels_are_whole_phrases_never_cut():
    # Chinese titles were sentences cut mid-word: 设计团, 图书馆工, 下雨的午, 所有访客请在前台登
    from qwenimage.training.data.synthesis.corpus import builtin_words

    corpus = Corpus.load()
    zh, en = set(builtin_words("zh")), set(builtin_words("en"))
    titles = [corpus.phrase(random.Random(k), "zh", (2, 6)) for k in range(300)]
    labels = [corpus.phrase(random.Random(k), "zh", (1, 3)) for k in range(300)]
    assert set(titles) <= zh and set(labels) <= zh and not {"设计团", "图书馆工", "下雨的午"} & set(titles + labels)
    assert all(4 <= len(t) <= 12 for t in titles) and all(2 <= len(t) <= 6 for t in labels)
    assert all(2 <= len(t.split()) <= 6 for t in (corpus.phrase(random.Random(k), "en", (2, 6)) for k in range(300)))
    assert {corpus.phrase(random.Random(k), "en", (1, 3)) for k in range(300)} <= en


def test_the_built_in_corpus_is_large_and_users_add_theirs(tmp_path):
    # 41 English and 42 Chinese sentences were far too few; a user's word lists were not taken
    corpus = Corpus.load()
    for lang in ("en", "zh"):
        assert len(corpus.sentences[lang]) >= 200 and len(set(corpus.sentences[lang])) == len(corpus.sentences[lang])
    (tmp_path / "titles.txt").write_text("# mine\n春季新品\n夏日特饮\n春季新品\n", encoding="utf-8")
    (tmp_path / "lines.txt").write_text("The ship sails at dawn.\n", encoding="utf-8")
    cfg = gen.add_text_files(_config(tmp_path), ["en=" + str(tmp_path / "lines.txt")],
                             ["zh=" + str(tmp_path / "titles.txt")])
    mine = Corpus.load({"en": cfg.corpus.en, "zh": cfg.corpus.zh}, {"en": cfg.corpus.en_words,
                                                                   "zh": cfg.corpus.zh_words})
    assert mine.sentences["en"] == ["The ship sails at dawn."] and mine.words["zh"] == ("春季新品", "夏日特饮")
    assert {mine.phrase(random.Random(k), "zh", (1, 3)) for k in range(50)} == {"春季新品", "夏日特饮"}
    with pytest.raises(ValueError, match=r"--words 'fr=x.txt': give LANG=FILE"):
        gen.add_text_files(_config(tmp_path), (), ["fr=x.txt"])


def test_a_slide_never_repeats_a_bullet(en_font):
    # with a small corpus one slide showed the same bullet twice
    t = templates.load(os.path.join(templates.HERE, "slide_bullets.json"))
    corpus = Corpus({"en": ["Fresh bread daily.", "Hot coffee here.", "Open until nine.", "Free wifi."], "zh": ["x"]},
                    common_hanzi())
    for k in range(30):
        r = templates.render(random.Random(k), corpus, [en_font], "en", [t], Counter())
        bullets = [s["text"] for s in r.facts["slots"] if s["name"].startswith("point")]
        assert len(set(bullets)) == 3, (k, bullets)


def test_missing_font_folders_are_named(tmp_path, capsys):
    # fonts.dirs = ["/nonexistent"] said "no font among 0 found" without naming the folder
    with pytest.raises(fontlib.FontError, match=r"fonts.dirs: /nonexistent: no such folder"):
        fontlib.load_fonts(["/nonexistent"])
    with pytest.raises(fontlib.FontError, match=r"fonts.files: .*gone.ttf: no such file"):
        fontlib.load_fonts(files=[str(tmp_path / "gone.ttf")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(fontlib.FontError, match=r"no font among 0 found in .*empty can draw 'en'"):
        gen.Synthesizer(_config(tmp_path, fonts={"dirs": [str(tmp_path / "empty")]}, languages={"en": 1.0}))
    toml = tmp_path / "synth.toml"
    toml.write_text(f'output = "{tmp_path / "data"}"\n[count]\npure = 1\n[fonts]\ndirs = ["/nonexistent"]\n')
    assert main(["data", "synth", str(toml), "--no-progress"]) == 2
    assert "fonts.dirs: /nonexistent: no such folder" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are a POSIX thing")
def test_only_regular_files_are_read(tmp_path, faces):
    # a FIFO named .png among the backgrounds (or .ttf among the fonts, or a corpus file) blocked the reader
    (tmp_path / "bg").mkdir()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "bg" / "a.png")
    os.mkfifo(tmp_path / "bg" / "b.png")
    os.symlink("/dev/zero", tmp_path / "bg" / "c.jpg")
    assert compositional.background_files(str(tmp_path / "bg")) == [str(tmp_path / "bg" / "a.png")]
    (tmp_path / "fonts").mkdir()
    real = next(f.path for f in fontlib.for_language(faces, "en"))
    os.symlink(real, tmp_path / "fonts" / "real.ttf")
    os.mkfifo(tmp_path / "fonts" / "pipe.ttf")
    assert fontlib.font_files([str(tmp_path / "fonts")]) == [str(tmp_path / "fonts" / "real.ttf")]
    os.mkfifo(tmp_path / "corpus.txt")
    from qwenimage.training.data.synthesis.corpus import CorpusError

    with pytest.raises(CorpusError, match=r"corpus.txt: a FIFO, not a regular file"):
        Corpus.load({"en": [str(tmp_path / "corpus.txt")]})
