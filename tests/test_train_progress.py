"""What `qwenimage train` shows and keeps (issue 25): the loss on the bar for supervised modes; for GRPO the
rollouts' reward (mean, std, min, max), KL and clip fraction, one line per iteration and the held-out reward, and
no meaningless loss; every step in output.dir/metrics.jsonl without TensorBoard; the final validation inside the
final checkpoint; reward plugins found beside the config and in the working folder."""
import json
import os
import re

import pytest
import torch

from _models import write_tiny_models

from qwenimage.cli import main
from qwenimage.training.data.synthetic import make_shapes_dataset
from qwenimage.training.rewards.base import build

PLUGIN = '''
import numpy as np


def blueness(images, prompts, metadata):
    """Blue minus the other channels' mean, in [-1, 1]."""
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
        out.append(float((a[..., 2] - (a[..., 0] + a[..., 1]) / 2).mean()))
    return out
'''


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("progress")
    paths = write_tiny_models(root / "models", len(tokenizer))
    make_shapes_dataset(root / "data", n=4, seed=3)
    (root / "prompts.txt").write_text("a red square\na blue circle\n")
    return {"root": root, "models": paths, "data": str(root / "data"), "prompts": str(root / "prompts.txt")}


def _toml(sections: dict) -> str:
    def value(v):
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)
    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in body.items())
                   for name, body in sections.items())


def _rows(out):
    with open(out / "metrics.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_supervised_run_shows_the_loss_and_keeps_every_step_in_jsonl(world, tmp_path, capsys):
    m, out = world["models"], tmp_path / "out"
    toml = tmp_path / "c.toml"
    toml.write_text(_toml({
        "model": {"preset": "tiny", "preset_overrides": {"joint_attention_dim": 64}, "vae": m["vae"],
                  "text_encoder": m["text_encoder"]},
        "data": {"path": world["data"], "area": 4096, "batch_size": 2, "cache_dir": str(world["root"] / "cache")},
        "train": {"mode": "pretrain", "steps": 3}, "optimizer": {"lr": 1e-3},
        "output": {"dir": str(out), "save_every": 2},
        "logging": {"tensorboard": False, "progress": True}}))
    assert main(["train", str(toml)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"train: 100%.*3/3.*loss=\d+\.\d{4}", err), err
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 and r["lr"] == 1e-3 for r in rows)
    # resumed from step 2 after a crash that had logged step 3 (and half a line): no row twice, none lost
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')
    assert main(["train", str(toml), "--resume", str(out / "checkpoints" / "step-00000002"),
                 "--set", "train.steps=4"]) == 0
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4]


