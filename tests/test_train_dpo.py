"""DPO (train.mode = "dpo") on a tiny model: preference rows (pairs and scored groups) read and refused by name,
the loss at the start (policy = reference: log 2, margin 0), DPO on pairs whose winners are brighter moves the
samples towards brighter images and wins held-out pairs, the pair's two images share noise and timestep; on the
demo model, the default beta learns without saturating and moves held-out samples to the preferred colour;
online refresh and full fine-tuning with a frozen copy, exact resume, 2 processes equal to 1, and the outputs
loading in load_pipeline and the node pack."""
import json
import math
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from _models import FILES, write_tiny_models

from qwenimage.training.config import ConfigError, load_config
from qwenimage.training.data.dataset import DataError
from qwenimage.training.data.preferences import load_pairs
from qwenimage.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def picture(light: bool, rng: random.Random) -> Image.Image:
    """A coloured square on a light or a dark background (the preference: light wins)."""
    level = rng.randint(180, 235) if light else rng.randint(20, 75)
    im = Image.new("RGB", (64, 64), (level, level, level))
    x, y = rng.randint(0, 28), rng.randint(0, 28)
    ImageDraw.Draw(im).rectangle((x, y, x + 32, y + 32), fill=rng.choice([(200, 30, 30), (30, 30, 200)]))
    return im


