"""The training engine on tiny models: config checking, pretraining that learns the prompt, exact resume, atomic
checkpoints, LoRA and full fine-tunes that load through the node pack, edit triples, validation images, a 2-process
run equal to a 1-process run, and the command line."""
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _models import FILES, write_tiny_models

from qwenimage.training import checkpointing
from qwenimage.training.config import ConfigError, load_config
from qwenimage.training.data.synthetic import draw_shape, make_edit_dataset
from qwenimage.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"preset": "tiny", "preset_overrides": {"joint_attention_dim": 64}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """Tiny VAE and text encoder files, and 32 red or blue squares on white with captions naming the colour. The
    training VAE has its convolutions scaled up 2x: a tiny random VAE at default init maps every picture to nearly
    the same latents, which would leave no colour for the model to learn."""
    from qwenimage.qwenimage_core import QwenImageVAE, VAEConfig, save_vae

    root = tmp_path_factory.mktemp("train")
    paths = write_tiny_models(root / "models", len(tokenizer))
    torch.manual_seed(0)
    vae = QwenImageVAE(VAEConfig.tiny())
    with torch.no_grad():
        for p in vae.parameters():
            if p.dim() >= 4:
                p.mul_(2.0)
    save_vae(vae, root / "training_vae")
    paths = {**paths, "training_vae": str(root / "training_vae")}
    data = root / "squares"
    data.mkdir()
    rng = random.Random(0)
    for i in range(32):
        colour = "red" if i % 2 == 0 else "blue"
        x, y = rng.randint(0, 24), rng.randint(0, 24)
        draw_shape("square", colour, "white", 64, 64, (x, y, x + 36, y + 36)).save(data / f"{i:03d}.png")
        (data / f"{i:03d}.txt").write_text(f"a {colour} square")
    return {"root": root, "models": paths, "data": str(data)}


