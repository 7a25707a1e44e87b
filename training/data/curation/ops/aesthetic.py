"""Aesthetic score (report stage 5): the LAION "improved aesthetic predictor", an MLP over CLIP ViT-L/14 image
embeddings that predicts the mean human rating (1..10; LAION-Aesthetics kept images above ~5-6.5).

The score is MLP(e / |e|), e the CLIP image embedding (vision tower, pooled, visual projection). The MLP is five
linear layers with dropout between them and no activation, saved by the original code as a state dict with keys
    layers.0.{weight,bias}  768 -> 1024      layers.2  1024 -> 128      layers.4  128 -> 64
    layers.6  64 -> 16                        layers.7  16 -> 1
(the odd indices 1, 3, 5 are the dropouts). `model` is that state dict: a hub repository with `model_file` in it
(default trl-lib/ddpo-aesthetic-predictor, aesthetic-model.pth: the copy of sac+logos+ava1-l14-linearMSE.pth that
TRL's DDPO aesthetic reward loads), a file, or a folder holding `model_file`. A .pth is read with
torch.load(weights_only=True), which loads tensors and refuses pickled code; to keep safetensors instead, convert
it once:

    python -m qwenimage.training.data.curation.ops.aesthetic_convert aesthetic-model.pth aesthetic.safetensors

The shapes are read from the file, so the MLP's input width must equal the CLIP model's projection width (768 for
ViT-L/14). `clip_model` is the CLIP model, a hub name or a folder (default openai/clip-vit-large-patch14)."""
from __future__ import annotations

import pickle
import re
from typing import Mapping, Sequence

from ..op import Item, OpError, register
from ._model import ModelOp, local_or_hub_file

_LAYER = re.compile(r"^layers\.(\d+)\.(weight|bias)$")


@register("aesthetic")
class Aesthetic(ModelOp):
    """aesthetic: the predictor's score (about 1..10). No default threshold: set `keep = { aesthetic = [5, inf] }`."""

    stats = ("aesthetic",)
    default_model = "trl-lib/ddpo-aesthetic-predictor"

    def __init__(self, keep: Mapping | None = None, drop_if: Mapping | None = None, *,
                 clip_model: str = "openai/clip-vit-large-patch14", model_file: str = "aesthetic-model.pth",
                 **options):
        super().__init__(keep, drop_if, **options)
        self.clip_model, self.model_file = clip_model, model_file

    def load(self):
        import torch
        from transformers import AutoImageProcessor, CLIPModel

        file = local_or_hub_file(self.name, "aesthetic MLP", self.model, self.model_file, self.offline)
        mlp = load_mlp(self.name, file)
        clip = self.pretrained(CLIPModel, self.clip_model, "CLIP model", dtype=self.torch_dtype())
        processor = self.pretrained(AutoImageProcessor, self.clip_model, "CLIP image processor", backend="pil")
        width = clip.config.projection_dim
        if mlp[0].in_features != width:
            raise OpError(f"op {self.name!r}: the MLP in {file} takes {mlp[0].in_features}-wide embeddings "
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


def load_mlp(op: str, file: str):
    """The predictor's MLP (its Linear layers chained, eval mode) from a .safetensors or .pth state dict."""
    import torch

    state = read_state(file)
    idx = sorted({int(m.group(1)) for k in state if (m := _LAYER.match(str(k)))})
    if not idx or any(f"layers.{i}.{p}" not in state for i in idx for p in ("weight", "bias")):
        raise OpError(f"op {op!r}: {file} is not an aesthetic MLP: wants layers.N.weight / layers.N.bias, has "
                      f"{', '.join(sorted(map(str, state))[:8]) or 'no tensors'}")
    layers = []
    for i in idx:
        w, b = state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]
        if w.ndim != 2 or (layers and layers[-1].out_features != w.shape[1]):
            raise OpError(f"op {op!r}: {file}: layers.{i}.weight is {tuple(w.shape)}, after a layer of width "
                          f"{layers[-1].out_features if layers else '?'}")
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        lin.load_state_dict({"weight": w, "bias": b})
        layers.append(lin)
    if layers[-1].out_features != 1:
        raise OpError(f"op {op!r}: {file}: the last layer gives {layers[-1].out_features} values, not one score")
    return torch.nn.Sequential(*layers).float().eval()


def read_state(file: str) -> dict:
    """A state dict of tensors: safetensors, or a .pth through torch.load(weights_only=True) (no pickled code)."""
    import torch
    from safetensors.torch import load_file

    try:
        if file.endswith(".safetensors"):
            return load_file(file)
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise OpError(f"aesthetic MLP {file}: not a tensors-only .pth (torch.load with weights_only=True refused "
                      f"it; pickled code is never loaded)") from None
    except Exception as e:
        raise OpError(f"aesthetic MLP {file}: cannot read it ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:200]})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OpError(f"aesthetic MLP {file}: not a state dict of tensors")
    return state


def convert(src: str, dst: str) -> list[str]:
    """The public .pth state dict -> safetensors (read with weights_only=True). Returns the keys written."""
    from .....qwenimage_core.weights import save_file_atomic

    state = read_state(src)
    tensors = {k: v for k, v in state.items() if _LAYER.match(str(k))}
    if not tensors:
        raise OpError(f"{src}: not an aesthetic MLP state dict (wants layers.N.weight / layers.N.bias)")
    save_file_atomic(tensors, dst)
    return sorted(tensors)
