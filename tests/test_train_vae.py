"""VAE training: a tiny VAE from scratch that gets better on held-out images and loads everywhere, decoder-only
tuning that leaves the encoder (hence every latent) bit for bit as it was, exact resume with the GAN on, the
perceptual loss's weights file, and PSNR/SSIM on known values."""
import dataclasses
import json
import os
import random

import pytest
import torch
from safetensors.torch import save_file

from qwenimage.training.data.vae_crops import eval_images
from qwenimage.qwenimage_core.vae import QwenImageVAE, VAEConfig, load_vae, save_comfyui_vae
from qwenimage.training.config import ConfigError, load_config
from qwenimage.training.eval.image_metrics import psnr, ssim
from qwenimage.training.objectives import VAE_MODES, FlowMatching, build_objective
from qwenimage.training.objectives.perceptual import BLOCKS, PerceptualLoss
from qwenimage.training.data.synthetic import draw_shape
from qwenimage.training.trainer import Trainer
from qwenimage.qwenimage_core.weights import CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLOURS = ("red", "blue", "green", "yellow")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Convolutions this small gain nothing from a second thread, and lose a lot when the cores are shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """20 pictures (coloured rectangles on white, 64x48) with no captions, a tiny VAE file in the ComfyUI layout,
    and a tiny random VGG16 for the perceptual term."""
    root = tmp_path_factory.mktemp("vae")
    data = root / "pictures"
    data.mkdir()
    rng = random.Random(0)
    for i in range(20):
        x, y = rng.randint(0, 24), rng.randint(0, 24)
        draw_shape("square", COLOURS[i % 4], "white", 64, 48, (x, y, x + 30, y + 20)).save(data / f"{i:03d}.png")
    torch.manual_seed(1)
    vae_file = root / "vae.safetensors"
    save_comfyui_vae(QwenImageVAE(VAEConfig.tiny()), vae_file)
    return {"root": root, "data": str(data), "vae": str(vae_file), "vgg": str(write_tiny_vgg(root / "vgg.safetensors"))}


def write_tiny_vgg(path, widths=(4, 8, 8, 8, 8), lins=True):
    g = torch.Generator().manual_seed(0)
    state, cin = {}, 3
    for n, block in enumerate(BLOCKS):
        for i in block:
            state[f"features.{i}.weight"] = torch.randn(widths[n], cin, 3, 3, generator=g) * 0.3
            state[f"features.{i}.bias"] = torch.zeros(widths[n])
            cin = widths[n]
        if lins:
            state[f"lin{n}.model.1.weight"] = torch.rand(1, widths[n], 1, 1, generator=g)
    save_file(state, str(path))
    return path


def config(world, out, mode="vae", **sections):
    base = {
        "model": {"preset": "tiny"} if mode == "vae" else {"path": world["vae"]},
        "data": {"path": world["data"], "batch_size": 2, "min_size": 32},
        "train": {"mode": mode, "steps": 4},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
        "vae": {"crop": 32, "holdout": 4, "l2": 1.0},
        "output": {"dir": str(out), "save_every": 1000},
        "logging": {"tensorboard": False, "progress": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_config(base)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- metrics

def test_psnr_and_ssim_on_known_values():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=g) * 0.6 + 0.2
    assert torch.isinf(psnr(x, x)).all() and torch.equal(ssim(x, x), torch.ones(2, dtype=torch.float64))
    noise = torch.where(torch.rand(x.shape, generator=g) < 0.5, -0.1, 0.1)  # MSE exactly 0.01
    assert torch.allclose(psnr(x, x + noise), torch.full((2,), 20.0, dtype=torch.float64), atol=1e-9)
    a, b = torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.6)  # flat: only the luminance term
    want = (2 * 0.5 * 0.6 + 1e-4) / (0.5 ** 2 + 0.6 ** 2 + 1e-4)
    assert ssim(a, b).item() == pytest.approx(want, abs=1e-7)  # 0.6 is not exact in float32
    assert 0 < ssim(x, x + noise).mean() < ssim(x, x + noise / 4).mean() < 1
    assert psnr(x[0], x[0] + noise[0]).shape == (1,)  # (C, H, W) is one image


# ------------------------------------------------------------------------------------------ from scratch

def load_samples_for(cfg):
    from qwenimage.training.data.vae_crops import vae_samples

    train, _ = vae_samples(cfg)
    return None, train[:cfg.vae.latent_stats]


