"""Low-VRAM execution: block swapping gives the resident result exactly, holds at most two streamed blocks at
a time, and the VRAM budget turns into a placement as the arithmetic says. (On this CPU the "device" copies are
plain copies; the CUDA-stream overlap itself runs on GPUs, see bench/bench_memory.py.)"""
import pytest
import torch

from qwenimage.qwenimage_core import QwenImageTransformer, preset
from qwenimage.qwenimage_core.offload import GiB, BlockSwap, VramPlan, module_bytes, plan_for_budget


def _inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(2, 24, 64, generator=g),
                encoder_hidden_states=torch.randn(2, 7, cfg.joint_attention_dim, generator=g),
                encoder_hidden_states_mask=torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
                timestep=torch.tensor([0.7, 0.3]), img_shapes=[(1, 4, 6)])


@pytest.mark.parametrize("resident", [0, 2, 5])
def test_block_swap_is_identical_and_holds_two_blocks_at_most(resident):
    torch.manual_seed(0)
    model = QwenImageTransformer(preset("tiny", num_layers=6)).eval()
    kw = _inputs(model.config)
    with torch.no_grad():
        want = model(**kw)
        swap = BlockSwap(model, resident, "cpu")
        got = [model(**kw) for _ in range(2)]  # twice: the wrap-around prefetch feeds the next pass
    for g in got:
        assert torch.equal(g, want)
    assert swap.max_loaded <= 2
    assert len(swap.cpu) == 6 - resident
    for i, held in swap.cpu.items():  # between passes, streamed blocks hold their CPU tensors
        if i not in swap.loaded:
            assert all(getattr(m, kind)[name] is cpu for m, kind, name, cpu in held)
    swap.remove()
    with torch.no_grad():
        assert torch.equal(model(**kw), want)


def test_block_swap_rejects_a_bad_count():
    model = QwenImageTransformer(preset("tiny"))
    with pytest.raises(ValueError, match="resident blocks 3 must be in 0..2"):
        BlockSwap(model, 3, "cpu")


@pytest.fixture(scope="module")
def full_bf16():
    with torch.device("meta"):
        return QwenImageTransformer(preset("qwen-image")).to(torch.bfloat16)


def test_budget_plans_for_the_full_model(full_bf16):
    total = module_bytes(full_bf16)
    assert 40.5 * GiB > total > 37 * GiB  # 20.4B parameters in bf16
    te = 15 * GiB  # Qwen2.5-VL-7B in bf16
    assert plan_for_budget(full_bf16, te, 80).resident_blocks is None
    block = module_bytes(full_bf16.transformer_blocks[0])
    rest = total - 60 * block
    last = 61
    for budget in (40, 24, 16, 12):
        plan = plan_for_budget(full_bf16, te, budget)
        n = plan.resident_blocks
        assert n is not None and n < last
        # what stays plus two streamed blocks plus the activation reserve fits, one more block would not
        assert rest + (n + 2) * block + 2.5 * GiB <= budget * GiB < rest + (n + 3) * block + 2.5 * GiB
        assert plan.text_encoder_streamed == (budget < 16)
        last = n


def test_budget_too_small_is_a_clear_error(full_bf16):
    with pytest.raises(ValueError, match="VRAM budget of 3 GB cannot hold"):
        plan_for_budget(full_bf16, 0, 3)


def test_vram_plan_is_reported():
    assert "blocks resident" in VramPlan(3, True, False, "3 of 60 blocks resident").detail


def test_fp8_with_block_swap_within_the_fp8_rounding_bound(tmp_path):
    """fp8 + block swap against the float resident model. e4m3 keeps 3 mantissa bits, so each weight moves by at
    most 2^-4 of itself (6.25%); summed over a dot product the errors mostly cancel, and the velocity moves by
    a few percent. Block swap adds nothing: the swapped fp8 run equals the resident fp8 run."""
    from safetensors.torch import save_file

    from qwenimage.qwenimage_core import load_transformer

    torch.manual_seed(0)
    model = QwenImageTransformer(preset("tiny", num_layers=4)).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    fp8 = load_transformer(str(tmp_path / "m.safetensors"), dtype=torch.float32, weight_dtype=torch.float8_e4m3fn)
    kw = _inputs(model.config)
    with torch.no_grad():
        want, resident = model(**kw), fp8(**kw)
        BlockSwap(fp8, 1, "cpu")
        swapped = fp8(**kw)
    assert torch.allclose(swapped, resident, rtol=1e-6, atol=1e-6 * resident.abs().max().item())
    err = ((swapped - want).abs().max() / want.abs().max()).item()
    assert 0 < err < 0.0625
