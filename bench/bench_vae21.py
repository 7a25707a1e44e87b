"""Our Qwen-Image 2.1 VAE against the reference (diffusers.AutoencoderKLQwenImage21) on the same weights and RGBA
image, in one run.

    python bench/bench_vae21.py --size 256 --threads 1                 # CPU, official config, float32
    python bench/bench_vae21.py --size 512 --tiled --encode --threads 1  # tiles of 256 px, stride 192 (both)
    python bench/bench_vae21.py --size 1024 --device cuda --dtype bfloat16 --encode

Weights are random at the official config (speed does not depend on their values); ours holds the very tensors
of the reference. Runs are interleaved round by round and the median is reported; peak memory as bench_vae.py."""
import argparse

import torch

from _common import command, machine
from bench_transformer import timed
from bench_vae import peak_rise_mib
from qwenimage.qwenimage_core.vae21 import QwenImage21VAE, VAE21Config


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (a multiple of 16)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=0,
                    help="extra untimed rounds (the agreement check and the memory probe already run each op twice)")
    ap.add_argument("--encode", action="store_true", help="also time encode")
    ap.add_argument("--tiled", action="store_true", help="tiling on in both (256 px tiles, 64 px overlap)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    import diffusers

    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cfg = VAE21Config()
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLQwenImage21(**{k: v for k, v in cfg.to_dict().items() if k != "_class_name"})
    ref = torch.nn.Module.to(ref, device, dtype).eval().requires_grad_(False)  # nn.Module.to: no casting warning
    with torch.device("meta"):
        ours = QwenImage21VAE(cfg)
    ours.load_state_dict(ref.state_dict(), assign=True)  # the very same tensors: no second copy
    ours.eval()
    if a.tiled:
        ref.enable_tiling()
        ours.enable_tiling()

    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 64, 1, a.size // 16, a.size // 16, generator=g).to(device, dtype)
    x = (torch.rand(1, 4, 1, a.size, a.size, generator=g) * 2 - 1).to(device, dtype)
    rows = [("decode", lambda: ours.decode(z), lambda: ref.decode(z).sample)]
    if a.encode:
        rows.append(("encode", lambda: ours.encode(x).mean, lambda: ref.encode(x).latent_dist.mean))
    print(f"# {command()}\n# {machine()}\n# official 2.1 VAE config (random weights), RGBA 1x{a.size}x{a.size}, "
          f"{a.dtype}{', tiled' if a.tiled else ''}")
    print("| op | ours (s) | reference (s) | speed-up | rel. diff | peak rise ours | peak rise reference |")
    print("|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for name, f_ours, f_ref in rows:
            want = f_ref().float()
            diff = ((f_ours().float() - want).abs().max() / want.abs().max()).item()
            mem = [peak_rise_mib(f, device) for f in (f_ours, f_ref)]
            t_ours, t_ref = timed([f_ours, f_ref], device, a.repeats, a.warmup)
            ours_mem, ref_mem = ("n/a" if m is None else f"{m:.0f} MiB" for m in mem)
            print(f"| {name} | {t_ours:.2f} | {t_ref:.2f} | {t_ref / t_ours:.2f}x | {diff:.1e} | {ours_mem} "
                  f"| {ref_mem} |", flush=True)


if __name__ == "__main__":
    main()
