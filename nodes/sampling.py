"""The empty latent (official aspect presets or a custom size) and the sampler: the core's `pipeline.sample`, the
same function `QwenImage.generate` runs, so a graph gives the pipeline's image for the same seed."""
from __future__ import annotations

import torch

from ..qwenimage_core.images import ASPECT_PRESETS, check_size
from ..qwenimage_core.preview import previewer
from ..qwenimage_core.pipeline import sample
from ..qwenimage_core.schedules import unpack_latents
from ..qwenimage_core.vae import denormalize_latents, normalize_latents
from . import host
from .sockets import CONDITIONING, MODEL, VAE, QwenModel, latent_samples, mask_batch

MAX_SIZE = 16384
CUSTOM = "custom"
PRESETS = {f"{k} ({w}x{h})": (w, h) for k, (w, h) in ASPECT_PRESETS.items()}
SHIFT_MODES = ("dynamic", "fixed")


class QwenImageEmptyLatent:
    DESCRIPTION = "A blank latent: one of the official sizes per aspect ratio, or a custom size (multiples of 16)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "aspect": ([CUSTOM] + list(PRESETS), {"default": next(iter(PRESETS)),
                                                  "tooltip": "An official size, or custom to use width/height"}),
            "width": ("INT", {"default": 1328, "min": 16, "max": MAX_SIZE, "step": 16,
                              "tooltip": "Image width in pixels (custom only), a multiple of 16"}),
            "height": ("INT", {"default": 1328, "min": 16, "max": MAX_SIZE, "step": 16,
                               "tooltip": "Image height in pixels (custom only), a multiple of 16"}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "How many images the sampler makes at once"}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("An empty latent of the chosen size",)
    FUNCTION = "generate"
    CATEGORY = "Qwen-Image/latent"

    def generate(self, aspect, width, height, batch_size):
        if aspect != CUSTOM:
            if aspect not in PRESETS:
                raise ValueError(f"aspect {aspect!r}: one of {CUSTOM}, {', '.join(PRESETS)}")
            width, height = PRESETS[aspect]
        check_size(width, height, "latent")
        return ({"samples": torch.zeros(batch_size, 16, 1, height // 8, width // 8)},)


class QwenImageSampler:
    DESCRIPTION = ("Denoise with the Qwen-Image MMDiT by flow matching (Euler steps, true CFG). denoise < 1 "
                   "starts from the latent's image (image-to-image); a mask repaints only where it is 1.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The Qwen-Image model (with any LoRAs)"}),
            "positive": (CONDITIONING, {"tooltip": "The prompt or edit instruction"}),
            "negative": (CONDITIONING, {"tooltip": "The negative prompt (used when cfg > 1)"}),
            "latent": ("LATENT", {"tooltip": "Sets the size and batch; with denoise < 1 or a mask, the image "
                                             "to start from"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "The noise seed (CPU generator: the same image on any device)"}),
            "steps": ("INT", {"default": 50, "min": 1, "max": 1000,
                              "tooltip": "Sampling steps (50 official; 8 or 4 with a Lightning LoRA)"}),
            "cfg": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01,
                              "tooltip": "True classifier-free guidance; 1 turns it off (and halves the time)"}),
            "shift_mode": (list(SHIFT_MODES), {"default": "dynamic",
                                               "tooltip": "dynamic: the official resolution-dependent schedule; "
                                                          "fixed: ComfyUI's shift (AuraFlow sampling)"}),
            "shift": ("FLOAT", {"default": 3.1, "min": 0.01, "max": 100.0, "step": 0.01,
                                "tooltip": "The fixed schedule shift (fixed mode only)"}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "How much of the schedule to run: below 1 keeps that much of the "
                                             "input image (image-to-image strength)"}),
        }, "optional": {
            "mask": ("MASK", {"tooltip": "Inpainting: 1 (white) = repaint, 0 = keep the latent's image"}),
            "vae": (VAE, {"tooltip": "For live previews only: the VAE that will decode the image, when it has "
                                     "latent statistics of its own (the demo's: its previews are decoded by "
                                     "it); without it previews assume the official VAE's latent space"}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The denoised latent (decode it with the VAE)",)
    FUNCTION = "sample"
    CATEGORY = "Qwen-Image/sampling"

    @torch.no_grad()
    def sample(self, model: QwenModel, positive, negative, latent, seed, steps, cfg, shift_mode, shift, denoise,
               mask=None, vae=None):
        if shift_mode not in SHIFT_MODES:
            raise ValueError(f"shift_mode {shift_mode!r}: one of {', '.join(SHIFT_MODES)}")
        z = latent_samples(latent)
        batch, h, w = z.shape[0], z.shape[-2], z.shape[-1]
        if mask is None and latent.get("noise_mask") is not None:  # ComfyUI's Set Latent Noise Mask
            mask = latent["noise_mask"]
        clean = normalize_latents(z.float()) if (denoise < 1.0 or mask is not None) else None
        bar = host.progress(steps)
        show = previewer(None if vae is None else host.on_device(vae)) if bar.wants_preview else None

        def step(i, total, latents, x0):
            bar.update(i + 1, show(unpack_latents(x0[:1].float().cpu(), h, w)) if show is not None else None)

        with model.patched() as transformer:
            packed = sample(transformer, positive, negative if cfg > 1.0 else None, width=w * 8, height=h * 8,
                            steps=steps, cfg=cfg, seed=seed, batch=batch,
                            shift=None if shift_mode == "dynamic" else shift, clean=clean, strength=denoise,
                            mask=None if mask is None else mask_batch(mask), device=host.device(),
                            callback=step, interrupt=_interrupt)
        return ({"samples": denormalize_latents(unpack_latents(packed.float().cpu(), h, w))},)


def _interrupt() -> bool:
    host.check_interrupt()  # raises the host's own interrupt (ComfyUI's, inside ComfyUI)
    return False


NODES = {c.__name__: c for c in (QwenImageEmptyLatent, QwenImageSampler)}
DISPLAY = {"QwenImageEmptyLatent": "Qwen-Image Empty Latent", "QwenImageSampler": "Qwen-Image Sampler"}
