"""An LPIPS-style perceptual distance (Zhang et al. 2018) on VGG16 features, in plain torch (no torchvision).

The images (in [-1, 1]) are shifted and scaled as LPIPS does, run through VGG16's convolutional part; at the five
taps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) the features are unit-normalised over channels, their squared
difference weighted per channel (LPIPS's learned 1x1 `lin` layers; equal weights without them), averaged over
positions and summed over taps.

Weights come from one safetensors file: torchvision's VGG16 names `features.N.weight/bias` (N in 0, 2, 5, ...,
28), and optionally the lpips package's `lin0.model.1.weight` ... `lin4.model.1.weight`. Channel widths are read
off the shapes, so any width works (the tests use a tiny random one)."""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...qwenimage_core.weights import CheckpointError, SafetensorsFile

# torchvision's vgg16().features: conv indices per block; each block but the last ends in a 2x2 max pool.
BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS's ScalingLayer
SCALE = (0.458, 0.448, 0.450)


class PerceptualLoss(nn.Module):
    def __init__(self, convs: dict[int, tuple[torch.Tensor, torch.Tensor]], lins: list[torch.Tensor] | None):
        super().__init__()
        self.convs = nn.ModuleDict()
        for i, (w, b) in convs.items():
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=w.shape[-1] // 2)
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(b)
            self.convs[str(i)] = conv
        widths = [convs[block[-1]][0].shape[0] for block in BLOCKS]
        lins = lins or [torch.full((c,), 1.0 / c) for c in widths]  # no lin layers: the mean over channels
        for k, (w, c) in enumerate(zip(lins, widths)):
            if w.numel() != c:
                raise RuntimeError(f"lin{k} has {w.numel()} weights for {c} channels")
            self.register_buffer(f"lin{k}", w.reshape(-1).float())
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path) -> "PerceptualLoss":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"vae.perceptual_weights: {path}: file not found (a safetensors file with VGG16's "
                                    "features.N.weight/bias, and optionally LPIPS's lin0..lin4; see the README)")
        f = SafetensorsFile(path)
        try:
            keys = set(f.keys())
            prefix = "features." if "features.0.weight" in keys else ""
            convs = {}
            for i in (i for block in BLOCKS for i in block):
                names = (f"{prefix}{i}.weight", f"{prefix}{i}.bias")
                missing = [n for n in names if n not in keys]
                if missing:
                    raise CheckpointError(f"{path}: not VGG16 features weights: no {missing[0]!r}")
                convs[i] = tuple(f.get(n).float() for n in names)
            lin_names = [f"lin{k}.model.1.weight" for k in range(len(BLOCKS))]
            lins = [f.get(n).float() for n in lin_names] if all(n in keys for n in lin_names) else None
        finally:
            f.close()
        try:
            return cls(convs, lins)
        except RuntimeError as e:  # mis-shaped weights
            raise CheckpointError(f"{path}: VGG16 weights of inconsistent shapes ({e})") from None

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for n, block in enumerate(BLOCKS):
            if n:
                x = F.max_pool2d(x, 2)
            for i in block:
                x = F.relu(self.convs[str(i)](x))
            taps.append(x)
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The distance per image [B] between images in [-1, 1]."""
        dtype = self.shift.dtype
        total = 0.0
        for k, (fa, fb) in enumerate(zip(self.features(a.to(dtype)), self.features(b.to(dtype)))):
            d = (F.normalize(fa, dim=1, eps=1e-10) - F.normalize(fb, dim=1, eps=1e-10)) ** 2
            total = total + (d * getattr(self, f"lin{k}").view(1, -1, 1, 1)).sum(1).mean((1, 2))
        return total
