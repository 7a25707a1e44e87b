"""LoRA and LyCORIS adapters for the MMDiT: reading every format in common use, applying several at once (merged
into the weights or added at run time), and writing one format that ComfyUI and diffusers both load.

Reading (`read_lora`) is model-independent: each key of the file is sorted into a patch on one module (the
module's name as the file spells it, prefixes removed) or into `unmatched` with the reason. Applying
(`apply_loras`) resolves those names against the model and returns a handle whose `reports` say, per LoRA,
which file key landed on which module and which did not and why. Nothing is silent: a LoRA none of whose keys
lands is an error naming the file, and a key whose shape does not fit its module is an error naming the key,
raised before any weight is touched.

Formats (module names are the diffusers ones of `QwenImageTransformer`: transformer_blocks.N.attn.to_q, ...):
  * diffusers / PEFT: `transformer.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r] (also
    `lora_A.default.weight`, any prefix below or none), `<module>.alpha` if present, else the
    `lora_adapter_metadata` config diffusers writes (lora_alpha / r, rank_pattern, alpha_pattern, use_rslora),
    else scale 1; `lora_magnitude_vector` (PEFT DoRA) and `lora_B.bias` (PEFT lora_bias).
  * ComfyUI / ai-toolkit: `diffusion_model.<module>` with lora_A/lora_B or lora_down/lora_up, `.alpha`.
  * kohya sd-scripts / musubi-tuner: `lora_unet_<module with . -> _>.lora_down.weight` / `.lora_up.weight` /
    `.alpha`; the flat name is mapped back through the model's own module names (ambiguous ones reported).
  * DiffSynth-Studio: bare module names with `lora_A(.default).weight`, or under `pipe.dit.` / `dit.`.
  * LyCORIS (kohya `lora_unet_` or SimpleTuner `lycoris_` names): LoKr (`lokr_w1`, `lokr_w2`, or factorised
    `lokr_w1_a/_b`, `lokr_w2_a/_b`), LoHa (`hada_w1_a/_b`, `hada_w2_a/_b`), full diffs (`diff`, `diff_b`,
    `w_norm`, `b_norm`), and `dora_scale`.
  * Fused QKV: one adapter over `attn.to_qkv` / `attn.qkv` / `attn.img_qkv` / `img_attn.qkv` (image stream) or
    `attn.to_added_qkv` / `attn.add_qkv_proj` / `attn.txt_qkv` / `txt_attn.qkv` (text stream), as written by
    trainers or ports that fuse the projections (diffusers' fuse_qkv_projections, Nunchaku): the fused delta is
    split by rows into thirds on to_q/to_k/to_v (add_q_proj/add_k_proj/add_v_proj). A plain LoRA shares lora_A
    and splits lora_B; other kinds are materialised over the fused weight and split, so all of them are exact.

Scales follow the loaders users compare against (ComfyUI, LyCORIS, PEFT):
  LoRA  dW = B @ A * alpha / r                   (r = rows of A; no alpha: scale 1)
  LoKr  dW = kron(w1, w2) * alpha / r            (r = inner dim of w2_a@w2_b, else of w1_a@w1_b; full: scale 1)
  LoHa  dW = (w1a @ w1b) * (w2a @ w2b) * alpha / r   (r = rows of w1b)
  diff  dW = diff, dB = diff_b
  DoRA  W' = m * (W + dW) / ||W + dW||, dW_dora = W' - W. The norm is per output row when the magnitude has one
        value per output (PEFT's `lora_magnitude_vector` [out], LyCORIS `dora_scale` [out, 1]) and per input
        column when it has one per input (LyCORIS `dora_scale` [1, in], its default). LyCORIS adds float32 eps to
        the norm, PEFT does not; so do we.
A strength s applies s * dW (for DoRA, s * (W' - W)), so s = 0 is the base model and negative s inverts.
Several LoRAs on one module add up, each delta computed against the original weight.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import weakref
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights import CheckpointError, SafetensorsFile, load_json, save_file_atomic

log = logging.getLogger(__name__)

__all__ = ["LoraError", "LoraFile", "LoraHandle", "LoraReport", "Patch", "apply_loras", "match_lora", "read_lora",
           "save_lora"]


class LoraError(ValueError):
    """A LoRA that cannot be used as given; the message names the file and, where it is one key's fault, the key."""


# ------------------------------------------------------------------------------------------------ key grammar

_ADAPTER = r"(?:\.[\w-]+)?"  # PEFT's optional adapter name segment, e.g. `.default`
_ROLE_PATTERNS: list[tuple[re.Pattern, str | None]] = [
    (re.compile(rf"\.(?:lora_A|lora_down|lora\.down){_ADAPTER}\.weight$"), "A"),
    (re.compile(rf"\.(?:lora_B|lora_up|lora\.up){_ADAPTER}\.weight$"), "B"),
    (re.compile(rf"\.lora_B{_ADAPTER}\.bias$"), "B_bias"),
    (re.compile(rf"\.lora_magnitude_vector{_ADAPTER}(?:\.weight)?$"), "magnitude"),
    (re.compile(r"\.dora_scale$"), "dora_scale"),
    (re.compile(r"\.alpha$"), "alpha"),
    (re.compile(r"\.(lokr_w[12](?:_[ab])?)$"), None),  # role is the suffix itself
    (re.compile(r"\.(hada_w[12]_[ab])$"), None),
    (re.compile(r"\.(?:diff|w_norm)$"), "diff"),
    (re.compile(r"\.(?:diff_b|b_norm)$"), "diff_b"),
]
_UNSUPPORTED: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\.lora_mid\.weight$"), "LoCon Tucker mid weight (convolutions only; this model has none)"),
    (re.compile(r"\.(?:lokr_t[12]|hada_t[12])$"), "LyCORIS Tucker factor (convolutions only; this model has none)"),
    (re.compile(r"\.(?:a1|a2|b1|b2)\.weight$"), "GLoRA is not supported"),
    (re.compile(r"\.(?:oft_blocks|oft_diag|rescale|oft_R(?:\.[\w-]+)?(?:\.weight)?)$"), "OFT/BOFT is not supported"),
    (re.compile(r"\.(?:set_weight|reshape_weight)$"), "ComfyUI set/reshape patches are not supported"),
    (re.compile(r"\.(?:lora_embedding_[AB])(?:\.[\w-]+)?$"), "embedding LoRA is not supported"),
]
_TEXT_ENCODER = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
                 "text_encoders.", "te.", "te1.", "te2.", "lora_te.")
