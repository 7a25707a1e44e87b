"""NSFW (report stage 1): the probability an image classifier gives the "nsfw" class.

The default model is Falconsai/nsfw_image_detection, a ViT fine-tuned on two classes (normal, nsfw), which
data-juicer's image_nsfw_filter also uses; any transformers image classifier works (`model = "..."`, a hub name or
a folder), with `label` naming its bad class. `ImageClassifierOp` is shared with the watermark op."""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from ..op import Item, OpError, register
from ._model import ModelOp, inputs_to


class ImageClassifierOp(ModelOp):
    """One statistic: the probability of class `label` (its name in the model's id2label, or its index), softmax
    over the classes (sigmoid for a multi-label model). Images go through the model's own PIL image processor."""

    stat = ""
    default_label: str | int = ""

    def __init__(self, keep: Mapping | None = None, drop_if: Mapping | None = None, *, label: str | int | None = None,
                 **options):
        super().__init__(keep, drop_if, **options)
        self.label = self.default_label if label is None else label

    def load(self):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        processor = self.pretrained(AutoImageProcessor, self.model, "image processor", backend="pil")
        model = self.pretrained(AutoModelForImageClassification, self.model, "image classifier",
                                dtype=self.torch_dtype())
        index = label_index(self.name, self.model, model.config.id2label, self.label)
        multi = getattr(model.config, "problem_type", None) == "multi_label_classification"
        return processor, model.to(self.device).eval(), index, multi

    def compute_batch(self, items: Sequence[Item]) -> list[dict]:
        import torch

        processor, model, index, multi = self.loaded
        # the analysis copy (long side <= 512) is plenty for a 224 px classifier and far cheaper to resize
        inputs = processor(images=[it.small for it in items], return_tensors="pt")
        with torch.inference_mode():
            logits = model(**inputs_to(inputs, self.device, model.dtype)).logits.float()
        probs = logits.sigmoid() if multi else logits.softmax(-1)
        return [{self.stat: float(p)} for p in probs[:, index].tolist()]


def label_index(op: str, model: str, id2label: Mapping, label: str | int) -> int:
    """The class index of `label`: an index, or a name matched ignoring case and punctuation ("NSFW", "nsfw")."""
    labels = {int(i): str(name) for i, name in id2label.items()}
    if isinstance(label, int) and not isinstance(label, bool):
        if label in labels:
            return label
    else:
        want = _norm(str(label))
        for i, name in labels.items():
            if _norm(name) == want:
                return i
    shown = ", ".join(f"{i}: {n!r}" for i, n in sorted(labels.items()))
    raise OpError(f"op {op!r}: model {model!r} has no class {label!r} (its classes: {shown}); "
                  f"set `label = NAME` or `label = INDEX` to the class to score")


def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", s.lower())


@register("nsfw")
class NSFW(ImageClassifierOp):
    """nsfw: probability 0..1 that the image is not safe for work; dropped above 0.5 unless `keep` says else."""

    stats = ("nsfw",)
    stat = "nsfw"
    default_model = "Falconsai/nsfw_image_detection"
    default_label = "nsfw"
    default_keep = {"nsfw": (0.0, 0.5)}