def test_grpo_shows_reward_kl_and_clip_per_iteration_and_saves_the_final_validation(world, tmp_path, capsys,
                                                                                     monkeypatch):
    """A plugin reward in the config's folder (not importable otherwise), run from another working folder."""
    m, conf, out = world["models"], tmp_path / "conf", tmp_path / "out"
    conf.mkdir()
    (conf / "progress_blue_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(world["root"])
    toml = conf / "grpo.toml"
    toml.write_text(_toml({
        "model": {"path": m["diffusion_model"], "vae": m["vae"], "text_encoder": m["text_encoder"]},
        "data": {"path": world["prompts"], "batch_size": 2},
        "train": {"mode": "grpo", "weights": "lora", "steps": 2, "grad_accum": 2},
        "lora": {"rank": 2, "alpha": 2.0},
        "rl": {"rewards": ["progress_blue_plugin:blueness"], "group_size": 4, "groups": 1, "steps": 4, "width": 32,
               "height": 32, "cfg": 1.0, "beta": 0.01},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
        "validation": {"prompts": ["a blue square"], "seeds": [0], "width": 32, "height": 32, "steps": 4,
                       "cfg": 1.0},
        "output": {"dir": str(out), "save_every": 1000},
        "logging": {"tensorboard": False, "progress": True}}))
    assert main(["train", str(toml)]) == 0
    captured = capsys.readouterr()
    number = r"-?\d+\.\d+"
    for k in (0, 1):
        assert re.search(rf"iteration {k} \(step {k + 1}\): reward mean {number}, std {number}, min {number}, "
                         rf"max {number}; KL \d[\d.e+-]*; clip fraction {number}", captured.out), captured.out
    assert re.search(rf"held-out reward at step 0: {number}", captured.out)
    assert re.search(rf"held-out reward at step 2: {number}", captured.out)
    assert "reward=" in captured.err and "clip=" in captured.err and "loss=" not in captured.err, captured.err
    rows = [r for r in _rows(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all({"reward", "reward_std", "reward_min", "reward_max", "kl", "clip_frac"} <= set(r) for r in rows)
    assert all(r["reward_min"] <= r["reward"] <= r["reward_max"] for r in rows)
    held_out = {r["step"]: r["validation/reward"] for r in _rows(out) if "validation/reward" in r}
    assert set(held_out) == {0, 2}
    # the final validation ran before the last checkpoint, which keeps its held-out reward
    (last,) = os.listdir(out / "checkpoints")
    state = json.loads((out / "checkpoints" / last / "state.json").read_text())
    assert state["metrics"]["reward"] == {"0": held_out[0], "2": held_out[2]}


def test_reward_plugins_load_from_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "progress_cwd_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    name, fn = build("progress_cwd_plugin:blueness")
    from PIL import Image

    assert fn([Image.new("RGB", (4, 4), (0, 0, 255))], ["x"], [{}]) == [1.0]
    with pytest.raises(ValueError, match=r"progress_nowhere:fn.*cannot import it.*looked in the installed modules "
                                         rf"and in .*{re.escape(str(tmp_path))}"):
        build("progress_nowhere:fn")


def test_without_tensorboard_installed_metrics_still_go_to_jsonl(world, tmp_path, monkeypatch):
    """logging.tensorboard on (the default) but the package missing: the run logs nowhere else and must not fail
    on the validation images; metrics.jsonl has every step and the validation."""
    import accelerate.tracking

    from qwenimage.training.config import load_config
    from qwenimage.training.trainer import Trainer

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    m, out = world["models"], tmp_path / "out"
    cfg = load_config({
        "model": {"preset": "tiny", "preset_overrides": {"joint_attention_dim": 64}, "vae": m["vae"],
                  "text_encoder": m["text_encoder"]},
        "data": {"path": world["data"], "area": 4096, "batch_size": 2, "cache_dir": str(world["root"] / "cache")},
        "train": {"mode": "pretrain", "steps": 2}, "output": {"dir": str(out), "save_every": 1000},
        "validation": {"prompts": ["a red square"], "width": 32, "height": 32, "steps": 2, "cfg": 1.0},
        "logging": {"tensorboard": True, "progress": False}})
    Trainer(cfg).run()
    assert not any("tfevents" in f for _, _, fs in os.walk(out) for f in fs)
    assert [r["step"] for r in _rows(out)] == [1, 2]
    assert os.listdir(out / "validation" / "step-00000002") == ["00-seed0.png"]


def test_wandb_is_a_tracker_when_installed_and_named_when_not(monkeypatch, caplog):
    """logging.wandb adds Weights & Biases to accelerate's trackers when the package is there; when it is not, the
    run is told once how to get it and logs to metrics.jsonl (and TensorBoard) only."""
    import importlib.util

    from qwenimage.training import trainer
    from qwenimage.training.config import load_config

    cfg = load_config({"model": {"preset": "tiny"}, "data": {"path": "x"}, "train": {"mode": "pretrain"},
                       "logging": {"tensorboard": True, "wandb": True}})
    real = importlib.util.find_spec
    monkeypatch.setattr(trainer, "_SAID_MISSING", set())
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n in ("wandb", "tensorboard")
                        else real(n, *a))
    assert trainer.trackers(cfg) == ["tensorboard", "wandb"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else object())
    with caplog.at_level("WARNING", logger="qwenimage.training"):
        assert trainer.trackers(cfg) == ["tensorboard"]
        assert trainer.trackers(cfg) == ["tensorboard"]
    said = [r.getMessage() for r in caplog.records if "wandb" in r.getMessage()]
    assert len(said) == 1 and "pip install wandb" in said[0]
