"""Our VAE against the reference (diffusers.AutoencoderKLQwenImage, or AutoencoderKLQwenImage21 with --family 2.1:
RGBA, 16x down) on the same weights and image, in one run.

    python bench/bench_vae.py --size 512                       # CPU, official config, float32
    python bench/bench_vae.py --size 1328 --device cuda --dtype bfloat16 --encode
    python bench/bench_vae.py --family 2.1 --size 512 --tiled --encode --threads 1  # 256 px tiles, stride 192 (both)

Weights are random at the official config (speed does not depend on their values); ours holds the very tensors
of the reference. Runs are interleaved round by round and the median is reported. Peak memory is the rise above
the resident (CPU: VmHWM after resetting it through /proc/self/clear_refs) or allocated (CUDA) memory during
one call, so it measures the activations, not the weights."""
import argparse

import torch

from _common import command, machine
from bench_transformer import timed
from qwenimage.qwenimage_core.vae import QwenImageVAE, VAEConfig
from qwenimage.qwenimage_core.vae21 import QwenImage21VAE, VAE21Config

# family: (our config, our model, the reference's class name, image channels, downscale, latent channels)
FAMILIES = {"20b": (VAEConfig, QwenImageVAE, "AutoencoderKLQwenImage", 3, 8, 16),
            "2.1": (VAE21Config, QwenImage21VAE, "AutoencoderKLQwenImage21", 4, 16, 64)}


def _status_kib(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def peak_rise_mib(fn, device) -> float | None:
    """Peak memory above the level before the call, in MiB; None where the counter cannot be reset."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak resident set) to the current VmRSS
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) / 1024
    except OSError:
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted(FAMILIES), default="20b", help="the 20B model's VAE or 2.1's")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (a multiple of 8; 16 for 2.1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=0,
                    help="extra untimed rounds (the agreement check and the memory probe already run each op twice)")
    ap.add_argument("--encode", action="store_true", help="also time encode")
    ap.add_argument("--tiled", action="store_true", help="tiling on in both (their default tiles and overlap)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    import diffusers

    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    config_class, model_class, ref_name, channels, down, z_dim = FAMILIES[a.family]
    cfg = config_class()
    torch.manual_seed(0)
    ref = getattr(diffusers, ref_name)(**{k: v for k, v in cfg.to_dict().items() if k != "_class_name"})
    ref = torch.nn.Module.to(ref, device, dtype).eval().requires_grad_(False)  # nn.Module.to: no casting warning
    with torch.device("meta"):
        ours = model_class(cfg)
    ours.load_state_dict(ref.state_dict(), assign=True)  # the very same tensors: no second copy
    ours.eval()
    if a.tiled:
        ref.enable_tiling()
        ours.enable_tiling()

    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, z_dim, 1, a.size // down, a.size // down, generator=g).to(device, dtype)
    x = (torch.rand(1, channels, 1, a.size, a.size, generator=g) * 2 - 1).to(device, dtype)
    rows = [("decode", lambda: ours.decode(z), lambda: ref.decode(z).sample)]
    if a.encode:
        rows.append(("encode", lambda: ours.encode(x).mean, lambda: ref.encode(x).latent_dist.mean))
    print(f"# {command()}\n# {machine()}\n# official {a.family} VAE config (random weights), {channels} channels "
          f"1x{a.size}x{a.size}, {a.dtype}{', tiled' if a.tiled else ''}")
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
