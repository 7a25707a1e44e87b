"""Hostile inputs to the trainer (issue 17 item 6): non-finite numbers in the config, a loss that goes NaN,
non-finite weights about to be written, malformed optimiser settings, a truncated JPEG that passes the up-front
check, a FIFO named x.png, and a full disk during a checkpoint."""
import io
import json
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from qwenimage.cli import main
from qwenimage.training import checkpointing
from qwenimage.training.data.cache import CacheSettings, CachedDataset, build_cache, missing
from qwenimage.training.config import ConfigError, load_config
from qwenimage.training.data.dataset import DataError, load_samples
from qwenimage.training.guards import TrainingStopped
from qwenimage.training.data.synthetic import make_shapes_dataset

OK = {"model": {"preset": "tiny"}, "data": {"path": "d"}, "train": {"mode": "pretrain"}}


def _with(**sections):
    return {**OK, **{k: {**OK.get(k, {}), **v} for k, v in sections.items()}}


# ------------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("sections, message", [
    ({"optimizer": {"lr": float("inf")}}, r"optimizer\.lr: inf is not a finite number"),
    ({"optimizer": {"betas": [0.9, float("nan")]}}, r"optimizer\.betas\[1\]: nan is not a finite number"),
    ({"model": {"preset": "tiny", "preset_overrides": {"rope_theta": float("-inf")}}},
     r"model\.preset_overrides\.rope_theta: -inf"),
    ({"optimizer": {"betas": [0.9]}}, r"optimizer\.betas: expected two numbers in \[0, 1\)"),
    ({"optimizer": {"betas": [0.9, 0.99, 0.999]}}, r"optimizer\.betas: expected two numbers"),
    ({"optimizer": {"betas": [0.9, 1.5]}}, r"optimizer\.betas: expected two numbers"),
    ({"train": {"mode": "pretrain", "max_grad_norm": -1.0}}, r"train\.max_grad_norm: must be 0 or more"),
    ({"optimizer": {"eps": 0.0}}, r"optimizer\.eps: must be positive"),
    ({"train": {"mode": "pretrain", "max_nonfinite_steps": 0}}, r"train\.max_nonfinite_steps: must be positive"),
])
def test_config_refuses_non_finite_and_malformed_numbers(sections, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_with(**sections))


@pytest.mark.parametrize("override, message", [("optimizer.lr=inf", r"optimizer\.lr: inf is not a finite"),
                                               ("optimizer.lr=nan", r"optimizer\.lr: nan is not a finite"),
                                               ("train.max_grad_norm=-1", r"train\.max_grad_norm: must be 0"),
                                               ("optimizer.betas=[0.9]", r"optimizer\.betas: expected two")])
def test_train_command_refuses_bad_overrides_in_one_line(tmp_path, capsys, override, message):
    import re

    toml = tmp_path / "c.toml"
    toml.write_text('[model]\npreset = "tiny"\n[data]\npath = "d"\n[train]\nmode = "pretrain"\n')
    assert main(["train", str(toml), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


# ---------------------------------------------------------------------------------------------------- data

def _without_hanging(fn, fifos):
    """fn() in a thread: a FIFO blocks open() until a writer comes, so a regression must fail the test rather than
    hang the suite. On a timeout each FIFO gets a writer that closes at once (EOF) and the test fails."""
    result = {}
    t = threading.Thread(target=lambda: result.update(r=fn()), daemon=True)
    t.start()
    t.join(timeout=60)
    if t.is_alive():
        for path in fifos:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader on this one
                pass
        pytest.fail("a FIFO was opened and the reader hung")
    return result["r"]


def test_a_fifo_named_png_is_skipped_without_opening(tmp_path):
    make_shapes_dataset(tmp_path / "d", n=3, seed=0)
    os.mkfifo(tmp_path / "d" / "x.png")
    (tmp_path / "d" / "x.txt").write_text("a fifo")
    os.mkfifo(tmp_path / "d" / "y.txt")  # a FIFO caption beside a good image
    Image.new("RGB", (64, 64)).save(tmp_path / "d" / "y.png")
    samples, report = _without_hanging(lambda: load_samples(tmp_path / "d", report=True),
                                       [tmp_path / "d" / "x.png", tmp_path / "d" / "y.txt"])
    assert len(samples) == 3
    assert any("x.png: image: a FIFO" in p for p in report.skipped), report.skipped
    assert any("y.txt: caption: a FIFO" in p for p in report.skipped), report.skipped


def test_a_fifo_in_a_manifest_is_skipped(tmp_path):
    make_shapes_dataset(tmp_path / "d", n=2, seed=0, manifest=True)
    os.mkfifo(tmp_path / "d" / "f.png")
    with open(tmp_path / "d" / "manifest.jsonl", "a") as fh:
        fh.write(json.dumps({"image": "f.png", "caption": "x"}) + "\n")
    samples, report = _without_hanging(lambda: load_samples(tmp_path / "d" / "manifest.jsonl", report=True),
                                       [tmp_path / "d" / "f.png"])
    assert len(samples) == 2 and "f.png: a FIFO" in report.skipped[0]


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * 0.7)])


