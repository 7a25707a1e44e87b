"""fp8 checkpoints (plain, ComfyUI scaled, comfy_quant) and quantise-on-load: weights stay fp8 in memory.

The bound: e4m3 keeps 3 mantissa bits, so every de-quantised weight is within 2^-4 of the original, relative
(plus half the smallest subnormal step times the scale, absolute, near zero). All of the fp8 model's error must
come from that rounding: it must equal, to float32 rounding, a high-precision model holding the de-quantised
weights."""
import json

import pytest
import torch
from safetensors.torch import save_file
from _util import rel_err

from _tiny import random_tiny_transformer
from qwenimage.qwenimage_core import CheckpointError, QwenImageTransformer, load_transformer
from qwenimage.qwenimage_core.fp8 import FP8Linear, quantize

E4M3_REL = 2.0 ** -4
E4M3_SUBNORMAL_STEP = 2.0 ** -9


@pytest.fixture()
def model():
    return random_tiny_transformer()


# Single files carry no config; the tiny preset's MSRoPE split is not the one inferred for its head size, so
# these tests name the config.


def run(m):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return m(hidden_states=torch.randn(2, 16, 64, generator=g), encoder_hidden_states=torch.randn(2, 5, 24, generator=g),
                 encoder_hidden_states_mask=torch.tensor([[1] * 5, [1] * 3 + [0] * 2]),
                 timestep=torch.tensor([0.7, 0.2]), img_shapes=[(1, 4, 4)])


def dequantized_twin(model, loaded):
    """The original model with each fp8 layer's weight replaced by its de-quantised value, in float32."""
    twin = QwenImageTransformer(model.config).eval()
    twin.load_state_dict(model.state_dict())
    for name, m in loaded.named_modules():
        if isinstance(m, FP8Linear):
            twin.get_submodule(name).weight.data = m.dequantized_weight(torch.float32)
    return twin


def block_linears(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("transformer_blocks.")]


def scaled_state(model, style):
    """A ComfyUI-style fp8 file: block linear weights quantised with per-tensor scales."""
    state = dict(model.state_dict())
    for n in block_linears(model):
        q, s = quantize(state[n + ".weight"])
        state[n + ".weight"] = q
        if style == "scale_weight":
            state[n + ".scale_weight"] = s.reshape(1)
        else:
            state[n + ".weight_scale"] = s
            state[n + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    if style == "scale_weight":
        state["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return state


@pytest.mark.parametrize("style", ["scale_weight", "comfy_quant"])
def test_scaled_fp8_files_stay_fp8_and_match_their_dequantised_weights(tmp_path, model, style):
    save_file(scaled_state(model, style), tmp_path / "fp8.safetensors")
    loaded = load_transformer(str(tmp_path / "fp8.safetensors"), dtype=torch.float32, config=model.config)
    fp8_layers = [n for n, m in loaded.named_modules() if isinstance(m, FP8Linear)]
    assert sorted(fp8_layers) == sorted(block_linears(model))
    assert all(loaded.get_submodule(n).weight.dtype == torch.float8_e4m3fn for n in fp8_layers)
    assert loaded.img_in.weight.dtype == torch.float32  # what the file kept in high precision stays so
    assert rel_err(run(loaded), run(dequantized_twin(model, loaded))) < 1e-5
    assert 1e-4 < rel_err(run(loaded), run(model)) < 0.15  # rounding shows, but stays small


def test_quantise_on_load_within_the_e4m3_bound(tmp_path, model):
    save_file(model.state_dict(), tmp_path / "bf.safetensors")
    loaded = load_transformer(str(tmp_path / "bf.safetensors"), dtype=torch.float32,
                              weight_dtype=torch.float8_e4m3fn, config=model.config)
    for n in block_linears(model):
        layer = loaded.get_submodule(n)
        assert isinstance(layer, FP8Linear) and layer.weight.dtype == torch.float8_e4m3fn
        w, dq = model.get_submodule(n).weight, layer.dequantized_weight(torch.float32)
        bound = E4M3_REL * w.abs() + E4M3_SUBNORMAL_STEP / 2 * layer.weight_scale
        assert ((dq - w).abs() <= bound + 1e-12).all(), n
    assert rel_err(run(loaded), run(dequantized_twin(model, loaded))) < 1e-5
    fp8_bytes = sum(p.numel() * p.element_size() for p in loaded.parameters())
    assert fp8_bytes < 0.5 * sum(p.numel() * 4 for p in model.parameters())


def test_plain_fp8_file_and_bf16_compute(tmp_path, model):
    state = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v) for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "plain.safetensors")
    loaded = load_transformer(str(tmp_path / "plain.safetensors"), config=model.config)  # computes in bf16
    assert loaded.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert loaded.transformer_blocks[0].attn.to_q.compute_dtype == torch.bfloat16
    assert loaded.txt_norm.weight.dtype == torch.bfloat16
    # fp8 -> bf16 is exact, so the bf16 model holding the same (de-quantised) weights must give the same output.
    twin = QwenImageTransformer(model.config).eval()
    twin.load_state_dict({k: v.float() for k, v in state.items()})
    assert rel_err(run(loaded), run(twin.to(torch.bfloat16))) == 0


def test_unsupported_quant_format_is_named(tmp_path, model):
    state = scaled_state(model, "comfy_quant")
    state["transformer_blocks.0.attn.to_q.comfy_quant"] = torch.tensor(list(b'{"format": "int8_blockwise"}'), dtype=torch.uint8)
    save_file(state, tmp_path / "q.safetensors")
    with pytest.raises(CheckpointError, match=r"transformer_blocks\.0\.attn\.to_q\.comfy_quant.*int8_blockwise"):
        load_transformer(str(tmp_path / "q.safetensors"))


def test_fp8_linear_is_a_linear():
    # Run-time LoRA and anything else that wraps nn.Linear layers must see fp8 layers too.
    assert issubclass(FP8Linear, torch.nn.Linear)