# Stripped repeatedly from the front of a dotted module name (e.g. `transformer.base_model.model.`).
_DOTTED_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "pipe.dit.",
                    "dit.")
# kohya-style flat names: the rest is the module path with '.' replaced by '_'.
_FLAT_PREFIXES = ("lora_unet_", "lycoris_", "lora_transformer_")

_LOKR_ROLES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_LOHA_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_F32_EPS = torch.finfo(torch.float32).eps


def _split_key(key: str) -> tuple[str, str] | tuple[None, str]:
    """(module part, role) of one file key, or (None, reason) when it is not an adapter key we read."""
    for pattern, role in _ROLE_PATTERNS:
        m = pattern.search(key)
        if m:
            return key[:m.start()], role or m.group(1)
    for pattern, reason in _UNSUPPORTED:
        if pattern.search(key):
            return None, reason
    return None, "not a LoRA/LyCORIS key (unknown suffix)"


def _normalise_module(raw: str) -> tuple[bool, str] | None:
    """(flat, name): the module as the file names it without trainer prefixes; None for text-encoder keys."""
    if raw.startswith(_TEXT_ENCODER):
        return None
    for p in _FLAT_PREFIXES:
        if raw.startswith(p):
            return True, raw[len(p):].lstrip("_").replace(".", "_")
    name, changed = raw, True
    while changed:
        changed = False
        for p in _DOTTED_PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return False, name


# ------------------------------------------------------------------------------------------------- patches

@dataclass
class Patch:
    """One adapter on one module (or on one fused module the file names, which lands on several).

    `delta(base)` gives dW in float32 for the base weight `base` (the concatenated weights for a fused target;
    only DoRA looks at it), `bias_delta()` the bias delta or None, `low_rank()` (A, B * scale) for a plain LoRA
    (no DoRA) so run-time application needs no dW, else None."""

    module: str                  # as the file names it, prefixes removed; '_'-joined if `flat`
    flat: bool
    kind: str                    # "lora" | "lokr" | "loha" | "diff" | "bias"
    keys: dict[str, str]         # role -> key in the file
    tensors: dict[str, torch.Tensor]
    scale: float = 1.0
    dora_axis: str | None = None  # None, "out" (norm per output row) or "in" (per input column)
    dora_eps: float = 0.0

    @property
    def weight_shape(self) -> tuple[int, ...] | None:
        t = self.tensors
        if self.kind == "lora":
            return (t["B"].shape[0], t["A"].shape[1])
        if self.kind == "lokr":
            (a, b), (c, d) = self._lokr_shape("lokr_w1"), self._lokr_shape("lokr_w2")
            return (a * c, b * d)
        if self.kind == "loha":
            return (t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1])
        if self.kind == "diff":
            return tuple(t["diff"].shape)
        return None

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        parts = [self.tensors[r].shape for r in ("B_bias", "diff_b") if r in self.tensors]
        return tuple(parts[0]) if parts else None

    def _lokr_shape(self, w: str) -> tuple[int, int]:
        t = self.tensors
        return tuple(t[w].shape) if w in t else (t[w + "_a"].shape[0], t[w + "_b"].shape[1])

    def _f32(self, role: str, device) -> torch.Tensor:
        return self.tensors[role].to(device=device, dtype=torch.float32)

    def raw_delta(self, device=None) -> torch.Tensor:
        """dW without DoRA, float32."""
        g = lambda r: self._f32(r, device)  # noqa: E731
        if self.kind == "lora":
            return (g("B") @ g("A")) * self.scale
        if self.kind == "lokr":
            w1 = g("lokr_w1") if "lokr_w1" in self.tensors else g("lokr_w1_a") @ g("lokr_w1_b")
            w2 = g("lokr_w2") if "lokr_w2" in self.tensors else g("lokr_w2_a") @ g("lokr_w2_b")
            return torch.kron(w1, w2) * self.scale
        if self.kind == "loha":
            return (g("hada_w1_a") @ g("hada_w1_b")) * (g("hada_w2_a") @ g("hada_w2_b")) * self.scale
        if self.kind == "diff":
            return g("diff")
        raise LoraError(f"{self.module}: a bias-only patch has no weight delta")

    def delta(self, base: torch.Tensor | None = None, device=None) -> torch.Tensor:
        """dW in float32 (on base's device if given); DoRA needs `base`, the original weight (any dtype)."""
        device = base.device if base is not None else device
        d = self.raw_delta(device)
        if self.dora_axis is None:
            return d
        if base is None:
            raise LoraError(f"{self.module}: a DoRA patch needs the base weight")
        w = base.float()
        merged = w + d
        m = self._f32("magnitude" if "magnitude" in self.tensors else "dora_scale", device)
        if self.dora_axis == "out":
            norm, m = merged.norm(dim=1, keepdim=True), m.reshape(-1, 1)
        else:
            norm, m = merged.norm(dim=0, keepdim=True), m.reshape(1, -1)
        return merged * (m / (norm + self.dora_eps)) - w

    def bias_delta(self, device=None) -> torch.Tensor | None:
        out = None
        if "B_bias" in self.tensors:
            out = self._f32("B_bias", device) * self.scale
        if "diff_b" in self.tensors:
            db = self._f32("diff_b", device)
            out = db if out is None else out + db
        return out

    def low_rank(self, device=None) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.kind != "lora" or self.dora_axis is not None:
            return None
        return self._f32("A", device), self._f32("B", device) * self.scale

    @property
    def main_key(self) -> str:
        """The key that names this patch in messages: its up/B matrix, first factor or diff."""
        for r in ("B", "A", "lokr_w1", "lokr_w1_a", "lokr_w2", "lokr_w2_a", "hada_w1_a", "diff", "diff_b"):
            if r in self.keys:
                return self.keys[r]
        return next(iter(self.keys.values()))

    @property
    def needs_base(self) -> bool:
        return self.dora_axis is not None