@pytest.fixture(scope="module")
def encoders(tokenizer):
    from _tiny import tiny_text_encoder

    from qwenimage.qwenimage_core.text_encoder import QwenTextEncoder, default_image_processor
    from qwenimage.qwenimage_core.vae import QwenImageVAE, VAEConfig

    torch.manual_seed(0)
    return QwenImageVAE(VAEConfig.tiny()).eval(), QwenTextEncoder(tiny_text_encoder(len(tokenizer)), tokenizer,
                                                                 default_image_processor())


def test_a_truncated_jpeg_is_skipped_at_caching_with_on_error_skip(tmp_path, encoders, caplog):
    vae, te = encoders
    make_shapes_dataset(tmp_path / "d", n=3, seed=1)
    _truncated_jpeg(tmp_path / "d" / "broken.jpg")
    (tmp_path / "d" / "broken.txt").write_text("a broken picture")
    samples = load_samples(tmp_path / "d")
    assert len(samples) == 4  # the header check passes it
    settings = CacheSettings(area=64 * 64, dtype="float32")
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING", logger="qwenimage.training"):
        assert build_cache(samples, cache, settings, vae, te, progress=False, on_error="skip") == 3
    assert any("broken.jpg" in r.getMessage() for r in caplog.records)
    assert missing(samples, settings, cache, on_error="skip") == []  # not tried again on the next run
    broken = [i for i, s in enumerate(samples) if s.image.endswith("broken.jpg")]
    assert missing(samples, settings, cache, on_error="error") == broken
    with pytest.raises(DataError, match=r"broken\.jpg: cannot be cached: .*truncated"):
        build_cache(samples, cache, settings, vae, te, progress=False)  # on_error="error": tried, and named
    ds = CachedDataset(samples, cache, settings)
    assert len(ds) == 3 and len(ds.skipped) == 1 and "broken.jpg" in ds.skipped[0]
    assert all("broken" not in s.image for s in ds.samples)
    assert ds[2]["latents"].shape[0] == 16


# --------------------------------------------------------------------------------------------- checkpoints

def _ckpt(root, step, weights, **kw):
    return checkpointing.save_checkpoint(root, step, weights=weights, optimizer={"state": {}}, scheduler={},
                                         ema=kw.get("ema"), state={"step": step}, keep_last=3)


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    good = {"a.weight": torch.ones(3), "b.weight": torch.zeros(2)}
    _ckpt(tmp_path, 1, good)
    bad = {**good, "b.weight": torch.tensor([0.0, float("nan")])}
    with pytest.raises(TrainingStopped, match=r"weight 'b\.weight' has 1 non-finite"):
        _ckpt(tmp_path, 2, bad)
    with pytest.raises(TrainingStopped, match=r"'a\.weight'.*\(EMA\)|\(EMA\).*'a\.weight'"):
        _ckpt(tmp_path, 2, good, ema={"a.weight": torch.tensor([float("inf")])})
    assert sorted(os.listdir(tmp_path)) == ["step-00000001"]


