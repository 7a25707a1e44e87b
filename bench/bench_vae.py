"""Our VAE against the reference (diffusers.AutoencoderKLQwenImage) on the same weights and image, in one run.

    python bench/bench_vae.py --size 512                       # CPU, official config, float32
    python bench/bench_vae.py --size 1328 --device cuda --dtype bfloat16 --encode

Weights are random at the official config (speed does not depend on their values) and shared by both."""
import argparse

import torch

from _common import command, machine
from bench_transformer import timed
from qwenimage.qwenimage_core.vae import QwenImageVAE, VAEConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--encode", action="store_true", help="also time encode")
    a = ap.parse_args()
    import diffusers

    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    cfg = VAEConfig()
    ref = diffusers.AutoencoderKLQwenImage(**{k: v for k, v in cfg.to_dict().items() if k != "_class_name"})
    ref = ref.to(device, dtype).eval()
    ours = QwenImageVAE(cfg)
    ours.load_state_dict(ref.state_dict())
    ours = ours.to(device, dtype).eval()
    z = torch.randn(1, 16, 1, a.size // 8, a.size // 8).to(device, dtype)
    x = (torch.rand(1, 3, 1, a.size, a.size) * 2 - 1).to(device, dtype)
    print(f"# {command()}\n# {machine()}\n# official VAE config, {a.size}x{a.size}, {a.dtype}")
    with torch.no_grad():
        diff = (ours.decode(z).float() - ref.decode(z).sample.float()).abs().max().item()
        print(f"decode max abs difference: {diff:.2e}")
        rows = [("decode", lambda: ours.decode(z), lambda: ref.decode(z))]
        if a.encode:
            rows.append(("encode", lambda: ours.encode(x).mean, lambda: ref.encode(x).latent_dist.mean))
        print("| op | ours (s) | reference (s) | speed-up |\n|---|---|---|---|")
        for name, f_ours, f_ref in rows:
            t_ours, t_ref = timed([f_ours, f_ref], device, a.repeats, a.warmup)
            print(f"| {name} | {t_ours:.2f} | {t_ref:.2f} | {t_ref / t_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
