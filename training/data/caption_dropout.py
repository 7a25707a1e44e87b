"""Caption dropout: a share of the training samples sees the empty prompt instead of its caption, so the model learns
the unconditional velocity that classifier-free guidance pushes away from (kohya's `caption_dropout_rate`, SD3's
10%). Without it a model trained from scratch never saw an empty prompt and CFG extrapolates from noise.

The "empty" prompt is the pipelines' default negative prompt, " ", encoded once with the stage's text-encoder
settings and cached beside the samples; which samples drop is drawn from each sample's own generator, so a run is
as reproducible (and resumable) with dropout as without."""
from __future__ import annotations

import hashlib
import os

import torch

from ...qwenimage_core.weights import SafetensorsFile, save_file_atomic

EMPTY_PROMPT = " "   # QwenImage.generate's default negative_prompt: what CFG's unconditional branch encodes


def empty_cache_path(cache_dir: str, settings) -> str:
    """The cached empty-prompt embedding for these encoder settings (a changed encoder or template gets a new file)."""
    key = "|".join(map(str, (settings.model_id, settings.template, settings.max_text_tokens, EMPTY_PROMPT)))
    return os.path.join(cache_dir, f"empty_prompt-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors")


def build_empty(cache_dir: str, settings, text_encoder) -> str:
    """Encode the empty prompt as build_cache encodes captions (t2i template) and write it; returns the path."""
    path = empty_cache_path(cache_dir, settings)
    if not os.path.exists(path):
        kwargs = {"template": settings.template, "max_sequence_length": min(settings.max_text_tokens or 1024, 1024)}
        with torch.no_grad():
            embeds, mask = text_encoder.encode([EMPTY_PROMPT], **kwargs)
        n = int(mask[0].sum())
        os.makedirs(cache_dir, exist_ok=True)
        save_file_atomic({"embeds": embeds[0, :n].float().cpu().contiguous()}, path)
    return path


def load_empty(path: str) -> torch.Tensor:
    """[L, D] float32."""
    return SafetensorsFile(path).get("embeds").float()


def drop_captions(batch: dict, empty: torch.Tensor, rate: float, generators) -> dict:
    """The batch with each sample's text replaced by `empty` with probability `rate` (one draw from the sample's
    generator, taken only when rate > 0 so runs without dropout keep their exact noise)."""
    if rate <= 0:
        return batch
    drop = [bool(torch.rand((), generator=g) < rate) for g in generators]
    if not any(drop):
        return batch
    embeds, mask = batch["embeds"], batch["mask"]
    b, length, dim = embeds.shape
    n = empty.shape[0]
    out = embeds.new_zeros(b, max(length, n), dim)
    out_mask = mask.new_zeros(b, max(length, n))
    out[:, :length], out_mask[:, :length] = embeds, mask
    for j, d in enumerate(drop):
        if d:
            out[j], out_mask[j] = 0, 0
            out[j, :n], out_mask[j, :n] = empty.to(out), 1
    return {**batch, "embeds": out, "mask": out_mask, "dropped_captions": torch.tensor(drop)}
