"""Tiny stand-ins for the real model files, written under the real files' names into a ComfyUI-style models
folder, so the shipped workflows run unchanged in the node-pack, server and browser tests. Built from our own
modules (no diffusers), with random weights large enough that every layer shows in the output."""
import os
import shutil

import numpy as np
import torch
from PIL import Image, ImageDraw

from _tiny import TOKENIZER_DIR, tiny_te_config

# The file names the workflows use: the files ComfyUI users download (see workflows/README.md)
FILES = {
    "diffusion_model": "qwen_image_fp8_e4m3fn.safetensors",
    "edit_model": "qwen_image_edit_2509_fp8_e4m3fn.safetensors",
    "text_encoder": "qwen_2.5_vl_7b_fp8_scaled.safetensors",
    "vae": "qwen_image_vae.safetensors",
    "lora": "qwen_image_style_lora.safetensors",
    "lightning": "Qwen-Image-Lightning-8steps-V1.0.safetensors",
}
INPUT_IMAGES = ("example.png", "example_mask.png", "example_2.png")


def _perturb(module, std, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def tiny_components(tokenizer_len: int, seed: int = 0):
    """(transformer, vae, text-encoder model) — ours, tiny, random."""
    import transformers

    from qwenimage.qwenimage_core import QwenImageTransformer, QwenImageVAE, VAEConfig, preset

    torch.manual_seed(seed)
    transformer = _perturb(QwenImageTransformer(preset("tiny", joint_attention_dim=64)), 0.1, seed).eval()
    vae = QwenImageVAE(VAEConfig.tiny()).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    te = transformers.Qwen2_5_VLForConditionalGeneration(tiny_te_config(tokenizer_len))
    with torch.no_grad():
        for name, p in te.named_parameters():
            if name.endswith("weight") and p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return transformer, vae, te.eval()


def _lora(transformer, seed, rank=4, scale=0.3, blocks=None):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mod in transformer.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("transformer_blocks.") and ".attn." in name:
            if blocks is not None and int(name.split(".")[1]) not in blocks:
                continue
            A = torch.randn(rank, mod.in_features, generator=g) * scale
            B = torch.randn(mod.out_features, rank, generator=g) * scale
            out[name] = (A, B, float(rank))
    return out


def write_tiny_models(root, tokenizer_len: int = None, seed: int = 0) -> dict:
    """Write diffusion_models/, text_encoders/ (with the tokenizer beside the file), vae/, loras/ under `root`,
    under FILES' names. Returns {role: path}."""
    from qwenimage.qwenimage_core import save_comfyui_transformer, save_lora
    from qwenimage.qwenimage_core.text_encoder import save_text_encoder_file
    from qwenimage.qwenimage_core.vae import diffusers_to_comfy
    from qwenimage.qwenimage_core.weights import save_file_atomic

    if tokenizer_len is None:
        import transformers

        tokenizer_len = len(transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR))
    root = os.fspath(root)
    dirs = {k: os.path.join(root, k) for k in ("diffusion_models", "text_encoders", "vae", "loras")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    transformer, vae, te = tiny_components(tokenizer_len, seed)
    paths = {
        "diffusion_model": os.path.join(dirs["diffusion_models"], FILES["diffusion_model"]),
        "edit_model": os.path.join(dirs["diffusion_models"], FILES["edit_model"]),
        "text_encoder": os.path.join(dirs["text_encoders"], FILES["text_encoder"]),
        "vae": os.path.join(dirs["vae"], FILES["vae"]),
        "lora": os.path.join(dirs["loras"], FILES["lora"]),
        "lightning": os.path.join(dirs["loras"], FILES["lightning"]),
    }
    save_comfyui_transformer(transformer, paths["diffusion_model"], prefix="model.diffusion_model.")
    edit, _, _ = tiny_components(tokenizer_len, seed + 1)
    save_comfyui_transformer(edit, paths["edit_model"])
    save_text_encoder_file(te, paths["text_encoder"])
    tok = os.path.join(dirs["text_encoders"], "qwen25_tokenizer")
    if not os.path.isdir(tok):
        shutil.copytree(TOKENIZER_DIR, tok)
    save_file_atomic({diffusers_to_comfy(k): v.contiguous() for k, v in vae.state_dict().items()}, paths["vae"])
    save_lora(paths["lora"], _lora(transformer, seed + 10), model=transformer)
    save_lora(paths["lightning"], _lora(transformer, seed + 11, blocks={0}), model=transformer)
    return paths


def write_input_images(folder, width=64, height=48) -> dict:
    """A picture, an inpainting mask (as an RGBA image: transparent = repaint, as ComfyUI's Load Image reads
    masks) and a second picture, under INPUT_IMAGES' names."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((width, height), Image.BICUBIC)
    img.save(os.path.join(folder, INPUT_IMAGES[0]))
    rgba = img.convert("RGBA")
    alpha = Image.new("L", (width, height), 255)
    ImageDraw.Draw(alpha).rectangle([width // 4, height // 4, 3 * width // 4, 3 * height // 4], fill=0)
    rgba.putalpha(alpha)
    rgba.save(os.path.join(folder, INPUT_IMAGES[1]))
    other = Image.fromarray(rng.integers(0, 255, (6, 5, 3), dtype=np.uint8)).resize((40, 48), Image.BICUBIC)
    other.save(os.path.join(folder, INPUT_IMAGES[2]))
    return {n: os.path.join(folder, n) for n in INPUT_IMAGES}
