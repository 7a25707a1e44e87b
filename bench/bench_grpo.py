"""One GRPO iteration of the trainer, split into sampling (the rollouts through the core sampler, VAE decode
included), reward and training time, with peak memory.

    python bench/bench_grpo.py                     # CPU smoke: the shipped demo model, 64 px, 1 group of 8, 10 steps
    python bench/bench_grpo.py --model models/diffusion_models/qwen_image_bf16.safetensors \\
        --text-encoder models/text_encoders/qwen_2.5_vl_7b.safetensors --vae models/vae/qwen_image_vae.safetensors \\
        --size 512 --group 16 --groups 1 --steps 10 --batch 4 --dtype bfloat16 --rank 64     # Flow-GRPO's Qwen-Image
                                                                                              # setting, on one GPU

It runs the real trainer (`train.mode = "grpo"`, LoRA, true CFG 4 in sampling and training, all steps but the
last trained) for exactly one iteration: `--groups` prompts x `--group` samples, rolled out in batches of
`--batch`, then one optimiser step accumulated over every minibatch and trained timestep. Reward: JPEG
incompressibility (no model). Times are wall-clock; the text encoder's one-off encoding of the prompts is not
part of the iteration. Peak memory: torch.cuda.max_memory_allocated on a GPU, the process's peak RSS on the CPU."""
import argparse
import os
import resource
import tempfile
import time

import torch

from _common import add_demo_model_args, command, machine

from qwenimage.training.config import load_config
from qwenimage.training.objectives import rollout as rollout_module
from qwenimage.training.trainer import Trainer

PROMPTS = ["a red circle on a blue background", "a green square on a white background",
           "a yellow triangle on a black background", "a purple circle on a gray background"]


class Clock:
    def __init__(self):
        self.seconds = 0.0

    def wrap(self, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.seconds += time.perf_counter() - t
        return timed


class TimedRewards:
    """The objective's rewards, timed."""

    def __init__(self, inner, clock: Clock):
        self.inner, self.call = inner, clock.wrap(inner.__call__)

    def __call__(self, *a, **k):
        return self.call(*a, **k)

    @property
    def details(self):
        return self.inner.details


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_demo_model_args(p)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    work = tempfile.mkdtemp(prefix="bench_grpo_")
    prompts = os.path.join(work, "prompts.txt")
    with open(prompts, "w", encoding="utf-8") as fh:
        fh.write("\n".join(PROMPTS * (1 + a.groups // len(PROMPTS))))
    minibatches = a.groups * a.group // a.batch
    gpu = torch.cuda.is_available()
    cfg = load_config({
        "model": {"path": a.model, "text_encoder": a.text_encoder, "vae": a.vae, "dtype": a.dtype,
                  "gradient_checkpointing": gpu},
        "data": {"path": prompts, "batch_size": a.batch},
        "train": {"mode": "grpo", "weights": "lora", "steps": 1, "grad_accum": minibatches,
                  "mixed_precision": "bf16" if gpu and a.dtype == "bfloat16" else "no"},
        "lora": {"rank": a.rank, "alpha": 2 * a.rank},
        "rl": {"rewards": ["jpeg_incompressibility"], "group_size": a.group, "groups": a.groups, "steps": a.steps,
               "width": a.size, "height": a.size, "cfg": 4.0},
        "output": {"dir": os.path.join(work, "out"), "save_every": 1000, "formats": ["comfyui"]},
        "logging": {"tensorboard": False, "progress": False},
    })
    trainer = Trainer(cfg)
    obj = trainer.objective
    sampling, reward, decode, step = Clock(), Clock(), Clock(), Clock()
    obj.rewards = TimedRewards(obj.rewards, reward)
    obj.rollout = sampling.wrap(obj.rollout)
    rollout_module.QwenImage.decode = decode.wrap(rollout_module.QwenImage.decode)
    trainer.train_step = step.wrap(trainer.train_step)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    samples = a.groups * a.group
    train_s = step.seconds - sampling.seconds
    sample_s = sampling.seconds - reward.seconds
    peak = (f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB (GPU)" if gpu else
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} GiB (peak RSS)")
    print(f"command: {command()}")
    print(f"machine: {machine()}")
    print(f"one iteration: {a.groups} x {a.group} samples at {a.size} px, {a.steps} sampling steps with CFG, "
          f"{obj.timesteps} trained timesteps x {minibatches} minibatches of {a.batch}")
    print(f"sampling {sample_s:.2f} s (VAE decode {decode.seconds:.2f} s of it), reward {reward.seconds:.2f} s, "
          f"training {train_s:.2f} s; total {step.seconds:.2f} s ({step.seconds / samples:.3f} s per sample); "
          f"peak memory {peak}")


if __name__ == "__main__":
    main()
