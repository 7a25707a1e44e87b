"""MSRoPE: multimodal scalable rotary position embedding (Qwen-Image report, sec. 2.4).

Each head dimension is split into three rotary axes (frame, height, width). Image tokens sit on a grid centred
on the image: rows -(h - h//2) .. h//2 - 1, columns likewise, so resolution changes keep the centre fixed.
Image k of a sample (target first, then edit references) takes frame index k. Text tokens run along the
diagonal (p, p, p) starting just past the largest image half-extent, so text never collides with image
positions and behaves like 1-D RoPE. Rotation is on interleaved pairs (x0, x1), (x2, x3), ...
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch

ImageShapes = Sequence[tuple[int, int, int]]  # (frames, height, width) in patches, one per image of a sample


def _inv_freq(dim: int, theta: float) -> torch.Tensor:
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float32).div(dim))


def _centred(n: int) -> torch.Tensor:
    return torch.arange(n) - (n - n // 2)


def image_positions(shapes: ImageShapes, layer3d: bool = False) -> torch.Tensor:
    """Integer (frame, row, col) of every image token of one sample, images in order: [S_img, 3]."""
    out = []
    for k, (f, h, w) in enumerate(shapes):
        is_condition = layer3d and k == len(shapes) - 1  # Layered model: the input image sits at frame -1
        frames = torch.full((f,), -1) if is_condition else torch.arange(k, k + f)
        grid = torch.stack(torch.meshgrid(frames, _centred(h), _centred(w), indexing="ij"), dim=-1)
        out.append(grid.reshape(-1, 3))
    return torch.cat(out)


def text_start(shapes: ImageShapes, layer3d: bool = False) -> int:
    start = max(max(h // 2, w // 2) for _, h, w in shapes)
    return max(start, len(shapes) - 1) if layer3d else start


def _angles(pos: torch.Tensor, axes_dims: tuple[int, ...], theta: float) -> torch.Tensor:
    """[S, 3] integer positions -> [S, head_dim/2] rotation angles, the three axes side by side."""
    return torch.cat([torch.outer(pos[:, a].float(), _inv_freq(d, theta)) for a, d in enumerate(axes_dims)], dim=1)


@functools.lru_cache(maxsize=64)
def _sample_table(shapes: tuple, txt_len: int, axes_dims: tuple, theta: float, layer3d: bool, device):
    img = image_positions(shapes, layer3d)
    txt = torch.arange(txt_len).add(text_start(shapes, layer3d))[:, None].expand(-1, 3)
    ang = _angles(torch.cat([txt, img]), axes_dims, theta)  # joint order: text, then image
    return torch.polar(torch.ones_like(ang), ang).to(device)  # unit rotations e^{i angle}, as complex64


def image_sets(img_shapes, batch: int) -> list[tuple]:
    """The reference's `img_shapes`, one entry per sample: an (f, h, w) tuple (one image) or a list of them (the
    target, then edit references). A single entry applies to the whole batch."""
    if not img_shapes:
        raise ValueError("img_shapes is required: the (frames, height, width) patch grid of each image")
    sets = [((tuple(map(int, x)),) if isinstance(x[0], int) else tuple(tuple(map(int, s)) for s in x))
            for x in img_shapes]
    if len(sets) == 1:
        sets = sets * batch
    if len(sets) != batch:
        raise ValueError(f"img_shapes has {len(sets)} entries for a batch of {batch}")
    return sets


def msrope_table(img_shapes, txt_len: int, batch: int, axes_dims: tuple, theta: float = 10000.0,
                 layer3d: bool = False, device=None) -> torch.Tensor:
    """Rotation table [B or 1, txt_len + S_img, head_dim/2] (complex64) for the joint [text, image] sequence.

    Tables are cached by shape; a batch whose samples share one image set gets a single broadcast table."""
    sets = image_sets(img_shapes, batch)
    tables = [_sample_table(s, int(txt_len), tuple(axes_dims), float(theta), layer3d, device) for s in dict.fromkeys(sets)]
    if len(tables) == 1:
        return tables[0][None]
    lengths = {sum(f * h * w for f, h, w in s) for s in sets}
    if len(lengths) > 1:
        raise ValueError(f"samples of one batch must have the same number of image tokens; img_shapes give {sorted(lengths)}")
    by_set = dict(zip(dict.fromkeys(sets), tables))
    return torch.stack([by_set[s] for s in sets])


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, S, H, D], read as complex numbers, by rot [B|1, S, D/2]; in float32."""
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * rot[:, :, None]).flatten(-2).to(x.dtype)
