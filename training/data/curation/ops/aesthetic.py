"""Aesthetic score (report stage 5): the LAION "improved aesthetic predictor", an MLP over CLIP ViT-L/14 image
embeddings that predicts the mean human rating (1..10; LAION-Aesthetics kept images above ~5-6.5).

The score is MLP(e / |e|), e the CLIP image embedding (vision tower, pooled, visual projection). The MLP is five
linear layers with dropout between them and no activation, saved by the original code as a state dict with keys
    layers.0.{weight,bias}  768 -> 1024      layers.2  1024 -> 128      layers.4  128 -> 64
    layers.6  64 -> 16                        layers.7  16 -> 1
(the odd indices 1, 3, 5 are the dropouts). `model` is that MLP as safetensors: a .safetensors file, or a folder
holding one; the shapes are read from the file, so the MLP's input width must equal the CLIP model's projection
width (768 for ViT-L/14). The public weights (sac+logos+ava1-l14-linearMSE.pth, in the
christophschuhmann/improved-aesthetic-predictor repository) are a pickle; convert them once, loading tensors only:

    python -m qwenimage.training.data.curation.ops.aesthetic sac+logos+ava1-l14-linearMSE.pth aesthetic.safetensors

`clip_model` is the CLIP model, a hub name or a folder (default openai/clip-vit-large-patch14)."""
from __future__ import annotations

import os
import re
import sys
from typing import Mapping, Sequence

from ..op import Item, OpError, register
from ._model import ModelOp, inputs_to

_LAYER = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


@register("aesthetic")
class Aesthetic(ModelOp):
    """aesthetic: the predictor's score (about 1..10). No default threshold: set `keep = { aesthetic = [5, inf] }`."""

    stats = ("aesthetic",)

    def __init__(self, keep: Mapping | None = None, drop_if: Mapping | None = None, *,
                 clip_model: str = "openai/clip-vit-large-patch14", **options):
        super().__init__(keep, drop_if, **options)
        self.clip_model = clip_model

    def load(self):
        import torch
        from transformers import AutoImageProcessor, CLIPModel

        clip = self.pretrained(CLIPModel, self.clip_model, "CLIP model", dtype=self.torch_dtype())
        processor = self.pretrained(AutoImageProcessor, self.clip_model, "CLIP image processor", backend="pil")
        mlp = load_mlp(self.name, self.model)
        width = clip.config.projection_dim
        if mlp[0].in_features != width:
            raise OpError(f"op {self.name!r}: the MLP in {self.model!r} takes {mlp[0].in_features}-wide embeddings "
                          f"but {self.clip_model!r} gives {width}")
        return clip.to(self.device).eval(), processor, mlp.to(self.device, torch.float32)

    def compute_batch(self, items: Sequence[Item]) -> list[dict]:
        import torch

        clip, processor, mlp = self.loaded
        pixels = processor(images=[it.small for it in items], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            pooled = clip.vision_model(pixel_values=pixels.to(self.device, clip.dtype)).pooler_output
            e = clip.visual_projection(pooled).float()
            scores = mlp(e / e.norm(dim=-1, keepdim=True)).squeeze(-1)
        return [{"aesthetic": float(s)} for s in scores.tolist()]


def load_mlp(op: str, path: str):
    """The predictor's MLP (a chain of Linear layers, eval mode) from a safetensors file or a folder holding one."""
    import torch
    from safetensors.torch import load_file

    if not path:
        raise OpError(f"op {op!r}: needs `model = PATH` to the aesthetic predictor's MLP as safetensors; convert the "
                      f"public sac+logos+ava1-l14-linearMSE.pth with `python -m "
                      f"qwenimage.training.data.curation.ops.aesthetic IN.pth OUT.safetensors`")
    file = _safetensors_in(op, os.path.expanduser(path))
    try:
        state = load_file(file)
    except Exception as e:
        raise OpError(f"op {op!r}: cannot read {file}: {type(e).__name__}: {e}") from None
    idx = sorted({int(m.group(1)) for k in state if (m := _LAYER.match(k))})
    if not idx or any(f"layers.{i}.{p}" not in state for i in idx for p in ("weight", "bias")):
        raise OpError(f"op {op!r}: {file} is not an aesthetic MLP: wants layers.N.weight / layers.N.bias, has "
                      f"{', '.join(sorted(state)[:8]) or 'no tensors'}")
    layers = []
    for i in idx:
        w, b = state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]
        if layers and layers[-1].out_features != w.shape[1]:
            raise OpError(f"op {op!r}: {file}: layers.{i}.weight is {tuple(w.shape)}, after a layer of width "
                          f"{layers[-1].out_features}")
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w, "bias": b})
        layers.append(lin)
    if layers[-1].out_features != 1:
        raise OpError(f"op {op!r}: {file}: the last layer gives {layers[-1].out_features} values, not one score")
    return torch.nn.Sequential(*layers).float().eval()


def _safetensors_in(op: str, path: str) -> str:
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if len(files) != 1:
            raise OpError(f"op {op!r}: folder {path} must hold exactly one .safetensors file, has {files or 'none'}")
        return os.path.join(path, files[0])
    if not os.path.isfile(path):
        raise OpError(f"op {op!r}: aesthetic MLP {path!r}: no such file or folder")
    if not path.endswith(".safetensors"):
        raise OpError(f"op {op!r}: {path} is not safetensors; convert it first with `python -m "
                      f"qwenimage.training.data.curation.ops.aesthetic {path} OUT.safetensors`")
    return path


def convert(src: str, dst: str) -> list[str]:
    """The public .pth state dict -> safetensors (tensors only: torch.load with weights_only=True, never a pickle of
    code). Returns the keys written."""
    import torch

    from .....qwenimage_core.weights import save_file_atomic

    state = torch.load(src, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not any(_LAYER.match(str(k)) for k in state):
        raise ValueError(f"{src}: not an aesthetic MLP state dict (wants layers.N.weight / layers.N.bias)")
    tensors = {k: v for k, v in state.items() if _LAYER.match(str(k))}
    save_file_atomic(tensors, dst)
    return sorted(tensors)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m qwenimage.training.data.curation.ops.aesthetic IN.pth OUT.safetensors")
    keys = convert(sys.argv[1], sys.argv[2])
    print(f"wrote {sys.argv[2]}: {', '.join(keys)}")
