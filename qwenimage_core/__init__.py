"""qwenimage_core: the Qwen-Image model library (MSRoPE MMDiT, VAE, text encoder, schedules, pipelines, I/O).

It knows nothing of nodes or training; both faces import from here."""
from .attention import register_attention_backend, set_attention_backend
from .checkpoint import load_transformer, save_comfyui_transformer, save_transformer
from .config import PRESETS, TransformerConfig, preset
from .schedules import (ScheduleConfig, euler_step, fixed_shift_sigmas, initial_noise, official_sigmas, pack_latents,
                        unpack_latents)
from .text_encoder import QwenTextEncoder, load_text_encoder
from .transformer import QwenImageTransformer
from .weights import CheckpointError
from .vae import QwenImageVAE, VAEConfig, load_vae, save_comfyui_vae, save_vae
from .lora import LoraError, apply_loras, read_lora, save_lora
from .sampling import Conditioning, Interrupted, denoise
from .offload import BlockSwap, plan_for_budget
from .pipeline import Placement, QwenImage, load_pipeline

__all__ = [
    "CheckpointError", "PRESETS", "QwenImageTransformer", "TransformerConfig", "load_transformer", "preset",
    "register_attention_backend", "save_comfyui_transformer", "save_transformer", "set_attention_backend",
    "ScheduleConfig", "euler_step", "fixed_shift_sigmas", "initial_noise", "official_sigmas", "pack_latents",
    "unpack_latents", "QwenTextEncoder", "load_text_encoder", "QwenImageVAE", "VAEConfig", "load_vae", "save_vae",
    "save_comfyui_vae",
    "LoraError", "apply_loras", "read_lora", "save_lora", "Conditioning", "Interrupted", "denoise", "BlockSwap",
    "plan_for_budget", "Placement", "QwenImage", "load_pipeline",
]
