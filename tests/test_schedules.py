"""Schedules, Euler step, noise and patch packing against diffusers' QwenImagePipeline / FlowMatchEulerDiscreteScheduler
(driven the way the pipeline drives them) and against ComfyUI's simple-scheduler formula."""
import json
import os
import types

import numpy as np
import pytest
import torch

from qwenimage.qwenimage_core.schedules import (
    ScheduleConfig, calculate_shift, comfy_sigma_table, euler_step, fixed_shift_sigmas, image_seq_len, initial_noise,
    official_sigmas, pack_latents, pipeline_model_timestep, shift_sigmas, sigmas_to_timesteps, unpack_latents,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402
from diffusers.pipelines.qwenimage.pipeline_qwenimage import (  # noqa: E402
    QwenImagePipeline, calculate_shift as ref_calculate_shift, retrieve_timesteps,
)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

# The released scheduler config (Qwen/Qwen-Image scheduler/scheduler_config.json), written out independently of ours.
OFFICIAL = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
                stochastic_sampling=False, invert_sigmas=False, use_karras_sigmas=False,
                use_exponential_sigmas=False, use_beta_sigmas=False)
STEPS = [1, 2, 4, 8, 20, 28, 50]
SIZES = [(256, 256), (512, 768), (1024, 1024), (1328, 1328), (1664, 928)]


