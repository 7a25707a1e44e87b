"""Qwen-Image 2.1's one interleaved sequence: where each image sits among the text, and its rotary positions.

The Qwen3-VL prompt reserves `<|image_pad|>` slots for each reference; one slot stands for 2x2 latent tokens, so
each slot is expanded four-fold and filled with the reference's latents in raster order. Slots for the target
are appended after the prompt. Text tokens (padding included) advance one position shared by all three rotary
axes; an image block holds the frame axis at the current position, lays its rows and columns on a grid centred
on 0, and then the position advances by max(h, w). Block ids come from the token counts of `img_shapes`, so two
adjacent references stay two blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch

from .msrope import _angles, _centred

TOKENS_PER_SLOT = 4  # one merged 32 px vision token = 2x2 latent tokens of 16 px


@dataclass(frozen=True)
class Layout:
    """The joint sequence of one prompt layout (shared by every sample of a batch)."""
    repeats: torch.Tensor       # [L_vlm + target slots] tokens each VLM slot becomes: 4 for image slots, else 1
    is_image: torch.Tensor      # [S] bool, image tokens of the joint sequence
    image_ids: torch.Tensor     # [S] long, -1 for text, else the image block (references first, target last)
    positions: torch.Tensor     # [S, 3] integer (frame, row, column)
    prefix_len: int             # text and reference tokens: everything before the target
    segments: tuple             # (start, end, is_text) runs of the prefix with one block id


def layout_shapes(img_shapes, batch: int) -> tuple[tuple[int, int, int], ...]:
    """The (frames, h, w) of each image, references first and the target last, from the reference's per-sample
    `img_shapes` (a list per sample) or one list for the whole batch; samples must share it."""
    if not img_shapes:
        raise ValueError("img_shapes is required: the (frames, height, width) latent grid of each image")
    rows = [img_shapes] if isinstance(img_shapes[0][0], int) else list(img_shapes)
    rows = [tuple(tuple(int(v) for v in s) for s in row) for row in rows]
    if any(len(s) != 3 or s[0] != 1 or min(s) < 1 for row in rows for s in row):
        raise ValueError(f"img_shapes {img_shapes}: each image is (1, height, width) in latent tokens")
    if len(set(rows)) > 1:
        raise ValueError("all samples of a batch must share one image layout (img_shapes differ between samples)")
    if len(rows) not in (1, batch):
        raise ValueError(f"img_shapes has {len(rows)} entries for a batch of {batch}")
    return rows[0]


def build_layout(img_mask_row: torch.Tensor, shapes) -> Layout:
    """The joint sequence of a VLM slot mask [L_vlm + target slots] (True at image slots, target slots last)."""
    slots = img_mask_row.bool().cpu()
    target_tokens = prod(shapes[-1])
    counts = [prod(s) for s in shapes]
    if int(slots.sum()) * TOKENS_PER_SLOT != sum(counts) or target_tokens % TOKENS_PER_SLOT:
        raise ValueError(f"img_mask marks {int(slots.sum())} image slots ({TOKENS_PER_SLOT} latent tokens each), "
                         f"img_shapes {list(shapes)} hold {sum(counts)} tokens")
    n_target = target_tokens // TOKENS_PER_SLOT
    if not bool(slots[len(slots) - n_target:].all()):
        raise ValueError(f"img_mask must end with the target's {n_target} image slots")
    repeats = torch.where(slots, TOKENS_PER_SLOT, 1)
    is_image = slots.repeat_interleave(repeats)
    image_ids = torch.full(is_image.shape, -1, dtype=torch.long)
    image_ids[is_image] = torch.repeat_interleave(torch.arange(len(shapes)), torch.tensor(counts))
    return Layout(repeats, is_image, image_ids, _positions(is_image, shapes), len(is_image) - target_tokens,
                  _segments(image_ids[: len(is_image) - target_tokens].tolist()))


def _positions(is_image: torch.Tensor, shapes) -> torch.Tensor:
    """Integer (frame, row, column) of every token: text on the diagonal, each image on its centred grid."""
    pos = torch.empty(len(is_image), 3, dtype=torch.long)
    flags, cursor, position = is_image.tolist(), 0, 0
    for k, (_, h, w) in enumerate(shapes):
        start = flags.index(True, cursor)
        if not all(flags[start: start + h * w]):
            raise ValueError(f"image {k} ({h}x{w} latent tokens) does not fit the run of image slots at slot "
                             f"position {start}: the prompt's image slots and img_shapes disagree")
        pos[cursor:start] = torch.arange(position, position + start - cursor)[:, None]
        position += start - cursor
        grid = torch.stack(torch.meshgrid(_centred(h), _centred(w), indexing="ij"), dim=-1).reshape(-1, 2)
        pos[start: start + h * w, 0], pos[start: start + h * w, 1:] = position, grid
        cursor, position = start + h * w, position + max(h, w)
    pos[cursor:] = torch.arange(position, position + len(flags) - cursor)[:, None]
    return pos


def _segments(prefix_ids: list[int]) -> tuple:
    """Runs of equal block id in the prefix, as (start, end, is_text)."""
    out, start = [], 0
    for i in range(1, len(prefix_ids) + 1):
        if i == len(prefix_ids) or prefix_ids[i] != prefix_ids[start]:
            out.append((start, i, prefix_ids[start] < 0))
            start = i
    return tuple(out)


def rope21(layout: Layout, axes_dims, theta: float = 10000.0, device=None) -> torch.Tensor:
    """Unit rotations [1, S, head_dim/2] (complex64) for the joint sequence, for msrope.apply_rope."""
    ang = _angles(layout.positions, tuple(axes_dims), theta)
    return torch.polar(torch.ones_like(ang), ang)[None].to(device)


def joint_key_mask(layout: Layout, text_mask: torch.Tensor | None, img_mask_row: torch.Tensor):
    """Keys to attend [B, S]: padded prompt tokens excluded, every image token kept; None when nothing is padded.
    text_mask [B, L_vlm] covers the prompt's VLM slots (target slots follow it)."""
    if text_mask is None or bool(text_mask.bool().all()):
        return None
    batch, length = text_mask.shape
    slots = img_mask_row.bool().to(text_mask.device)
    valid = torch.cat([text_mask.bool() | slots[:length], slots.new_ones(batch, len(layout.repeats) - length)], 1)
    return valid.repeat_interleave(layout.repeats.to(valid.device), dim=1)