@dataclass
class LoraFile:
    """A LoRA as read from its file, before any model is involved."""

    name: str                                   # the path, or the name given for an in-memory state dict
    patches: list[Patch]
    unmatched: dict[str, str]                   # key -> why it is not part of any patch
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        return [k for p in self.patches for k in p.keys.values()] + list(self.unmatched)

    def __repr__(self):
        kinds = sorted({p.kind + ("+dora" if p.dora_axis else "") for p in self.patches})
        return (f"LoraFile({self.name!r}, {len(self.patches)} modules [{', '.join(kinds)}], "
                f"{len(self.unmatched)} unmatched keys)")


def read_lora(source: str | os.PathLike | Mapping[str, torch.Tensor], *, name: str | None = None,
              metadata: Mapping[str, str] | None = None) -> LoraFile:
    """Read a LoRA from a safetensors file (never a pickle) or an in-memory state dict.

    Every key ends up in exactly one patch or in `unmatched` with the reason. Keys that contradict each other
    within the file (lora_A and lora_B of different ranks, a magnitude of the wrong length) raise LoraError
    naming the key; so does a file in which no key is an adapter weight at all."""
    if isinstance(source, Mapping):
        label = name or "<state dict>"
        tensors = dict(source)
        meta = dict(metadata or {})
    else:
        path = os.fspath(source)
        label = name or path
        try:
            f = SafetensorsFile(path)
        except CheckpointError as e:
            raise LoraError(str(e)) from None
        tensors = {k: f.get(k) for k in f.keys()}
        meta = dict(f.metadata)
        meta.update(metadata or {})
        f.close()
    return _parse(label, tensors, meta)


def _parse(label: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> LoraFile:
    unmatched: dict[str, str] = {}
    # Grouped by the module as spelled in the file, so that the same module under two prefixes gives two
    # patches (the second reported as a duplicate when applied) rather than one made of mixed halves.
    groups: dict[str, tuple[tuple[bool, str], dict[str, str]]] = {}
    for key in tensors:
        raw, role = _split_key(key)
        if raw is None:
            unmatched[key] = role
            continue
        norm = _normalise_module(raw)
        if norm is None:
            unmatched[key] = "text-encoder key (only the transformer is patched)"
            continue
        if not norm[1]:
            unmatched[key] = "no module name"
            continue
        if not torch.is_floating_point(tensors[key]) and role != "alpha":
            raise LoraError(f"{label}: key {key!r} holds {tensors[key].dtype} values, not floating point")
        group = groups.setdefault(raw, (norm, {}))[1]
        if role in group:
            unmatched[key] = f"duplicate of {group[role]!r}"
            continue
        group[role] = key

    try:
        peft = _PeftConfig.from_metadata(metadata)
    except ValueError as e:
        raise LoraError(f"{label}: metadata 'lora_adapter_metadata': {e}") from None
    patches = []
    for (flat, module), roles in groups.values():
        patch = _build_patch(label, flat, module, roles, tensors, peft, unmatched)
        if patch is not None:
            patches.append(patch)
    if not patches:
        shown = ", ".join(repr(k) for k in list(tensors)[:6])
        raise LoraError(f"{label}: no LoRA weights recognised among its {len(tensors)} keys ({shown}"
                        f"{', ...' if len(tensors) > 6 else ''})")
    return LoraFile(label, patches, unmatched, metadata)


def _build_patch(label, flat, module, roles, tensors, peft, unmatched) -> Patch | None:
    t = {r: tensors[k] for r, k in roles.items()}
    keys = dict(roles)

    def drop(rs, reason):
        for r in rs:
            if r in keys:
                unmatched[keys.pop(r)] = reason
                t.pop(r)

    def bad(role, msg):
        raise LoraError(f"{label}: key {roles[role]!r}: {msg}")

    kinds = [k for k, present in (("lora", "A" in t or "B" in t), ("lokr", any(r in t for r in _LOKR_ROLES)),
                                  ("loha", any(r in t for r in _LOHA_ROLES)), ("diff", "diff" in t)) if present]
    if len(kinds) > 1:  # keep the first, report the rest by name
        extra = {"lora": ("A", "B", "B_bias"), "lokr": _LOKR_ROLES, "loha": _LOHA_ROLES, "diff": ("diff",)}
        for k in kinds[1:]:
            drop(extra[k], f"{module}: conflicts with the {kinds[0]} weights of the same module")
    kind = kinds[0] if kinds else ("bias" if "diff_b" in t else None)
    if kind is None:
        drop(list(t), f"{module}: no adapter weights for this module in the file")
        return None

    if kind == "lora":
        if "A" not in t or "B" not in t:
            missing = "lora_B/lora_up" if "A" in t else "lora_A/lora_down"
            drop(list(t), f"{module}: incomplete LoRA (no {missing} for this module)")
            return None
        for r in ("A", "B"):
            if t[r].ndim != 2:
                bad(r, f"expected a 2-D matrix, got shape {list(t[r].shape)}")
        if t["A"].shape[0] != t["B"].shape[1]:
            bad("B", f"rank {t['B'].shape[1]} does not match lora_A's {t['A'].shape[0]} ({roles['A']!r})")
    elif kind == "lokr":
        for w in ("lokr_w1", "lokr_w2"):
            if w not in t and not (w + "_a" in t and w + "_b" in t):
                drop(list(t), f"{module}: incomplete LoKr (no {w} nor {w}_a/{w}_b)")
                return None
            if w in t:
                drop((w + "_a", w + "_b"), f"{module}: {w} is given in full; its factors are redundant")
        for r in _LOKR_ROLES:
            if r in t and t[r].ndim != 2:
                bad(r, f"expected a 2-D matrix, got shape {list(t[r].shape)}")
        for w in ("lokr_w1", "lokr_w2"):
            if w not in t and t[w + "_a"].shape[1] != t[w + "_b"].shape[0]:
                bad(w + "_b", f"inner dimension {t[w + '_b'].shape[0]} does not match {w}_a's {t[w + '_a'].shape[1]}")
    elif kind == "loha":
        if not all(r in t for r in _LOHA_ROLES):
            drop(list(t), f"{module}: incomplete LoHa (needs hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b)")
            return None
        for r in _LOHA_ROLES:
            if t[r].ndim != 2:
                bad(r, f"expected a 2-D matrix, got shape {list(t[r].shape)}")
        s1 = (t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1])
        s2 = (t["hada_w2_a"].shape[0], t["hada_w2_b"].shape[1])
        if t["hada_w1_a"].shape[1] != t["hada_w1_b"].shape[0] or t["hada_w2_a"].shape[1] != t["hada_w2_b"].shape[0] \
                or s1 != s2:
            bad("hada_w2_b", f"LoHa factors do not fit together: w1 gives {list(s1)}, w2 gives {list(s2)}")

    # scale
    scale = 1.0
    if kind in ("lora", "lokr", "loha"):
        if kind == "lora":
            rank = t["A"].shape[0]
        elif kind == "loha":
            rank = t["hada_w1_b"].shape[0]
        else:
            rank = (t["lokr_w2_a"].shape[1] if "lokr_w2_a" in t else
                    t["lokr_w1_a"].shape[1] if "lokr_w1_a" in t else None)
        if "alpha" in t:
            if t["alpha"].numel() != 1:
                bad("alpha", f"alpha must be one number, got shape {list(t['alpha'].shape)}")
            alpha = float(t["alpha"].float().item())
            scale = alpha / rank if rank else 1.0
        elif peft is not None and not flat:
            scale = peft.scale(module, kind, rank)
    elif "alpha" in t:
        drop(("alpha",), f"{module}: alpha has no meaning for a full-weight diff")

    # DoRA
    dora_axis, dora_eps = None, 0.0
    mag_role = "magnitude" if "magnitude" in t else ("dora_scale" if "dora_scale" in t else None)
    if mag_role and kind in ("diff", "bias"):
        drop((mag_role,), f"{module}: a DoRA magnitude needs a LoRA/LoKr/LoHa on the same module")
        mag_role = None
    if "magnitude" in t and "dora_scale" in t:
        drop(("dora_scale",), f"{module}: two DoRA magnitudes; lora_magnitude_vector is used")
    if mag_role:
        out, inp = Patch(module, flat, kind, keys, t).weight_shape
        m = t[mag_role]
        shape = tuple(m.shape)
        if mag_role == "magnitude":  # PEFT: one per output row, no eps
            if m.numel() != out:
                bad(mag_role, f"DoRA magnitude of shape {list(shape)} for a [{out}, {inp}] weight (PEFT wants [{out}])")
            dora_axis = "out"
        else:  # kohya/LyCORIS: [out, 1] per output row, [1, in] per input column; float32 eps on the norm
            dora_eps = _F32_EPS
            if shape in ((out, 1), (out,)):
                dora_axis = "out"
            elif shape in ((1, inp), (inp,)):
                dora_axis = "in"
            else:
                bad(mag_role, f"dora_scale of shape {list(shape)} fits neither axis of a [{out}, {inp}] weight")

    if kind == "bias" or "B_bias" in t or "diff_b" in t:
        for r in ("B_bias", "diff_b"):
            if r in t and t[r].ndim != 1:
                bad(r, f"a bias delta must be 1-D, got shape {list(t[r].shape)}")
        if "B_bias" in t and "diff_b" in t and t["B_bias"].shape != t["diff_b"].shape:
            bad("diff_b", f"length {t['diff_b'].shape[0]} differs from lora_B.bias's {t['B_bias'].shape[0]}")
        if "B_bias" in t and kind == "lora" and t["B_bias"].shape[0] != t["B"].shape[0]:
            bad("B_bias", f"length {t['B_bias'].shape[0]} differs from lora_B's {t['B'].shape[0]} rows")
    return Patch(module, flat, kind, keys, t, scale, dora_axis, dora_eps)


