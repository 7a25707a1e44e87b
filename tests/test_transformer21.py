"""The Qwen-Image 2.1 DiT against the reference (diffusers.QwenImage21Transformer2DModel, 0.42.1): structure, and
float32 parity on a tiny random config for text-to-image, references (also adjacent), a right-padded batch with
per-sample timesteps, and the prefix KV cache."""
import os

import pytest
import torch
from _util import rel_err
from safetensors import safe_open

from qwenimage.cli import main
from qwenimage.qwenimage_core import QwenImageTransformer, load_transformer, preset, save_comfyui_transformer
from qwenimage.qwenimage_core.checkpoint21 import FAMILY_20B, FAMILY_21, transformer_family
from qwenimage.qwenimage_core.fp8 import FP8Linear, quantize
from qwenimage.qwenimage_core.positions21 import build_layout
from qwenimage.qwenimage_core.transformer21 import PRESETS21, QwenImage21Transformer, Transformer21Config
from qwenimage.qwenimage_core.weights import save_file_atomic

diffusers = pytest.importorskip("diffusers")
TOL = 1e-5
CFG = PRESETS21["tiny"]


@pytest.fixture(scope="module")
def pair():
    """The reference with non-trivial random weights, and ours holding the same."""
    torch.manual_seed(0)
    ref = diffusers.QwenImage21Transformer2DModel(**{k: v for k, v in CFG.to_dict().items() if k != "_class_name"})
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours = QwenImage21Transformer(CFG)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def inputs(batch, slots, target, refs=(), pad=(), seed=1):
    """Random inputs: `slots` the prompt's VLM slots (True = a reference's image slot), (h, w) of the target and
    of each reference in latent tokens, `pad[i]` right-padding tokens of sample i."""
    g = torch.Generator().manual_seed(seed)
    n = sum(h * w for h, w in refs) + target[0] * target[1]
    mask = torch.ones(batch, len(slots), dtype=torch.bool)
    for i, p in enumerate(pad):
        mask[i, len(slots) - p:] = False
    return dict(hidden_states=torch.randn(batch, n, CFG.in_channels, generator=g),
                encoder_hidden_states=torch.randn(batch, len(slots), CFG.context_in_dim, generator=g),
                encoder_hidden_states_mask=mask if pad else None,
                img_shapes=[[*[(1, h, w) for h, w in refs], (1, *target)]] * batch,
                img_mask=torch.tensor(slots + [True] * (target[0] * target[1] // 4)).expand(batch, -1))


TEXT = [False] * 7
TWO_REFS = [False] * 3 + [True] * 4 + [False] * 2 + [True] * 6 + [False] * 3
ADJACENT = [False] * 3 + [True] * 4 + [True] * 6 + [False] * 3
CASES = {
    "text_to_image": (inputs(1, TEXT, (4, 6)), [0.7]),
    "two_references": (inputs(1, TWO_REFS, (4, 4), refs=[(4, 4), (4, 6)]), [0.4]),
    "adjacent_references": (inputs(1, ADJACENT, (4, 4), refs=[(4, 4), (4, 6)]), [0.4]),
    "padded_batch_per_sample_t": (inputs(2, [False] * 9, (4, 6), pad=[0, 3]), [0.3, 0.8]),
    "reference_padded_batch": (inputs(2, [False] * 3 + [True] * 4 + [False] * 5, (4, 4), refs=[(4, 4)], pad=[0, 2]),
                               [0.3, 0.8]),
}


def test_official_config_has_the_reference_keys_and_shapes():
    kw = {k: v for k, v in PRESETS21["qwen-image-2.1"].to_dict().items() if k != "_class_name"}
    with torch.device("meta"):
        ref = diffusers.QwenImage21Transformer2DModel(**kw)
        ours = QwenImage21Transformer(PRESETS21["qwen-image-2.1"])
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert len(shapes) == 297 and all(k.endswith(".weight") for k in shapes)
    assert round(sum(p.numel() for p in ours.parameters()) / 1e9, 3) == 7.115


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(pair, case):
    ref, ours = pair
    kw, t = CASES[case]
    t = torch.tensor(t)
    with torch.no_grad():
        want = ref(**kw, timestep=t, return_dict=False)[0]
        got = ours(**kw, timestep=t)
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("cache_device", [None, "cpu"])
def test_cached_steps_equal_the_full_forward(pair, cache_device):
    """The first step stores the prefix; later steps compute only the target, as the full forward does."""
    ref, ours = pair
    kw, _ = CASES["reference_padded_batch"]
    cache = ours.new_cache(cache_device)
    ref_cache = diffusers.models.transformers.transformer_qwenimage21.QwenImage21KVCache(CFG.num_layers)
    with torch.no_grad():
        first = ours(**kw, timestep=torch.tensor([0.9, 0.9]), kv_cache=cache, kv_cache_mode="extract")
        assert rel_err(first, ours(**kw, timestep=torch.tensor([0.9, 0.9]))) <= TOL
        assert cache.filled and cache.nbytes() > 0
        ref(**kw, timestep=torch.tensor([0.9, 0.9]), kv_cache=ref_cache, kv_cache_mode="extract")
        for t in ([0.5, 0.5], [0.2, 0.6]):
            t = torch.tensor(t)
            got = ours(**kw, timestep=t, kv_cache=cache, kv_cache_mode="cached")
            full = ours(**kw, timestep=t)[:, -got.shape[1]:]
            assert got.shape[1] == 16
            assert rel_err(got, full) <= TOL
            assert rel_err(got, ref(**kw, timestep=t, kv_cache=ref_cache, kv_cache_mode="cached")[0]) <= TOL


def test_adjacent_references_are_two_blocks():
    layout = build_layout(torch.tensor(ADJACENT + [True] * 4), ((1, 4, 4), (1, 4, 6), (1, 4, 4)))
    ids = layout.image_ids.tolist()
    assert ids == [-1] * 3 + [0] * 16 + [1] * 24 + [-1] * 3 + [2] * 16
    assert layout.segments == ((0, 3, True), (3, 19, False), (19, 43, False), (43, 46, True))
    # text advances one position; each image holds the frame axis, centred on 0, then advances by max(h, w)
    assert layout.positions[:3, 0].tolist() == [0, 1, 2]
    assert layout.positions[3].tolist() == [3, -2, -2] and layout.positions[19].tolist() == [7, -2, -3]
    assert layout.positions[43].tolist() == [13] * 3


def test_bad_layouts_are_named(pair):
    _, ours = pair
    kw, t = CASES["two_references"]
    with pytest.raises(ValueError, match="img_mask"):
        ours(**{**kw, "img_mask": kw["img_mask"][:, 1:]}, timestep=torch.tensor(t))
    with pytest.raises(ValueError, match="img_shapes"):
        ours(**{**kw, "img_shapes": [[(1, 4, 4), (1, 4, 4)]]}, timestep=torch.tensor(t))
    with pytest.raises(ValueError, match="image 0 .4x6 latent tokens. does not fit"):  # references swapped
        ours(**{**kw, "img_shapes": [[(1, 4, 6), (1, 4, 4), (1, 4, 4)]]}, timestep=torch.tensor(t))
    with pytest.raises(ValueError, match="kv_cache"):
        ours(**kw, timestep=torch.tensor(t), kv_cache_mode="cached")
    with pytest.raises(ValueError, match=r"encoder_hidden_states_mask has shape \[1, 47\]"):
        ours(**{**kw, "encoder_hidden_states_mask": torch.ones(1, 47)}, timestep=torch.tensor(t))
    cache = ours.new_cache()
    with pytest.raises(ValueError, match="empty"), torch.no_grad():
        ours(**kw, timestep=torch.tensor(t), kv_cache=cache, kv_cache_mode="cached")
    with torch.no_grad():
        ours(**kw, timestep=torch.tensor(t), kv_cache=cache, kv_cache_mode="extract")
    other, _ = CASES["text_to_image"]
    with pytest.raises(ValueError, match="prefix of 48 tokens, this prompt has 7"):
        ours(**other, timestep=torch.tensor(t), kv_cache=cache, kv_cache_mode="cached")


# ------------------------------------------------------------------------------------------------------ loading

def reference_like(cfg, seed=0):
    torch.manual_seed(seed)
    ref = diffusers.QwenImage21Transformer2DModel(**{k: v for k, v in cfg.to_dict().items() if k != "_class_name"})
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    return ref.eval()


def test_diffusers_folder_loads_and_matches(tmp_path, pair):
    ref, _ = pair
    ref.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(str(tmp_path), dtype=torch.float32)
    assert isinstance(ours, QwenImage21Transformer) and ours.config == CFG
    kw, t = CASES["two_references"]
    with torch.no_grad():
        want = ref(**kw, timestep=torch.tensor(t))[0]
        assert rel_err(ours(**kw, timestep=torch.tensor(t)), want) <= TOL
        # fp8 resident blocks, quantised on load, computing in fp32: the float model holding the rounded weights
        fp8 = load_transformer(str(tmp_path), dtype=torch.float32, weight_dtype=torch.float8_e4m3fn)
        rounded = {n: m.dequantized_weight(torch.float32) for n, m in fp8.named_modules() if isinstance(m, FP8Linear)}
        assert len(rounded) == 7 * CFG.num_layers
        for n, w in rounded.items():
            ours.get_submodule(n).weight.copy_(w)
        assert rel_err(fp8(**kw, timestep=torch.tensor(t)), ours(**kw, timestep=torch.tensor(t))) <= TOL


def comfy_state(ref, prefix="model.diffusion_model."):
    """Comfy-Org's layout, written here by hand: the diffusers names under a prefix, gate and up projections fused
    (gate rows first)."""
    state = {}
    for k, v in ref.state_dict().items():
        if k.endswith("img_mlp.gate_layer.weight"):
            up = ref.state_dict()[k.replace("gate_layer", "proj")]
            state[prefix + k.replace("gate_layer", "gate_up")] = torch.cat([v, up])
        elif not k.endswith("img_mlp.proj.weight"):
            state[prefix + k] = v
    return state


def test_comfyui_file_we_write_is_comfy_orgs_layout(tmp_path):
    ref = reference_like(COMFY_CFG)
    ours = QwenImage21Transformer(COMFY_CFG)
    ours.load_state_dict(ref.state_dict())
    save_comfyui_transformer(ours, tmp_path / "ours.safetensors", prefix="model.diffusion_model.")
    with safe_open(tmp_path / "ours.safetensors", "pt") as f:
        written = {k: f.get_tensor(k) for k in f.keys()}
    want = comfy_state(ref)
    assert written.keys() == want.keys() and all(torch.equal(written[k], want[k]) for k in want)
    back = load_transformer(str(tmp_path / "ours.safetensors"))
    assert back.config == COMFY_CFG
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in back.state_dict().items())


# 128-wide heads: a file without a config implies the official rotary split (16, 56, 56)
COMFY_CFG = Transformer21Config(num_layers=2, num_attention_heads=1, context_in_dim=32, in_channels=8,
                                out_channels=8)


def test_comfyui_single_file_loads_and_matches(tmp_path, capsys):
    ref = reference_like(COMFY_CFG)
    path = tmp_path / "qwen_image_2.1_bf16.safetensors"
    save_file_atomic(comfy_state(ref), path)
    ours = load_transformer(str(path))
    assert ours.config == COMFY_CFG and ours.dtype == torch.float32
    g = torch.Generator().manual_seed(3)
    kw = dict(hidden_states=torch.randn(1, 32, 8, generator=g), encoder_hidden_states=torch.randn(1, 6, 32, generator=g),
              img_shapes=[[(1, 4, 4), (1, 4, 4)]], img_mask=torch.tensor([[False] + [True] * 4 + [False] + [True] * 4]))
    with torch.no_grad():
        assert rel_err(ours(**kw, timestep=torch.tensor([0.6])), ref(**kw, timestep=torch.tensor([0.6]))[0]) <= TOL
    assert main(["inspect", str(path), "--load"]) == 0
    out = capsys.readouterr().out
    assert f"loaded {sum(p.numel() for p in ours.parameters()):,} parameters as torch.float32" in out
    assert f"transformer: {FAMILY_21}, 27 tensors in 1 file(s)" in out  # 9 + 9 per block, gate_up read as two
    assert "_class_name: QwenImage21Transformer2DModel" in out and "mlp_ratio: 3" in out


def test_fp8_comfyui_file_keeps_the_fused_scale_on_both_halves(tmp_path):
    ref = reference_like(COMFY_CFG)
    state = comfy_state(ref, prefix="")
    fused = "transformer_blocks.1.img_mlp.gate_up.weight"
    state[fused], scale = quantize(state[fused])
    state[fused.replace(".weight", ".weight_scale")] = scale
    save_file_atomic(state, tmp_path / "qwen_image_2.1_fp8.safetensors")
    ours = load_transformer(str(tmp_path / "qwen_image_2.1_fp8.safetensors"))
    mlp = ours.transformer_blocks[1].img_mlp
    assert isinstance(mlp.gate_layer, FP8Linear) and isinstance(mlp.proj, FP8Linear)
    whole = state[fused].float() * scale
    assert torch.equal(mlp.gate_layer.dequantized_weight(torch.float32), whole[:384])
    assert torch.equal(mlp.proj.dequantized_weight(torch.float32), whole[384:])


def test_family_is_told_by_the_keys(tmp_path, pair):
    _, ours = pair
    assert transformer_family(ours.state_dict()) == FAMILY_21
    assert transformer_family(QwenImageTransformer(preset("tiny")).state_dict()) == FAMILY_20B
    assert transformer_family({"img_in.weight": 0}) is None
    # a 20B config beside 2.1 weights is named, not a list of missing keys
    ref = reference_like(COMFY_CFG)
    save_file_atomic(comfy_state(ref), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="2.1 DiT, the config .TransformerConfig. is the other model's"):
        load_transformer(str(tmp_path / "m.safetensors"), config=preset("tiny"))


def test_bfloat16_keeps_fp32_timestep_frequencies(tmp_path, pair):
    """In bf16 ours equals the reference loaded with from_pretrained(torch_dtype=bf16), whose frequency buffer stays
    fp32; the reference's `.to(bf16)` rounds the frequencies (its timestep embedding moves by whole units)."""
    ref, _ = pair
    ref.save_pretrained(tmp_path / "transformer")
    want = diffusers.QwenImage21Transformer2DModel.from_pretrained(tmp_path / "transformer", torch_dtype=torch.bfloat16)
    ours = load_transformer(str(tmp_path), dtype=torch.bfloat16)
    kw, t = CASES["reference_padded_batch"]
    kw = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kw.items()}
    with torch.no_grad():
        # 0.0 here; the bound leaves room for other kernels' bf16 rounding (the rounded frequencies give 0.67)
        assert rel_err(ours(**kw, timestep=torch.tensor(t)), want.eval()(**kw, timestep=torch.tensor(t))[0]) < 1e-2


def test_without_causal_condition_every_token_reads_its_timestep():
    cfg = CFG.replace(causal_condition=False)
    ref = reference_like(cfg)
    ours = QwenImage21Transformer(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    kw, t = CASES["reference_padded_batch"]
    with torch.no_grad():
        assert rel_err(ours(**kw, timestep=torch.tensor(t)), ref(**kw, timestep=torch.tensor(t))[0]) <= TOL
    with pytest.raises(ValueError, match="causal_condition"):
        ours(**kw, timestep=torch.tensor(t), kv_cache=ours.new_cache(), kv_cache_mode="extract")


def test_config_fields_are_checked_by_name():
    assert Transformer21Config.from_dict({"out_channels": None, "in_channels": 16}).out_channels == 16
    for bad, msg in [({"num_layers": "3"}, "'num_layers' = '3' must be a positive integer"),
                     ({"eps": -1.0}, "'eps' = -1.0 must be a positive number"),
                     ({"axes_dims_rope": [16, 56, 55]}, "must be even and sum to attention_head_dim 128"),
                     ({"joint_attention_dim": 3584}, "unknown Qwen-Image 2.1 transformer config field")]:
        with pytest.raises(ValueError, match=msg):
            Transformer21Config.from_dict(bad)


DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "models")


def test_a_21_file_in_a_20b_only_path_is_named_before_loading(tmp_path):
    """Sampling, the nodes and the trainer run the 20B MMDiT only for now: a 2.1 file is refused by name, before its
    weights are read, instead of failing later with a shape or TypeError."""
    from qwenimage.nodes import loaders
    from qwenimage.qwenimage_core.pipeline import load_pipeline
    from qwenimage.qwenimage_core.weights import CheckpointError

    path = tmp_path / "qwen_image_2.1_bf16.safetensors"
    save_file_atomic({k: v.contiguous() for k, v in QwenImage21Transformer(COMFY_CFG).state_dict().items()}, path)
    want = rf"qwen_image_2\.1_bf16\.safetensors: a {FAMILY_21}, where this path runs the {FAMILY_20B} only"
    with pytest.raises(CheckpointError, match=want):
        load_transformer(str(path), family=FAMILY_20B)
    with pytest.raises(CheckpointError, match=want):
        loaders._load_model("model:family-test", str(path), "default")
    with pytest.raises(CheckpointError, match=want):
        load_pipeline([str(path), f"{DEMO}/text_encoders/qwen_image_demo_text_encoder.safetensors",
                       f"{DEMO}/vae/qwen_image_demo_vae.safetensors"])
    assert isinstance(load_transformer(str(path), family=FAMILY_21), QwenImage21Transformer)
