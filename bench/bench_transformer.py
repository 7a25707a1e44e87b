"""Our MMDiT against the reference (diffusers) on the same weights and inputs, in one run.

    python bench/bench_transformer.py --preset small --size 512            # CPU
    python bench/bench_transformer.py --preset qwen-image --size 1328 --device cuda --dtype bfloat16

Weights are random (speed does not depend on their values) and shared between the two models."""
import argparse
import statistics
import time

import torch

from _common import command, machine
from qwenimage.qwenimage_core import QwenImageTransformer, preset


def timed(fns, device, repeats, warmup, clock=time.perf_counter):
    """Median seconds of each function, the functions interleaved round by round so drift hits both alike.
    clock=time.process_time counts this process's CPU time: steadier than the wall on a shared CPU."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t.append(clock() - t0)
    return [statistics.median(t) for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--layers", type=int, default=None, help="override num_layers (e.g. to fit memory)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--txt-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--pad", type=int, default=0, help="padding tokens at the end of the last sample's text")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    from diffusers import QwenImageTransformer2DModel

    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cfg = preset(a.preset, **({"num_layers": a.layers} if a.layers else {}))
    torch.manual_seed(0)
    with torch.device(device):
        ref = QwenImageTransformer2DModel(**{k: v for k, v in cfg.to_dict().items() if k != "_class_name"})
    ref = ref.to(dtype).eval().requires_grad_(False)
    with torch.device("meta"):
        ours = QwenImageTransformer(cfg)
    ours.load_state_dict(ref.state_dict(), assign=True)  # the very same tensors: no second copy
    ours.eval()

    n = a.size // 16
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(a.batch, a.txt_len, dtype=torch.long, device=device)
    mask[-1, a.txt_len - a.pad:] = 0
    kw = dict(hidden_states=torch.randn(a.batch, n * n, cfg.in_channels, generator=g).to(device, dtype),
              encoder_hidden_states=torch.randn(a.batch, a.txt_len, cfg.joint_attention_dim, generator=g).to(device, dtype),
              encoder_hidden_states_mask=mask,
              timestep=torch.full((a.batch,), 0.5, device=device), img_shapes=[[(1, n, n)]] * a.batch)
    with torch.inference_mode():
        t_ref, t_ours = timed([lambda: ref(**kw, return_dict=False), lambda: ours(**kw)], device, a.repeats, a.warmup)
        diff = ((ours(**kw) - ref(**kw, return_dict=False)[0]).abs().max() / ref(**kw, return_dict=False)[0].abs().max()).item()
    print(f"| `{command()}` | {machine()} | {a.preset} ({cfg.num_layers} blocks, {cfg.inner_dim} wide) | "
          f"{a.size}px, {a.txt_len} text tokens ({a.pad} padding), batch {a.batch}, {a.dtype} | reference {t_ref * 1000:.1f} ms | "
          f"ours {t_ours * 1000:.1f} ms | {t_ref / t_ours:.2f}x | rel. diff {diff:.1e} |")


if __name__ == "__main__":
    main()
