"""PickScore (Kirstain et al. 2023): a CLIP-H fine-tuned on Pick-a-Pic human preferences; the score is CLIP's
logit, logit_scale * cos(image, prompt), divided by 26 as Flow-GRPO does (so it lands near 0.8-0.9)."""
from __future__ import annotations

from .base import register
from .clip import ClipScorer


@register("pickscore")
def pickscore(model: str = "yuvalkirstain/PickScore_v1", processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
              scale: float = 1 / 26, **options):
    """PickScore per image (options: device, dtype, batch_size, offline)."""
    return ClipScorer(model, processor, what="PickScore model", scale=scale, use_logit_scale=True, **options)