def test_a_full_disk_says_which_file_and_that_the_previous_checkpoint_is_intact(tmp_path, monkeypatch):
    weights = {"a.weight": torch.ones(3)}
    first = _ckpt(tmp_path, 1, weights)

    def full_disk(obj, path):  # what torch.save raised on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:626] . basic_ios::clear: iostream error")
    monkeypatch.setattr(checkpointing.torch, "save", full_disk)
    with pytest.raises(checkpointing.CheckpointWriteError) as e:
        _ckpt(tmp_path, 2, {"a.weight": torch.full((3,), 2.0)})
    msg = str(e.value)
    assert "step-00000002.tmp" in msg and "optimizer.pt" in msg and "iostream error" in msg
    assert f"the previous checkpoint {first} is intact" in msg
    assert sorted(os.listdir(tmp_path)) == ["step-00000001"]  # no partial folder left
    monkeypatch.undo()
    assert torch.equal(checkpointing.load_checkpoint(first)["weights"]["a.weight"], torch.ones(3))


def test_a_damaged_checkpoint_is_a_named_error(tmp_path):
    path = _ckpt(tmp_path, 1, {"a.weight": torch.ones(3)})
    with open(os.path.join(path, "weights.safetensors"), "r+b") as fh:
        fh.truncate(40)
    with pytest.raises(ValueError, match=r"weights\.safetensors"):
        checkpointing.load_checkpoint(path)


# ------------------------------------------------------------------------------------------- training loop

@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    from _models import write_tiny_models

    root = tmp_path_factory.mktemp("hardening")
    paths = write_tiny_models(root / "models", len(tokenizer))
    make_shapes_dataset(root / "data", n=4, seed=3)
    return {"root": root, "models": paths, "data": str(root / "data")}


def _config(world, out, **sections):
    base = {"model": {"preset": "tiny", "preset_overrides": {"joint_attention_dim": 64},
                      "vae": world["models"]["vae"], "text_encoder": world["models"]["text_encoder"]},
            "data": {"path": world["data"], "area": 64 * 64, "batch_size": 2,
                     "cache_dir": str(world["root"] / "cache")},
            "train": {"mode": "pretrain", "steps": 6, "max_nonfinite_steps": 2},
            "optimizer": {"lr": 1e-3}, "output": {"dir": str(out), "save_every": 1000},
            "logging": {"tensorboard": False, "progress": False}}
    for k, v in sections.items():
        base[k] = {**base[k], **v}
    return load_config(base)


def test_a_nan_loss_skips_the_step_and_stops_the_run(world, tmp_path):
    from qwenimage.training.trainer import Trainer

    t = Trainer(_config(world, tmp_path / "out"))
    t.run(stop_after=1)  # one honest step
    before = {n: p.detach().clone() for n, p in t.params.items()}
    real = t.objective.loss
    t.objective.loss = lambda model, batch, gens: (real(model, batch, gens)[0] * float("nan"), None)
    with pytest.raises(TrainingStopped, match=r"loss was nan for 2 step\(s\) in a row.*max_nonfinite_steps = 2"):
        t.run()
    assert all(torch.equal(before[n], p) for n, p in t.params.items())  # the bad steps changed nothing
    assert not (tmp_path / "out" / "transformer").exists()
    assert not (tmp_path / "out" / "qwen_image_trained_comfyui.safetensors").exists()


def test_non_finite_weights_are_never_exported(world, tmp_path):
    from qwenimage.training.trainer import Trainer

    t = Trainer(_config(world, tmp_path / "out"))
    name = next(iter(t.params))
    with torch.no_grad():
        t.params[name].view(-1)[0] = float("inf")
    with pytest.raises(TrainingStopped, match=rf"weight '{name}' has 1 non-finite"):
        t.export()
    assert not os.path.exists(tmp_path / "out") or not any(
        f.endswith(".safetensors") for _, _, fs in os.walk(tmp_path / "out") for f in fs)


