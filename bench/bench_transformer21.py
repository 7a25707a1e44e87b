"""Our Qwen-Image 2.1 DiT against the reference (diffusers 0.42.1) on the same weights and inputs, in one run:
the full forward (the first step) and a step that reads the prefix KV cache (every later step).

    python bench/bench_transformer21.py --preset small --size 512 --refs 1                     # CPU
    python bench/bench_transformer21.py --preset small --size 256 --refs 1 --threads 1 --cpu-time  # shared CPU
    python bench/bench_transformer21.py --preset qwen-image-2.1 --size 1024 --refs 1 --device cuda --dtype bfloat16

Weights are random (speed does not depend on their values) and shared between the two models."""
import argparse
import time

import torch

from _common import command, machine
from bench_transformer import timed
from qwenimage.qwenimage_core.transformer21 import PRESETS21, QwenImage21Transformer


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS21))
    ap.add_argument("--layers", type=int, default=None, help="override num_layers (e.g. to fit memory)")
    ap.add_argument("--size", type=int, default=512, help="target side in pixels (16 px per latent token)")
    ap.add_argument("--refs", type=int, default=0, help="reference images of the target's size")
    ap.add_argument("--txt-len", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by this process's CPU time (steadier on a shared CPU; use with --threads 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    clock = time.process_time if a.cpu_time else time.perf_counter
    from diffusers import QwenImage21Transformer2DModel
    from diffusers.models.transformers.transformer_qwenimage21 import QwenImage21KVCache

    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cfg = PRESETS21[a.preset].replace(**({"num_layers": a.layers} if a.layers else {}))
    torch.manual_seed(0)
    with torch.device(device):
        ref = QwenImage21Transformer2DModel(**{k: v for k, v in cfg.to_dict().items() if k != "_class_name"})
    ref = ref.to(dtype).eval().requires_grad_(False)
    ref.time_text_embed.time_proj.freqs = ref.time_text_embed.time_proj.freqs.float()  # as from_pretrained keeps it
    with torch.device("meta"):
        ours = QwenImage21Transformer(cfg)
    ours.load_state_dict(ref.state_dict(), assign=True)  # the very same tensors: no second copy
    ours.eval()

    n = a.size // 16
    slots = [False] * 4
    for _ in range(a.refs):
        slots += [True] * (n * n // 4) + [False] * 2
    slots += [False] * max(0, a.txt_len - len(slots) + a.refs * n * n // 4)
    g = torch.Generator().manual_seed(0)
    kw = dict(hidden_states=torch.randn(1, (a.refs + 1) * n * n, cfg.in_channels, generator=g).to(device, dtype),
              encoder_hidden_states=torch.randn(1, len(slots), cfg.context_in_dim, generator=g).to(device, dtype),
              img_shapes=[[(1, n, n)] * (a.refs + 1)],
              img_mask=torch.tensor([slots + [True] * (n * n // 4)], device=device))
    t = torch.full((1,), 0.5, device=device)
    with torch.inference_mode():
        ref_cache, our_cache = QwenImage21KVCache(cfg.num_layers), ours.new_cache()
        ref(**kw, timestep=t, kv_cache=ref_cache, kv_cache_mode="extract", return_dict=False)
        ours(**kw, timestep=t, kv_cache=our_cache, kv_cache_mode="extract")
        full = timed([lambda: ref(**kw, timestep=t, return_dict=False), lambda: ours(**kw, timestep=t)],
                     device, a.repeats, a.warmup, clock)
        cached = timed([lambda: ref(**kw, timestep=t, kv_cache=ref_cache, kv_cache_mode="cached", return_dict=False),
                        lambda: ours(**kw, timestep=t, kv_cache=our_cache, kv_cache_mode="cached")],
                       device, a.repeats, a.warmup, clock)
        want = ref(**kw, timestep=t, return_dict=False)[0]
        diff = ((ours(**kw, timestep=t) - want).abs().max() / want.abs().max()).item()
    prefix = len(slots) + a.refs * n * n * 3 // 4
    print(f"| `{command()}` | {machine()} | {a.preset} ({cfg.num_layers} blocks, {cfg.inner_dim} wide) | "
          f"{a.size}px target, {a.refs} reference(s), {prefix} prefix tokens, {a.dtype}"
          f"{', CPU time' if a.cpu_time else ''} | "
          f"full: reference {full[0] * 1000:.1f} ms, ours {full[1] * 1000:.1f} ms ({full[0] / full[1]:.2f}x) | "
          f"cached: reference {cached[0] * 1000:.1f} ms, ours {cached[1] * 1000:.1f} ms ({cached[0] / cached[1]:.2f}x) | "
          f"rel. diff {diff:.1e} |")


if __name__ == "__main__":
    main()