@dataclass
class _PeftConfig:
    """The scaling part of the LoraConfig/LoKrConfig diffusers stores as `lora_adapter_metadata`."""

    r: float
    alpha: float
    rslora: bool
    rank_pattern: dict
    alpha_pattern: dict

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "_PeftConfig | None":
        raw = metadata.get("lora_adapter_metadata")
        if not raw:
            return None
        cfg = load_json(raw, None, "it")  # unparsable or absurdly nested: a named error, as for any metadata
        if not isinstance(cfg, dict):
            log.warning("lora_adapter_metadata is not a JSON object; LoRA scales default to alpha/rank or 1")
            return None
        if any(k.startswith("transformer.") for k in cfg):  # pipeline-level files prefix the component name
            cfg = {k[len("transformer."):]: v for k, v in cfg.items() if k.startswith("transformer.")}
        r = cfg.get("r")
        alpha = cfg.get("lora_alpha", cfg.get("alpha"))
        if not isinstance(r, (int, float)) or not isinstance(alpha, (int, float)):
            return None
        patterns = {}
        for name in ("rank_pattern", "alpha_pattern"):
            patterns[name] = cfg.get(name) or {}
            if not isinstance(patterns[name], dict):
                raise ValueError(f"{name} is not a JSON object")
        # a crafted rank of 0, NaN or inf would make every scale NaN or inf: refuse it by name
        ranks = [("r", r), *((f"rank_pattern[{k!r}]", v) for k, v in patterns["rank_pattern"].items())]
        alphas = [("lora_alpha", alpha), *((f"alpha_pattern[{k!r}]", v) for k, v in patterns["alpha_pattern"].items())]
        for what, v in ranks + alphas:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                    (v <= 0 and (what, v) in ranks):
                raise ValueError(f"{what} = {v!r} is not a usable number")
        return cls(float(r), float(alpha), bool(cfg.get("use_rslora", False)), dict(patterns["rank_pattern"]),
                   dict(patterns["alpha_pattern"]))

    @staticmethod
    def _lookup(patterns: dict, module: str, default: float) -> float:
        for pat, value in patterns.items():  # PEFT's rule: the pattern matches a suffix of the dotted name
            try:
                hit = re.match(rf"(.*\.)?({pat})$", module)
            except re.error:
                hit = module == pat or module.endswith("." + pat)
            if hit:
                return float(value)
        return default

    def scale(self, module: str, kind: str, rank: int | None) -> float:
        r = self._lookup(self.rank_pattern, module, self.r)
        a = self._lookup(self.alpha_pattern, module, self.alpha)
        return a / math.sqrt(r) if (self.rslora and kind == "lora") else a / r


