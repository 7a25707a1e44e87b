"""What the engine does differently in the VAE modes: the model it trains, the data it draws, how it measures
and what it writes.

`vae`: a VAE at a preset (plus overrides) from random weights. `vae_decoder`: an existing VAE with its encoder and
quant conv frozen, so the latents (and every transformer trained on them) stay valid; only the decoder side
(post-quant conv and decoder) trains."""
from __future__ import annotations

import dataclasses
import os

import torch

from ..qwenimage_core.checkpoint import _write_json
from ..qwenimage_core.vae import QwenImageVAE, VAEConfig, load_vae, save_comfyui_vae, save_vae
from .data.buckets import BucketBatchSampler
from .config import Config, ConfigError
from .eval.image_metrics import psnr, ssim
from .data.vae_crops import ImageCrops, eval_images, vae_samples
VAE_PRESETS = {"qwen-image": {}, "official": {}, "small": {"base_dim": 32, "num_res_blocks": 1},
               "tiny": {"base_dim": 8, "num_res_blocks": 1}}
COMFYUI_NAME = "qwen_image_vae_trained.safetensors"


def build_vae(cfg: Config, dtype: torch.dtype) -> QwenImageVAE:
    m = cfg.model
    if cfg.train.mode == "vae":
        if m.preset not in VAE_PRESETS:
            raise ConfigError(f"model.preset: {m.preset!r} is not a VAE preset ({', '.join(VAE_PRESETS)})")
        try:
            model = QwenImageVAE(VAEConfig(**{**VAE_PRESETS[m.preset], **m.preset_overrides})).to(dtype)
        except (TypeError, ValueError) as e:
            names = ", ".join(f.name for f in dataclasses.fields(VAEConfig))
            raise ConfigError(f"model.preset_overrides: {e} (VAE fields: {names})") from None
        return model.requires_grad_(True).train()
    model = load_vae(m.path, dtype=dtype)
    model.requires_grad_(False)
    model.decoder.requires_grad_(True)
    model.post_quant_conv.requires_grad_(True)
    return model.train()


def vae_stage_data(cfg: Config, stage, accelerator):
    """The stage's training crops and their sampler (held-out images are not among them)."""
    samples, _ = vae_samples(cfg, stage.data)
    dataset = ImageCrops(samples, cfg.vae.crop)
    sampler = BucketBatchSampler(dataset.sizes, cfg.data.batch_size, seed=cfg.train.seed,
                                 num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    return dataset, sampler


@torch.no_grad()
def evaluate(model: QwenImageVAE, images: torch.Tensor, batch_size: int = 4) -> dict:
    """Mean PSNR (dB), SSIM and L1 of the posterior mean's reconstruction, images in [0, 1]."""
    if not len(images):
        return {}
    was_training = model.training
    model.eval()
    p, s, l1 = [], [], []
    for x in images.split(batch_size):
        x = x.to(model.device, model.dtype)
        y = model.decode(model.encode(x).mode())
        a, b = (x.float() + 1) / 2, (y.float() + 1) / 2
        p.append(psnr(a, b).cpu()), s.append(ssim(a, b).cpu()), l1.append((a - b).abs().flatten(1).mean(1).cpu())
    model.train(was_training)
    return {"psnr": torch.cat(p).mean().item(), "ssim": torch.cat(s).mean().item(),
            "l1": torch.cat(l1).mean().item(), "images": len(images)}


def heldout(cfg: Config) -> torch.Tensor:
    _, samples = vae_samples(cfg, cfg.stage_list()[0].data)
    return eval_images(samples, cfg.vae.eval_size or cfg.vae.crop)


def write_metrics(metrics: dict, out_dir: str) -> str:
    """out/metrics.json, written atomically: {"before": {...}, "after": {...}}."""
    path = os.path.join(out_dir, "metrics.json")
    os.makedirs(out_dir, exist_ok=True)
    _write_json(metrics, path)
    return path


@torch.no_grad()
def latent_stats(model: QwenImageVAE, images: torch.Tensor, batch_size: int = 16) -> tuple[tuple, tuple]:
    """Per-channel mean and std of the posterior means of `images`: what normalises this encoder's latents to
    about zero mean and unit variance, as the official statistics do for the official encoder."""
    was_training = model.training
    model.eval()
    z = torch.cat([model.encode(x.to(model.device, model.dtype)).mode().float().cpu() for x in images.split(batch_size)])
    model.train(was_training)
    dims = [0] + list(range(2, z.ndim))
    return tuple(z.mean(dims).tolist()), tuple(z.std(dims).clamp_min(1e-6).tolist())


def export_vae(model: QwenImageVAE, cfg: Config) -> dict:
    """out/vae/ (diffusers: config.json + weights) and out/qwen_image_vae_trained.safetensors (ComfyUI). A VAE
    trained from scratch ships its own latent statistics (vae.latent_stats); the decoder-only mode keeps the
    official ones, as its encoder is the official one."""
    out = {}
    if cfg.train.mode == "vae" and cfg.vae.latent_stats:
        train_samples, _ = vae_samples(cfg, cfg.stage_list()[0].data)
        size = cfg.vae.eval_size or cfg.vae.crop
        mean, std = latent_stats(model, eval_images(train_samples[:cfg.vae.latent_stats], size))
        model.config = dataclasses.replace(model.config, latents_mean=mean, latents_std=std)
    if "diffusers" in cfg.output.formats:
        out["diffusers"] = os.path.join(cfg.output.dir, "vae")
        save_vae(model, out["diffusers"])
    if "comfyui" in cfg.output.formats:
        out["comfyui"] = os.path.join(cfg.output.dir, COMFYUI_NAME)
        save_comfyui_vae(model, out["comfyui"])
    return out