def test_vae_from_scratch_gets_better_on_heldout_images_and_loads_everywhere(world, tmp_path):
    from qwenimage.nodes import NODE_CLASS_MAPPINGS, host

    cfg = config(world, tmp_path / "run", train={"steps": 16})
    trainer = Trainer(cfg)
    assert trainer.unwrapped.config == VAEConfig.tiny() and trainer.objective.kl == cfg.vae.kl > 0
    result = trainer.run()
    before, after = result["metrics"]["before"], result["metrics"]["after"]
    assert before["images"] == after["images"] == 4
    assert after["l1"] < 0.8 * before["l1"] and after["psnr"] > before["psnr"] + 0.5
    assert after["ssim"] > before["ssim"] + 0.1
    with open(result["outputs"]["metrics"]) as fh:
        assert json.load(fh) == result["metrics"]
    trained = state(trainer.unwrapped)
    # its own latent statistics ship with it: they normalise its training images' latents to ~N(0, 1) per channel
    stats = trainer.unwrapped.config
    assert (stats.latents_mean, stats.latents_std) != (VAEConfig().latents_mean, VAEConfig().latents_std)
    _, samples = load_samples_for(cfg)
    z = trainer.unwrapped.normalize_latents(trainer.unwrapped.encode(eval_images(samples, cfg.vae.crop)).mode())
    assert z.mean((0, 2, 3)).abs().max() < 1e-4 and (z.std((0, 2, 3)) - 1).abs().max() < 1e-4
    for path in (result["outputs"]["diffusers"], result["outputs"]["comfyui"]):
        loaded = load_vae(path)
        assert loaded.config == dataclasses.replace(VAEConfig.tiny(), latents_mean=stats.latents_mean,
                                                    latents_std=stats.latents_std)
        assert all(torch.equal(trained[k], v) for k, v in loaded.state_dict().items())
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    os.replace(result["outputs"]["comfyui"], models / "vae" / "mine.safetensors")
    old = host.models_dir()
    host.set_models_dir(models)
    try:
        vae = NODE_CLASS_MAPPINGS["QwenImageVAELoader"]().load("mine.safetensors", unique_id="test-vae")[0]
        assert all(torch.equal(trained[k], v.cpu()) for k, v in vae.state_dict().items())
    finally:
        host.set_models_dir(old)
        host.MODELS.release()


# -------------------------------------------------------------------------------------------- decoder only

def test_decoder_only_tuning_leaves_the_encoder_bit_for_bit(world, tmp_path):
    """With the perceptual term and the GAN on, every encoder-side weight (and so every latent) stays exactly as
    loaded; the decoder side changes."""
    cfg = config(world, tmp_path / "run", mode="vae_decoder", train={"steps": 3},
                 vae={"perceptual_weights": world["vgg"], "perceptual": 0.5, "gan": 0.5, "gan_start": 1})
    original = load_vae(world["vae"])
    trainer = Trainer(cfg)
    assert trainer.objective.kl == 0 and trainer.objective.perceptual is not None
    assert all(n.startswith(("decoder.", "post_quant_conv.")) for n in trainer.params)
    result = trainer.run()
    tuned = load_vae(result["outputs"]["comfyui"])
    changed = set()
    for (name, a), b in zip(original.state_dict().items(), tuned.state_dict().values()):
        if name.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(a, b), name
        elif not torch.equal(a, b):
            changed.add(name.split(".")[0])
    assert changed == {"decoder", "post_quant_conv"}
    assert tuned.config == original.config  # latent statistics included
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(original.encode(x).mean, tuned.encode(x).mean)
    assert "g" in trainer.logs and trainer.objective.last_d_loss > 0


# ----------------------------------------------------------------------------------------------- resume

