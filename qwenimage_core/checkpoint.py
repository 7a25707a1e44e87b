"""Finding and loading Qwen-Image checkpoints: diffusers folders and ComfyUI single files.

A diffusers folder holds one subfolder per component (`transformer/`, `vae/`, `text_encoder/`, ...), each a
`config.json` and safetensors weights, single or sharded with an index. A ComfyUI single file holds one
component with bare keys, or the transformer under `model.diffusion_model.`, or a whole checkpoint with the
transformer, VAE (`vae.`) and text encoder (`text_encoders.qwen25_7b.transformer.`) side by side. Loading builds
the model on the meta device and assigns each tensor straight from the memory map in its final dtype.
"""
from __future__ import annotations

import json
import os
import torch
import torch.nn as nn

from .checkpoint21 import FAMILY_20B, FAMILY_21, config21_dims, fuse, infer_config21, is_config21, transformer_family, unfuse
from .config import TransformerConfig
from .fp8 import FP8_DTYPES, SCALE_SUFFIXES, is_quant_key, quant_format, quantize, swap_to_fp8
from .transformer import QwenImageTransformer
from .transformer21 import QwenImage21Transformer, Transformer21Config
from .weights import (CheckpointError, SafetensorsFile, assign_weights, block_count, check_config_fits,
                      check_parameter_count, load_json, open_checkpoint_files, save_file_atomic)

TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
# Empty tensors ComfyUI writes as flags rather than weights.
MARKERS = {"__index_timestep_zero__": "zero_cond_t"}


# ---------------------------------------------------------------------------------------------- diffusers folders

def component_folder(path: str, component: str) -> str | None:
    """The folder of `component` in a diffusers model folder, or the path itself if it is that component."""
    sub = os.path.join(path, component)
    if os.path.isfile(os.path.join(sub, "config.json")):
        return sub
    if os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(os.path.join(path, "model_index.json")):
        return path
    return None


def read_json(path: str) -> dict:
    """A JSON object of a model folder (config, index), through the loaders' one bounded JSON reader."""
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read JSON: {e}") from None
    value = load_json(text, path)
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return value


def folder_weight_files(folder: str) -> list[str]:
    """The safetensors files of one component folder: the index's shards, or the single weights file."""
    names = os.listdir(folder)
    index = sorted(n for n in names if n.endswith(".safetensors.index.json"))
    if index:
        weight_map = read_json(os.path.join(folder, index[0])).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{os.path.join(folder, index[0])}: no weight_map")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise CheckpointError(f"{folder}: shard(s) named in {index[0]} are missing: {', '.join(missing)}")
        return [os.path.join(folder, s) for s in shards]
    files = sorted(n for n in names if n.endswith(".safetensors"))
    if not files:
        pickled = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        hint = f" (found {', '.join(pickled)}: pickled weights are never loaded; convert them to safetensors)" if pickled else ""
        raise CheckpointError(f"{folder}: no .safetensors weights{hint}")
    if len(files) > 1:
        raise CheckpointError(f"{folder}: several .safetensors files ({', '.join(files)}) and no index to say which")
    return [os.path.join(folder, files[0])]


def folder_sources(folder: str, config, parse_config):
    """(config, {name: (file, key)}) for one diffusers component folder; `parse_config` reads its config.json
    unless a config is given, and a config it rejects is an error naming the file."""
    if config is None:
        cfg_path = os.path.join(folder, "config.json")
        try:
            config = parse_config(read_json(cfg_path))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{cfg_path}: {e}") from None
    files = open_checkpoint_files(folder_weight_files(folder))
    return config, {k: (f, k) for k, f in files.items()}


# ----------------------------------------------------------------------------------------------- single files

def split_prefix(keys, prefixes) -> tuple[str, list[str]] | None:
    """The first prefix that some keys carry, and those keys without it."""
    for p in prefixes:
        hit = [k[len(p):] for k in keys if k.startswith(p)]
        if hit:
            return p, hit
    return None