# ----------------------------------------------------------------------------------------------- resolution

_FUSED_IMG = ("to_q", "to_k", "to_v")
_FUSED_TXT = ("add_q_proj", "add_k_proj", "add_v_proj")


class _ModelIndex:
    """Names a LoRA may use for the model's weights: the real module names, known aliases (fused QKV, to_out,
    net.0), and all of these with '.' -> '_' for kohya names (kept only where that mapping is unambiguous)."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        names: dict[str, tuple[str, ...]] = {}
        for n, m in self.modules.items():
            if n and isinstance(m._parameters.get("weight"), torch.Tensor):
                names[n] = (n,)
        aliases: dict[str, tuple[str, ...]] = {}
        for n, m in self.modules.items():
            p = n + "." if n else ""
            if all(isinstance(getattr(m, a, None), nn.Linear) for a in _FUSED_IMG):
                group = tuple(p + a for a in _FUSED_IMG)
                for a in ("to_qkv", "qkv", "img_qkv"):
                    aliases[p + a] = group
                block = n.rpartition(".")[0] if n.endswith(".attn") else None
                if block is not None:
                    aliases[block + ".img_attn.qkv"] = aliases[block + ".img_attn_qkv"] = group
            if all(isinstance(getattr(m, a, None), nn.Linear) for a in _FUSED_TXT):
                group = tuple(p + a for a in _FUSED_TXT)
                for a in ("to_added_qkv", "add_qkv_proj", "add_qkv", "txt_qkv"):
                    aliases[p + a] = group
                block = n.rpartition(".")[0] if n.endswith(".attn") else None
                if block is not None:
                    aliases[block + ".txt_attn.qkv"] = aliases[block + ".txt_attn_qkv"] = group
            if isinstance(m, nn.ModuleList) and len(m) == 1 and (p + "0") in names:
                aliases[n] = (p + "0",)  # attn.to_out -> attn.to_out.0
            if isinstance(getattr(m, "proj", None), nn.Linear) and (p + "proj") in names and n not in names:
                aliases[n] = (p + "proj",)  # img_mlp.net.0 -> img_mlp.net.0.proj
        for a, target in aliases.items():
            names.setdefault(a, target)
        self.dotted = names
        flat: dict[str, tuple[str, ...] | None] = {}
        for n, target in names.items():
            f = n.replace(".", "_")
            flat[f] = target if flat.get(f, target) == target else None
        self.flat = flat

    def resolve(self, patch: Patch) -> tuple[tuple[str, ...] | None, str]:
        if not patch.flat and patch.module in self.dotted:
            return self.dotted[patch.module], ""
        f = patch.module.replace(".", "_")
        if f in self.flat:
            target = self.flat[f]
            if target is None:
                return None, f"kohya name {f!r} matches more than one module of this model"
            return target, ""
        return None, f"no module {patch.module!r} in this model"


@dataclass
class LoraReport:
    """Where one LoRA's keys went on one model."""

    name: str
    landed: dict[str, tuple[str, ...]] = field(default_factory=dict)   # file key -> model module(s)
    not_landed: dict[str, str] = field(default_factory=dict)           # file key -> reason

    @property
    def modules(self) -> list[str]:
        return sorted({m for ms in self.landed.values() for m in ms})

    def __str__(self):
        lines = [f"{self.name}: {len(self.landed)} keys landed on {len(self.modules)} modules, "
                 f"{len(self.not_landed)} not loaded"]
        lines += [f"  not loaded: {k!r}: {why}" for k, why in self.not_landed.items()]
        return "\n".join(lines)


@dataclass
class _Use:
    lora: int
    patch: Patch
    targets: tuple[str, ...]
    rows: tuple[int, ...]        # output rows of each target within the (fused) delta


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    return tuple(module.weight.shape)


def _match(model_index: _ModelIndex, lora: LoraFile, i: int, errors: list[str]) -> tuple[LoraReport, list[_Use]]:
    report = LoraReport(lora.name, not_landed=dict(lora.unmatched))
    uses: list[_Use] = []
    claimed: dict[str, str] = {}  # target module -> first key that landed on it
    for patch in lora.patches:
        targets, why = model_index.resolve(patch)
        first_key = patch.main_key
        if targets is None:
            for k in patch.keys.values():
                report.not_landed[k] = why
            continue
        mods = [model_index.modules[t] for t in targets]
        problem = _shape_problem(patch, targets, mods)
        if problem:
            errors.append(f"{lora.name}: key {first_key!r}: {problem}")
            continue
        taken = [t for t in targets if t in claimed]
        if taken:
            for k in patch.keys.values():
                report.not_landed[k] = f"duplicate: module {taken[0]!r} is already patched by {claimed[taken[0]]!r}"
            continue
        for t in targets:
            claimed[t] = first_key
        rows = tuple(_weight_shape(m)[0] for m in mods) if len(targets) > 1 else (None,)
        uses.append(_Use(i, patch, targets, rows))
        for k in patch.keys.values():
            report.landed[k] = targets
    return report, uses


def _shape_problem(patch: Patch, targets, mods) -> str | None:
    where = targets[0] if len(targets) == 1 else "+".join(targets)
    shapes = [_weight_shape(m) for m in mods]
    if len(targets) > 1 and (any(len(s) != 2 for s in shapes) or len({s[1] for s in shapes}) != 1):
        return f"cannot fuse {where}: their weights {shapes} do not share an input size"
    expected = shapes[0] if len(targets) == 1 else (sum(s[0] for s in shapes), shapes[0][1])
    if patch.kind in ("lora", "lokr", "loha"):
        if not all(isinstance(m, nn.Linear) for m in mods):
            return f"a {patch.kind} needs a Linear layer, but {where} is a {type(mods[0]).__name__} " \
                   f"(weight {list(expected)})"
    ws = patch.weight_shape
    if ws is not None and tuple(ws) != tuple(expected):
        return f"the {patch.kind} gives a {list(ws)} delta but {where} has a {list(expected)} weight " \
               f"(a LoRA for a different model or model size?)"
    bs = patch.bias_shape
    if bs is not None:
        if any(getattr(m, "bias", None) is None for m in mods):
            return f"a bias delta for {where}, which has no bias"
        n = sum(m.bias.shape[0] for m in mods)
        if tuple(bs) != (n,):
            return f"a bias delta of shape {list(bs)} for {where}, whose bias is [{n}]"
    return None


