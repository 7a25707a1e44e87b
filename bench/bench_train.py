"""LoRA training step time and peak memory per placement: musubi-tuner's table (bf16; fp8; fp8 + 16 blocks
swapped; fp8 + 45 swapped) for the full 20B model at 1024 px on a GPU, or a small preset on the CPU.

    python bench/bench_train.py                                                  # GPU: official model, 1024 px
    python bench/bench_train.py --preset small --size 256 --steps 2 --placements bf16,fp8,fp8+2,fp8+3   # CPU smoke

Each placement is built the way the trainer builds it: random weights stand in for the checkpoint (same shapes,
same cost; the model is built on the GPU, so the 20B model in bf16 needs a card that holds it), block linears
quantised to float8_e4m3fn for fp8 (as loading a bf16 file with the fp8 base does),
peft LoRA (rank 32 on every attention projection, fp32 adapters), gradient checkpointing, and the core BlockSwap
streaming the swapped blocks from pinned CPU memory through forward and backward. The batch is one cached sample
(latents and a 77-token prompt state), as training from complete caches sees it. Steps run the trainer's own
objective and an AdamW step; the first (warm-up) step is not timed. Printed per placement: the memory plan's
predicted peak (training/memory_plan.py; what torch.cuda.max_memory_allocated measures, without the plan's
overhead reserve), the measured peak (GPU only) and the median step time, with its ratio to the fp8 resident
step. The issue's goals: <= 24 GB with fp8 and no swap; 12 GB at <= 1.3x the resident step time."""
import argparse
import gc
import time

import torch

from _common import command, machine

from qwenimage.qwenimage_core import QwenImageTransformer, preset
from qwenimage.qwenimage_core.fp8 import quantize_linears
from qwenimage.qwenimage_core.offload import BlockSwap
from qwenimage.training.memory_plan import GiB, estimate, footprint
from qwenimage.training.objectives import FlowMatching

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def build(a, fp8: bool, swap: int, dev: str, dtype):
    """The model of one placement, initialised on the device block by block (fast; the fp8 placements never hold
    a bf16 copy of the whole model), then placed as the trainer places it (BlockSwap moves the swapped blocks
    to pinned CPU memory)."""
    from peft import LoraConfig, inject_adapter_in_model

    with torch.device("meta"):
        model = QwenImageTransformer(preset(a.preset))
    g = torch.Generator(dev).manual_seed(0)

    def init(module):
        module.to_empty(device=dev, recurse=True).to(dtype)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g, device=dev) * 0.02)

    for name, child in model.named_children():
        if name != "transformer_blocks":
            init(child)
    for block in model.transformer_blocks:
        init(block)
        if fp8:
            quantize_linears(block, [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)])
    model.requires_grad_(False).enable_gradient_checkpointing()
    model = inject_adapter_in_model(LoraConfig(r=a.rank, lora_alpha=a.rank, target_modules=TARGETS), model)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    if swap:
        BlockSwap(model, len(model.transformer_blocks) - swap, dev, train=True)
    return model.train(), params


def run(a, fp8: bool, swap: int, dev: str, dtype) -> dict:
    cuda = dev == "cuda"
    model, params = build(a, fp8, swap, dev, dtype)
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # the peak of training, not of building
    opt = torch.optim.AdamW(params, lr=1e-4)
    h = w = a.size // 8
    batch = {"latents": torch.randn(1, 16, 1, h, w, device=dev), "references": [],
             "embeds": torch.randn(1, a.text_tokens, model.config.joint_attention_dim, device=dev),
             "mask": torch.ones(1, a.text_tokens, dtype=torch.long, device=dev)}
    objective, times = FlowMatching(), []
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
    peak = torch.cuda.max_memory_allocated() if cuda else None
    del model, params, opt
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"time": sorted(times)[len(times) // 2], "peak": peak}


def size(n: int) -> str:
    return f"{n / GiB:.2f} GB" if n >= 0.1 * GiB else f"{n / 2 ** 20:.1f} MB"


def parse(placement: str, blocks: int) -> tuple[bool, int]:
    """'bf16' | 'fp8' | 'fp8+16' -> (fp8, blocks swapped)."""
    base, _, swap = placement.partition("+")
    if base not in ("bf16", "fp8"):
        raise SystemExit(f"--placements: {placement!r}: expected bf16, fp8 or <bf16|fp8>+<blocks swapped>")
    n = int(swap or 0)
    if n > blocks:
        raise SystemExit(f"--placements: {placement!r}: the model has {blocks} blocks")
    return base == "fp8", n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen-image")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--text-tokens", type=int, default=77)
    ap.add_argument("--placements", default="bf16,fp8,fp8+16,fp8+45")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    config = preset(a.preset)
    fp = footprint(config, TARGETS, a.rank, torch.bfloat16, (a.size // 16) ** 2 + a.text_tokens)
    print(f"# {command()}\n# {machine()}", flush=True)
    print(f"preset {a.preset} ({config.num_layers} blocks), {a.size}x{a.size}, LoRA rank {a.rank} "
          f"({fp.lora / 1e6:.3g}M trainable), gradient checkpointing on, {a.steps} timed steps")
    print("| placement | predicted peak | measured peak | step time | vs fp8 resident |\n|---|---|---|---|---|")
    base_time = None
    for name in a.placements.split(","):
        fp8, swap = parse(name, config.num_layers)
        r = run(a, fp8, swap, dev, dtype)
        predicted = sum(estimate(fp, fp8, swap, True).values())
        if fp8 and not swap:
            base_time = r["time"]
        ratio = f"{r['time'] / base_time:.2f}x" if base_time else "-"
        measured = size(r["peak"]) if r["peak"] is not None else "n/a (CPU)"
        print(f"| {name} | {size(predicted)} | {measured} | {r['time']:.3f} s | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