def infer_transformer_config(shapes: dict[str, tuple], markers=()) -> TransformerConfig:
    """Read the architecture off the weight shapes of a single file (which carries no config)."""
    def need(key):
        if key not in shapes:
            raise CheckpointError(f"not a Qwen-Image transformer: key {key!r} is missing")
        return shapes[key]

    dim, in_ch = need("img_in.weight")
    head_dim = need("transformer_blocks.0.attn.norm_q.weight")[0]
    patch = 2
    axes = rope_axes(head_dim)
    flags = {MARKERS[m]: True for m in markers if m in MARKERS}
    return TransformerConfig(
        patch_size=patch, in_channels=in_ch, out_channels=need("proj_out.weight")[0] // patch ** 2,
        num_layers=block_count(shapes, "transformer_blocks."), attention_head_dim=head_dim, num_attention_heads=dim // head_dim,
        joint_attention_dim=need("txt_in.weight")[1], axes_dims_rope=axes,
        use_additional_t_cond="time_text_embed.addition_t_embedding.weight" in shapes, **flags)


def check_transformer_config(config: TransformerConfig | Transformer21Config, sources: dict) -> None:
    """The config (config.json, file metadata or the caller's) against the weights' shapes, before building."""
    c = config
    family = transformer_family(sources)
    if family is not None and (family == FAMILY_21) != isinstance(c, Transformer21Config):
        where = next(iter(sources.values()))[0].path
        raise CheckpointError(f"{where}: the weights are a {family}, the config ({type(c).__name__}) is the other model's")
    if isinstance(c, Transformer21Config):
        check_config_fits("transformer", sources, dims=config21_dims(c),
                          counts=[("transformer_blocks.", "num_layers", c.num_layers)])
        return check_parameter_count("transformer", sources, parameter_count(c))
    check_config_fits("transformer", sources, dims=[
        ("img_in.weight", 0, "num_attention_heads x attention_head_dim", c.inner_dim),
        ("img_in.weight", 1, "in_channels", c.in_channels),
        ("transformer_blocks.0.attn.norm_q.weight", 0, "attention_head_dim", c.attention_head_dim),
        ("txt_in.weight", 1, "joint_attention_dim", c.joint_attention_dim),
        ("proj_out.weight", 0, "out_channels x patch_size^2", c.out_channels * c.patch_size ** 2)],
        counts=[("transformer_blocks.", "num_layers", c.num_layers)])
    check_parameter_count("transformer", sources, parameter_count(config))


def parameter_count(config: TransformerConfig | Transformer21Config) -> int:
    """The parameters of the model `config` describes, counted on one block built on the meta device (building
    all of them is what a bound on the count must avoid)."""
    with torch.device("meta"):
        one = model_class(config)(config.replace(num_layers=1))
    block = sum(p.numel() for p in one.transformer_blocks[0].parameters())
    return sum(p.numel() for p in one.parameters()) + (config.num_layers - 1) * block


def model_class(config):
    return QwenImage21Transformer if isinstance(config, Transformer21Config) else QwenImageTransformer


def parse_transformer_config(d: dict) -> TransformerConfig | Transformer21Config:
    """A transformer config.json (or file metadata) of either model, told apart by its class name and fields."""
    return Transformer21Config.from_dict(d) if is_config21(d) else TransformerConfig.from_dict(d)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """The rotary split a file without a config implies: the official one for 128-wide heads (both models)."""
    return (16, 56, 56) if head_dim == 128 else _scaled_axes(head_dim)


def _scaled_axes(head_dim: int) -> tuple[int, int, int]:
    """MSRoPE split for a non-official head size: the official 1/8, 7/16, 7/16 proportions, kept even."""
    t = max(2, round(head_dim / 8 / 2) * 2)
    h = (head_dim - t) // 2 // 2 * 2
    return t, h, head_dim - t - h