def config(world, out, **sections):
    base = {
        "model": {**TINY, "vae": world["models"]["training_vae"], "text_encoder": world["models"]["text_encoder"]},
        "data": {"path": world["data"], "area": 64 * 64, "batch_size": 4,
                 "cache_dir": str(world["root"] / "cache")},
        "train": {"mode": "pretrain", "steps": 4},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
        "output": {"dir": str(out), "save_every": 1000},
        "logging": {"tensorboard": False, "progress": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return load_config(base)


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.unwrapped.state_dict().items()}


# ------------------------------------------------------------------------------------------------- config

def test_example_configs_parse_and_errors_name_the_field(tmp_path):
    for name in ("lora", "pretrain"):
        cfg = load_config(os.path.join(REPO, "training", "examples", f"{name}.toml"))
        assert cfg.train.mode == name
    assert len(load_config(os.path.join(REPO, "training", "examples", "pretrain.toml")).stage_list()) == 3
    ok = {"model": {"preset": "tiny"}, "data": {"path": "d"}, "train": {"mode": "pretrain"}}
    cases = [({"optimizer": {"lrr": 1}}, "unknown field.*optimizer.lrr"),
             ({"optimizer": {"lr": "fast"}}, "optimizer.lr: expected float"),
             ({"optimizer": {"lr": -1.0}}, "optimizer.lr: must be positive"),
             ({"objective": {"timesteps": "cubic"}}, "objective.timesteps: 'cubic' is not one of"),
             ({"train": {"mode": "full"}}, "train.mode: 'full' fine-tunes a checkpoint"),
             ({"stages": [{"steps": 0}]}, r"stages\[0\].steps: must be positive"),
             ({"model": {"preset": "tiny", "path": "x"}}, "exactly one of model.preset")]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config({**ok, **{k: {**ok.get(k, {}), **v} if isinstance(v, dict) else v for k, v in extra.items()}})
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\npreset = "tiny"\n[data]\npath = "d"\n[train]\nmode = "pretrain"\n')
    cfg = load_config(toml, ["train.steps=7", "optimizer.betas=[0.8, 0.9]", "lora.targets=['to_q']"])
    assert cfg.train.steps == 7 and cfg.optimizer.betas == [0.8, 0.9] and cfg.lora.targets == ["to_q"]
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("[model\n")
        load_config(tmp_path / "bad.toml")


# ----------------------------------------------------------------------------------------------- learning

def test_pretraining_lowers_the_loss_and_follows_the_prompt(world, tmp_path):
    from qwenimage.qwenimage_core import QwenImage, load_text_encoder, load_vae
    from qwenimage.qwenimage_core.schedules import unpack_latents
    from qwenimage.training.data.cache import CachedDataset
    from qwenimage.training.trainer import stage_cache

    cfg = config(world, tmp_path / "out", train={"mode": "pretrain", "steps": 300},
                 optimizer={"lr": 2e-3, "weight_decay": 0.0}, data={"batch_size": 8},
                 schedule={"kind": "cosine", "warmup": 20}, objective={"timesteps": "uniform"})
    t = Trainer(cfg)
    result = t.run()
    first, last = np.mean(result["losses"][:20]), np.mean(result["losses"][-20:])
    assert last < 0.7 * first, (first, last)

    # the samples follow the prompt: projected on the direction from the blue squares' mean latent to the red
    # squares', "a red square" lands on the red side and "a blue square" on the blue side
    samples, settings, cache_dir = stage_cache(cfg, cfg.stage_list()[0])
    ds = CachedDataset(samples, cache_dir, settings)
    lat = torch.stack([ds[i]["latents"] for i in range(len(ds))]).mean(dim=(2, 3, 4))
    red = torch.tensor(["red" in s.caption for s in samples])
    axis = lat[red].mean(0) - lat[~red].mean(0)
    mid = (lat[red].mean(0) + lat[~red].mean(0)) / 2
    pipe = QwenImage(t.unwrapped.eval(), load_vae(world["models"]["training_vae"]),
                     load_text_encoder(world["models"]["text_encoder"]))
    score = {}
    for colour in ("red", "blue"):
        z = pipe.generate(f"a {colour} square", width=64, height=64, steps=20, cfg=1.0, seed=[1, 2, 3, 4],
                          num_images=4, output_type="latent")
        z = unpack_latents(z, 8, 8).mean(dim=(2, 3, 4))
        score[colour] = ((z - mid) @ axis).tolist()
    assert min(score["red"]) > 0 > max(score["blue"]), score


def test_resume_continues_exactly(world, tmp_path):
    kw = dict(train={"mode": "pretrain", "steps": 8, "grad_accum": 2, "ema_decay": 0.9},
              schedule={"kind": "cosine", "warmup": 2},
              stages=[{"name": "a", "steps": 4}, {"name": "b", "steps": 4, "lr": 5e-4}],
              output={"save_every": 3, "keep_last": 2})
    straight = Trainer(config(world, tmp_path / "a", **kw))
    straight.run()
    first = Trainer(config(world, tmp_path / "b", **kw))
    first.run(stop_after=3)  # "killed" after step 3, whose checkpoint was written
    names = [os.path.basename(p) for p in checkpointing.list_checkpoints(first.ckpt_dir)]
    assert names == ["step-00000003"]
    resumed = Trainer(config(world, tmp_path / "b", **kw))
    resumed.run(resume="auto")
    a, b = params(straight), params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.losses == resumed.losses
    assert all(torch.equal(straight.ema[k], resumed.ema[k]) for k in straight.ema)
    # the last N kept, and the stage boundaries (4, 8) among the saves
    assert [os.path.basename(p) for p in checkpointing.list_checkpoints(resumed.ckpt_dir)] == \
        ["step-00000006", "step-00000008"]


def test_a_failed_save_leaves_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    cfg = config(world, tmp_path / "out", train={"mode": "pretrain", "steps": 4}, output={"save_every": 2})
    t = Trainer(cfg)
    t.run(stop_after=2)
    good = checkpointing.list_checkpoints(t.ckpt_dir)
    assert len(good) == 1
    real = torch.save

    def disk_full(obj, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        t.run()
    monkeypatch.setattr(torch, "save", real)
    assert checkpointing.list_checkpoints(t.ckpt_dir) == good
    assert not [n for n in os.listdir(t.ckpt_dir) if n.endswith(".tmp")]
    again = Trainer(cfg)
    again.run(resume="auto")
    assert again.step == 4


# ---------------------------------------------------------------------------------- outputs in the nodes

@pytest.fixture(scope="module")
def node_env(world):
    from qwenimage.nodes import host

    old = host.models_dir()
    host.set_models_dir(world["root"] / "models")
    yield host
    host.set_models_dir(old)
    host.free_memory()


def _image(host, model_name, lora=None):
    from qwenimage.nodes import NODE_CLASS_MAPPINGS as N

    def node(name, **kw):
        return getattr(N[name](), N[name].FUNCTION)(**kw)

    model = node("QwenImageModelLoader", unet_name=model_name, weight_dtype="default", gpu_blocks=-1)[0]
    if lora:
        model = node("QwenImageLoraLoader", model=model, lora_name=lora, strength=1.0)[0]
    te = node("QwenImageTextEncoderLoader", clip_name=FILES["text_encoder"], device="default")[0]
    vae = node("QwenImageVAELoader", vae_name=FILES["vae"])[0]
    pos = node("QwenImageTextEncode", text_encoder=te, text="a red square")[0]
    lat = node("QwenImageEmptyLatent", aspect="custom", width=64, height=64, batch_size=1)[0]
    out = node("QwenImageSampler", model=model, positive=pos, negative=pos, latent=lat, seed=3, steps=4, cfg=1.0,
               shift_mode="dynamic", shift=3.1, denoise=1.0)[0]
    return node("QwenImageVAEDecode", vae=vae, samples=out, tiled=False, tile_size=256, overlap=64)[0]


def test_lora_trained_on_a_tiny_base_loads_in_the_nodes_and_changes_the_image(world, tmp_path, node_env):
    base = world["models"]["diffusion_model"]
    cfg = config(world, tmp_path / "out", model={"preset": "", "path": base, "preset_overrides": {}},
                 train={"mode": "lora", "steps": 30}, lora={"rank": 4, "alpha": 4.0}, optimizer={"lr": 1e-2})
    result = Trainer(cfg).run()
    assert result["losses"][-1] < result["losses"][0] * 1.5
    dest = world["root"] / "models" / "loras" / "trained.safetensors"
    shutil.copy(result["outputs"]["lora"], dest)
    plain = _image(node_env, FILES["diffusion_model"])
    styled = _image(node_env, FILES["diffusion_model"], lora="trained.safetensors")
    assert (styled - plain).abs().max() > 0.01
    assert torch.equal(_image(node_env, FILES["diffusion_model"]), plain)  # and off again
    from qwenimage.qwenimage_core.lora import read_lora

    assert len(read_lora(dest).patches) == 2 * 8  # 2 blocks x 8 attention projections


def test_full_finetune_saved_as_comfyui_file_loads_in_the_nodes(world, tmp_path, node_env):
    cfg = config(world, tmp_path / "out", model={"preset": "", "path": world["models"]["diffusion_model"],
                                                 "preset_overrides": {}},
                 train={"mode": "full", "steps": 5})
    out = Trainer(cfg).run()["outputs"]
    assert os.path.isfile(os.path.join(out["diffusers"], "config.json"))
    shutil.copy(out["comfyui"], world["root"] / "models" / "diffusion_models" / "finetuned.safetensors")
    tuned = _image(node_env, "finetuned.safetensors")
    assert (tuned - _image(node_env, FILES["diffusion_model"])).abs().max() > 0.01


# -------------------------------------------------------------------------------------- edit, validation

def test_edit_triples_train_and_validation_images_are_written(world, tmp_path):
    data = tmp_path / "edits"
    make_edit_dataset(data, n=4, size=64, seed=0)
    cfg = config(world, tmp_path / "out", data={"path": str(data / "manifest.jsonl"), "template": "edit_plus",
                                                "batch_size": 1, "ref_area": 64 * 64,
                                                "cache_dir": str(tmp_path / "cache")},
                 train={"mode": "pretrain", "steps": 3},
                 validation={"prompts": ["a green circle"], "seeds": [0, 1], "width": 32, "height": 32, "steps": 2,
                             "every": 2},
                 logging={"tensorboard": True, "every": 1, "progress": False})
    result = Trainer(cfg).run()
    assert all(np.isfinite(result["losses"]))
    for step in (2, 3):
        pngs = sorted(os.listdir(tmp_path / "out" / "validation" / f"step-{step:08d}"))
        assert pngs == ["00-seed0.png", "00-seed1.png"]
    events = [f for _, _, fs in os.walk(tmp_path / "out") for f in fs if f.startswith("events.out.tfevents")]
    assert events


# ---------------------------------------------------------------------------------------- distribution

def test_two_processes_match_one_with_the_same_global_batch(world, tmp_path):
    pytest.importorskip("accelerate")

    def cfg_json(name, batch):
        c = config(world, tmp_path / name, train={"mode": "pretrain", "steps": 3},
                   data={"batch_size": batch}).to_dict()
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(c))
        return str(path)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(__file__)}
    script = os.path.join(os.path.dirname(__file__), "_train_dist.py")
    one = subprocess.run([sys.executable, script, cfg_json("one", 4), str(tmp_path / "one.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    # accelerate's --cpu launches a single process; its multi-process launcher (torch.distributed.run) runs on the
    # CPU with gloo when there is no GPU, which is what the trainer picks then
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script,
                          cfg_json("two", 2), str(tmp_path / "two.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    assert "DistributedType.MULTI_CPU" in two.stdout and "processes=2" in two.stdout


# ---------------------------------------------------------------------------------------- command line

def test_train_and_cache_commands(world, tmp_path, capsys):
    from qwenimage.cli import main

    toml = tmp_path / "run.toml"
    toml.write_text(f"""
[model]
preset = "tiny"
preset_overrides = {{ joint_attention_dim = 64 }}
vae = "{world['models']['training_vae']}"
text_encoder = "{world['models']['text_encoder']}"
[data]
path = "{world['data']}"
area = 4096
batch_size = 2
cache_dir = "{tmp_path / 'cache'}"
[train]
mode = "pretrain"
[output]
dir = "{tmp_path / 'out'}"
formats = ["comfyui"]
[logging]
tensorboard = false
progress = false
""")
    assert main(["cache", str(toml)]) == 0
    assert "encoded 32 sample(s)" in capsys.readouterr().out
    assert main(["cache", str(toml)]) == 0
    assert "encoded 0 sample(s)" in capsys.readouterr().out
    assert main(["train", str(toml), "--set", "train.steps=2"]) == 0
    assert os.path.isfile(tmp_path / "out" / "qwen_image_trained_comfyui.safetensors")
    assert main(["train", str(toml), "--set", "optimizer.lr=-1"]) == 2
    assert "optimizer.lr: must be positive" in capsys.readouterr().err


def test_bf16_mixed_precision_with_gradient_checkpointing(world, tmp_path):
    cfg = config(world, tmp_path / "out", model={"preset": "", "path": world["models"]["diffusion_model"],
                                                 "preset_overrides": {}, "gradient_checkpointing": True},
                 train={"mode": "lora", "steps": 3, "mixed_precision": "bf16"}, lora={"rank": 2, "alpha": 2.0})
    t = Trainer(cfg)
    assert t.unwrapped.gradient_checkpointing
    result = t.run()
    assert all(np.isfinite(result["losses"]))
    lora = load_file(result["outputs"]["lora"])
    moved = {k for k, v in lora.items() if "lora_B" in k and v.abs().sum() > 0}  # B left its zero init
    # every adapter trained but the last block's text queries and text output, which feed nothing
    idle = {f"transformer.transformer_blocks.1.attn.{m}.lora_B.weight" for m in ("add_q_proj", "to_add_out")}
    assert moved == {k for k in lora if "lora_B" in k} - idle


def test_caption_dropout_trains_some_samples_on_the_empty_prompt(world, tmp_path):
    """With data.caption_dropout, some samples (drawn per sample, reproducibly) carry exactly the text encoder's
    embedding of the pipelines' empty negative prompt, so the unconditional branch of CFG is trained."""
    from qwenimage.training.data.caption_dropout import EMPTY_PROMPT, drop_captions

    cfg = config(world, tmp_path / "out", data={"caption_dropout": 0.5}, train={"mode": "pretrain", "steps": 3})
    trainer = Trainer(cfg)
    seen, loss = [], trainer.objective.loss

    def spy(model, batch, gens):
        seen.append((batch["dropped_captions"].clone(), batch["embeds"].clone(), batch["mask"].clone()))
        return loss(model, batch, gens)

    trainer.objective.loss = spy
    trainer.run()
    drops = torch.cat([d for d, _, _ in seen])
    assert drops.any() and not drops.all()
    te = trainer.encoders.get()[1]
    with torch.no_grad():
        want, want_mask = te.encode([EMPTY_PROMPT], template="t2i", max_sequence_length=1024)
    want = want[0, :int(want_mask[0].sum())].float()
    for dropped, embeds, mask in seen:
        for j in torch.nonzero(dropped).flatten().tolist():
            n = int(mask[j].sum())
            assert n == want.shape[0] and torch.allclose(embeds[j, :n], want, atol=1e-5)
        for j in torch.nonzero(~dropped).flatten().tolist():
            assert int(mask[j].sum()) != want.shape[0] or not torch.allclose(embeds[j, :want.shape[0]], want)
    # rate 0 leaves the batch (and the generators' streams) untouched
    batch = {"embeds": torch.ones(2, 3, 4), "mask": torch.ones(2, 3, dtype=torch.long)}
    g = torch.Generator().manual_seed(1)
    assert drop_captions(batch, want, 0.0, [g, g]) is batch
    assert torch.rand((), generator=g) == torch.rand((), generator=torch.Generator().manual_seed(1))
    with pytest.raises(ConfigError, match="data.caption_dropout"):
        config(world, tmp_path / "bad", data={"caption_dropout": 1.0})
    with pytest.raises(ConfigError, match="text-to-image"):
        config(world, tmp_path / "bad", data={"caption_dropout": 0.1, "template": "edit"})


def test_validation_scores_an_evaluation_suite_with_the_eval_library(world, tmp_path):
    """validation.suite runs `qwenimage eval`'s path on the model being trained: its images, results.jsonl and
    report in validation/step-N/eval, the overall means kept by step (and a config naming half of it refused)."""
    prompts = tmp_path / "held_out.txt"
    prompts.write_text("a red square\na blue square\n")
    cfg = config(world, tmp_path / "out", train={"mode": "pretrain", "steps": 2},
                 validation={"every": 1, "width": 32, "height": 32, "steps": 2, "cfg": 1.0, "suite": "prompts",
                             "suite_data": str(prompts), "scorers": ["jpeg_compressibility"]})
    summary = Trainer(cfg).run()
    evals = summary["metrics"]["eval"]
    assert sorted(evals) == ["1", "2"] and set(evals["2"]) == {"jpeg_compressibility"}
    run = tmp_path / "out" / "validation" / "step-00000002" / "eval"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and (run / "report.html").exists()
    mean = sum(r["metrics"]["jpeg_compressibility"] for r in rows) / 2
    assert evals["2"]["jpeg_compressibility"] == pytest.approx(mean)
    with pytest.raises(ConfigError, match="validation.suite"):
        config(world, tmp_path / "bad", validation={"suite": "prompts"})
