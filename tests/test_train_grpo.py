"""Online RL on tiny models: the SDE step and its log-probability, group advantages, GRPO (on-policy ratio exactly
1, KL to the adapters-off reference, SDE window, true CFG) learning a brightness reward on held-out prompts,
exact resume, two processes with groups split across ranks, a failing reward that stops the run with the last
checkpoint intact, an empty prompt file, and DiffusionNFT on the same rollouts."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from _models import tiny_components

from qwenimage.qwenimage_core.sde import gaussian_log_prob, sde_step, step_kl, step_mean, step_std
from qwenimage.training import checkpointing
from qwenimage.training.config import load_config
from qwenimage.training.data.prompts import PromptFileError, load_prompts
from qwenimage.training.objectives.rollout import group_advantages
from qwenimage.training.rewards.base import RewardError, register
from qwenimage.training.trainer import Trainer

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "gray")
HELD_OUT = ["a white circle on a black background", "a gray triangle on a blue background"]
CALLS = {"n": 0, "fail_at": None}


def brightness(images, prompts, metadata):
    """Mean pixel value in [0, 1]: a reward a tiny model can learn (also reached as test_train_grpo:brightness)."""
    return [float(np.asarray(im, dtype=np.float32).mean() / 255) for im in images]


register("test_brightness")(lambda: brightness)


@register("test_flaky")
def _flaky():
    def fn(images, prompts, metadata):
        CALLS["n"] += 1
        if CALLS["fail_at"] is not None and CALLS["n"] >= CALLS["fail_at"]:
            raise ConnectionError("reward server went away")
        return [0.5 + 0.01 * i for i in range(len(images))]
    return fn


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's matrices are far too small for two threads to pay (on busy cores they cost 10x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    from qwenimage.qwenimage_core import save_comfyui_transformer
    from qwenimage.qwenimage_core.text_encoder import save_text_encoder_file
    from qwenimage.qwenimage_core.vae import diffusers_to_comfy
    from qwenimage.qwenimage_core.weights import save_file_atomic

    root = tmp_path_factory.mktemp("grpo")
    transformer, vae, te = tiny_components(len(tokenizer))  # the three files only (the tokenizer ships)
    paths = {"diffusion_model": str(root / "model.safetensors"), "text_encoder": str(root / "te.safetensors"),
             "vae": str(root / "vae.safetensors")}
    save_comfyui_transformer(transformer, paths["diffusion_model"], prefix="model.diffusion_model.")
    save_text_encoder_file(te, paths["text_encoder"])
    save_file_atomic({diffusers_to_comfy(k): v.contiguous() for k, v in vae.state_dict().items()}, paths["vae"])
    train = root / "prompts.txt"
    train.write_text("\n".join(f"a {c} square on a {d} background" for c in COLOURS[:4] for d in COLOURS[4:6]))
    return {"root": root, "models": paths, "prompts": str(train)}


def config(world, out, **sections):
    base = {
        "model": {"path": world["models"]["diffusion_model"], "vae": world["models"]["vae"],
                  "text_encoder": world["models"]["text_encoder"]},
        "data": {"path": world["prompts"], "batch_size": 2},
        "train": {"mode": "grpo", "weights": "full", "steps": 2, "grad_accum": 2},
        "rl": {"rewards": ["test_brightness"], "group_size": 4, "groups": 1, "steps": 4, "width": 32, "height": 32,
               "cfg": 1.0, "clip_range": 0.2, "noise_level": 0.7},
        "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
        "output": {"dir": str(out), "save_every": 1000, "formats": ["comfyui"]},
        "logging": {"tensorboard": False, "progress": False},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values} if isinstance(values, dict) else values
    return load_config(base)


# ----------------------------------------------------------------------------------------------- the math

def test_sde_step_log_prob_is_the_gaussian_of_the_step():
    g = torch.Generator().manual_seed(0)
    x, v, eps = (torch.randn(3, 4, 64, generator=g) for _ in range(3))
    for kind in ("sde", "cps"):
        st = sde_step(x, v, 0.8, 0.6, noise_level=0.7, kind=kind, noise=eps)
        std = step_std(0.8, 0.6, 0.7, kind)
        direct = torch.distributions.Normal(st.mean.double(), float(std)).log_prob(st.prev.double())
        assert torch.allclose(st.log_prob.double(), direct.flatten(1).mean(1), atol=1e-5)
        assert st.prev.dtype == torch.float32 and torch.allclose(st.prev, st.mean + std * eps)
        # noise level 0 is the Euler step; the same step scored again gives the same log-probability
        assert torch.allclose(sde_step(x, v, 0.8, 0.6, noise_level=0.0, kind=kind).prev, x + (0.6 - 0.8) * v,
                              atol=1e-6)
        again = sde_step(x, v, 0.8, 0.6, noise_level=0.7, kind=kind, prev=st.prev)
        assert torch.equal(again.log_prob, st.log_prob)
    # Flow-GRPO's SDE mean and std, written out
    s, s1, a = 0.8, 0.6, 0.7
    std_t = math.sqrt(s / (1 - s)) * a
    mean = x * (1 + std_t ** 2 / (2 * s) * (s1 - s)) + v * (1 + std_t ** 2 * (1 - s) / (2 * s)) * (s1 - s)
    assert torch.allclose(step_mean(x, v, s, s1, step_std(s, s1, a), "sde"), mean, atol=1e-6)
    assert math.isclose(float(step_std(s, s1, a)), std_t * math.sqrt(s - s1), rel_tol=1e-6)
    # the closed-form KL between two Gaussians of one std
    m2 = mean + 0.1
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, 0.3), torch.distributions.Normal(m2, 0.3))
    assert torch.allclose(step_kl(mean, m2, 0.3), kl.flatten(1).mean(1), atol=1e-6)
    assert torch.allclose(gaussian_log_prob(mean, mean, 1.0), torch.full((3,), -0.5 * math.log(2 * math.pi)))


def test_group_advantages():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0])
    a = group_advantages(r, 4, global_std=False, clip=5.0)
    assert torch.allclose(a[:4], (r[:4] - 2.5) / (r[:4].std(unbiased=False) + 1e-4))
    assert torch.equal(a[4:], torch.zeros(4))  # a group of equal rewards teaches nothing
    g = group_advantages(r, 4, global_std=True, clip=0.2)
    assert torch.allclose(g[:4], ((r[:4] - 2.5) / (r.std(unbiased=False) + 1e-4)).clamp(-0.2, 0.2))
    assert g.abs().max().item() == pytest.approx(0.2)


def test_prompt_files(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a sign that reads \\"qwen\\"", "text": "qwen"}\n\n')
    assert load_prompts(tmp_path / "p.jsonl") == [{"prompt": 'a sign that reads "qwen"', "text": "qwen"}]
    (tmp_path / "empty.txt").write_text("# nothing here\n\n")
    with pytest.raises(PromptFileError, match="empty.txt: no prompts"):
        load_prompts(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"caption": "x"}\n')
    with pytest.raises(PromptFileError, match=r"bad.jsonl:2: needs a non-empty string field \"prompt\""):
        load_prompts(tmp_path / "bad.jsonl")


# ---------------------------------------------------------------------------------------------- the loop

def test_on_policy_ratio_is_one_and_log_probs_are_recorded(world, tmp_path):
    """One optimiser step per iteration, one inner epoch: every micro-batch sees the policy that sampled it."""
    cfg = config(world, tmp_path / "out", data={"batch_size": 1},
                 train={"mode": "grpo", "weights": "lora", "steps": 2, "grad_accum": 4},
                 lora={"rank": 2, "alpha": 2.0}, rl={"cfg": 2.5, "beta": 0.01})
    t = Trainer(cfg)
    seen = []
    loss = t.objective.loss

    def spy(model, batch, gens):
        out, logs = loss(model, batch, gens)
        seen.append((t.step, logs["ratio_dev"], logs["kl"]))
        return out, logs

    t.objective.loss = spy
    t.run()
    assert len(seen) == 2 * 4 * 3  # 2 steps x 4 samples x 3 trained timesteps (all but the last of 4)
    assert all(dev == 0.0 for _, dev, _ in seen), seen
    assert all(kl == 0.0 for step, _, kl in seen if step == 0)  # adapters start at zero: policy = reference
    assert any(kl > 0 for step, _, kl in seen if step == 1)


def test_grpo_raises_the_held_out_reward(world, tmp_path):
    """Brightness on two prompts it never trains on, before and after 12 iterations of 4 groups of 8."""
    cfg = config(world, tmp_path / "out", data={"batch_size": 16},
                 train={"steps": 12, "grad_accum": 2}, optimizer={"lr": 1e-2, "weight_decay": 0.0},
                 rl={"groups": 4, "group_size": 8, "global_std": False},
                 validation={"prompts": HELD_OUT, "seeds": [0, 1], "width": 32, "height": 32, "steps": 8, "cfg": 1.0},
                 logging={"tensorboard": True, "every": 1, "progress": False})
    t = Trainer(cfg)
    t.run()
    before, after = t.metrics["reward"]["0"], t.metrics["reward"]["12"]
    assert after > before + 0.012, (before, after)
    assert sorted(os.listdir(tmp_path / "out" / "validation" / "step-00000012")) == \
        ["00-seed0.png", "00-seed1.png", "01-seed0.png", "01-seed1.png"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "out") for f in fs if "tfevents" in f]
    acc = EventAccumulator(events[0])
    acc.Reload()
    assert "validation/reward" in acc.Tags()["scalars"] and "reward" in acc.Tags()["scalars"]
    assert any(tag.startswith("validation/00") for tag in acc.Tags()["images"])


def test_resume_is_exact_mid_iteration(world, tmp_path):
    """Two optimiser steps per iteration, an SDE window, KL to a frozen full copy: stopped after step 3 (in the
    middle of the second iteration) and resumed, it ends where the uninterrupted run ends."""
    kw = dict(train={"steps": 4, "grad_accum": 1}, rl={"sde_window": 2, "sde_window_range": [0, 3], "beta": 0.05},
              output={"save_every": 3, "formats": ["comfyui"]})
    straight = Trainer(config(world, tmp_path / "a", **kw))
    straight.run()
    first = Trainer(config(world, tmp_path / "b", **kw))
    first.run(stop_after=3)
    resumed = Trainer(config(world, tmp_path / "b", **kw))
    resumed.run(resume="auto")
    a, b = straight.unwrapped.state_dict(), resumed.unwrapped.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.losses == resumed.losses
    assert straight.objective.stats == resumed.objective.stats
    assert torch.equal(straight.objective.buffer["advantage"], resumed.objective.buffer["advantage"])
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_a_failing_reward_stops_the_run_and_keeps_the_checkpoint(world, tmp_path):
    CALLS.update(n=0, fail_at=2)  # the second iteration's rollout
    cfg = config(world, tmp_path / "out", train={"steps": 4, "grad_accum": 1}, rl={"rewards": ["test_flaky"]},
                 output={"save_every": 1, "formats": ["comfyui"]})
    t = Trainer(cfg)
    with pytest.raises(RewardError, match="scorer 'test_flaky' failed: ConnectionError: reward server went away"):
        t.run()
    saved = checkpointing.list_checkpoints(t.ckpt_dir)
    assert [os.path.basename(p) for p in saved] == ["step-00000001", "step-00000002"]
    assert not [n for n in os.listdir(t.ckpt_dir) if n.endswith(".tmp")]
    assert checkpointing.load_checkpoint(saved[-1])["state"]["step"] == 2
    CALLS.update(fail_at=None)


def test_an_empty_prompt_file_is_named(world, tmp_path):
    empty = tmp_path / "none.txt"
    empty.write_text("\n")
    with pytest.raises(PromptFileError, match="none.txt: no prompts"):
        Trainer(config(world, tmp_path / "out", data={"path": str(empty)})).run()


def test_two_processes_split_the_groups_and_match_one(world, tmp_path):
    """3 groups of 2 on 2 processes (3 samples each: the middle group straddles them), true CFG in sampling and
    training: the same weights as one process with the same iteration."""
    def cfg_json(name, accum):
        c = config(world, tmp_path / name, data={"batch_size": 1}, train={"steps": 2, "grad_accum": accum},
                   rl={"rewards": ["test_train_grpo:brightness"], "groups": 3, "group_size": 2, "cfg": 2.0}).to_dict()
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(c))
        return str(path)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(__file__)}
    script = os.path.join(os.path.dirname(__file__), "_train_dist.py")
    one = subprocess.run([sys.executable, script, cfg_json("one", 6), str(tmp_path / "one.safetensors")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script,
                          cfg_json("two", 3), str(tmp_path / "two.safetensors")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "processes=2" in two.stdout
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    base = load_file(world["models"]["diffusion_model"])
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst  # the gradients are summed in another order (gloo's all-reduce), nothing more
    moved = max((a[k] - base["model.diffusion_model." + k].float()).abs().max().item() for k in a)
    assert moved > 1e-3  # and training did move them


def test_nft_on_the_same_rollouts(world, tmp_path):
    """DiffusionNFT: ODE rollouts (no log-probabilities), the LoRA it trains loads in load_pipeline."""
    cfg = config(world, tmp_path / "out", data={"batch_size": 4}, lora={"rank": 2, "alpha": 2.0},
                 train={"mode": "nft", "weights": "lora", "steps": 2, "grad_accum": 1},
                 rl={"noise_level": 0.0, "nft_timesteps": 2, "nft_kl": 0.1})
    t = Trainer(cfg)
    result = t.run()
    assert all(math.isfinite(x) and x > 0 for x in result["losses"])
    assert t.logs["kl"] > 0 and {"nft_positive", "nft_negative", "reward"} <= set(t.logs)
    from qwenimage.qwenimage_core import load_pipeline

    pipe = load_pipeline([world["models"]["diffusion_model"], world["models"]["text_encoder"], world["models"]["vae"]],
                         device="cpu")
    plain = pipe.generate("a red square", width=32, height=32, steps=4, cfg=1.0, seed=1, output_type="latent")
    report = pipe.load_lora(result["outputs"]["lora"])
    assert report.landed and not report.not_landed
    tuned = pipe.generate("a red square", width=32, height=32, steps=4, cfg=1.0, seed=1, output_type="latent")
    assert (tuned - plain).abs().max() > 0


def test_example_configs_parse():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("grpo", "grpo_ocr"):
        cfg = load_config(os.path.join(root, "training", "examples", f"{name}.toml"))
        assert cfg.train.mode == "grpo" and cfg.rl.steps < cfg.validation.steps


def test_progressive_window_slides_from_early_to_late_steps(world, tmp_path):
    """MixGRPO's window: starts at the range's first step and moves on by the stride every N iterations, stopping
    where it still fits; the random one (Flow-GRPO-Fast) stays within the range. Both depend only on the iteration,
    so a resumed run picks the same windows."""
    from types import SimpleNamespace

    from qwenimage.training.config import ConfigError
    from qwenimage.training.objectives.rollout import OnlineObjective

    rl = {"steps": 8, "sde_window": 2, "sde_window_range": [1, 7], "sde_window_every": 3, "sde_window_stride": 2}
    cfg = config(world, tmp_path, rl={**rl, "sde_window_schedule": "progressive"})
    windows = [OnlineObjective.window(SimpleNamespace(rl=cfg.rl, cfg=cfg), k) for k in range(12)]
    assert [w[0] for w in windows] == [[1, 2]] * 3 + [[3, 4]] * 3 + [[5, 6]] * 6
    assert all(stochastic == trained for stochastic, trained in windows)
    cfg = config(world, tmp_path, rl=rl)
    starts = {OnlineObjective.window(SimpleNamespace(rl=cfg.rl, cfg=cfg), k)[0][0] for k in range(40)}
    assert starts == {1, 2, 3, 4, 5}
    with pytest.raises(ConfigError, match="rl.sde_window_schedule"):
        config(world, tmp_path, rl={**rl, "sde_window_schedule": "sliding"})