def test_resume_with_the_gan_is_exact(world, tmp_path):
    sections = dict(train={"steps": 4}, output={"save_every": 2},
                    vae={"gan": 0.1, "gan_start": 1, "disc_channels": 8, "disc_layers": 2})
    whole = Trainer(config(world, tmp_path / "whole", **sections))
    whole.run()
    first = Trainer(config(world, tmp_path / "split", **sections))
    first.run(stop_after=2)
    ckpt = tmp_path / "split" / "checkpoints" / "step-00000002"
    assert (ckpt / "objective.safetensors").is_file()
    second = Trainer(config(world, tmp_path / "split", **sections))
    second.run(resume="auto")
    assert second.losses == whole.losses
    a, b = state(whole.unwrapped), state(second.unwrapped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    da, db = whole.objective.state_dict(), second.objective.state_dict()
    assert all(torch.equal(da["weights"][k], db["weights"][k]) for k in da["weights"])
    assert whole.metrics["before"] == second.metrics["before"]


# ------------------------------------------------------------------------------------------- perceptual

def test_perceptual_loss_weights_file(world, tmp_path):
    p = PerceptualLoss.from_file(world["vgg"])
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(p(x, x), torch.zeros(2))
    assert (p(x, x.flip(-1)) > 0).all()
    plain = PerceptualLoss.from_file(write_tiny_vgg(tmp_path / "plain.safetensors", lins=False))  # no lin layers
    assert (plain(x, x.flip(-1)) > 0).all()
    with pytest.raises(FileNotFoundError, match="vae.perceptual_weights.*nowhere.safetensors"):
        build_objective(config(world, tmp_path, vae={"perceptual_weights": str(tmp_path / "nowhere.safetensors")}))
    broken = {k: v for k, v in load_safetensors(world["vgg"]).items() if k != "features.12.weight"}
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match="broken.safetensors.*features.12.weight"):
        PerceptualLoss.from_file(tmp_path / "broken.safetensors")
    assert build_objective(config(world, tmp_path)).perceptual is None  # no file configured: no perceptual term


def load_safetensors(path):
    from safetensors.torch import load_file

    return load_file(path)


# ------------------------------------------------------------------------------------------------ data

def test_images_without_captions_in_a_folder_or_manifest(world, tmp_path):
    from qwenimage.training.data.dataset import DataError, load_samples
    from qwenimage.training.data.vae_crops import ImageCrops, vae_samples

    manifest = tmp_path / "images.jsonl"
    manifest.write_text("".join(json.dumps({"image": os.path.join(world["data"], f"{i:03d}.png")}) + "\n"
                                for i in range(6)))
    assert len(load_samples(manifest, captions=False, min_size=32)) == 6
    with pytest.raises(DataError, match="caption: missing"):
        load_samples(manifest, on_error="error", min_size=32)  # the transformer's modes still need them
    cfg = config(world, tmp_path, data={"path": str(manifest)}, vae={"holdout": 2, "crop": 56})
    train, held = vae_samples(cfg)
    assert len(train) == 4 and len(held) == 2 and not {s.image for s in train} & {s.image for s in held}
    crops = ImageCrops(train, 56)  # 64x48 pictures: scaled up to 75x56, then cropped
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    images = crops.batch([0, 1], gens)["images"]
    assert images.shape == (2, 3, 56, 56) and images.min() >= -1 and images.max() <= 1
    again = crops.batch([0, 1], [torch.Generator().manual_seed(i) for i in range(2)])["images"]
    assert torch.equal(images, again)  # the crop's place comes from the sample's generator


# ---------------------------------------------------------------------------------------------- config

def test_vae_config_errors_name_the_field_and_examples_parse(world, tmp_path):
    with pytest.raises(ConfigError, match="model.preset"):
        load_config({"model": {"path": world["vae"]}, "data": {"path": world["data"]}, "train": {"mode": "vae"}})
    with pytest.raises(ConfigError, match="model.path"):
        load_config({"model": {"preset": "tiny"}, "data": {"path": world["data"]}, "train": {"mode": "vae_decoder"}})
    with pytest.raises(ConfigError, match="vae.crop"):
        config(world, tmp_path, vae={"crop": 30})
    with pytest.raises(ConfigError, match="vae.kl"):
        config(world, tmp_path, vae={"kl": -1.0})
    with pytest.raises(ConfigError, match="model.preset.*huge"):
        Trainer(config(world, tmp_path, model={"preset": "huge"}))
    with pytest.raises(ConfigError, match="model.preset_overrides.*base_dims"):
        Trainer(config(world, tmp_path, model={"preset": "tiny", "preset_overrides": {"base_dims": 4}}))
    for name, mode in (("vae", "vae"), ("vae_decoder", "vae_decoder")):
        cfg = load_config(os.path.join(REPO, "training", "examples", f"{name}.toml"))
        assert cfg.train.mode == mode in VAE_MODES
    assert isinstance(build_objective(load_config(os.path.join(REPO, "training", "examples", "lora.toml"))),
                      FlowMatching)
