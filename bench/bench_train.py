"""LoRA training step time and peak memory: the full 20B model at 1024 px on a GPU, or a small preset on the CPU.

    python bench/bench_train.py                                  # GPU: official model, bf16, 1024x1024, rank 32
    python bench/bench_train.py --preset tiny --size 256 --steps 5   # CPU smoke run

Random weights stand in for the checkpoint (same shapes, same cost); the batch is one cached sample (latents and a
77-token prompt state), as training from complete caches sees it. Steps run the trainer's own objective and
optimiser step; the first (warm-up) step is not timed."""
import argparse
import time

import torch

from _common import command, machine

from qwenimage.qwenimage_core import QwenImageTransformer, preset
from qwenimage.training.objectives import FlowMatching


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen-image")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--text-tokens", type=int, default=77)
    ap.add_argument("--no-checkpointing", action="store_true")
    a = ap.parse_args()
    from peft import LoraConfig, inject_adapter_in_model

    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    with torch.device("meta"):
        model = QwenImageTransformer(preset(a.preset))
    model = model.to_empty(device=dev).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    if not a.no_checkpointing:
        model.enable_gradient_checkpointing()
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    model = inject_adapter_in_model(LoraConfig(r=a.rank, lora_alpha=a.rank, target_modules=targets), model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    for p in params:
        p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4)
    h = w = a.size // 8
    batch = {"latents": torch.randn(1, 16, 1, h, w, device=dev), "references": [],
             "embeds": torch.randn(1, a.text_tokens, model.config.joint_attention_dim, device=dev),
             "mask": torch.ones(1, a.text_tokens, dtype=torch.long, device=dev)}
    objective = FlowMatching()
    times = []
    for i in range(a.steps + 1):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev, dtype=dtype, enabled=cuda):
            loss = objective.loss(model, batch, [torch.Generator().manual_seed(i)])[0].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
        if i == 0 and cuda:
            torch.cuda.reset_peak_memory_stats()
    peak = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if cuda else "n/a (CPU)"
    n_lora = sum(p.numel() for p in params)
    print(f"# {command()}\n# {machine()}")
    print(f"preset {a.preset}, {a.size}x{a.size}, LoRA rank {a.rank} ({n_lora / 1e6:.2f}M trainable), "
          f"gradient checkpointing {'off' if a.no_checkpointing else 'on'}")
    print(f"step time: median {sorted(times)[len(times) // 2]:.3f} s over {len(times)} steps; peak memory {peak}")


if __name__ == "__main__":
    main()