def match_lora(model: nn.Module, lora: "LoraFile | str | os.PathLike | Mapping[str, torch.Tensor]") -> LoraReport:
    """Where each key of `lora` would land on `model`, without touching the model. Raises LoraError as
    apply_loras would (shape mismatches, nothing landing)."""
    lf = lora if isinstance(lora, LoraFile) else read_lora(lora)
    errors: list[str] = []
    report, uses = _match(_ModelIndex(model), lf, 0, errors)
    _raise_if(errors, [(lf, report, uses)], strict=False)
    return report


def _raise_if(errors, matched, strict):
    if errors:
        raise LoraError("shape mismatch, nothing was applied:\n  " + "\n  ".join(errors))
    for lf, report, uses in matched:
        if not uses:
            shown = "; ".join(f"{k!r}: {why}" for k, why in list(report.not_landed.items())[:4])
            raise LoraError(f"{lf.name}: none of its {len(report.not_landed)} keys lands on this model "
                            f"(a LoRA for another model?): {shown}{' ...' if len(report.not_landed) > 4 else ''}")
        if strict and report.not_landed:
            raise LoraError(f"{lf.name}: {len(report.not_landed)} keys would not load (strict):\n{report}")


# ---------------------------------------------------------------------------------------------- application

_ACTIVE: "weakref.WeakKeyDictionary[nn.Module, list[LoraHandle]]" = weakref.WeakKeyDictionary()


def _split_rows(t: torch.Tensor, rows: tuple) -> list[torch.Tensor]:
    return [t] if rows == (None,) else list(torch.split(t, list(rows), dim=0))


def _float_weight(module: nn.Module, device=None) -> torch.Tensor:
    """The layer's weight as float32 (de-quantised for fp8 layers)."""
    if hasattr(module, "dequantized_weight"):
        return module.dequantized_weight(torch.float32).to(device=device)
    return module.weight.detach().to(device=device, dtype=torch.float32)


def _compute_dtype(module: nn.Module) -> torch.dtype:
    dt = getattr(module, "compute_dtype", None) or module.weight.dtype
    return dt if (dt.is_floating_point and dt.itemsize >= 2) else torch.bfloat16


class _RuntimeTerm:
    __slots__ = ("lora", "A", "B", "dW", "db")

    def __init__(self, lora, A=None, B=None, dW=None, db=None):
        self.lora, self.A, self.B, self.dW, self.db = lora, A, B, dW, db


