"""Transformer configuration: the official Qwen-Image values, and small presets for tests and benchmarks.

Field names are those of the diffusers `config.json`, so a diffusers folder's config reads straight in and a
config we write is one diffusers reads back."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

_META_FIELDS = {"_class_name", "_diffusers_version", "_name_or_path", "_commit_hash", "_use_default_values"}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def check_field_types(config) -> None:
    """Every field of a config dataclass of the type its default has (a config file's "num_layers": "20000" is
    named here, not a TypeError deep in a check), and sizes positive; `extra` is free, a tuple default is the
    rotary axes. Shared by the 20B and the 2.1 transformer configs."""
    for f in dataclasses.fields(config):
        if f.name == "extra":
            continue
        v, default = getattr(config, f.name), f.default
        if isinstance(default, bool):
            ok, want = isinstance(v, bool), "true or false"
        elif isinstance(default, int):
            ok, want = _positive_int(v), "a positive integer"
        elif isinstance(default, float):
            ok, want = _number(v) and math.isfinite(v) and v > 0, "a positive number"
        else:  # axes_dims_rope
            ok, want = isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_positive_int, v)), \
                "three positive integers"
        if not ok:
            raise ValueError(f"config field {f.name!r} = {v!r} must be {want}")


@dataclass(frozen=True)
class TransformerConfig:
    patch_size: int = 2
    in_channels: int = 64                 # 16 latent channels x 2x2 patch
    out_channels: int = 16
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584       # Qwen2.5-VL-7B hidden size
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, int, int] = (16, 56, 56)   # MSRoPE frame / height / width
    rope_theta: float = 10000.0
    zero_cond_t: bool = False             # Edit-2511: reference tokens modulated with timestep 0
    use_additional_t_cond: bool = False   # Layered: an extra learned timestep condition
    use_layer3d_rope: bool = False        # Layered: the condition image sits at frame -1
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def __post_init__(self):
        self._check_types()
        object.__setattr__(self, "axes_dims_rope", tuple(self.axes_dims_rope))
        if sum(self.axes_dims_rope) != self.attention_head_dim or any(a % 2 for a in self.axes_dims_rope):
            raise ValueError(f"axes_dims_rope {self.axes_dims_rope} must be even and sum to attention_head_dim "
                             f"{self.attention_head_dim}")
        if self.in_channels != self.out_channels * self.patch_size ** 2:
            raise ValueError(f"in_channels {self.in_channels} must be out_channels x patch_size^2 "
                             f"({self.out_channels} x {self.patch_size}^2)")
        if self.guidance_embeds:
            raise ValueError("guidance_embeds=True: no guidance-distilled Qwen-Image exists to define it")

    def _check_types(self):
        check_field_types(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(k for k in d if k not in names and k not in _META_FIELDS)
        if unknown:
            raise ValueError(f"unknown transformer config field(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names},
                   extra={k: v for k, v in d.items() if k in _META_FIELDS})

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "rope_theta")}
        d["axes_dims_rope"] = list(self.axes_dims_rope)
        return {"_class_name": "QwenImageTransformer2DModel", **d}

    def replace(self, **kw) -> "TransformerConfig":
        return dataclasses.replace(self, **kw)


PRESETS: dict[str, TransformerConfig] = {
    "qwen-image": TransformerConfig(),
    # 2 blocks, 32 wide: unit tests on a 2-core CPU.
    "tiny": TransformerConfig(num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                              axes_dims_rope=(4, 6, 6)),
    # 4 blocks, 512 wide: CPU benchmarks and pretraining experiments.
    "small": TransformerConfig(num_layers=4, attention_head_dim=64, num_attention_heads=8, joint_attention_dim=256,
                               axes_dims_rope=(8, 28, 28)),
}


def preset(name: str, **overrides) -> TransformerConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown transformer preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
