"""Image-text alignment (report stage 3, on the Raw caption split): Chinese-CLIP and SigLIP 2 scores of an image
against its caption.

Each score is the cosine of the model's L2-normalised image and text embeddings (-1..1; as DataComp's CLIP score,
without the logit scale), so one threshold reads the same at any batch size. Typical values differ by model:
CLIP-like models score matching pairs around 0.25-0.4, SigLIP's cosines sit lower (~0.05-0.2) because its sigmoid
loss adds a learnt bias; set thresholds per model from the report's histograms.

`models` maps each statistic to a model (a hub name or a folder), by default
    { clip_score = "OFA-Sys/chinese-clip-vit-base-patch16", siglip_score = "google/siglip2-base-patch16-224" };
a table naming only one computes only that one. Models load through transformers' Auto classes (ChineseCLIPModel,
SiglipModel / Siglip2Model, CLIPModel all work) with their tokenizer and PIL image processor. SigLIP's text tower
was trained on lowercased captions padded to 64 tokens and pools the last position, so SigLIP models get both.
A sample without a caption is not judged (`needs_caption`): it passes without these statistics, to be captioned
by `data annotate`; require captions with `caption_length`'s keep = { caption_tokens = [1, ...] }."""
from __future__ import annotations

from typing import Mapping, Sequence

from ..op import Item, OpError, register
from ._model import ModelOp, inputs_to

DEFAULT_MODELS = {"clip_score": "OFA-Sys/chinese-clip-vit-base-patch16",
                  "siglip_score": "google/siglip2-base-patch16-224"}


@register("clip_alignment")
class ClipAlignment(ModelOp):
    stats = ("clip_score", "siglip_score")
    needs_caption = True   # an uncaptioned sample is not judged here: it passes to be captioned by data annotate

    def __init__(self, keep: Mapping | None = None, drop_if: Mapping | None = None, *,
                 models: Mapping[str, str] | None = None, **options):
        if "model" in options:
            raise OpError(f"op {self.name!r}: give `models = {{clip_score = ..., siglip_score = ...}}`, not `model`")
        super().__init__(keep, drop_if, **options)
        models = dict(DEFAULT_MODELS if models is None else models)
        unknown = set(models) - set(self.stats)
        if unknown or not models:
            raise OpError(f"op {self.name!r}: models must map some of {', '.join(self.stats)} to a model, "
                          f"got {sorted(models) or 'nothing'}")
        self.models = models
        for stat in self.keep:
            if stat not in models:
                raise OpError(f"op {self.name!r}: keep.{stat} needs a model for it in `models`")

    def load(self):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        loaded = {}
        for stat, name in self.models.items():
            model = self.pretrained(AutoModel, name, f"{stat} model", dtype=self.torch_dtype()).to(self.device).eval()
            tokenizer = self.pretrained(AutoTokenizer, name, f"{stat} tokenizer")
            processor = self.pretrained(AutoImageProcessor, name, f"{stat} image processor", backend="pil")
            loaded[stat] = (model, tokenizer, processor)
        return loaded

    def compute_batch(self, items: Sequence[Item]) -> list[dict]:
        out = [{stat: None for stat in self.models} for _ in items]
        live = [i for i, it in enumerate(items) if it.caption and it.caption.strip()]
        if live:
            for stat, parts in self.loaded.items():
                scores = _cosines(*parts, [items[i].small for i in live], [items[i].caption for i in live],
                                  self.device)
                for i, s in zip(live, scores):
                    out[i][stat] = s
        return out


def _cosines(model, tokenizer, processor, images, captions, device) -> list[float]:
    import torch

    text_cfg = model.config.text_config
    siglip = model.config.model_type in ("siglip", "siglip2")
    if siglip:   # SigLIP 2 was trained on lowercased captions (SigLIP's own tokenizer lowercases anyway)
        captions = [c.lower() for c in captions]
    text = tokenizer(list(captions), return_tensors="pt", truncation=True,
                     padding="max_length" if siglip else True, max_length=text_cfg.max_position_embeddings)
    pixels = processor(images=list(images), return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs_to(text, device, model.dtype), **inputs_to(pixels, device, model.dtype))
    # both embeddings come L2-normalised from these models: the row-wise dot product is the cosine
    return (out.image_embeds.float() * out.text_embeds.float()).sum(-1).tolist()