class LoraHandle:
    """LoRAs applied to one model. `strengths[i]` is the i-th LoRA's; `set_strength` changes it in place (no
    re-reading), `remove()` restores the model exactly; also a context manager that removes on exit.

    merge: W = round_to_dtype(W0 + sum_i s_i * dW_i), the sum taken in float32 and rounded once to the weight's
      dtype. The original tensor of every patched weight (and bias) is kept on the CPU and copied back on
      remove(), so un-merging is bit-exact, never a subtraction. set_strength recomputes from those copies.
    runtime: a forward hook on each patched Linear adds s_i * (x @ A^T @ (scale B)^T) for plain LoRAs (dW is
      never formed) and s_i * (x @ dW^T) for LoKr/LoHa/DoRA/diff (formed once, against the weight as it is
      when applied), plus any bias delta; weights are untouched, so it works on fp8 layers. Non-Linear targets
      (a diff on an RMSNorm scale or an embedding) are merged as above, with their copies.
    """

    def __init__(self, model, mode, loras, strengths, reports, uses, backup):
        self.model_ref = weakref.ref(model)
        self.mode = mode
        self.loras: list[LoraFile] = loras
        self.strengths: list[float] = list(strengths)
        self.reports: list[LoraReport] = reports
        self._uses: list[_Use] = uses
        self._bias_targets = {t for u in uses if u.patch.bias_shape is not None for t in u.targets}
        self._backup = backup
        self._mods = dict(model.named_modules())
        self._originals: dict[tuple[str, str], torch.Tensor] = {}   # (module, "weight"/"bias") -> CPU copy
        self._hooks = []
        self._terms: dict[str, list[_RuntimeTerm]] = {}
        self._merged_targets: set[str] = set()
        self.active = False

    # -- public ------------------------------------------------------------------------------------------

    @property
    def report(self) -> list[LoraReport]:
        return self.reports

    @property
    def targets(self) -> set[str]:
        return {t for u in self._uses for t in u.targets}

    def set_strength(self, i: int, strength: float) -> None:
        self._check_active()
        strength = float(strength)
        if strength == self.strengths[i]:
            return
        touched = {t for u in self._uses if u.lora == i for t in u.targets if t in self._merged_targets}
        if touched and not self._backup:
            raise LoraError("merged without backup=True: strengths cannot change")
        self.strengths[i] = strength  # the run-time hooks read this list
        if touched:
            self._merge(touched)

    def remove(self) -> None:
        """Restore every patched module exactly as it was when this handle was applied."""
        if not self.active:
            return
        model = self.model_ref()
        stack = _ACTIVE.get(model, []) if model is not None else []
        later = stack[stack.index(self) + 1:] if self in stack else []
        blocking = [h for h in later if h.targets & self.targets]
        if blocking:
            raise LoraError("LoRAs applied later patch the same modules; remove those first (last applied, "
                            "first removed)")
        if self._merged_targets and not self._backup:
            raise LoraError("merged without backup=True: cannot be removed")
        for h in self._hooks:
            h.remove()
        self._hooks, self._terms = [], {}
        with torch.no_grad():
            for (name, attr), orig in self._originals.items():
                getattr(self._mods[name], attr).copy_(orig)
        self._originals.clear()
        self._merged_targets.clear()
        self.active = False
        if self in stack:
            stack.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def __repr__(self):
        return (f"LoraHandle(mode={self.mode!r}, active={self.active}, "
                f"loras={[(lf.name, s) for lf, s in zip(self.loras, self.strengths)]})")

    # -- internals ---------------------------------------------------------------------------------------

    def _check_active(self):
        if not self.active:
            raise LoraError("these LoRAs have been removed")

    def _install(self):
        try:
            if self.mode == "merge":
                self._merge_initial({t for u in self._uses for t in u.targets})
            else:
                linear = {t for u in self._uses for t in u.targets if isinstance(self._mods[t], nn.Linear)}
                other = {t for u in self._uses for t in u.targets} - linear
                if other:
                    self._merge_initial(other)
                self._install_runtime(linear)
        except BaseException:  # put back what was changed (exactly, from the copies) before re-raising
            for h in self._hooks:
                h.remove()
            self._hooks = []
            with torch.no_grad():
                for (name, attr), orig in self._originals.items():
                    getattr(self._mods[name], attr).copy_(orig)
            raise
        self.active = True

    def _merge_initial(self, targets: set[str]):
        for t in sorted(targets):
            mod = self._mods[t]
            if mod.weight.dtype.itemsize == 1:
                raise LoraError(f"{t} stores its weight as {mod.weight.dtype}: merging would re-round it; "
                                f"use mode='runtime'")
        with torch.no_grad():
            for t in sorted(targets) if self._backup else ():
                mod = self._mods[t]
                self._originals[(t, "weight")] = mod.weight.detach().to("cpu", copy=True)
                if t in self._bias_targets:
                    self._originals[(t, "bias")] = mod.bias.detach().to("cpu", copy=True)
        self._merged_targets |= targets
        self._merge(targets)

    def _original(self, name: str, attr: str, device) -> torch.Tensor:
        if (name, attr) in self._originals:
            return self._originals[(name, attr)].to(device)
        return getattr(self._mods[name], attr).detach()

    def _merge(self, targets: set[str]):
        """Rewrite the weights of `targets` from the originals and all current strengths, one group of modules
        linked by (fused) patches at a time, so only that group's float32 deltas are ever held."""
        by_target: dict[str, list[_Use]] = {}
        for u in self._uses:
            for t in u.targets:
                by_target.setdefault(t, []).append(u)
        todo = set(targets)
        while todo:
            comp, stack = set(), [todo.pop()]
            while stack:  # the connected set of targets around one module
                t = stack.pop()
                comp.add(t)
                for u in by_target.get(t, ()):
                    stack += [x for x in u.targets if x in todo]
                    todo -= set(u.targets)
            self._merge_group(comp, [u for u in self._uses if set(u.targets) & comp])

    def _merge_group(self, targets: set[str], uses: list[_Use]):
        acc_w: dict[str, torch.Tensor] = {}
        acc_b: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for u in uses:
                s = self.strengths[u.lora]
                if s == 0:
                    continue
                mods = [self._mods[t] for t in u.targets]
                device = mods[0].weight.device
                if u.patch.kind != "bias":
                    base = None
                    if u.patch.needs_base:
                        base = torch.cat([self._original(t, "weight", device).float() for t in u.targets])
                    d = u.patch.delta(base, device)
                    for t, part in zip(u.targets, _split_rows(d, u.rows)):
                        if t in targets:
                            acc_w[t] = acc_w[t] + s * part if t in acc_w else s * part
                db = u.patch.bias_delta(device)
                if db is not None:
                    rows = tuple(m.bias.shape[0] for m in mods) if len(mods) > 1 else (None,)
                    for t, part in zip(u.targets, _split_rows(db, rows)):
                        if t in targets:
                            acc_b[t] = acc_b[t] + s * part if t in acc_b else s * part
            for t in targets:
                mod = self._mods[t]
                w0 = self._original(t, "weight", mod.weight.device)
                new = w0.float() + acc_w[t].reshape(w0.shape) if t in acc_w else w0.float()
                mod.weight.copy_(new.to(mod.weight.dtype))
                if t in self._bias_targets:
                    b0 = self._original(t, "bias", mod.bias.device)
                    newb = b0.float() + acc_b[t] if t in acc_b else b0.float()
                    mod.bias.copy_(newb.to(mod.bias.dtype))

    def _install_runtime(self, targets: set[str]):
        terms: dict[str, list[_RuntimeTerm]] = {t: [] for t in targets}
        with torch.no_grad():
            for u in self._uses:
                if not set(u.targets) & targets:
                    continue
                mods = [self._mods[t] for t in u.targets]
                device, dtype = mods[0].weight.device, _compute_dtype(mods[0])
                lr = u.patch.low_rank(device) if u.patch.kind != "bias" else None
                parts: list[dict] = [{} for _ in u.targets]
                if lr is not None:
                    A, B = lr
                    for p, b in zip(parts, _split_rows(B, u.rows)):
                        p["A"], p["B"] = A.to(dtype), b.to(dtype).contiguous()
                elif u.patch.kind != "bias":
                    base = torch.cat([_float_weight(m, device) for m in mods]) if u.patch.needs_base else None
                    d = u.patch.delta(base, device)
                    for p, part in zip(parts, _split_rows(d, u.rows)):
                        p["dW"] = part.to(dtype).contiguous()
                db = u.patch.bias_delta(device)
                if db is not None:
                    rows = tuple(m.bias.shape[0] for m in mods) if len(mods) > 1 else (None,)
                    for p, part in zip(parts, _split_rows(db, rows)):
                        p["db"] = part.to(dtype)
                for t, p in zip(u.targets, parts):
                    terms[t].append(_RuntimeTerm(u.lora, **p))
        self._terms = terms
        for t in sorted(targets):
            self._hooks.append(self._mods[t].register_forward_hook(self._make_hook(terms[t])))

    def _make_hook(self, terms: list[_RuntimeTerm]):
        strengths = self.strengths  # the list object; set_strength mutates it in place

        def hook(module, args, output):
            x = args[0]
            out = output
            for term in terms:
                s = strengths[term.lora]
                if s == 0:
                    continue
                if term.A is not None:
                    y = F.linear(F.linear(x, term.A.to(x.device, x.dtype)), term.B.to(x.device, x.dtype))
                elif term.dW is not None:
                    y = F.linear(x, term.dW.to(x.device, x.dtype))
                else:
                    y = None
                if term.db is not None:
                    db = term.db.to(x.device, x.dtype)
                    y = db if y is None else y + db
                out = out + (s * y).to(out.dtype)
            return out

        return hook


