"""VAE training step time: the trainer's VAE objective and optimiser step, from scratch or decoder-only.

    python bench/bench_train_vae.py --preset tiny --size 64 --batch 4             # mode "vae", CPU
    python bench/bench_train_vae.py --mode vae_decoder --preset official --size 256 --batch 1 --gan
    python bench/bench_train_vae.py --mode vae_decoder --preset official --size 256 --perceptual   # + VGG16

Random weights stand in for the checkpoint (same shapes, same cost); the perceptual term uses a random VGG16 of
full width. The first (warm-up) step is not timed."""
import argparse
import os
import tempfile
import time

import torch
from safetensors.torch import save_file

from _common import command, machine

from qwenimage.qwenimage_core import QwenImageVAE, VAEConfig
from qwenimage.training.objectives.perceptual import BLOCKS, PerceptualLoss
from qwenimage.training.objectives.vae import VAEObjective
from qwenimage.training.vae_run import VAE_PRESETS

VGG_WIDTHS = (64, 128, 256, 512, 512)


def random_vgg16(path):
    state, cin = {}, 3
    for n, block in enumerate(BLOCKS):
        for i in block:
            state[f"features.{i}.weight"] = torch.randn(VGG_WIDTHS[n], cin, 3, 3) * (2 / (9 * cin)) ** 0.5
            state[f"features.{i}.bias"] = torch.zeros(VGG_WIDTHS[n])
            cin = VGG_WIDTHS[n]
    save_file(state, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("vae", "vae_decoder"), default="vae")
    ap.add_argument("--preset", default="tiny", choices=sorted(VAE_PRESETS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--gan", action="store_true", help="with the patch discriminator (adaptive weight) and its step")
    ap.add_argument("--perceptual", action="store_true", help="with the LPIPS-style VGG16 term")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    model = QwenImageVAE(VAEConfig(**VAE_PRESETS[a.preset])).to(dev).train()
    if a.mode == "vae_decoder":
        model.requires_grad_(False)
        model.decoder.requires_grad_(True)
        model.post_quant_conv.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    perceptual = None
    if a.perceptual:
        with tempfile.TemporaryDirectory() as d:
            random_vgg16(os.path.join(d, "vgg.safetensors"))
            perceptual = PerceptualLoss.from_file(os.path.join(d, "vgg.safetensors")).to(dev)
    objective = VAEObjective(l1=1.0, kl=1e-6 if a.mode == "vae" else 0.0, perceptual=perceptual,
                             gan=0.5 if a.gan else 0.0)
    if objective.disc is not None:
        objective.disc.to(dev)
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.rand(a.batch, 3, a.size, a.size, device=dev) * 2 - 1
    times = []
    for i in range(a.steps + 1):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        objective.begin_step(i)
        gens = [torch.Generator(dev).manual_seed(i * a.batch + j) for j in range(a.batch)]
        loss = objective.loss(model, {"images": x}, gens)[0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        objective.end_step(True)
        if cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
        if i == 0 and cuda:
            torch.cuda.reset_peak_memory_stats()
    peak = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if cuda else "n/a (CPU)"
    extras = [n for n, on in (("GAN", a.gan), ("perceptual", a.perceptual)) if on]
    print(f"# {command()}\n# {machine()}")
    print(f"mode {a.mode}, preset {a.preset}, {a.size}x{a.size}, batch {a.batch}, "
          f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable, {'+'.join(['L1', *extras])}")
    print(f"step time: median {sorted(times)[len(times) // 2]:.3f} s over {len(times)} steps; peak memory {peak}")


if __name__ == "__main__":
    main()
