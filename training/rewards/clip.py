"""CLIP score: how well an image matches its prompt, as the cosine of CLIP's image and text embeddings.

The model is loaded through transformers from a local folder, or by hub name from the Hugging Face cache (or the
hub, unless `offline`); the weights are not in any package, so a missing model is a clear error naming it and the
command that fetches it. PickScore (pickscore.py) is the same computation on a CLIP fine-tuned on preferences."""
from __future__ import annotations

import os

from .base import register


class ModelMissing(ValueError):
    """A scorer's model cannot be found or loaded; names the model and how to get it (a config error)."""


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


def load_pretrained(cls, name: str, what: str, offline: bool, **kwargs):
    """`cls.from_pretrained(name)` from a folder or the cache; else the hub unless `offline`; else ModelMissing."""
    path = os.path.expanduser(name)
    local = name.startswith(("/", ".", "~")) or os.path.exists(path)  # a path, not a hub name
    if local and not os.path.isdir(path):
        raise ModelMissing(f"{what} {name!r}: no such folder")
    path = path if local else name
    fetch = f"`huggingface-cli download {name}`"
    try:
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as e:
        if local or offline:
            where = "that folder" if local else "the local cache"
            raise ModelMissing(f"{what} {name!r} cannot be loaded from {where} ({_why(e)}). Give a folder holding "
                               f"it, or fetch it once with {fetch}") from None
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as e:
        raise ModelMissing(f"{what} {name!r} is not in the local cache and cannot be downloaded ({_why(e)}). Fetch "
                           f"it with {fetch} where there is network, or give a local folder") from None


def torch_dtype(name: str):
    import torch

    if not hasattr(torch, name) or not isinstance(getattr(torch, name), torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype (float32, bfloat16, float16)")
    return getattr(torch, name)


class ClipScorer:
    """scale * cos(image, prompt) [* logit_scale when `use_logit_scale`], one per image, in batches."""

    def __init__(self, model: str, processor: str | None = None, *, what: str = "CLIP model", scale: float = 1.0,
                 use_logit_scale: bool = False, device: str = "cpu", dtype: str = "float32", batch_size: int = 16,
                 offline: bool = False):
        from transformers import AutoProcessor, CLIPModel  # transformers is a base dependency

        self.processor = load_pretrained(AutoProcessor, processor or model, f"{what} processor", offline)
        self.model = load_pretrained(CLIPModel, model, what, offline, dtype=torch_dtype(dtype)).to(device).eval()
        self.scale, self.use_logit_scale = float(scale), bool(use_logit_scale)
        self.device, self.batch_size = device, int(batch_size)

    def __call__(self, images, prompts, metadata):
        out = []
        for i in range(0, len(images), self.batch_size):
            out += self._batch(images[i:i + self.batch_size], prompts[i:i + self.batch_size])
        return out

    def _batch(self, images, prompts) -> list[float]:
        import torch

        inputs = self.processor(text=list(prompts), images=[im.convert("RGB") for im in images], return_tensors="pt",
                                padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.no_grad():
            out = self.model(**inputs)
        # image_embeds and text_embeds come L2-normalised: their row-wise dot product is the cosine.
        cos = (out.image_embeds.float() * out.text_embeds.float()).sum(-1)
        if self.use_logit_scale:
            cos = cos * self.model.logit_scale.exp().float()
        return (self.scale * cos).tolist()


@register("clip_score")
def clip_score(model: str = "openai/clip-vit-large-patch14", processor: str | None = None, **options):
    """Cosine similarity of CLIP image and prompt embeddings (options: scale, use_logit_scale, device, dtype,
    batch_size, offline)."""
    return ClipScorer(model, processor, what="CLIP model", **options)
