"""Watermark (report stage 5, abnormal elements): the probability an image classifier gives the "watermark" class.

The default model is amrul-hzz/watermark_detector, the ViT classifier data-juicer's image_watermark_filter uses
(dropping above 0.8 by default, as there). Another classifier: `model = "..."` and `label` = its watermark class's
name or index; a wrong label is an error listing the model's classes."""
from __future__ import annotations

from ..op import register
from .safety import ImageClassifierOp


@register("watermark")
class Watermark(ImageClassifierOp):
    """watermark: probability 0..1 that the image carries a visible watermark."""

    stats = ("watermark",)
    stat = "watermark"
    default_model = "amrul-hzz/watermark_detector"
    default_label = "watermark"
    default_keep = {"watermark": (0.0, 0.8)}
