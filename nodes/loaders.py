"""Loader nodes: diffusion model, text encoder, VAE (single files from the ComfyUI model folders), a diffusers
folder giving all three, and a chainable LoRA loader. Loaded models are cached by the host between runs."""
from __future__ import annotations

import logging
import os

import torch

from ..qwenimage_core.checkpoint import load_transformer
from ..qwenimage_core.checkpoint21 import FAMILY_20B
from ..qwenimage_core.lora import LoraError, match_lora
from ..qwenimage_core.offload import BlockSwap
from ..qwenimage_core.text_encoder import load_text_encoder
from ..qwenimage_core.vae import load_vae
from . import host
from .sockets import MODEL, TEXT_ENCODER, VAE, QwenModel

log = logging.getLogger("qwenimage.nodes")
CATEGORY = "Qwen-Image/loaders"
WEIGHT_DTYPES = {"default": (None, None), "bf16": (torch.bfloat16, None), "fp16": (torch.float16, None),
                 "fp32": (torch.float32, None), "fp8_e4m3fn": (torch.bfloat16, torch.float8_e4m3fn)}
TE_DEVICES = ("default", "cpu")
HIDDEN = {"unique_id": "UNIQUE_ID"}


def _choices(kind: str) -> list[str]:
    return host.list_models(kind) or [f"(no files in {kind}/)"]


def _dtype_tooltip() -> str:
    return ("Weights in memory: default keeps the file's (fp8 files stay fp8); fp8_e4m3fn quantises bf16 weights "
            "on load to halve VRAM")


def _load_model(slot, path, weight_dtype, gpu_blocks=-1):
    """gpu_blocks >= 0: load into CPU memory and keep only that many blocks on the device, streaming the rest
    one block ahead of the compute (core `BlockSwap`): the 20B model then runs in a fraction of its size."""
    dtype, wdtype = WEIGHT_DTYPES[weight_dtype]
    dev = host.device()

    def load():
        t = load_transformer(path, device="cpu" if gpu_blocks >= 0 else dev, dtype=dtype, weight_dtype=wdtype,
                             family=FAMILY_20B)
        if gpu_blocks >= 0:
            t._block_swap = BlockSwap(t, min(gpu_blocks, len(t.transformer_blocks)), dev)
        return t

    src = os.path.join(path, "transformer") if os.path.isdir(path) else path  # a diffusers folder's own part
    room = (host.weights_bytes(src), dev) if gpu_blocks < 0 else None
    return host.MODELS.get(slot, (host.MODELS.stamp(path), weight_dtype, gpu_blocks), load, room)


def _gpu_blocks_input():
    return ("INT", {"default": -1, "min": -1, "max": 200,
                    "tooltip": "Low VRAM: how many of the 60 blocks stay on the GPU; the rest stream from CPU "
                               "memory one block ahead (same images, slower). -1 keeps the whole model on the GPU"})


class QwenImageModelLoader:
    DESCRIPTION = "Load the Qwen-Image diffusion model (MMDiT) from a single file in models/diffusion_models."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "unet_name": (_choices("diffusion_models"), {"tooltip": "The diffusion model file (diffusion_models/)"}),
            "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": _dtype_tooltip()}),
            "gpu_blocks": _gpu_blocks_input(),
        }, "hidden": HIDDEN}

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The Qwen-Image diffusion model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, unet_name, weight_dtype, gpu_blocks=-1, unique_id=None):
        path = host.model_path("diffusion_models", unet_name)
        return (QwenModel(_load_model(f"model:{unique_id}", path, weight_dtype, gpu_blocks)),)


class QwenImageTextEncoderLoader:
    DESCRIPTION = ("Load Qwen2.5-VL-7B, Qwen-Image's text encoder, from models/text_encoders. The tokenizer is "
                   "found beside the file (tokenizer/ or qwen25_tokenizer/), in ComfyUI, or downloaded once.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_name": (_choices("text_encoders"), {"tooltip": "The text encoder file (text_encoders/)"}),
            "device": (list(TE_DEVICES), {"default": "default",
                                          "tooltip": "cpu keeps the 7B encoder off the GPU (slower encoding)"}),
        }, "hidden": HIDDEN}

    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The Qwen2.5-VL text encoder",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, clip_name, device, unique_id=None):
        path = host.model_path("text_encoders", clip_name)
        dev = "cpu" if device == "cpu" else host.device()
        key = (host.MODELS.stamp(path), device)
        return (host.MODELS.get(f"te:{unique_id}", key, lambda: load_text_encoder(path, device=dev),
                                (host.weights_bytes(path), dev)),)


