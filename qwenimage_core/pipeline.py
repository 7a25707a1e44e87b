"""Qwen-Image pipelines over the three components: text-to-image, image-to-image, inpainting, edit, multi-image edit.

Each mode prepares latents and conditioning the way the reference pipelines do (diffusers QwenImage*Pipeline),
then runs the one shared denoising loop (`sampling.denoise`), so the same seed and settings give the same image.
Where components live while they work is a `Placement`, so low-VRAM policies plug in without touching this file.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .images import calculate_dimensions, check_size, mask_to_tensor, to_pil, to_tensor
from .sampling import Conditioning, InpaintState, add_noise, denoise
from .schedules import (ScheduleConfig, fixed_shift_sigmas, image_seq_len, initial_noise, official_sigmas, pack_latents,
                        unpack_latents)
from .text_encoder import resize_for_vision

EDIT_AREA = 1024 * 1024          # edit outputs and reference latents: about a megapixel at the input's aspect
DEFAULT_SIZE = (1328, 1328)      # the official 1:1 text-to-image size
EDIT_TEMPLATES = {"QwenImageEditPipeline": "edit", "QwenImageEditPlusPipeline": "edit_plus",
                  "QwenImageEditInpaintPipeline": "edit"}


@dataclass
class Placement:
    """Which device each component computes on, and whether it goes back to `storage` when done.

    The default keeps everything resident on `device`. With offload=True a component is moved to `device` only
    while it works (text encoder, then transformer, then VAE), which bounds VRAM by the largest component.
    Modules listed in `managed` place themselves (block swap, accelerate's cpu_offload) and are never moved."""
    device: torch.device | str = "cpu"
    storage: torch.device | str = "cpu"
    offload: bool = False
    managed: tuple = ()
    plan: object = None  # the VramPlan a budget gave, for reports

    @contextlib.contextmanager
    def use(self, component):
        move = self.offload and not any(component is m for m in self.managed)
        if move:
            component.to(self.device)
        try:
            yield component
        finally:
            if move:
                component.to(self.storage)
                if torch.device(self.device).type == "cuda":
                    torch.cuda.empty_cache()


class QwenImage:
    """The generator users hold: `load_pipeline(...)` returns one; `generate(...)` returns PIL images."""

    def __init__(self, transformer, vae, text_encoder, schedule: ScheduleConfig | None = None,
                 edit_template: str | None = None, placement: Placement | None = None):
        self.transformer, self.vae, self.text_encoder = transformer, vae, text_encoder
        self.schedule = schedule or ScheduleConfig()
        self.edit_template = edit_template or ("edit_plus" if transformer.config.zero_cond_t else None)
        self.placement = placement or Placement(device=transformer.device)
        self._loras = []  # LoraHandles, in the order applied

    # ------------------------------------------------------------------------------------------------ LoRA

    def load_lora(self, path, strength: float = 1.0, mode: str | None = None):
        """Apply a LoRA (any supported format) to the transformer; returns its report (keys that landed, and
        those that did not, with why). `mode` "merge" writes it into the weights (default for float weights),
        "runtime" adds it in the forward pass (default when the model holds fp8 weights). Several LoRAs stack."""
        from .lora import apply_loras, default_mode

        handle = apply_loras(self.transformer, [(path, strength)], mode or default_mode(self.transformer))
        self._loras.append(handle)
        return handle.reports[0]

    def unload_loras(self) -> None:
        """Remove every LoRA, restoring the transformer's weights exactly."""
        while self._loras:
            self._loras.pop().remove()

    @property
    def device(self):
        return torch.device(self.placement.device)

    # ------------------------------------------------------------------------------------------------ public

    @torch.no_grad()
    def generate(self, prompt, negative_prompt=None, width=None, height=None, steps=50, cfg=4.0, seed=0,
                 references=None, image=None, strength=1.0, mask=None, num_images=1, shift=None,
                 callback=None, interrupt=None, output_type="pil"):
        """Images for `prompt` (a string or a list). `references` (1 to 3 PIL images) makes it an edit, `image`
        with `strength` an image-to-image, plus `mask` (white = repaint) an inpaint. cfg > 1 runs true
        classifier-free guidance against `negative_prompt` (default " ", as the official examples). `shift`
        None uses the official resolution-dependent schedule; a number, the fixed shift ComfyUI workflows use.
        `seed`: an int (one noise stream for the batch, as the reference with one generator) or one int per
        image. Size defaults: 1328x1328 for text-to-image, the input's size (floored to 16) for image-to-image,
        about a megapixel at the last reference's aspect for edits. `callback(step, total, latents, x0)` runs
        after every step; `interrupt()` is checked before each and stops with `Interrupted`. output_type
        "latent" returns the packed latents instead of images."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else []
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"num_images {num_images!r} must be a positive integer")
        refs = _as_images(references, "references")
        if refs and image is not None:
            raise ValueError("give either references (an edit) or image (image-to-image/inpainting), not both")
        if mask is not None and image is None:
            raise ValueError("a mask needs the image it masks (image=...)")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength {strength} must be in (0, 1]")
        batch = len(prompts) * num_images
        gen = _generators(seed, batch)

        edit = None
        if refs:
            edit = self._edit_inputs(refs)
            width, height = width or edit.size[0], height or edit.size[1]
        elif image is not None:
            image = _as_images(image, "image")[0]
            width, height = width or image.width // 16 * 16, height or image.height // 16 * 16
        width, height = width or DEFAULT_SIZE[0], height or DEFAULT_SIZE[1]
        sigmas_for(steps, width, height, shift)  # checks the settings before the text encoder runs

        cond, uncond = self._encode(prompts, negative_prompt, cfg, num_images, edit, interrupt)
        clean, pixel_mask = None, None
        if image is not None:
            clean = self._encode_image(to_tensor(image, width, height), gen)  # drawn before the noise, as the ref
            if mask is not None:
                pixel_mask = _pixel_mask(mask, image, width, height)
        with self.placement.use(self.transformer) as model:
            latents = sample(model, cond, uncond, width=width, height=height, steps=steps, cfg=cfg, seed=gen,
                             batch=batch, shift=shift, schedule=self.schedule, clean=clean, strength=strength,
                             mask=pixel_mask, device=self.device, callback=callback, interrupt=interrupt)
        if output_type == "latent":
            return latents
        return self.decode(latents, width, height)

    def decode(self, latents: torch.Tensor, width: int, height: int) -> list[Image.Image]:
        """Packed latents -> PIL images."""
        with self.placement.use(self.vae) as vae:
            z = unpack_latents(latents, height // 8, width // 8).to(self.device, torch.float32)
            pixels = vae.decode(vae.denormalize_latents(z).to(vae.dtype))  # one rounding, as the graph's decode
        return to_pil(pixels[:, :, 0])

    # --------------------------------------------------------------------------------------------- helpers

    def _encode(self, prompts, negative_prompt, cfg, num_images, edit, interrupt=None):
        template = "t2i" if edit is None else self.edit_template
        images = None if edit is None else edit.vision
        negs = None
        if cfg > 1.0:
            neg = negative_prompt if negative_prompt is not None else " "
            negs = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
            if len(negs) != len(prompts):
                raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts")
        kw = dict(images=images, template=template, num_images_per_prompt=num_images, interrupt=interrupt)
        with self.placement.use(self.text_encoder) as te:
            cond = Conditioning(*te.encode(prompts, **kw), references=edit)
            uncond = None if negs is None else Conditioning(*te.encode(negs, **kw), references=edit)
        return cond, uncond

    def _edit_inputs(self, refs) -> "EditReferences":
        if self.edit_template is None:
            raise ValueError("this model is not an edit model (no edit pipeline in its model_index.json); "
                             "load an Edit checkpoint or pass edit_template='edit' or 'edit_plus'")
        with self.placement.use(self.vae) as vae:
            return encode_references(vae, refs, self.edit_template)

    def _encode_image(self, pixels, generator) -> torch.Tensor:
        """Normalised latents [B, 16, 1, h, w] of pixels [B, 3, H, W]: the posterior's mode when `generator` is
        None (the edit pipelines), else its sample drawn from it (image-to-image; a list: one draw each)."""
        with self.placement.use(self.vae) as vae:
            dist = vae.encode(pixels[:, :, None].to(self.device, vae.dtype))
            if generator is None:
                z = dist.mode()
            elif isinstance(generator, list):
                z = torch.cat([dist.sample(g) for g in generator])
            else:
                z = dist.sample(generator)
            return vae.normalize_latents(z).float().cpu()


def _pixel_mask(mask, image, width, height) -> torch.Tensor:
    """generate()'s mask (PIL, white = repaint, or a tensor [H, W] / [1, 1, H, W] in [0, 1]) of the input image's
    size -> [1, 1, height, width] of 0 (keep) and 1 (repaint), as the reference prepares it."""
    if isinstance(mask, torch.Tensor):
        m = mask.float().reshape(1, 1, *mask.shape[-2:])
        size = (m.shape[-1], m.shape[-2])
    else:
        mask = _as_images(mask, "mask")[0]
        size = mask.size
    if size != image.size:
        raise ValueError(f"mask is {size[0]}x{size[1]} but the image is {image.width}x{image.height}; "
                         "give a mask of the image's size")
    if isinstance(mask, torch.Tensor):
        return (F.interpolate(m, size=(height, width), mode="bilinear") >= 0.5).float()
    return mask_to_tensor(mask, width, height)


# ------------------------------------------------------------------------------------ the shared sampler

@dataclass
class EditReferences:
    """What an edit conditions on besides the prompt: the reference latents (normalised, packed [1, S_ref, 64],
    joined after the noisy tokens), their patch grids, the default output size (the last reference's) and the
    images the vision tower saw."""
    tokens: torch.Tensor
    shapes: list
    size: tuple[int, int]
    vision: object = None


def encode_references(vae, refs, template: str) -> EditReferences:
    """1 to 3 PIL references -> EditReferences. Each is VAE-encoded (posterior mode) at about a megapixel at its
    own aspect; the default output size follows the last one (as both reference edit pipelines)."""
    refs = _as_images(refs, "references")
    limit = 1 if template == "edit" else 3
    if not 1 <= len(refs) <= limit:
        raise ValueError(f"this edit model takes {'exactly 1' if limit == 1 else '1 to 3'} reference image(s), "
                         f"got {len(refs)}")
    tokens, shapes = [], []
    for ref in refs:
        rw, rh = calculate_dimensions(EDIT_AREA, ref.width / ref.height)
        z = vae.encode(to_tensor(ref, rw, rh)[:, :, None].to(vae.device, vae.dtype)).mode()
        tokens.append(pack_latents(vae.normalize_latents(z).float().cpu()))
        shapes.append((1, rh // 16, rw // 16))
    vision = resize_for_vision(refs[0] if template == "edit" else refs, template)
    size = calculate_dimensions(EDIT_AREA, refs[-1].width / refs[-1].height)
    return EditReferences(torch.cat(tokens, dim=1), shapes, size, vision)


def sample(transformer, cond: Conditioning, uncond: Conditioning | None = None, *, width: int, height: int,
           steps: int, cfg: float, seed, batch: int = 1, shift: float | None = None,
           schedule: ScheduleConfig | None = None, clean: torch.Tensor | None = None, strength: float = 1.0,
           mask: torch.Tensor | None = None, device=None, callback=None, interrupt=None, step=None) -> torch.Tensor:
    """The one sampler behind `QwenImage.generate`, the graph nodes and the trainer's validation: packed latents
    [batch, S, 64] (normalised) for the conditioning. Edit references ride on `cond.references`.

    `seed`: an int (one CPU noise stream for the batch), a list (one per image) or generator(s). `shift` None
    uses the official resolution-dependent schedule; a number, ComfyUI's fixed-shift schedule. `clean`
    (normalised latents [1 or batch, 16, 1, h, w]) starts from that image, skipping the first (1 - strength) of
    the steps as the reference's get_timesteps does; `mask` (in [0, 1], [1 or batch, 1, H, W], any size: resized
    to the output and binarised at 0.5; 1 = repaint) inpaints, keeping the rest of `clean` at every step. `step`
    replaces the Euler step (`sampling.denoise`; RL's stochastic sampler)."""
    gen = _generators(seed, batch)
    sigmas = sigmas_for(steps, width, height, shift, schedule)
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength {strength} must be in (0, 1]")
    if mask is not None and clean is None:
        raise ValueError("inpainting needs the image's latents to keep (clean=...)")
    cond, uncond = _to_batch(cond, batch, "positive"), None if uncond is None else _to_batch(uncond, batch, "negative")
    refs = cond.references
    img_shapes = [[(1, height // 16, width // 16)] + ([] if refs is None else list(refs.shapes))] * batch
    inpaint, ref_tokens = None, None
    if clean is not None:
        if tuple(clean.shape[-2:]) != (height // 8, width // 8):
            raise ValueError(f"the image latents are {clean.shape[-1] * 8}x{clean.shape[-2] * 8} pixels but the "
                             f"output is {width}x{height}")
        start = int(max(steps - min(steps * strength, steps), 0))  # the reference's get_timesteps
        sigmas = sigmas[start:]
        clean = _repeat_to(clean.float().cpu(), batch, "image latents")
        noise = initial_noise(batch, height, width, gen)
        latents = pack_latents(add_noise(clean, noise, sigmas[0]))
        if mask is not None:
            inpaint = _inpaint_state(mask, clean, noise, width, height, batch)
    else:
        latents = pack_latents(initial_noise(batch, height, width, gen))
    if refs is not None:
        ref_tokens = refs.tokens.repeat(batch, 1, 1)

    dev = torch.device(device) if device is not None else transformer.device
    dtype = transformer.dtype
    move = lambda t: None if t is None else t.to(dev, dtype)  # noqa: E731
    if inpaint is not None:
        inpaint = InpaintState(*(move(t) for t in (inpaint.image_tokens, inpaint.mask_tokens, inpaint.noise)))
    return denoise(transformer, move(latents), sigmas.to(dev), cond.to(dev, dtype), img_shapes=img_shapes,
                   uncond=None if uncond is None else uncond.to(dev, dtype), cfg=cfg,
                   reference_tokens=move(ref_tokens), inpaint=inpaint, callback=callback, interrupt=interrupt,
                   step=step)


def sigmas_for(steps: int, width: int, height: int, shift: float | None = None,
               schedule: ScheduleConfig | None = None) -> torch.Tensor:
    """The sampling schedule: official (resolution-dependent shift) when `shift` is None, else ComfyUI's fixed."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps {steps!r} must be a positive integer")
    check_size(width, height, "output")
    if shift is None:
        return official_sigmas(steps, image_seq_len(height, width), schedule or ScheduleConfig())
    if not shift > 0:
        raise ValueError(f"shift {shift} must be positive")
    return fixed_shift_sigmas(steps, float(shift))


def _repeat_to(x: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise ValueError(f"{what}: a batch of {x.shape[0]} does not divide the batch of {batch}")
    return x.repeat(batch // x.shape[0], *([1] * (x.dim() - 1)))


def _to_batch(c: Conditioning, batch: int, what: str) -> Conditioning:
    """One prompt's states for every image (repeated), or already one per image."""
    n = c.embeds.shape[0]
    if n == batch:
        return c
    if batch % n:
        raise ValueError(f"{what} conditioning holds {n} prompts, which does not divide the batch of {batch}")
    return c.repeat(batch // n)


def _inpaint_state(mask, clean, noise, width, height, batch) -> InpaintState:
    """What the loop keeps: the mask binarised at the output size, nearest-resized to the latent grid as the
    reference does, and packed like the tokens."""
    m = mask.float().cpu()
    m = m.reshape(-1, 1, *m.shape[-2:])
    if tuple(m.shape[-2:]) != (height, width):
        m = F.interpolate(m, size=(height, width), mode="bilinear")
    m = (m >= 0.5).float()
    m = F.interpolate(m, size=(height // 8, width // 8))  # nearest, as the reference
    m = _repeat_to(m, batch, "mask")[:, :, None].expand(-1, clean.shape[1], 1, -1, -1)
    return InpaintState(pack_latents(clean), pack_latents(m), pack_latents(noise))


def _generators(seed, batch):
    """One CPU generator for the batch (an int seed), or one per image (a list of seeds)."""
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise ValueError(f"{len(seed)} seeds for {batch} images; give one per image or a single seed")
        return [s if isinstance(s, torch.Generator) else torch.Generator("cpu").manual_seed(int(s)) for s in seed]
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator("cpu").manual_seed(int(seed))


def _as_images(x, what) -> list:
    if x is None:
        return []
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    for i, item in enumerate(items):
        if item is None:
            raise ValueError(f"{what}[{i}] is missing (None)")
        if not isinstance(item, Image.Image):
            raise TypeError(f"{what}[{i}] must be a PIL image, got {type(item).__name__}")
    return items


# ------------------------------------------------------------------------------------------------------ loading

def read_model_index(folder: str) -> dict:
    path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(path):
        return {}
    from .checkpoint import read_json  # the loaders' bounded JSON reader: a bad file is an error naming it

    return read_json(path)


def load_pipeline(path_or_files, device=None, dtype=None, edit_template: str | None = None,
                  placement: Placement | None = None, weight_dtype=None,
                  vram_budget_gb: float | None = None) -> QwenImage:
    """A diffusers model folder, or the three ComfyUI files as a sequence or dict (transformer / diffusion
    model, text encoder, VAE), -> a ready `QwenImage`. The edit template follows the folder's model_index.json
    (QwenImageEditPipeline: "edit"; QwenImageEditPlusPipeline: "edit_plus") unless given.

    `weight_dtype=torch.float8_e4m3fn` keeps the transformer's linear weights in fp8 (fp8 files always do).
    `vram_budget_gb` (GPU only) sets the placement: the text encoder and VAE visit the GPU only while they work
    (the text encoder streamed layer by layer if it alone exceeds the budget), and as many transformer blocks
    as fit stay resident while the rest stream from pinned CPU memory (`offload.BlockSwap`). The images are
    identical to a fully resident run."""
    from .checkpoint import load_transformer
    from .checkpoint21 import FAMILY_20B
    from .text_encoder import load_text_encoder
    from .vae import load_vae

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if vram_budget_gb is not None and placement is not None:
        raise ValueError("give either vram_budget_gb or placement, not both")
    if vram_budget_gb is not None:
        placement = Placement(device=device, storage="cpu", offload=True)
    placement = placement or Placement(device=device)
    load_device = placement.storage if placement.offload else placement.device
    if isinstance(path_or_files, (str, os.PathLike)) and os.path.isdir(path_or_files):
        folder = os.fspath(path_or_files)
        missing = [c for c in ("transformer", "vae", "text_encoder") if not os.path.isdir(os.path.join(folder, c))]
        if missing:
            raise FileNotFoundError(f"{folder}: not a complete Qwen-Image model folder: missing {', '.join(missing)}/")
        index = read_model_index(folder)
        files = {"transformer": folder, "vae": folder, "text_encoder": folder}
        schedule = (ScheduleConfig.load(folder) if os.path.isdir(os.path.join(folder, "scheduler")) else None)
        edit_template = edit_template or EDIT_TEMPLATES.get(index.get("_class_name", ""))
    else:
        files = _three_files(path_or_files)
        schedule = None
    transformer = load_transformer(files["transformer"], device=load_device, dtype=dtype, weight_dtype=weight_dtype,
                                   family=FAMILY_20B)
    vae = load_vae(files["vae"], device=load_device, dtype=dtype)
    text_encoder = load_text_encoder(files["text_encoder"], device=load_device, dtype=dtype)
    if vram_budget_gb is not None:
        _apply_budget(placement, transformer, text_encoder, vram_budget_gb)
    return QwenImage(transformer, vae, text_encoder, schedule, edit_template, placement)


def _apply_budget(placement: Placement, transformer, text_encoder, budget_gb: float) -> None:
    from .offload import BlockSwap, module_bytes, plan_for_budget

    plan = plan_for_budget(transformer, module_bytes(text_encoder.model), budget_gb)
    placement.plan = plan
    managed = [transformer]
    if plan.resident_blocks is None:
        transformer.to(placement.device)
    else:
        transformer._block_swap = BlockSwap(transformer, plan.resident_blocks, placement.device)
    if plan.text_encoder_streamed:
        from accelerate import cpu_offload

        cpu_offload(text_encoder.model, execution_device=torch.device(placement.device))
        text_encoder.execution_device = placement.device
        managed.append(text_encoder)
    placement.managed = tuple(managed)


def _three_files(files) -> dict:
    if isinstance(files, dict):
        names = {"diffusion_model": "transformer", "transformer": "transformer", "vae": "vae",
                 "text_encoder": "text_encoder", "clip": "text_encoder"}
        out = {names.get(k, k): v for k, v in files.items()}
    elif isinstance(files, (list, tuple)) and len(files) == 3:
        out = dict(zip(("transformer", "text_encoder", "vae"), files))
    else:
        raise ValueError("give a diffusers model folder, or three files: (diffusion model, text encoder, VAE)")
    missing = [k for k in ("transformer", "text_encoder", "vae") if k not in out]
    if missing:
        raise ValueError(f"missing component file(s): {', '.join(missing)}")
    for k, v in out.items():
        if not os.path.isfile(v):
            raise FileNotFoundError(f"{k} file not found: {v}")
    return out