def write_pairs(folder, n: int, seed: int, groups: bool = False) -> str:
    """n rows in folder/pairs.jsonl: pairs, or groups of three scored by brightness."""
    os.makedirs(folder, exist_ok=True)
    rng, rows = random.Random(seed), []
    for i in range(n):
        prompt = rng.choice(["a red square", "a blue square", "a square"])
        light, dark = f"{i:03d}-light.png", f"{i:03d}-dark.png"
        picture(True, rng).save(os.path.join(folder, light))
        picture(False, rng).save(os.path.join(folder, dark))
        if groups:
            mid = f"{i:03d}-mid.png"
            Image.new("RGB", (64, 64), (128, 128, 128)).save(os.path.join(folder, mid))
            rows.append({"prompt": prompt, "images": [mid, dark, light], "scores": [0.5, 0.1, 0.9]})
        else:
            rows.append({"prompt": prompt, "chosen": light, "rejected": dark})
    path = os.path.join(folder, "pairs.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """Tiny model files (a training VAE with its convolutions scaled up, so brightness shows in the latents),
    24 training pairs and 12 held-out pairs."""
    from qwenimage.qwenimage_core import QwenImageVAE, VAEConfig, save_vae

    root = tmp_path_factory.mktemp("dpo")
    paths = write_tiny_models(root / "models", len(tokenizer))
    torch.manual_seed(0)
    vae = QwenImageVAE(VAEConfig.tiny())
    with torch.no_grad():
        for p in vae.parameters():
            if p.dim() >= 4:
                p.mul_(2.0)
    save_vae(vae, root / "training_vae")
    return {"root": root, "models": {**paths, "training_vae": str(root / "training_vae")},
            "train": write_pairs(root / "train", 24, seed=0), "heldout": write_pairs(root / "heldout", 12, seed=1)}


def config(world, out, **sections):
    base = {
        "model": {"path": world["models"]["diffusion_model"], "vae": world["models"]["training_vae"],
                  "text_encoder": world["models"]["text_encoder"]},
        "data": {"path": world["train"], "area": 64 * 64, "batch_size": 4, "cache_dir": str(world["root"] / "cache")},
        "train": {"mode": "dpo", "steps": 4},
        "dpo": {"sft": 0.0},  # plain DPO: the loss is exactly log 2 where policy = reference
        "lora": {"rank": 4, "alpha": 4.0},
        "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
        "output": {"dir": str(out), "save_every": 1000},
        "logging": {"tensorboard": False, "progress": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return load_config(base)


def heldout_margins(trainer, world, draws: int = 4, twice: bool = False) -> torch.Tensor:
    """Implicit-reward margins of the held-out pairs over `draws` noise draws; twice: each pair's chosen image as
    its rejected one too."""
    from qwenimage.training.data.cache import CachedDataset, build_cache
    from qwenimage.training.data.preferences import PairDataset, as_pairs
    from qwenimage.training.trainer import stage_cache

    cfg = config(world, trainer.cfg.output.dir, data={"path": world["heldout"]})
    samples, settings, cache_dir = stage_cache(cfg, cfg.stage_list()[0])
    vae, te = trainer.encoders.get()
    build_cache(samples, cache_dir, settings, vae, te, device=None, progress=False)
    pairs = PairDataset(CachedDataset(samples, cache_dir, settings), as_pairs(samples))
    margins = []
    with torch.no_grad():
        for d in range(draws):
            idx = list(range(len(pairs)))
            batch = pairs.batch(idx)
            if twice:
                batch["rejected"] = batch["latents"]
            gens = [torch.Generator().manual_seed(1000 * d + i) for i in idx]
            margins.append(trainer.objective.margins(trainer.model, batch, gens))
    return torch.cat(margins)


def heldout_accuracy(trainer, world, draws: int = 4) -> float:
    """Implicit-reward accuracy on the held-out pairs: the fraction of (pair, noise draw) with a positive margin."""
    return (heldout_margins(trainer, world, draws) > 0).float().mean().item()


# ------------------------------------------------------------------------------------------------- data

def test_pairs_and_groups_are_read_and_bad_rows_named(world, tmp_path):
    pairs = load_pairs(world["train"])
    assert len(pairs) == 24 and all("light" in p.chosen.image and "dark" in p.rejected.image for p in pairs)
    groups = load_pairs(write_pairs(tmp_path / "g", 3, seed=2, groups=True))
    assert [(os.path.basename(p.chosen.image), os.path.basename(p.rejected.image)) for p in groups] == \
        [(f"{i:03d}-light.png", f"{i:03d}-dark.png") for i in range(3)]
    bad = tmp_path / "bad"
    write_pairs(bad, 2, seed=3)
    Image.new("RGB", (128, 64)).save(bad / "wide.png")
    (bad / "empty.png").write_bytes(b"")
    rows = [{"prompt": "a", "chosen": "000-light.png", "rejected": "gone.png"},
            {"prompt": "", "chosen": "000-light.png", "rejected": "000-dark.png"},
            {"prompt": "a", "chosen": "empty.png", "rejected": "000-dark.png"},
            {"prompt": "a", "images": ["000-light.png", "000-dark.png"], "scores": [1, 1]},
            {"prompt": "a", "images": ["000-light.png", "000-dark.png"], "scores": [1]},
            {"prompt": "a", "chosen": "000-light.png", "rejected": "wide.png"},
            {"prompt": "a", "chosen": "000-light.png", "rejected": "000-dark.png", "references": ["nope.png"]}]
    path = bad / "pairs.jsonl"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows) + "{oops\n")
    with pytest.raises(DataError) as e:
        load_pairs(path, on_error="error", bucket=lambda w, h: (w, h))
    msg = str(e.value)
    assert "8 bad preference row(s)" in msg
    for line, words in [(3, "rejected: image: file not found"), (4, "prompt: missing or empty"),
                        (5, "chosen: image: not a readable image"), (6, "scores: all equal"),
                        (7, "scores: expected 2 finite numbers"), (8, "rejected: 128x64 falls in another bucket"),
                        (9, "chosen: references[0]: file not found"), (10, "json: not valid JSON")]:
        assert f"pairs.jsonl:{line}: {words}" in msg, (line, msg)
    assert len(load_pairs(path, on_error="skip", bucket=lambda w, h: (w, h))) == 2  # the good rows kept
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: empty file"):
        load_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="preference file not found"):
        load_pairs(tmp_path / "none.jsonl")


def test_config_checks(world, tmp_path):
    cfg = load_config(os.path.join(REPO, "training", "examples", "dpo.toml"))
    assert cfg.train.mode == "dpo" and cfg.dpo.beta > 0
    with pytest.raises(ConfigError, match="train.mode: 'dpo' fine-tunes a checkpoint"):
        load_config({"model": {"preset": "tiny"}, "data": {"path": "d"}, "train": {"mode": "dpo"}})
    with pytest.raises(ConfigError, match="train.weights: 'half' is not one of"):
        config(world, tmp_path, train={"weights": "half"})
    with pytest.raises(ConfigError, match="reference.device / reference.fp8: options of the frozen copy"):
        config(world, tmp_path, reference={"device": "cpu"})
    with pytest.raises(ConfigError, match="reference.device: 'gpu' is not one of"):
        config(world, tmp_path, train={"weights": "full"}, reference={"device": "gpu"})
    with pytest.raises(ConfigError, match="dpo.beta: must be positive"):
        config(world, tmp_path, dpo={"beta": 0.0})
    with pytest.raises(ConfigError, match="dpo.sft"):
        config(world, tmp_path, dpo={"sft": -1.0})


def test_sft_adds_the_chosen_images_flow_matching_loss(world, tmp_path):
    """dpo.sft: at the start (margin 0) the loss is log 2 plus sft times the chosen images' mean velocity error."""
    t = Trainer(config(world, tmp_path / "out", train={"mode": "dpo", "steps": 1}, dpo={"sft": 0.5}))
    loss = t.run()["losses"][0]
    assert t.logs["dpo/sft"] > 0.01
    assert loss == pytest.approx(math.log(2) + 0.5 * t.logs["dpo/sft"], abs=1e-5)


# --------------------------------------------------------------------------------------------- learning

def test_dpo_moves_samples_towards_the_winners_and_the_lora_loads(world, tmp_path):
    from qwenimage.qwenimage_core import QwenImage, load_pipeline, load_text_encoder, load_vae
    from qwenimage.training.objectives.reference import adapters_off

    t = Trainer(config(world, tmp_path / "out", train={"mode": "dpo", "steps": 40}))
    assert heldout_accuracy(t, world) == 0.0  # policy = reference: every margin exactly 0
    result = t.run()
    assert result["losses"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert np.mean(result["losses"][-5:]) < math.log(2) - 0.1  # beta 2: falling, not saturated (0.50 here)
    assert t.logs["dpo/accuracy"] == 1.0 and t.logs["dpo/margin"] > 0
    assert heldout_accuracy(t, world) > 0.8  # pairs never trained on
    # the two images of a pair see the same noise and timestep: a pair of one image twice has a margin of 0
    assert heldout_margins(t, world, twice=True).abs().max() == 0

    vae, te = load_vae(world["models"]["training_vae"]), load_text_encoder(world["models"]["text_encoder"])
    prompts, seeds = ["a red square", "a blue square", "a square"] * 2, list(range(6))

    def brightness(pipe):
        images = pipe.generate(prompts, width=64, height=64, steps=10, cfg=1.0, seed=seeds)
        return np.array([np.asarray(im, dtype=np.float32).mean() / 255 for im in images])

    tuned = brightness(QwenImage(t.unwrapped.eval(), vae, te))
    with adapters_off(t.unwrapped):
        base = brightness(QwenImage(t.unwrapped, vae, te))
    assert (tuned > base).all() and (tuned - base).mean() > 0.02, (base, tuned)
    # the LoRA file DPO wrote, in load_pipeline: the same latents as the trained adapters
    pipe = load_pipeline({"transformer": world["models"]["diffusion_model"], "vae": world["models"]["vae"],
                          "text_encoder": world["models"]["text_encoder"]}, device="cpu", dtype=torch.float32)
    pipe.load_lora(result["outputs"]["lora"])
    kw = dict(width=64, height=64, steps=4, cfg=1.0, seed=seeds, output_type="latent")
    want = QwenImage(t.unwrapped, pipe.vae, pipe.text_encoder).generate(prompts, **kw)
    assert (pipe.generate(prompts, **kw) - want).abs().max() < 1e-4


def colour_pairs(folder, n: int = 24) -> str:
    """n pairs for the demo model: a shape on a white or black background, chosen blue, rejected red (same shape,
    place and prompt, which names no colour)."""
    from qwenimage.training.data.demo_shapes import draw_demo_shape

    rng, rows = random.Random(0), []
    for i in range(n):
        shape, bg = ["square", "circle", "triangle"][i % 3], ["white", "black"][i // 3 % 2]
        state = rng.getstate()
        for colour in ("blue", "red"):
            rng.setstate(state)
            draw_demo_shape(shape, colour, bg, 64, rng).save(os.path.join(folder, f"{i}-{colour}.png"))
        rows.append({"prompt": f"a {shape} on a {bg} background", "chosen": f"{i}-blue.png",
                     "rejected": f"{i}-red.png"})
    with open(os.path.join(folder, "pairs.jsonl"), "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    return os.path.join(folder, "pairs.jsonl")


def test_defaults_learn_for_many_steps_and_move_held_out_samples(tmp_path):
    """The issue's check on the shipped demo model: pairs preferring a blue shape over a red one. With the default
    beta, DPO's own loss (sft 0) is still well above 0 after 5 steps (Flow-DPO's beta 100 took it to 0.01 by
    step 3, after which nothing more was learnt); with the defaults (sft 1) held-out prompts (backgrounds no pair
    has) come out bluer, by more than 3 standard errors over the prompts, every prompt up (bench/bench_dpo.py
    measures how much the background moved: sft 1 keeps it, plain DPO at beta 2 tints it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo model is tiny: one thread is the fastest on a shared CPU
    try:
        _demo_dpo(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _demo_dpo(tmp_path):
    from qwenimage.qwenimage_core import QwenImage
    from qwenimage.training.demo import demo_paths
    from qwenimage.training.objectives.reference import adapters_off

    paths, pairs = demo_paths(), colour_pairs(tmp_path)

    def trainer(name, steps, **dpo):
        return Trainer(load_config({
            "model": {"path": paths["diffusion_models"], "text_encoder": paths["text_encoders"], "vae": paths["vae"],
                      "dtype": "float32"},
            "data": {"path": pairs, "area": 64 * 64, "batch_size": 4, "cache_dir": str(tmp_path / "cache")},
            "train": {"mode": "dpo", "steps": steps}, "optimizer": {"lr": 1e-3}, "dpo": dpo,
            "output": {"dir": str(tmp_path / name), "save_every": 1000},
            "logging": {"tensorboard": False, "progress": False}}))

    losses = trainer("plain", 5, sft=0.0).run()["losses"]
    assert min(losses) > 0.3, losses
    t = trainer("out", 40)
    t.run()
    prompts = [f"a {s} on a {bg} background" for s in ("square", "circle", "triangle") for bg in ("gray", "green")]
    pipe, seeds = QwenImage(t.unwrapped.eval(), *t.encoders.get()), [0, 1]

    def pixels():
        images = pipe.generate([p for p in prompts for _ in seeds], width=64, height=64, steps=10, cfg=1.0,
                               seed=seeds * len(prompts))
        return np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images]).reshape(len(prompts), -1, 64, 64,
                                                                                          3)

    with torch.no_grad():
        tuned = pixels()
        with adapters_off(t.unwrapped):
            base = pixels()
    blue = lambda a: (a[..., 2] - (a[..., 0] + a[..., 1]) / 2).mean(axis=(1, 2, 3))  # noqa: E731
    d = blue(tuned) - blue(base)
    assert (d > 0).all() and d.mean() > 3 * d.std(ddof=1) / math.sqrt(len(d)), d


def test_online_reference_and_exact_resume(world, tmp_path):
    """LoRA, full fine-tuning, full with an fp8 copy streamed from the CPU; the reference refreshed every 2 steps:
    right after a refresh policy = reference (loss log 2; the fp8 copy only nearly); a run stopped at step 3 and
    resumed equals the uninterrupted one (the refreshed reference travels in the checkpoint)."""
    for weights, ref in (("lora", {}), ("full", {}), ("full", {"fp8": True, "device": "cpu"})):
        kw = dict(train={"mode": "dpo", "steps": 6, "grad_accum": 2, "weights": weights},
                  reference={"refresh_every": 2, **ref}, output={"save_every": 3}, data={"batch_size": 2})
        straight = Trainer(config(world, tmp_path / f"{weights}{len(ref)}-a", **kw))
        losses = straight.run()["losses"]
        tol = 0.05 if ref else 1e-6
        assert all(losses[i] == pytest.approx(math.log(2), abs=tol) for i in (0, 2, 4)), (weights, ref, losses)
        assert all(abs(losses[i] - math.log(2)) > 1e-3 for i in (1, 3, 5)), (weights, ref, losses)
        name = f"{weights}{len(ref)}"
        first = Trainer(config(world, tmp_path / f"{name}-b", **kw))
        first.run(stop_after=3)
        resumed = Trainer(config(world, tmp_path / f"{name}-b", **kw))
        resumed.run(resume="auto")
        assert resumed.losses == losses, weights
        a, b = straight.unwrapped.state_dict(), resumed.unwrapped.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), weights
    from qwenimage.qwenimage_core.fp8 import FP8Linear

    assert isinstance(straight.objective.reference.copy.transformer_blocks[0].attn.to_q, FP8Linear)


# ------------------------------------------------------------------------------------- outputs, processes

def test_full_dpo_with_the_reference_on_the_cpu_loads_in_the_nodes(world, tmp_path):
    from qwenimage.nodes import host

    from test_train_engine import _image

    cfg = config(world, tmp_path / "out", train={"mode": "dpo", "steps": 4, "weights": "full"},
                 reference={"device": "cpu"}, optimizer={"lr": 1e-3}, output={"formats": ["comfyui"]})
    t = Trainer(cfg)
    assert t.objective.reference.swap is not None  # streamed block by block
    result = t.run()
    assert result["losses"][0] == pytest.approx(math.log(2), abs=1e-6)
    old = host.models_dir()
    host.set_models_dir(world["root"] / "models")
    try:
        shutil.copy(result["outputs"]["comfyui"], world["root"] / "models" / "diffusion_models" / "dpo.safetensors")
        tuned = _image(host, "dpo.safetensors")
        assert (tuned - _image(host, FILES["diffusion_model"])).abs().max() > 0.01
    finally:
        host.set_models_dir(old)
        host.free_memory()


def test_two_processes_match_one_with_the_same_global_batch(world, tmp_path):
    def cfg_json(name, batch):
        c = config(world, tmp_path / name, train={"mode": "dpo", "steps": 3}, reference={"refresh_every": 2},
                   data={"batch_size": batch}).to_dict()
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(c))
        return str(path)

    one = Trainer(config(world, tmp_path / "one", train={"mode": "dpo", "steps": 3}, reference={"refresh_every": 2},
                         data={"batch_size": 4}))
    one.run()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(__file__)}
    script = os.path.join(os.path.dirname(__file__), "_train_dist.py")
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script,
                          cfg_json("two", 2), str(tmp_path / "two.safetensors")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "processes=2" in two.stdout
    a, b = one.unwrapped.state_dict(), load_file(tmp_path / "two.safetensors")
    assert any("lora_B" in k and a[k].abs().max() > 0 for k in a)  # the adapters trained
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst


def test_edit_pairs_with_references_train(world, tmp_path):
    """Pairs for an edit model: the reference image goes with both the chosen and the rejected image."""
    folder = tmp_path / "edit"
    write_pairs(folder, 3, seed=5)
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    with open(folder / "pairs.jsonl", "w", encoding="utf-8") as fh:
        fh.write("".join(json.dumps({**r, "prompt": "make it light", "references": [r["rejected"]]}) + "\n"
                         for r in rows))
    cfg = config(world, tmp_path / "out", data={"path": str(folder / "pairs.jsonl"), "template": "edit_plus",
                                                "batch_size": 1, "ref_area": 64 * 64,
                                                "cache_dir": str(tmp_path / "cache")},
                 train={"mode": "dpo", "steps": 3})
    from qwenimage.training.trainer import run_cache

    assert run_cache(cfg) == 6  # `qwenimage cache`: both images of the 3 pairs
    t = Trainer(cfg)
    result = t.run()
    assert result["losses"][0] == pytest.approx(math.log(2), abs=1e-6) and result["losses"][-1] < math.log(2)
    assert len(t.objective.seen) == 1 and len(result["outputs"]) == 1  # one pair per step; the LoRA file


def test_bad_rows_stop_before_anything_is_written(world, tmp_path):
    bad = tmp_path / "bad"
    write_pairs(bad, 2, seed=4)
    with open(bad / "pairs.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"prompt": "a", "chosen": "000-light.png", "rejected": "missing.png"}) + "\n")
    cfg = config(world, tmp_path / "out", data={"path": str(bad / "pairs.jsonl"), "on_error": "error",
                                                "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(DataError, match=r"pairs.jsonl:3: rejected: image: file not found .*missing.png"):
        Trainer(cfg).run()
    assert not os.path.exists(tmp_path / "cache") and not os.path.exists(tmp_path / "out" / "checkpoints")
    (bad / "pairs.jsonl").write_text("")
    with pytest.raises(DataError, match="empty file"):
        Trainer(cfg).run()