# ------------------------------------------------------------------------------------------------- transformer

def transformer_sources(path: str, config: TransformerConfig | Transformer21Config | None = None):
    """(config, {model name: (file, key)}) for a transformer at `path`: the 20B MMDiT or the 2.1 DiT, told
    apart by their keys (checkpoint21.transformer_family) or a folder's config.json."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder = component_folder(path, "transformer")
        if folder is None:
            raise CheckpointError(f"{path}: not a diffusers model folder: no transformer/config.json or config.json")
        return folder_sources(folder, config, parse_transformer_config)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file or folder")
    f = SafetensorsFile(path)
    keys = f.keys()
    found = split_prefix(keys, TRANSFORMER_PREFIXES)
    prefix, names = found if found else ("", keys)
    sources = {n: (f, prefix + n) for n in names}
    markers = [n for n in names if n in MARKERS]
    family = transformer_family(names)
    if family is None:
        raise CheckpointError(f"{path}: not a Qwen-Image transformer (no txt_norm.weight (20B) or "
                              f"txt_in.text_norm.weight (2.1){' under ' + prefix if prefix else ''})")
    if family == FAMILY_21:
        sources = unfuse(sources)
    if config is None:
        meta = f.metadata_json("config")
        try:
            config = (parse_transformer_config(meta) if isinstance(meta, dict) else
                      infer_config21({n: s.shape(k) for n, (s, k) in sources.items()}, rope_axes)
                      if family == FAMILY_21 else
                      infer_transformer_config({n: f.shape(prefix + n) for n in names}, markers))
        except (TypeError, ValueError) as e:  # CheckpointError included: say which file
            raise CheckpointError(f"{path}: {e}" if not str(e).startswith(path) else str(e)) from None
        if isinstance(meta, dict) and markers:
            config = config.replace(**{MARKERS[m]: True for m in markers})
    return config, sources


def load_transformer(path, device=None, dtype=None, config: TransformerConfig | None = None,
                     weight_dtype=None, family: str | None = None) -> QwenImageTransformer | QwenImage21Transformer:
    """Load the 20B MMDiT or the 2.1 DiT from a diffusers folder (model or `transformer/` folder) or a ComfyUI
    single file.

    dtype: the compute dtype, default the stored one (bfloat16 for fp8 files). weight_dtype: None keeps fp8
    weights of an fp8 file in fp8 (up-cast per layer at run time); torch.float8_e4m3fn also quantises the
    high-precision linear weights of the blocks on load; a float dtype de-quantises fp8 weights into it.
    device defaults to the CPU. The model is built on the meta device and each tensor is assigned from the
    memory-mapped file, so peak memory stays near the weights' size. Errors name the file and the key. The
    result is in eval mode with gradients off. family (FAMILY_20B / FAMILY_21): refuse a file of the other model
    by name before loading it."""
    config, sources = transformer_sources(path, config)
    check_transformer_config(config, sources)
    found = FAMILY_21 if isinstance(config, Transformer21Config) else FAMILY_20B
    if family is not None and found != family:  # before any weight is read: the caller runs only `family`
        raise CheckpointError(f"{path}: a {found}, where this path runs the {family} only "
                              f"(2.1 sampling, nodes and training are not in this version yet)")
    quant = {n: sources.pop(n) for n in [n for n in sources if is_quant_key(n)]}
    _check_quant_formats(quant)
    stored_fp8 = {n[: -len(".weight")] for n, (f, k) in sources.items()
                  if n.endswith(".weight") and f.dtype(k) in FP8_DTYPES}
    if dtype is None:
        f, key = sources.get("img_in.weight") or next(iter(sources.values()))
        stored = f.dtype(key) or torch.float32
        dtype = torch.bfloat16 if stored in FP8_DTYPES else stored
    with torch.device("meta"):
        model = model_class(config)(config)
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if weight_dtype is None:
        fp8_modules = stored_fp8 & linears
    elif weight_dtype in FP8_DTYPES:
        fp8_modules = stored_fp8 | {n for n in linears if n.startswith("transformer_blocks.")}
    else:
        fp8_modules = set()
    swap_to_fp8(model, sorted(fp8_modules), weight_dtype if weight_dtype in FP8_DTYPES else torch.float8_e4m3fn, dtype)

    def scale_of(module: str) -> torch.Tensor | None:
        for suffix in SCALE_SUFFIXES:
            if module + suffix in quant:
                f, k = quant[module + suffix]
                return f.get(k).float().reshape(())
        return None

    scales: dict[str, torch.Tensor] = {}

    def convert(name: str, t: torch.Tensor) -> torch.Tensor:
        module = name.rpartition(".")[0]
        if not name.endswith(".weight") or module not in stored_fp8 | fp8_modules:
            return t
        if module in fp8_modules and t.dtype in FP8_DTYPES:  # stays fp8, scale alongside
            scales[module] = scale_of(module) if scale_of(module) is not None else torch.ones(())
            return t
        if module in fp8_modules:  # quantise on load
            t, scales[module] = quantize(t, weight_dtype)
            return t
        s = scale_of(module)  # fp8 up-cast to a float dtype
        return t.float() * s if s is not None else t

    def target_dtype(name: str, t: torch.Tensor):
        if name.endswith(".weight") and name.rpartition(".")[0] in fp8_modules:
            return None  # the fp8 weight itself (already quantised by `convert` where needed)
        return dtype if t.is_floating_point() else None

    assign_weights(model, sources, dtype=target_dtype, device=device, convert=convert,
                   ignore=lambda n: n in MARKERS, what="transformer")
    for module in fp8_modules:
        layer = model.get_submodule(module)
        layer.weight_scale = scales[module].to(device=layer.weight.device)
    return model.eval().requires_grad_(False)


def _check_quant_formats(quant: dict) -> None:
    for n, (f, k) in quant.items():
        if n.endswith(".comfy_quant"):
            fmt = quant_format(f.get(k))
            if fmt not in ("float8_e4m3fn", "float8_e5m2"):
                raise CheckpointError(f"{f.path}: key {k!r}: quantisation format {fmt!r} is not supported "
                                      "(fp8 e4m3fn/e5m2 are)")


# ------------------------------------------------------------------------------------------------------ saving

def save_transformer(model: QwenImageTransformer, folder: str, max_shard_bytes: int = 10 * 2 ** 30) -> None:
    """Write the diffusers layout: config.json and safetensors, sharded with an index above `max_shard_bytes`."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    shards, current, size = [], {}, 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if current and size + n > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k] = v
        size += n
    shards.append(current)
    if len(shards) == 1:
        save_file_atomic(shards[0], os.path.join(folder, "diffusion_pytorch_model.safetensors"), {"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file_atomic(shard, os.path.join(folder, name), {"format": "pt"})
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in state.values())
        _write_json({"metadata": {"total_size": total}, "weight_map": weight_map},
                    os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"))
    _write_json(model.config.to_dict(), os.path.join(folder, "config.json"))


def save_comfyui_transformer(model: QwenImageTransformer | QwenImage21Transformer, path: str, prefix: str = "") -> None:
    """One ComfyUI single file (bare keys, or under `prefix` such as model.diffusion_model.), config in metadata;
    a 2.1 model in Comfy-Org's layout (SwiGLU gate and up fused)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = {prefix + k: v for k, v in (fuse(state) if isinstance(model, QwenImage21Transformer) else state).items()}
    if getattr(model.config, "zero_cond_t", False):
        state[prefix + "__index_timestep_zero__"] = torch.zeros(0)
    save_file_atomic(state, path, {"format": "pt", "config": json.dumps(model.config.to_dict())})


def _write_json(obj, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2)
    os.replace(tmp, path)