def test_a_diverging_run_exits_non_zero_and_writes_no_non_finite_file(world, tmp_path, capsys):
    """The issue's case with a finite but absurd learning rate (inf itself is refused up front)."""
    from safetensors.torch import load_file

    toml = tmp_path / "c.toml"
    m, out, cache = world["models"], tmp_path / "out", world["root"] / "cache"
    toml.write_text(f"""
[model]
preset = "tiny"
preset_overrides = {{joint_attention_dim = 64}}
vae = {json.dumps(m["vae"])}
text_encoder = {json.dumps(m["text_encoder"])}
[data]
path = {json.dumps(world["data"])}
area = 4096
batch_size = 2
cache_dir = {json.dumps(str(cache))}
[train]
mode = "pretrain"
steps = 6
[optimizer]
lr = 1e30
weight_decay = 0.0
[output]
dir = {json.dumps(str(out))}
save_every = 2
[logging]
tensorboard = false
progress = false
""")
    rc = main(["train", str(toml)])
    err = capsys.readouterr().err
    written = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "out") for f in fs if f.endswith(".safetensors")]
    for path in written:
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path
    assert rc == 1 and "error:" in err and ("non-finite" in err or "loss was" in err or "diverged" in err), err


def test_load_image_refuses_a_fifo_without_opening_it(tmp_path):
    from qwenimage.qwenimage_core.images import load_image

    os.mkfifo(tmp_path / "x.png")

    def attempt():
        with pytest.raises(ValueError, match=r"x\.png: not a regular file"):
            load_image(tmp_path / "x.png", "image")
        return True
    assert _without_hanging(attempt, [tmp_path / "x.png"])


def test_a_damaged_cache_shard_is_a_named_error(tmp_path, encoders):
    vae, te = encoders
    make_shapes_dataset(tmp_path / "d", n=2, seed=1)
    samples = load_samples(tmp_path / "d")
    settings = CacheSettings(area=64 * 64, dtype="float32")
    build_cache(samples, tmp_path / "cache", settings, vae, te, progress=False)
    (shard,) = (tmp_path / "cache").glob("shard-*.safetensors")
    with open(shard, "r+b") as fh:
        fh.truncate(os.path.getsize(shard) - 8)
    with pytest.raises(ValueError, match=r"shard-00000\.safetensors: truncated file"):
        CachedDataset(samples, tmp_path / "cache", settings)[0]


def test_config_dtype_takes_the_command_lines_short_names():
    assert load_config(_with(model={"preset": "tiny", "dtype": "bf16"})).model.dtype == "bfloat16"
    assert load_config(_with(model={"preset": "tiny", "dtype": "fp32"})).model.dtype == "float32"
    with pytest.raises(ConfigError, match=r"model\.dtype: unknown dtype 'float64'"):
        load_config(_with(model={"preset": "tiny", "dtype": "float64"}))


def _toml(world, out, **train):
    m, cache = world["models"], world["root"] / "cache"
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in train.items())
    return f"""
[model]
preset = "tiny"
preset_overrides = {{joint_attention_dim = 64}}
vae = {json.dumps(m["vae"])}
text_encoder = {json.dumps(m["text_encoder"])}
[data]
path = {json.dumps(world["data"])}
area = 4096
batch_size = 2
cache_dir = {json.dumps(str(cache))}
[train]
mode = "pretrain"
{extra}[optimizer]
lr = 1e-3
[output]
dir = {json.dumps(str(out))}
save_every = 1
keep_last = 2
[logging]
tensorboard = false
progress = false
"""


def test_a_diverging_resumed_run_keeps_the_good_checkpoints(world, tmp_path, capsys):
    """Issue 23 item 1: two good steps saved, then resumed at lr 1e30. No exploded or non-finite step may be saved,
    and keep_last rotation must not delete the good checkpoints."""
    from safetensors.torch import load_file

    toml, out = tmp_path / "c.toml", tmp_path / "out"
    toml.write_text(_toml(world, out, steps=2))
    assert main(["train", str(toml)]) == 0
    ckpts = out / "checkpoints"
    good = {n: load_file(ckpts / n / "weights.safetensors") for n in os.listdir(ckpts)}
    assert sorted(good) == ["step-00000001", "step-00000002"]
    capsys.readouterr()
    rc = main(["train", str(toml), "--resume", "auto", "--set", "optimizer.lr=1e30", "train.steps=8"])
    err = capsys.readouterr().err
    assert rc == 1 and "error:" in err, err
    assert sorted(os.listdir(ckpts)) == sorted(good), os.listdir(ckpts)
    for n, weights in good.items():
        again = load_file(ckpts / n / "weights.safetensors")
        assert all(torch.equal(again[k], v) for k, v in weights.items())
    assert "step-00000002" in err and "intact" in err, err


