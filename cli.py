"""`qwenimage` command line: one entry point over the core (and, as they land, the node server and the trainer)."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time


def cmd_inspect(a) -> int:
    """Say what a checkpoint is, and load it to prove it."""
    import torch

    from .qwenimage_core import load_transformer
    from .qwenimage_core.checkpoint import transformer_sources

    config, sources = transformer_sources(a.path)
    files = sorted({f.path for f, _ in sources.values()})
    print(f"transformer: {len(sources)} tensors in {len(files)} file(s)")
    for k, v in config.to_dict().items():
        print(f"  {k}: {v}")
    if a.load:
        t0 = time.perf_counter()
        model = load_transformer(a.path, dtype=getattr(torch, a.dtype) if a.dtype else None)
        n = sum(p.numel() for p in model.parameters())
        print(f"loaded {n:,} parameters as {model.dtype} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_selfcheck(a) -> int:
    """Build a tiny model, write it in both layouts, load each back and run the velocity prediction."""
    import torch

    from .qwenimage_core import QwenImageTransformer, load_transformer, preset, save_comfyui_transformer, save_transformer

    torch.manual_seed(0)
    model = QwenImageTransformer(preset(a.preset)).eval()
    cfg = model.config
    x = torch.randn(1, 64, cfg.in_channels)
    txt = torch.randn(1, 12, cfg.joint_attention_dim)
    kw = dict(hidden_states=x, encoder_hidden_states=txt, encoder_hidden_states_mask=torch.ones(1, 12),
              timestep=torch.tensor([0.5]), img_shapes=[(1, 8, 8)])
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        want = model(**kw)
        save_transformer(model, f"{tmp}/model/transformer")
        save_comfyui_transformer(model, f"{tmp}/single.safetensors", prefix="model.diffusion_model.")
        for path in (f"{tmp}/model", f"{tmp}/single.safetensors"):
            got = load_transformer(path)(**kw)
            # same weights, but memory-mapped tensors may be aligned differently, which changes GEMM summation order
            ok = torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
            print(f"{'ok  ' if ok else 'FAIL'} {path.replace(tmp, '<tmp>')}: velocity {tuple(got.shape)}")
            if not ok:
                return 1
    print(f"self-check passed ({a.preset} preset, {sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qwenimage", description="Qwen-Image: text-to-image and editing")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="describe (and optionally load) a transformer checkpoint")
    p.add_argument("path", help="diffusers model folder, transformer folder, or ComfyUI .safetensors file")
    p.add_argument("--load", action="store_true", help="also load the weights")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: as stored)")
    p.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("selfcheck", help="round-trip a small model through both checkpoint layouts")
    p.add_argument("--preset", default="tiny")
    p.set_defaults(fn=cmd_selfcheck)
    a = ap.parse_args(argv)
    from .qwenimage_core import CheckpointError

    try:
        return a.fn(a)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