class QwenImageVAELoader:
    DESCRIPTION = "Load the Qwen-Image VAE (Wan 2.1 architecture) from models/vae."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (_choices("vae"), {"tooltip": "The VAE file (vae/), e.g. qwen_image_vae.safetensors"}),
        }, "hidden": HIDDEN}

    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The Qwen-Image VAE",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, vae_name, unique_id=None):
        path = host.model_path("vae", vae_name)
        return (host.MODELS.get(f"vae:{unique_id}", (host.MODELS.stamp(path),),
                                lambda: load_vae(path, device=host.device()),
                                (host.weights_bytes(path), host.device())),)


class QwenImageDiffusersLoader:
    DESCRIPTION = "Load all three components from a diffusers model folder (models/diffusers/<name>/)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_folder": (_choices("diffusers"), {"tooltip": "A folder with model_index.json (diffusers/)"}),
            "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": _dtype_tooltip()}),
            "gpu_blocks": _gpu_blocks_input(),
        }, "hidden": HIDDEN}

    RETURN_TYPES = (MODEL, TEXT_ENCODER, VAE)
    RETURN_NAMES = ("model", "text_encoder", "vae")
    OUTPUT_TOOLTIPS = ("The diffusion model", "The text encoder", "The VAE")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model_folder, weight_dtype, gpu_blocks=-1, unique_id=None):
        folder = host.model_path("diffusers", model_folder)
        stamp = host.MODELS.stamp(folder + "/model_index.json")
        dtype = WEIGHT_DTYPES[weight_dtype][0]
        model = _load_model(f"dmodel:{unique_id}", folder, weight_dtype, gpu_blocks)
        te = host.MODELS.get(f"dte:{unique_id}", (stamp, weight_dtype),
                             lambda: load_text_encoder(folder, device=host.device(), dtype=dtype),
                             (host.weights_bytes(os.path.join(folder, "text_encoder")), host.device()))
        vae = host.MODELS.get(f"dvae:{unique_id}", (stamp, weight_dtype),
                              lambda: load_vae(folder, device=host.device(), dtype=dtype),
                              (host.weights_bytes(os.path.join(folder, "vae")), host.device()))
        return (QwenModel(model), te, vae)


class QwenImageLoraLoader:
    DESCRIPTION = ("Apply a LoRA (kohya, diffusers/PEFT, ComfyUI, LyCORIS LoHa/LoKr, Lightning...) to the model. "
                   "Chain several; each has its own strength.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "The model to apply the LoRA to (chain loaders for several LoRAs)"}),
            "lora_name": (_choices("loras"), {"tooltip": "The LoRA file (loras/)"}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "How strongly the LoRA changes the model; negative inverts it"}),
        }}

    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with the LoRA",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model: QwenModel, lora_name, strength):
        path = host.model_path("loras", lora_name)
        try:
            report = match_lora(model.transformer, path)  # refuses a LoRA that does not fit, before any run
        except LoraError as e:
            raise LoraError(f"LoRA {lora_name!r} does not fit this Qwen-Image model: {e}") from None
        if report.not_landed:
            log.warning("%s", report)
        return (model.with_lora(path, strength),)


NODES = {c.__name__: c for c in (QwenImageModelLoader, QwenImageTextEncoderLoader, QwenImageVAELoader,
                                 QwenImageDiffusersLoader, QwenImageLoraLoader)}
DISPLAY = {
    "QwenImageModelLoader": "Qwen-Image Load Diffusion Model",
    "QwenImageTextEncoderLoader": "Qwen-Image Load Text Encoder",
    "QwenImageVAELoader": "Qwen-Image Load VAE",
    "QwenImageDiffusersLoader": "Qwen-Image Load Diffusers Folder",
    "QwenImageLoraLoader": "Qwen-Image LoRA Loader",
}