def test_a_fifo_a_folder_or_a_deep_value_as_config_is_one_error_exit_2(tmp_path, capsys):
    """Issue 23 item 8: a FIFO as the config hung, a folder exited 1, deep nesting gave a RecursionError traceback."""
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "deep.toml").write_text("[model]\npreset_overrides = {x = " + "[" * 100_000 + "]" * 100_000 + "}\n")
    ok = tmp_path / "ok.toml"
    ok.write_text('[model]\npreset = "tiny"\n[data]\npath = "d"\n[train]\nmode = "pretrain"\n')
    cases = [([str(tmp_path / "fifo.toml")], r"fifo\.toml: config file is a FIFO, not a regular file"),
             ([str(tmp_path / "folder.toml")], r"folder\.toml: config file is a folder, not a regular file"),
             ([str(tmp_path / "deep.toml")], r"deep\.toml: a value is nested too deeply"),
             ([str(ok), "--set", "model.preset_overrides=" + "[" * 5000 + "]" * 5000], r"ok\.toml: .*nested too")]
    import re

    def attempt():
        for args, message in cases:
            assert main(["train", *args]) == 2, args
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and re.search(message, err), err
        return True
    assert _without_hanging(attempt, [tmp_path / "fifo.toml"])


def test_checkpoints_and_loras_are_0644_under_umask_022(tmp_path):
    """Issue 23 item 3: weights.safetensors and lora.safetensors came out 0600 (safetensors' own temporary)."""
    import stat

    from qwenimage.qwenimage_core.lora import save_lora

    old = os.umask(0o022)
    try:
        path = checkpointing.save_checkpoint(tmp_path / "ck", 1, weights={"a.weight": torch.ones(3)},
                                             optimizer={"state": {}}, scheduler={}, ema={"a.weight": torch.ones(3)},
                                             state={"step": 1}, keep_last=1)
        save_lora(tmp_path / "lora.safetensors", {"blk.to_q": (torch.ones(2, 4), torch.zeros(4, 2), 2.0)})
    finally:
        os.umask(old)
    files = [os.path.join(path, f) for f in os.listdir(path)] + [str(tmp_path / "lora.safetensors")]
    modes = {os.path.basename(f): oct(stat.S_IMODE(os.stat(f).st_mode)) for f in files}
    assert set(modes) == {"weights.safetensors", "ema.safetensors", "optimizer.pt", "state.json", "lora.safetensors"}
    assert set(modes.values()) == {"0o644"}, modes
    assert sorted(os.listdir(tmp_path)) == ["ck", "lora.safetensors"]  # no temporary left


def test_a_finite_loss_with_a_nan_gradient_skips_the_step(world, tmp_path):
    """Clipping a NaN gradient norm scaled every gradient to NaN and the optimiser wrote NaN weights: such a step
    is skipped like a NaN loss, and max_nonfinite_steps of them stop the run."""
    from qwenimage.training.trainer import Trainer

    t = Trainer(_config(world, tmp_path / "out"))
    t.run(stop_after=1)
    before = {n: p.detach().clone() for n, p in t.params.items()}
    real, p0 = t.objective.loss, next(iter(t.params.values()))

    def nan_gradient(model, batch, gens):  # sqrt(p - p) is 0, its gradient 0 * inf = NaN
        per_sample, logs = real(model, batch, gens)
        return per_sample + torch.sqrt(p0 - p0).sum(), logs
    t.objective.loss = nan_gradient
    with pytest.raises(TrainingStopped, match=r"gradient norm was nan for 2 step\(s\) in a row"):
        t.run()
    assert all(torch.equal(before[n], p) for n, p in t.params.items())
