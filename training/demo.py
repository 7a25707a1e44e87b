"""Build the demo model from nothing: synthetic data -> a frozen random tiny Qwen2.5-VL text encoder (the real
tokenizer) -> a small Wan-2.1 VAE trained from scratch -> cached latents and text states -> a small MMDiT
pretrained on them -> the three files in the ComfyUI layout.

    python -m qwenimage.training.demo                 # rebuilds demo/models/ from training/examples/demo/
    python -m qwenimage.training.demo --out /tmp/d --set mmdit.train.steps=5 vae.train.steps=5 build.images=16

Same seed, same machine, same thread count: the same bytes (torch's CPU kernels are deterministic at a fixed
thread count; the build pins it)."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "training" / "examples" / "demo"
MODELS_DIR = ROOT / "demo" / "models"
FILES = {"diffusion_models": "qwen_image_demo.safetensors",
         "text_encoders": "qwen_image_demo_text_encoder.safetensors",
         "vae": "qwen_image_demo_vae.safetensors"}


def demo_paths(models_dir: str | os.PathLike = MODELS_DIR) -> dict[str, str]:
    """{"diffusion_models" | "text_encoders" | "vae": path} of the demo files under a ComfyUI models folder."""
    return {folder: os.path.join(models_dir, folder, name) for folder, name in FILES.items()}


# ------------------------------------------------------------------------------------------- text encoder

def text_encoder_config(vocab_size: int, c: dict):
    """Qwen2.5-VL's architecture at `c` sizes; the vision tower is minimal (t2i never runs it)."""
    import transformers

    hidden, heads = c["hidden_size"], c["num_attention_heads"]
    return transformers.Qwen2_5_VLConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=c["intermediate_size"],
                         num_hidden_layers=c["num_hidden_layers"], num_attention_heads=heads,
                         num_key_value_heads=c["num_key_value_heads"], vocab_size=vocab_size, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "mrope_section": c["mrope_section"],
                                          "rope_theta": 1e6}),
        vision_config=dict(depth=1, hidden_size=16, out_hidden_size=hidden, intermediate_size=32, num_heads=1,
                           fullatt_block_indexes=[0]))


def build_text_encoder(path: str, c: dict, seed: int) -> None:
    """Random weights from `seed`, frozen, as the real encoder is frozen: the MMDiT learns to read its states.
    Stored in bf16 (the embedding, vocab x hidden, is most of the bytes)."""
    import transformers

    from ..qwenimage_core.text_encoder import bundled_tokenizer_dir, load_tokenizer, save_text_encoder_file

    vocab = len(load_tokenizer(bundled_tokenizer_dir()))
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(text_encoder_config(vocab, c))
    save_text_encoder_file(model.model.to(torch.bfloat16), path)


# ------------------------------------------------------------------------------------------------ stages

def _train(config_file: Path, overrides: list[str]) -> dict:
    """One `qwenimage train` run (the same code path, in this process)."""
    from .config import load_config
    from .trainer import Trainer

    return Trainer(load_config(str(config_file), overrides)).run()


def _to_bf16_file(src: str, dst: str) -> None:
    """Copy a safetensors file with its floating tensors in bf16 and its metadata kept."""
    from safetensors import safe_open

    from ..qwenimage_core.weights import save_file_atomic

    with safe_open(src, "pt") as f:
        meta = f.metadata() or {}
        tensors = {k: (t.to(torch.bfloat16) if t.is_floating_point() else t).contiguous()
                   for k in f.keys() for t in [f.get_tensor(k)]}
    save_file_atomic(tensors, dst, meta)


def load_build_config(overrides=()) -> dict:
    """training/examples/demo/build.toml, with `build.key=value` overrides."""
    with open(CONFIG_DIR / "build.toml", "rb") as fh:
        cfg = tomllib.load(fh)
    for item in overrides:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in cfg or name not in cfg[section]:
            raise SystemExit(f"demo build: unknown setting {key!r} (known: "
                             + ", ".join(f"{s}.{k}" for s in cfg for k in cfg[s]) + ")")
        cfg[section][name] = type(cfg[section][name])(json.loads(value) if not isinstance(
            cfg[section][name], str) else value)
    return cfg


def build(out_dir: str | os.PathLike = MODELS_DIR, overrides=(), work_dir: str | None = None, log=print) -> dict:
    """Run every stage; returns {folder: path} of the three files written under `out_dir` (a ComfyUI models
    folder). Overrides: `build.x=...` for build.toml, `vae.section.key=...` / `mmdit.section.key=...` for the
    two training configs."""
    from .data.demo_shapes import make_demo_dataset

    own = [o for o in overrides if o.split(".", 1)[0] not in ("vae", "mmdit")]
    per = {s: [o.split(".", 1)[1] for o in overrides if o.startswith(s + ".")] for s in ("vae", "mmdit")}
    cfg = load_build_config(own)
    b = cfg["build"]
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(b["threads"])
    torch.use_deterministic_algorithms(True)
    tmp = tempfile.mkdtemp(prefix="qwenimage-demo-") if work_dir is None else work_dir
    work = Path(tmp)
    times = {}
    try:
        t0 = time.perf_counter()
        manifest = make_demo_dataset(work / "data", b["images"], b["size"], b["seed"])
        te = str(work / FILES["text_encoders"])
        build_text_encoder(te, cfg["text_encoder"], b["seed"])
        times["data and text encoder"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = _train(CONFIG_DIR / "vae.toml", [f"data.path={manifest}", f"output.dir={work / 'vae'}",
                                              f"train.seed={b['seed']}", *per["vae"]])
        vae = out["outputs"]["comfyui"]
        times["vae"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = _train(CONFIG_DIR / "mmdit.toml", [f"data.path={manifest}", f"output.dir={work / 'mmdit'}",
                                                f"model.text_encoder={te}", f"model.vae={vae}",
                                                f"train.seed={b['seed']}", *per["mmdit"]])
        mmdit = out["outputs"]["comfyui"]
        times["mmdit"] = time.perf_counter() - t0

        paths = demo_paths(out_dir)
        for folder, src in (("diffusion_models", mmdit), ("text_encoders", te), ("vae", vae)):
            os.makedirs(os.path.dirname(paths[folder]), exist_ok=True)
            _to_bf16_file(src, paths[folder])
        for name, s in times.items():
            log(f"demo build: {name}: {s:.0f} s")
        return paths
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        if work_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def digest(paths: dict) -> dict:
    return {k: hashlib.sha256(Path(p).read_bytes()).hexdigest() for k, p in paths.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qwenimage.training.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(MODELS_DIR), help="a ComfyUI models folder (default: the shipped demo/models)")
    p.add_argument("--work", default=None, help="keep the data, caches and runs here (default: a temporary folder)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="build.images=64, vae.train.steps=10, mmdit.optimizer.lr=3e-4 ...")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the trainer's step lines
    t0 = time.perf_counter()
    paths = build(a.out, a.set, a.work)
    for folder, h in digest(paths).items():
        size = os.path.getsize(paths[folder]) / 1e6
        print(f"{paths[folder]}  {size:.1f} MB  sha256 {h[:16]}")
    print(f"demo build: {time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
