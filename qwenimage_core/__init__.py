"""qwenimage_core: the Qwen-Image model library (MSRoPE MMDiT, VAE, text encoder, schedules, pipelines, I/O).

It knows nothing of nodes or training; both faces import from here."""
import importlib

# name -> the submodule defining it, imported on first use (PEP 562): `import qwenimage.qwenimage_core.images` or the
# command line's --help must not pay for torch and the model code; `from qwenimage.qwenimage_core import X` still works.
_EXPORTS = {
    "register_attention_backend": "attention", "set_attention_backend": "attention",
    "load_transformer": "checkpoint", "save_comfyui_transformer": "checkpoint", "save_transformer": "checkpoint",
    "PRESETS": "config", "TransformerConfig": "config", "preset": "config",
    **dict.fromkeys(["ScheduleConfig", "euler_step", "fixed_shift_sigmas", "initial_noise", "official_sigmas",
                     "pack_latents", "unpack_latents"], "schedules"),
    "QwenTextEncoder": "text_encoder", "load_text_encoder": "text_encoder",
    "QwenImageTransformer": "transformer", "CheckpointError": "weights",
    **dict.fromkeys(["QwenImage21Transformer", "Transformer21Config", "KVCache"], "transformer21"),
    **dict.fromkeys(["QwenImageVAE", "VAEConfig", "load_vae", "save_comfyui_vae", "save_vae"], "vae"),
    **dict.fromkeys(["QwenImage21VAE", "VAE21Config", "load_vae21", "save_comfyui_vae21", "save_vae21"], "vae21"),
    **dict.fromkeys(["LoraError", "apply_loras", "read_lora", "save_lora"], "lora"),
    "Conditioning": "sampling", "Interrupted": "sampling", "denoise": "sampling",
    "BlockSwap": "offload", "plan_for_budget": "offload",
    "Placement": "pipeline", "QwenImage": "pipeline", "load_pipeline": "pipeline",
}


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointError", "PRESETS", "QwenImageTransformer", "TransformerConfig", "load_transformer", "preset",
    "register_attention_backend", "save_comfyui_transformer", "save_transformer", "set_attention_backend",
    "ScheduleConfig", "euler_step", "fixed_shift_sigmas", "initial_noise", "official_sigmas", "pack_latents",
    "unpack_latents", "QwenTextEncoder", "load_text_encoder", "QwenImageVAE", "VAEConfig", "load_vae", "save_vae",
    "save_comfyui_vae",
    "LoraError", "apply_loras", "read_lora", "save_lora", "Conditioning", "Interrupted", "denoise", "BlockSwap",
    "plan_for_budget", "Placement", "QwenImage", "load_pipeline", "QwenImage21Transformer", "Transformer21Config",
    "KVCache", "QwenImage21VAE", "VAE21Config", "load_vae21", "save_comfyui_vae21", "save_vae21",
]
