"""`qwenimage eval` end to end on a tiny model (2 steps, 32x32): images, results.jsonl and run.json; resuming makes
only the missing images and scores only the new rows (the model is not even loaded when nothing is missing); the
same seed gives the same image whatever the batch; --compare lines up the same ids and seeds; a scorer's failure
on an image is recorded, a bad data file or changed settings stop before anything runs. Scorers here are
`module:function` plugins of this file (the interface the registered ones share)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from _models import _perturb, tiny_components
from qwenimage.cli import main
from qwenimage.qwenimage_core import pipeline as core_pipeline
from qwenimage.training.eval import generate as gen
from qwenimage.training.eval import run as eval_run
from qwenimage.training.eval.generate import Settings
from qwenimage.training.eval.suites import EvalItem, get_suite

PROMPTS = ["a red square", "a blue circle", "green text"]


def brightness(images, prompts, metadata):
    """Mean pixel value in [0, 1] (reached as test_eval_run:brightness)."""
    return [float(np.asarray(im, dtype=np.float32).mean() / 255) for im in images]


class Picky:
    """A multi-metric scorer that has no value for items whose prompt says 'text', with the reason (as a judge that
    never answered properly), and fails outright on prompts mentioning 'explode'."""

    def __init__(self, **options):
        self.failures = {}

    def __call__(self, images, prompts, metadata):
        return [0.0] * len(images)

    def metrics(self, images, prompts, metadata):
        if any("explode" in p for p in prompts):
            raise ConnectionError("judge server went away")
        self.failures = {i: "judge answered 'maybe' three times" for i, p in enumerate(prompts) if "text" in p}
        self.details = {i: {"answer": p.upper()} for i, p in enumerate(prompts)}  # what the judge said
        return {"picky": [None if i in self.failures else 1.0 for i in range(len(prompts))],
                "seen_id": [float(len(m["id"])) for m in metadata]}


picky = Picky()  # reached as test_eval_run:picky


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """Two tiny models as three ComfyUI files each: different transformers, the same text encoder and VAE."""
    from qwenimage.qwenimage_core import QwenImageTransformer, preset, save_comfyui_transformer
    from qwenimage.qwenimage_core.text_encoder import save_text_encoder_file
    from qwenimage.qwenimage_core.vae import diffusers_to_comfy
    from qwenimage.qwenimage_core.weights import save_file_atomic

    root = tmp_path_factory.mktemp("eval_models")
    transformer, vae, te = tiny_components(len(tokenizer))
    shared = [str(root / "te.safetensors"), str(root / "vae.safetensors")]
    save_text_encoder_file(te, shared[0])
    save_file_atomic({diffusers_to_comfy(k): v.contiguous() for k, v in vae.state_dict().items()}, shared[1])
    other = _perturb(QwenImageTransformer(preset("tiny", joint_attention_dim=64)), 0.1, seed=1)
    out = {}
    for name, model in (("model_a", transformer), ("model_b", other)):
        save_comfyui_transformer(model, str(root / f"{name}.safetensors"), prefix="model.diffusion_model.")
        out[name] = [str(root / f"{name}.safetensors"), *shared]
    return out


def prompt_file(tmp_path, prompts=PROMPTS):
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": p, "category": p.split()[-1]}) + "\n" for p in prompts))
    return str(f)


def eval_args(models, data, out, *extra, model="model_a"):
    return ["eval", "prompts", "--model", *models[model], "--data", data, "--out", str(out), "--steps", "2",
            "--cfg", "1", "--size", "32x32", "--images-per-prompt", "2", "--seed", "5", "-q",
            "--scorer", "test_eval_run:brightness", *extra]


def rows(run_dir):
    with open(os.path.join(run_dir, "results.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def count_generate(monkeypatch):
    calls = []
    real = core_pipeline.QwenImage.generate

    def counted(self, prompt, **kw):
        calls.append(len(kw["seed"]))
        return real(self, prompt, **kw)

    monkeypatch.setattr(core_pipeline.QwenImage, "generate", counted)
    return calls


def test_eval_command_writes_images_rows_and_run_json_then_resumes(models, tmp_path, monkeypatch, capsys):
    data = prompt_file(tmp_path)
    calls = count_generate(monkeypatch)
    assert main(eval_args(models, data, tmp_path / "out")) == 0
    run_dir = tmp_path / "out" / "prompts" / "model_a"
    assert sorted(calls) == [1, 1, 1, 1, 1, 1]  # batch 1: one image per sampling call
    info = json.loads((run_dir / "run.json").read_text())
    assert info["suite"] == "prompts" and info["model_tag"] == "model_a"
    assert info["settings"]["steps"] == 2 and info["settings"]["images_per_prompt"] == 2
    assert info["scorers"] == [{"name": "test_eval_run:brightness"}]
    items = get_suite("prompts").load(data).items
    got = rows(run_dir)
    assert [(r["id"], r["k"]) for r in got] == [(it.id, k) for it in items for k in range(2)]
    for r in got:
        it = next(i for i in items if i.id == r["id"])
        assert r["seed"] == 5 + it.seed + r["k"] and r["prompt"] == it.prompt and r["category"] == it.category
        im = Image.open(run_dir / r["image"])
        assert im.size == (32, 32) and json.loads(im.info["qwenimage"])["seed"] == r["seed"]
        assert r["metrics"]["test_eval_run:brightness"] == pytest.approx(brightness([im.convert("RGB")], [""], [{}])[0])
        assert r["failures"] == {}
    out = capsys.readouterr().out
    assert "test_eval_run:brightness:" in out and "report.html" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["overall"]["test_eval_run:brightness"] == pytest.approx(
        np.mean([r["metrics"]["test_eval_run:brightness"] for r in got]))
    assert (run_dir / "report.html").is_file() and (run_dir / "results.csv").is_file()

    # resume: one image and its row gone -> exactly that image is made and scored again
    (run_dir / got[3]["image"]).unlink()
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(got) if i != 3))
    calls.clear()
    assert main(eval_args(models, data, tmp_path / "out")) == 0
    assert calls == [1]
    again = rows(run_dir)
    assert len(again) == 6 and again[-1]["id"] == got[3]["id"] and again[-1]["k"] == got[3]["k"]
    assert again[-1]["metrics"] == pytest.approx(got[3]["metrics"])  # same seed, same image, same score

    # nothing missing: the model is not loaded at all; a torn last row (a killed run) is dropped and rescored
    monkeypatch.setattr(core_pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model for nothing"))
    with open(run_dir / "results.jsonl", "a") as fh:
        fh.write('{"id": "00000", "k"')
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    (run_dir / "results.jsonl").write_text("\n".join(lines[:-2] + lines[-1:]))  # drop a good row, keep the torn one
    assert main(eval_args(models, data, tmp_path / "out")) == 0
    assert sorted((r["id"], r["k"]) for r in rows(run_dir)) == sorted((r["id"], r["k"]) for r in got)


def test_other_settings_on_a_run_directory_are_refused(models, tmp_path, capsys):
    run_dir = tmp_path / "out" / "prompts" / "model_a"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"suite": "prompts", "model_tag": "model_a", "scorers": [],
                                                  "settings": {**Settings(steps=9).to_dict()}}))
    assert main(eval_args(models, prompt_file(tmp_path), tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "run.json: this run directory was made with other settings" in err
    assert "settings.steps: 9 there, 2 now" in err


def test_batches_give_the_same_images_and_compare_lines_up_ids_and_seeds(models, tmp_path, monkeypatch):
    data = prompt_file(tmp_path)
    calls = count_generate(monkeypatch)
    assert main(eval_args(models, data, tmp_path / "one", "--limit", "2")) == 0
    calls.clear()
    assert main(eval_args(models, data, tmp_path / "out", "--limit", "2", "--batch", "3", "--compare",
                          *models["model_b"])) == 0
    assert calls == [3, 1, 3, 1]  # each model: its 4 images in calls of up to 3
    a, b = tmp_path / "out" / "prompts" / "model_a", tmp_path / "out" / "prompts" / "model_b"
    for r in rows(a):  # a batch of 4 gives each image its own noise: the same pixels as one at a time
        assert np.array_equal(np.asarray(Image.open(a / r["image"])),
                              np.asarray(Image.open(tmp_path / "one" / "prompts" / "model_a" / r["image"])))
    ra, rb = rows(a), rows(b)
    key = lambda r: (r["id"], r["k"], r["seed"], r["prompt"])  # noqa: E731
    assert [key(r) for r in ra] == [key(r) for r in rb]
    assert not np.array_equal(np.asarray(Image.open(a / ra[0]["image"])), np.asarray(Image.open(b / rb[0]["image"])))
    assert json.loads((b / "run.json").read_text())["settings"] == json.loads((a / "run.json").read_text())["settings"]
    # an earlier run directory is reused as it is: nothing sampled for it
    calls.clear()
    seen = {}
    monkeypatch.setattr(eval_run, "write_reports", lambda run_dir, compare_dir=None: seen.update(
        run_dir=run_dir, compare_dir=compare_dir) or {})
    assert main(eval_args(models, data, tmp_path / "out", "--limit", "2", "--compare", str(b))) == 0
    assert calls == [] and seen["compare_dir"] == str(b)
    assert seen["run_dir"].endswith(os.path.join("prompts", "model_a"))
    assert (tmp_path / "out" / "prompts" / "compare_model_a_vs_model_b.html").is_file()  # the first compare's page


class FakePipe:
    """Solid images whose colour is the seed: enough to test the bookkeeping without a model."""

    def __init__(self):
        self.calls = []

    def generate(self, prompt, seed, num_images=1, references=None, width=None, height=None, **kw):
        self.calls.append((prompt, list(seed), references))
        return [Image.new("RGB", (width or 16, height or 16), (s % 256, 0, 0)) for s in seed]


def test_a_scorer_failure_is_recorded_and_the_run_goes_on(tmp_path):
    items = [EvalItem(f"i{n}", p, "c", n) for n, p in enumerate(["a cat", "some text", "a dog"])]
    pipe = FakePipe()
    specs = ["test_eval_run:brightness", "test_eval_run:picky"]
    summary = eval_run.evaluate(pipe, items, specs, str(tmp_path / "a"), Settings(steps=1, width=16, height=16),
                                report=False)
    got = {r["id"]: r for r in rows(tmp_path / "a")}
    assert got["i0"]["metrics"]["picky"] == 1.0 and got["i0"]["metrics"]["seen_id"] == 2.0
    assert got["i1"]["metrics"]["picky"] is None and got["i1"]["metrics"]["seen_id"] == 2.0
    assert got["i1"]["failures"] == {"picky": "judge answered 'maybe' three times"} and got["i2"]["failures"] == {}
    assert got["i2"]["details"] == {"test_eval_run:picky": {"answer": "A DOG"}}  # kept for the report
    assert summary["overall"]["test_eval_run:brightness"] == pytest.approx(np.mean([n / 255 / 3 for n in range(3)]))
    assert len(pipe.calls) == 3
    # a scorer that raises on one image: null with the reason for that image only; the batch's others are scored
    boom = [EvalItem("b0", "explode now", "c", 7), EvalItem("b1", "a fish", "c", 8)]
    eval_run.evaluate(pipe, boom, specs, str(tmp_path / "b"), Settings(steps=1, width=16, height=16), report=False)
    b0, b1 = rows(tmp_path / "b")
    assert b0["metrics"]["test_eval_run:picky"] is None and b0["metrics"]["test_eval_run:brightness"] > 0
    assert b0["failures"] == {"test_eval_run:picky": "scorer 'test_eval_run:picky' failed: ConnectionError: "
                                                     "judge server went away"}
    assert b1["metrics"]["picky"] == 1.0 and b1["failures"] == {}


class IdentityEdit(FakePipe):
    """An edit that returns its reference unchanged."""

    def generate(self, prompt, seed, num_images=1, references=None, **kw):
        self.calls.append((prompt, list(seed), references))
        return [references[0].copy() for _ in seed]


def test_novel_view_run_with_the_fidelity_scorer_and_report(tmp_path):
    views = tmp_path / "views"
    views.mkdir()
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(src).save(views / "a0.png")
    Image.fromarray(src).save(views / "a30.png")  # the "true" view equals the source: identity scores perfectly
    Image.fromarray(255 - src).save(views / "b30.png")
    f = tmp_path / "nvs.jsonl"
    f.write_text(json.dumps({"id": "same", "source": "views/a0.png", "instruction": "turn 30",
                             "target": "views/a30.png"})
                 + "\n" + json.dumps({"id": "other", "source": "views/a0.png", "instruction": "turn 30",
                                       "target": "views/b30.png", "category": "inverted"}) + "\n")
    suite = get_suite("novel_view")
    items = suite.load(f).items
    summary = eval_run.evaluate(IdentityEdit(), items, suite.default_scorers(items), str(tmp_path / "run"),
                                Settings(steps=1), suite="novel_view")
    got = {r["id"]: r for r in rows(tmp_path / "run")}
    assert got["same"]["inputs"] == [str(views / "a0.png")]
    assert got["same"]["metrics"]["ssim"] == pytest.approx(1.0) and got["other"]["metrics"]["ssim"] < 0.5
    assert summary["by_category"]["inverted"]["ssim"] == got["other"]["metrics"]["ssim"]
    assert (tmp_path / "run" / "report.html").is_file()


def test_processes_split_the_items_and_edits_batch_their_own_seeds(tmp_path):
    src = tmp_path / "src.png"
    Image.new("RGB", (16, 16), "white").save(src)
    items = [EvalItem(f"t{n}", f"p{n}", "c", 10 * n) for n in range(3)] + \
            [EvalItem("e0", "rotate", "c", 100, inputs=(str(src),))]
    s = Settings(images_per_prompt=2, width=16, height=16)
    pipe = FakePipe()
    assert gen.generate(pipe, items, str(tmp_path), s, batch=3, rank=1, world=2, progress=False) == 4
    # rank 1 of 2 takes items 1 and 3: t1's two images in one call, then the edit's two with its reference
    assert [(p, seeds, refs is not None) for p, seeds, refs in pipe.calls] == [
        (["p1", "p1"], [10, 11], False), ("rotate", [100, 101], True)]
    assert sorted(os.listdir(tmp_path / "images")) == ["e0_0.png", "e0_1.png", "t1_0.png", "t1_1.png"]
    assert gen.generate(pipe, items, str(tmp_path), s, batch=3, rank=1, world=2, progress=False) == 0


def test_a_missing_data_file_or_unknown_scorer_stops_before_loading(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(core_pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(eval_args(models, str(tmp_path / "gone.jsonl"), tmp_path / "out")) == 2
    assert "gone.jsonl: prompts file not found" in capsys.readouterr().err
    assert main(eval_args(models, prompt_file(tmp_path), tmp_path / "out", "--scorer", "no_such_scorer")) == 2
    assert "unknown scorer 'no_such_scorer'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "prompts" / "model_a" / "images")
    assert main(eval_args(models, prompt_file(tmp_path), tmp_path / "out", "--compare", str(tmp_path / "nope"))) == 2
    assert "nope: no such model, LoRA or run directory" in capsys.readouterr().err
    assert main(["eval", "--list"]) == 0
    assert "geneval" in capsys.readouterr().out


def test_a_suite_without_scorers_asks_for_one(models, tmp_path, monkeypatch, capsys):
    # `eval prompts` with no --scorer exited 0 with empty metrics
    monkeypatch.setattr(core_pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    args = eval_args(models, prompt_file(tmp_path), tmp_path / "out")
    assert main(args[:-2]) == 2
    err = capsys.readouterr().err
    assert "the prompts suite has no scorer of its own" in err and "give --scorer" in err
    assert not os.path.exists(tmp_path / "out" / "prompts" / "model_a")


def test_other_scorers_score_the_kept_images_again(models, tmp_path, monkeypatch, capsys):
    # adding a scorer was refused until results.jsonl was deleted by hand
    data = prompt_file(tmp_path)
    assert main(eval_args(models, data, tmp_path / "out", "--limit", "2")) == 0
    run_dir = tmp_path / "out" / "prompts" / "model_a"
    first = rows(run_dir)
    monkeypatch.setattr(core_pipeline, "load_pipeline", lambda *a, **k: pytest.fail("made the images again"))
    capsys.readouterr()
    assert main(eval_args(models, data, tmp_path / "out", "--limit", "2", "--scorer", "test_eval_run:picky")) == 0
    assert "scorers changed" in capsys.readouterr().out
    again = rows(run_dir)
    assert [(r["id"], r["k"]) for r in again] == [(r["id"], r["k"]) for r in first]
    assert all(set(r["metrics"]) == {"test_eval_run:brightness", "picky", "seen_id"} for r in again)
    assert [r["metrics"]["test_eval_run:brightness"] for r in again] == \
        [r["metrics"]["test_eval_run:brightness"] for r in first]
    kept = [json.loads(x) for x in (run_dir / "results.1.jsonl").read_text().splitlines()]
    assert kept == first   # the earlier rows are set aside, not lost
    assert json.loads((run_dir / "run.json").read_text())["scorers"] == [
        {"name": "test_eval_run:brightness"}, {"name": "test_eval_run:picky"}]


def test_images_made_elsewhere_are_scored(tmp_path, capsys):
    # scoring a user's own images needed a faked run directory, whose report showed sampling settings
    data = prompt_file(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, shade in (("00000_0.png", 10), ("00000_1.jpg", 20), ("00001.png", 30), ("notes.png", 40)):
        Image.new("RGB", (16, 16), (shade, shade, shade)).save(mine / name)
    if hasattr(os, "mkfifo"):
        os.mkfifo(mine / "00002_0.png")   # listed, never opened
    args = ["eval", "prompts", "--images", str(mine), "--data", data, "--out", str(tmp_path / "out"), "-q",
            "--scorer", "test_eval_run:brightness"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "out" / "prompts" / "images_mine"
    got = rows(run_dir)
    assert [(r["id"], r["k"], r["seed"], os.path.basename(r["image"])) for r in got] == [
        ("00000", 0, None, "00000_0.png"), ("00000", 1, None, "00000_1.jpg"), ("00001", 0, None, "00001.png")]
    assert got[2]["metrics"]["test_eval_run:brightness"] == pytest.approx(30 / 255, abs=1e-6)
    if hasattr(os, "mkfifo"):
        assert "00002_0.png: a FIFO, not a regular file" in out
    info = json.loads((run_dir / "run.json").read_text())
    assert info["settings"] is None and info["images"] == str(mine) and info["model"] is None
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "made elsewhere" in page and ">steps<" not in page and ">cfg<" not in page
    assert sorted(os.listdir(mine))[:3] == ["00000_0.png", "00000_1.jpg", "00001.png"]   # nothing moved
    assert main(args) == 0 and len(rows(run_dir)) == 3   # resumed: nothing scored twice
    capsys.readouterr()
    assert main([*args, "--model", str(mine)]) == 2
    assert "--images scores images made elsewhere: --model cannot apply" in capsys.readouterr().err
    assert main(["eval", "prompts", "--images", str(tmp_path), "--data", data, "--scorer", "test_eval_run:brightness",
                 "--out", str(tmp_path / "out")]) == 2
    assert "no image named after an item of the suite" in capsys.readouterr().err