def default_mode(model: nn.Module) -> str:
    """"runtime" when the model holds fp8 weights (a merge would have to re-quantise them), else "merge"."""
    from .fp8 import FP8Linear

    return "runtime" if any(isinstance(m, FP8Linear) for m in model.modules()) else "merge"


def apply_loras(model: nn.Module,
                loras: Iterable["LoraFile | str | os.PathLike | tuple"],
                mode: str = "merge", *, strict: bool = False, backup: bool = True) -> LoraHandle:
    """Apply several LoRAs to `model`, each with its own strength (any real number, negative inverts).

    `loras`: LoraFile objects, paths, or (lora, strength) pairs (strength 1 when not given). `mode`: "merge"
    (into the weights) or "runtime" (forward hooks; the weights are never written, so also for fp8 layers);
    see LoraHandle for the exact arithmetic. Before anything is modified, every LoRA is resolved against the
    model: a key whose shape does not fit raises LoraError naming the key; a LoRA none of whose keys lands
    raises LoraError naming the file; other keys that do not land (unknown module, text-encoder key, unsupported
    kind, duplicate) are listed in `handle.reports[i].not_landed` with the reason, logged as warnings, and with
    `strict=True` raise instead. `backup=False` (merge only) keeps no original copies: then the LoRAs can be
    neither removed nor re-weighted, but no CPU memory is spent on copies.
    """
    if mode not in ("merge", "runtime"):
        raise ValueError(f"mode must be 'merge' or 'runtime', not {mode!r}")
    if isinstance(loras, (str, os.PathLike, LoraFile, Mapping)):
        loras = [loras]
    files, strengths = [], []
    for item in loras:
        lf, s = (item if isinstance(item, tuple) else (item, 1.0))
        files.append(lf if isinstance(lf, LoraFile) else read_lora(lf))
        strengths.append(float(s))
    if not files:
        raise LoraError("no LoRAs given")
    index = _ModelIndex(model)
    errors: list[str] = []
    matched = []
    for i, lf in enumerate(files):
        report, uses = _match(index, lf, i, errors)
        matched.append((lf, report, uses))
    _raise_if(errors, matched, strict)
    reports = [r for _, r, _ in matched]
    for r in reports:
        if r.not_landed:
            log.warning("%s: %d LoRA key(s) not loaded: %s", r.name, len(r.not_landed),
                        "; ".join(f"{k}: {why}" for k, why in list(r.not_landed.items())[:20]))
    uses = [u for _, _, us in matched for u in us]
    handle = LoraHandle(model, mode, files, strengths, reports, uses, backup=backup or mode == "runtime")
    handle._install()
    _ACTIVE.setdefault(model, []).append(handle)
    return handle


# ---------------------------------------------------------------------------------------------------- saving

def save_lora(path: str | os.PathLike,
              loras: Mapping[str, tuple],
              metadata: Mapping[str, object] | None = None, *,
              dtype: torch.dtype | None = None, model: nn.Module | None = None) -> None:
    """Write LoRA weights in the one layout that both ComfyUI's loader and diffusers' `load_lora_weights` read:
    `transformer.<module>.lora_A.weight` [r, in] and `transformer.<module>.lora_B.weight` [out, r].

    `loras` maps module names (transformer_blocks.0.attn.to_q, ...) to (A, B) or (A, B, alpha). No `.alpha` key
    is written: diffusers' Qwen-Image loader, on finding one, re-prefixes every key and the `transformer.`
    layout then no longer loads, so alpha / rank is folded into lora_B (in float32, then cast), and both
    loaders use scale 1. `dtype` casts the stored matrices (default: as given). With `model`, names and shapes
    are checked against it first. `metadata` values that are not strings are JSON-encoded; the key
    `lora_adapter_metadata` is refused (diffusers would take it as the LoRA config)."""
    meta = {"format": "pt"}
    for k, v in (metadata or {}).items():
        if k == "lora_adapter_metadata":
            raise LoraError("metadata key 'lora_adapter_metadata' is reserved: diffusers reads it as the LoRA "
                            "config, which would re-scale the weights")
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    index = _ModelIndex(model) if model is not None else None
    out: dict[str, torch.Tensor] = {}
    for name, value in loras.items():
        if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
            raise LoraError(f"{name}: expected (A, B) or (A, B, alpha)")
        A, B = value[0], value[1]
        alpha = value[2] if len(value) == 3 else None
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise LoraError(f"{name}: lora_A {list(A.shape)} and lora_B {list(B.shape)} are not [r, in] and [out, r]")
        if name.startswith(("transformer.", "diffusion_model.")):
            raise LoraError(f"{name}: give the bare module name, without a prefix")
        if index is not None:
            mod = index.modules.get(name)
            if not isinstance(mod, nn.Linear) or tuple(mod.weight.shape) != (B.shape[0], A.shape[1]):
                have = f"a {list(mod.weight.shape)} weight" if isinstance(mod, nn.Linear) else "no such Linear layer"
                raise LoraError(f"{name}: a [{B.shape[0]}, {A.shape[1]}] LoRA, but the model has {have}")
        rank = A.shape[0]
        alpha = float(alpha.item() if isinstance(alpha, torch.Tensor) else alpha) if alpha is not None else None
        scale = alpha / rank if alpha is not None else 1.0
        store = dtype or B.dtype
        b = B.detach().float() * scale if scale != 1.0 else B.detach()
        # copies: safetensors refuses tensors that share memory (e.g. one lora_A given for q, k and v)
        out[f"transformer.{name}.lora_A.weight"] = A.detach().to("cpu", dtype or A.dtype, copy=True).contiguous()
        out[f"transformer.{name}.lora_B.weight"] = b.to("cpu", store, copy=True).contiguous()
    if not out:
        raise LoraError(f"{os.fspath(path)}: nothing to save")
    save_file_atomic(out, path, meta)