def reference_schedule(num_steps, height, width):
    """Sigmas and timesteps exactly as QwenImagePipeline.__call__ computes them."""
    sched = FlowMatchEulerDiscreteScheduler(**OFFICIAL)
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    seq = (2 * (height // 16) // 2) * (2 * (width // 16) // 2)  # packed latent tokens, as latents.shape[1]
    c = sched.config
    mu = ref_calculate_shift(seq, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    with np.errstate(invalid="ignore"):  # num_steps = 1: the reference divides 0 by 0
        timesteps, _ = retrieve_timesteps(sched, num_steps, "cpu", sigmas=sigmas, mu=mu)
    return sched, sched.sigmas, timesteps, mu


@pytest.mark.parametrize("height,width", SIZES)
def test_official_sigmas_and_timesteps_match_pipeline(height, width):
    seq = image_seq_len(height, width)
    for n in STEPS:
        _, ref_sigmas, ref_t, ref_mu = reference_schedule(n, height, width)
        assert calculate_shift(seq) == ref_mu
        sig = official_sigmas(n, seq)
        assert sig.dtype == torch.float32 and sig.shape == (n + 1,) and sig[-1] == 0
        t = sigmas_to_timesteps(sig)
        if n == 1:
            # The reference stretch divides 0 by 0 for a single step; we keep the unstretched [1, 0].
            assert torch.isnan(ref_sigmas[0]) and torch.isnan(ref_t[0])
            assert sig.tolist() == [1.0, 0.0] and t.tolist() == [1000.0]
            continue
        assert torch.equal(sig, ref_sigmas), (n, height, width, (sig - ref_sigmas).abs().max())
        assert torch.equal(t, ref_t)
        assert sig[0] == 1.0 and abs(sig[-2].item() - 0.02) < 1e-7 and bool((sig[:-1].diff() < 0).all())


def test_shift_sigmas_other_config_paths():
    """Static shift, linear time shift and no terminal stretch, against the scheduler configured the same way."""
    base = np.linspace(1.0, 1 / 13, 13)
    for kw, mu in [(dict(use_dynamic_shifting=False, shift=3.1, shift_terminal=None), None),
                   (dict(time_shift_type="linear", shift_terminal=0.05), 1.7),
                   (dict(shift_terminal=None), 0.83)]:
        ref = FlowMatchEulerDiscreteScheduler(**{**OFFICIAL, **kw})
        ref.set_timesteps(sigmas=base, mu=mu)
        assert torch.equal(shift_sigmas(base, mu, ScheduleConfig(**kw)), ref.sigmas), kw
    with pytest.raises(ValueError, match="mu is required"):
        shift_sigmas(base, None)


def test_euler_step_matches_scheduler_step():
    g = torch.Generator().manual_seed(0)
    for x_dtype, v_dtype in [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                             (torch.float32, torch.bfloat16), (torch.float16, torch.float16)]:
        sched, sigmas, timesteps, _ = reference_schedule(6, 512, 512)
        sched.set_begin_index(0)  # as the pipeline does
        ours = sigmas.clone()
        x_ref = torch.randn(2, 256, 64, generator=g).to(x_dtype)
        x = x_ref.clone()
        for i, t in enumerate(timesteps):
            v = torch.randn(2, 256, 64, generator=g).to(v_dtype)
            x_ref = sched.step(v, t, x_ref, return_dict=False)[0]
            x = euler_step(x, v, ours[i], ours[i + 1])
            assert x.dtype == x_ref.dtype == v_dtype and torch.equal(x, x_ref), (x_dtype, v_dtype, i)
    # Python-float sigmas give the same result as schedule entries.
    v, x0 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    assert torch.equal(euler_step(x0, v, ours[1].item(), ours[2].item()), euler_step(x0, v, ours[1], ours[2]))
    with pytest.raises(ValueError, match="scalar sigmas"):
        euler_step(x0, v, torch.ones(4), torch.zeros(4))


def test_pipeline_model_timestep():
    sig = official_sigmas(4, image_seq_len(1024, 1024))
    t = sigmas_to_timesteps(sig)
    f32 = pipeline_model_timestep(t[1], 2, torch.float32)
    assert f32.shape == (2,) and (f32 - sig[1]).abs().max() < 1e-7
    bf = pipeline_model_timestep(t[1], 1, torch.bfloat16)  # 766.7 -> bf16 768 -> 0.768 -> bf16 0.76953125
    assert abs(t[1].item() - 766.7094) < 1e-3 and bf.item() == 0.76953125


def comfy_formula(steps, shift):
    """ComfyUI's simple scheduler written from its definition in float64: table entry k (1-based, t = k / 1000)
    is s t / (1 + (s - 1) t); step x takes entry 1000 - int(x * (1000 / steps))."""
    ks = [1000 - int(x * (1000 / steps)) for x in range(steps)]
    return [shift * (k / 1000) / (1 + (shift - 1) * (k / 1000)) for k in ks] + [0.0]


def test_fixed_shift_sigmas_match_formula():
    for shift in [3.1, 1.0, 1.15, 3.0, 7.5]:
        for steps in [1, 2, 4, 8, 20, 28, 38, 50, 1000]:
            sig = fixed_shift_sigmas(steps, shift)
            assert sig.dtype == torch.float32 and sig.shape == (steps + 1,) and sig[-1] == 0.0
            assert bool((sig.diff() < 0).all())
            assert np.allclose(sig.double().numpy(), comfy_formula(steps, shift), rtol=0, atol=2e-7), (shift, steps)
    assert fixed_shift_sigmas(20, 3.1)[0] == 1.0
    # Hand-computed picks for 4 steps at shift 3.1: t = 1, 0.75, 0.5, 0.25.
    expect = [1.0, 2.325 / 2.575, 1.55 / 2.05, 0.775 / 1.525, 0.0]
    assert np.allclose(fixed_shift_sigmas(4, 3.1).double().numpy(), expect, rtol=0, atol=1e-7)
    # ComfyUI's float index: for 38 steps, 19 * (1000 / 38) = 499.99999999999994, so step 19 takes t = 0.501.
    assert fixed_shift_sigmas(38, 1.0)[19].item() == pytest.approx(0.501, abs=1e-7)
    # The table ModelSamplingSD3 builds (multiplier 1000) holds the same values as AuraFlow's (multiplier 1).
    assert torch.equal(comfy_sigma_table(3.1, 1000), comfy_sigma_table(3.1, 1.0))
    assert torch.equal(fixed_shift_sigmas(28, 3.1, multiplier=1000), fixed_shift_sigmas(28, 3.1))
    with pytest.raises(ValueError, match="num_steps"):
        fixed_shift_sigmas(0)


def test_initial_noise_convention():
    n = initial_noise(1, 256, 384, 42)
    assert n.shape == (1, 16, 1, 32, 48) and n.dtype == torch.float32
    assert torch.equal(n, torch.randn((1, 16, 1, 32, 48), generator=torch.Generator("cpu").manual_seed(42)))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        ref = randn_tensor((1, 1, 16, 32, 48), generator=torch.Generator("cpu").manual_seed(42),
                           device=torch.device("cpu"), dtype=dtype)
        ours = initial_noise(1, 256, 384, 42, dtype=dtype)
        assert ours.dtype == dtype and torch.equal(ours.reshape(ref.shape), ref)
    # A single seed is one stream over the batch: item 0 is the batch-1 noise, later items continue the stream.
    b3 = initial_noise(3, 256, 384, 42)
    assert torch.equal(b3[:1], n) and not torch.equal(b3[1], b3[0])
    # A list draws each item alone: equal to diffusers' list of generators, and each item reproducible by itself.
    seeds = [5, 42, 7]
    listed = initial_noise(3, 256, 384, seeds)
    ref = randn_tensor((3, 1, 16, 32, 48), generator=[torch.Generator().manual_seed(s) for s in seeds],
                       device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(listed.reshape(ref.shape), ref) and torch.equal(listed[1:2], n)
    assert torch.equal(initial_noise(1, 256, 384, torch.Generator().manual_seed(42)), n)
    # The packed noise is what QwenImagePipeline.prepare_latents hands the transformer.
    fake = types.SimpleNamespace(vae_scale_factor=8, _pack_latents=QwenImagePipeline._pack_latents)
    for batch, gen in [(1, torch.Generator().manual_seed(42)), (3, [torch.Generator().manual_seed(s) for s in seeds])]:
        ref = QwenImagePipeline.prepare_latents(fake, batch, 16, 256, 384, torch.bfloat16, torch.device("cpu"), gen)
        ours = pack_latents(initial_noise(batch, 256, 384, 42 if batch == 1 else seeds, dtype=torch.bfloat16))
        assert torch.equal(ours, ref) and ref.shape[1] == image_seq_len(256, 384)


def test_pack_unpack_match_pipeline():
    g = torch.Generator().manual_seed(1)
    for b, h, w in [(1, 2, 2), (2, 16, 24), (1, 166, 116)]:
        lat = torch.randn(b, 16, 1, h, w, generator=g)
        tokens = pack_latents(lat)
        assert tokens.shape == (b, (h // 2) * (w // 2), 64)
        assert torch.equal(tokens, QwenImagePipeline._pack_latents(lat, b, 16, h, w))
        assert torch.equal(pack_latents(lat[:, :, 0]), tokens)
        back = unpack_latents(tokens, h, w)
        assert torch.equal(back, lat)
        assert torch.equal(back, QwenImagePipeline._unpack_latents(tokens, h * 8, w * 8, 8))
    # Feature order within a token: channel-major, then dy, then dx.
    lat = torch.arange(16 * 4, dtype=torch.float32).reshape(1, 16, 1, 2, 2)
    assert pack_latents(lat)[0, 0].tolist() == list(range(64))


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="height 1000 "):
        initial_noise(1, 1000, 1024, 0)
    with pytest.raises(ValueError, match="width 1030 "):
        initial_noise(1, 1024, 1030, 0)
    with pytest.raises(ValueError, match="height 8 "):
        image_seq_len(8, 16)
    with pytest.raises(ValueError, match="2 seeds given for a batch of 3"):
        initial_noise(3, 64, 64, [1, 2])
    with pytest.raises(ValueError, match="batch"):
        initial_noise(0, 64, 64, 1)
    with pytest.raises(TypeError, match="seed"):
        initial_noise(1, 64, 64, "1")
    with pytest.raises(ValueError, match="must be even"):
        pack_latents(torch.zeros(1, 16, 1, 3, 4))
    with pytest.raises(ValueError, match="one frame"):
        pack_latents(torch.zeros(1, 16, 2, 4, 4))
    with pytest.raises(ValueError, match="do not make"):
        unpack_latents(torch.zeros(1, 6, 64), 4, 4)
    with pytest.raises(ValueError, match="num_steps"):
        official_sigmas(0, 4096)


def test_schedule_config_loading(tmp_path, reference_dir):
    with open(os.path.join(reference_dir, "official_configs.json")) as f:
        official = json.load(f)["scheduler"]
    assert ScheduleConfig.from_dict(official) == ScheduleConfig()
    folder = tmp_path / "model" / "scheduler"
    folder.mkdir(parents=True)
    (folder / "scheduler_config.json").write_text(json.dumps({**official, "_diffusers_version": "0.35.0"}))
    for p in (tmp_path / "model", folder, folder / "scheduler_config.json"):
        assert ScheduleConfig.load(p) == ScheduleConfig()
    with pytest.raises(FileNotFoundError):
        ScheduleConfig.load(tmp_path)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        ScheduleConfig.from_dict({**official, "use_karras_sigmas": True})
    with pytest.raises(ValueError, match="unknown"):
        ScheduleConfig.from_dict({**official, "sigma_schedule": "x"})
    # Our to_dict configures the reference scheduler to the same schedule.
    ref = FlowMatchEulerDiscreteScheduler.from_config(ScheduleConfig().to_dict())
    ref.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28), mu=calculate_shift(4096))
    assert torch.equal(ref.sigmas, official_sigmas(28, 4096))
