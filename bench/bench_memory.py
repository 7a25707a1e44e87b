"""Peak memory and time per denoising step of the MMDiT under each low-VRAM placement.

    python bench/bench_memory.py --device cuda                                  # the issue's table, full model
    python bench/bench_memory.py --preset small --size 512 --modes bf16 fp8 swap:1 --device cpu  # a CPU smoke run

Modes: `bf16` (resident), `fp8` (resident, fp8 weights up-cast per layer), `fp8-swap:GB` (fp8 with block swap
under a GB budget), `bf16-swap:GB`, `swap:N` (bf16, N blocks resident). One step = one transformer pass at the
given size with a 256-token prompt, as a step with CFG off (CFG doubles the time, not the peak). Weights are
random: memory and speed do not depend on their values. Each mode runs in a fresh model; peak is
torch.cuda.max_memory_allocated on GPU, process peak RSS on CPU."""
import argparse
import gc
import resource
import statistics
import time

import torch

from _common import command, machine
from qwenimage.qwenimage_core import QwenImageTransformer, preset
from qwenimage.qwenimage_core.fp8 import swap_to_fp8
from qwenimage.qwenimage_core.offload import GiB, BlockSwap, plan_for_budget


def build(cfg, fp8: bool, device: str):
    """The model built on meta, block linears swapped to fp8 if asked, then materialised on `device` with
    random values (bf16 everywhere else)."""
    with torch.device("meta"):
        model = QwenImageTransformer(cfg).to(torch.bfloat16)
    if fp8:
        swap_to_fp8(model, [n for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Linear) and n.startswith("transformer_blocks.")])
    model = model.to_empty(device=device).eval()
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                t.copy_(torch.randn(t.shape, device=device, dtype=torch.bfloat16).to(t.dtype))
            elif t.numel() == 1:
                t.fill_(0.02)  # fp8 scales
            else:
                t.normal_(0, 0.02)
    return model


def run_mode(mode, cfg, args, device):
    fp8 = mode.startswith("fp8")
    swap = None
    if "swap:" in mode:
        model = build(cfg, fp8, "cpu")
        arg = mode.split(":", 1)[1]
        if mode.startswith("swap:"):
            resident = int(arg)
        else:
            resident = plan_for_budget(model, 0, float(arg)).resident_blocks
            resident = len(model.transformer_blocks) if resident is None else resident
        swap = BlockSwap(model, resident, device)
        note = f"{resident}/{len(model.transformer_blocks)} blocks resident"
    else:
        model = build(cfg, fp8, str(device))
        note = "resident"
    n = (args.size // 16) ** 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, n, 64, generator=g).to(device, torch.bfloat16)
    txt = torch.randn(1, 256, cfg.joint_attention_dim, generator=g).to(device, torch.bfloat16)
    kw = dict(hidden_states=x, encoder_hidden_states=txt, encoder_hidden_states_mask=torch.ones(1, 256, device=device),
              timestep=torch.tensor([0.5], device=device), img_shapes=[(1, args.size // 16, args.size // 16)])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            model(**kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if swap is not None:
        swap.remove()
    del model, swap
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(times), peak / GiB, note


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="qwen-image")
    ap.add_argument("--size", type=int, default=1328)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--modes", nargs="+", default=["bf16", "fp8", "fp8-swap:16", "fp8-swap:12"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    device = torch.device(args.device)
    cfg = preset(args.preset)
    print(f"# {command()}\n# {machine()}\n# {args.preset} at {args.size}x{args.size}, batch 1, 256 text tokens")
    print("| mode | placement | peak memory (GiB) | time per step (s) |\n|---|---|---|---|")
    for mode in args.modes:
        try:
            t, peak, note = run_mode(mode, cfg, args, device)
            print(f"| {mode} | {note} | {peak:.2f} | {t:.3f} |", flush=True)
        except torch.cuda.OutOfMemoryError:
            print(f"| {mode} | out of memory | - | - |", flush=True)
            gc.collect()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
