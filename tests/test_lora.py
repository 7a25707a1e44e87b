"""LoRA / LyCORIS loading, application and saving on the tiny transformer.

Each format's file is written here in that format's own key layout from known factors; after loading, the
report must name the modules it landed on, and the model's output must equal that of an independently built
model whose weights are W + strength * dW, with dW computed here from the factors (not by the library)."""
import copy
import json

import pytest
import torch
from _util import rel_err
from safetensors.torch import load_file, save_file

from qwenimage.qwenimage_core import QwenImageTransformer, preset
from qwenimage.qwenimage_core.lora import LoraError, apply_loras, match_lora, read_lora, save_lora

TOL = 1e-5
DIM, FF = 32, 128  # tiny preset: 2 heads x 16; 4x MLP

Q0, K0, V0 = (f"transformer_blocks.0.attn.{p}" for p in ("to_q", "to_k", "to_v"))
AQ1, AK1, AV1 = (f"transformer_blocks.1.attn.{p}" for p in ("add_q_proj", "add_k_proj", "add_v_proj"))
# One module of each kind the transformer has, blocks and top level.
MODULES = [Q0, AK1, "transformer_blocks.0.attn.to_out.0", "transformer_blocks.1.attn.to_add_out",
           "transformer_blocks.0.img_mlp.net.0.proj", "transformer_blocks.1.txt_mlp.net.2",
           "transformer_blocks.0.img_mod.1", "transformer_blocks.1.txt_mod.1", "img_in", "txt_in", "proj_out",
           "norm_out.linear", "time_text_embed.timestep_embedder.linear_1"]


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = QwenImageTransformer(preset("tiny")).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rnd(g, *shape, std=0.1):
    return torch.randn(*shape, generator=g) * std


def inputs():
    """Two samples, the second with padded text."""
    g = gen(123)
    return dict(hidden_states=torch.randn(2, 16, 64, generator=g),
                encoder_hidden_states=torch.randn(2, 5, 24, generator=g),
                encoder_hidden_states_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
                timestep=torch.tensor([0.7, 0.3]), img_shapes=[[(1, 4, 4)]] * 2)


def run(model):
    inputs_ = {k: (v.to(model.dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
               for k, v in inputs().items()}
    with torch.no_grad():
        return model(**inputs_).float()


def shape_of(model, name):
    return tuple(model.get_submodule(name).weight.shape)


def reference(base, deltas=None, bias_deltas=None):
    """An independent model: W + dW for each named module, computed in float32."""
    m = copy.deepcopy(base)
    with torch.no_grad():
        for name, d in (deltas or {}).items():
            w = m.get_submodule(name).weight
            w.copy_((w.float() + d).to(w.dtype))
        for name, d in (bias_deltas or {}).items():
            b = m.get_submodule(name).bias
            b.copy_((b.float() + d).to(b.dtype))
    return m


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_exact(model, snap):
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def check_both_modes(base, lora, expected_model, landed, strength=1.0, not_landed=()):
    """Apply `lora` both ways: each must match the reference, report exactly `landed`, and remove cleanly."""
    want = run(expected_model)
    base_out = run(base)
    assert rel_err(want, base_out) > 1e-3, "the LoRA should change the output"
    for mode in ("merge", "runtime"):
        m = copy.deepcopy(base)
        snap = snapshot(m)
        h = apply_loras(m, [(lora, strength)], mode=mode)
        (rep,) = h.reports
        assert rep.modules == sorted(landed), mode
        assert sorted(rep.not_landed) == sorted(not_landed), (mode, rep.not_landed)
        assert rel_err(run(m), want) <= TOL, mode
        h.remove()
        assert_bit_exact(m, snap)
        assert torch.equal(run(m), base_out)


# ------------------------------------------------------------------------------------------ plain LoRA formats

LAYOUTS = {
    # name: (prefix, down suffix, up suffix, alpha key suffix)
    "diffusers": ("transformer.", "lora_A.weight", "lora_B.weight", "alpha"),
    "peft-raw": ("base_model.model.", "lora_A.weight", "lora_B.weight", "alpha"),
    "diffsynth-default": ("", "lora_A.default.weight", "lora_B.default.weight", "alpha"),
    "diffsynth": ("", "lora_A.weight", "lora_B.weight", "alpha"),
    "diffsynth-pipe": ("pipe.dit.", "lora_A.default.weight", "lora_B.default.weight", "alpha"),
    "diffsynth-dit": ("dit.", "lora_A.weight", "lora_B.weight", "alpha"),
    "comfyui-ai-toolkit": ("diffusion_model.", "lora_A.weight", "lora_B.weight", "alpha"),
    "comfyui-down-up": ("diffusion_model.", "lora_down.weight", "lora_up.weight", "alpha"),
    "comfyui-full-prefix": ("model.diffusion_model.", "lora_down.weight", "lora_up.weight", "alpha"),
    "bare-down-up": ("", "lora_down.weight", "lora_up.weight", "alpha"),
}


def lora_factors(base, names, seed, rank=4):
    g = gen(seed)
    out = {}
    for i, n in enumerate(names):
        o, k = shape_of(base, n)
        out[n] = (rnd(g, rank, k), rnd(g, o, rank), float(2 + i))  # A, B, alpha
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("with_alpha", [True, False])
def test_plain_lora_layouts(base, tmp_path, layout, with_alpha):
    prefix, down, up, alpha_key = LAYOUTS[layout]
    f = lora_factors(base, MODULES, seed=1)
    sd = {}
    for n, (A, B, alpha) in f.items():
        sd[f"{prefix}{n}.{down}"], sd[f"{prefix}{n}.{up}"] = A, B
        if with_alpha:
            sd[f"{prefix}{n}.{alpha_key}"] = torch.tensor(alpha)
    path = tmp_path / f"{layout}.safetensors"
    save_file(sd, path)
    lora = read_lora(path)
    deltas = {n: (B @ A) * (alpha / A.shape[0] if with_alpha else 1.0) for n, (A, B, alpha) in f.items()}
    check_both_modes(base, lora, reference(base, {n: 0.8 * d for n, d in deltas.items()}), MODULES, strength=0.8)


@pytest.mark.parametrize("prefix", ["lora_unet_", "lycoris_", "lora_transformer_"])
def test_kohya_musubi_flat_names(base, tmp_path, prefix):
    f = lora_factors(base, MODULES, seed=2, rank=3)
    sd = {}
    for n, (A, B, alpha) in f.items():
        flat = prefix + n.replace(".", "_")  # e.g. lora_unet_transformer_blocks_0_attn_to_q
        sd[f"{flat}.lora_down.weight"], sd[f"{flat}.lora_up.weight"] = A.half(), B.half()
        sd[f"{flat}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    assert "lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight" in sd or prefix != "lora_unet_"
    path = tmp_path / "kohya.safetensors"
    save_file(sd, path)
    deltas = {n: (B.half().float() @ A.half().float()) * alpha / 3 for n, (A, B, alpha) in f.items()}
    check_both_modes(base, read_lora(path), reference(base, {n: -0.6 * d for n, d in deltas.items()}), MODULES,
                     strength=-0.6)


def test_diffusers_metadata_scales(base, tmp_path):
    """No .alpha keys: diffusers' lora_adapter_metadata (LoraConfig) sets alpha / r, patterns included."""
    f = lora_factors(base, [Q0, "proj_out", "img_in"], seed=3, rank=4)
    sd = {}
    for n, (A, B, _) in f.items():
        sd[f"transformer.{n}.lora_A.weight"], sd[f"transformer.{n}.lora_B.weight"] = A, B
    cfg = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.alpha_pattern": {"proj_out": 2},
           "transformer.rank_pattern": {}, "transformer.target_modules": sorted(f)}
    path = tmp_path / "meta.safetensors"
    save_file(sd, path, metadata={"format": "pt", "lora_adapter_metadata": json.dumps(cfg)})
    scale = {Q0: 2.0, "proj_out": 0.5, "img_in": 2.0}
    deltas = {n: (B @ A) * scale[n] for n, (A, B, _) in f.items()}
    check_both_modes(base, read_lora(path), reference(base, deltas), sorted(f))


# ------------------------------------------------------------------------------------------------- LyCORIS

def test_lokr_full_and_factorised(base, tmp_path):
    g = gen(4)
    sd, deltas = {}, {}
    # full factors (scale 1, alpha ignored as LyCORIS/ComfyUI do when nothing is low-rank)
    w1, w2 = rnd(g, 4, 4, std=0.5), rnd(g, 8, 8, std=0.5)  # kron -> [32, 32]
    sd["lycoris_transformer_blocks_0_attn_to_q.lokr_w1"] = w1
    sd["lycoris_transformer_blocks_0_attn_to_q.lokr_w2"] = w2
    sd["lycoris_transformer_blocks_0_attn_to_q.alpha"] = torch.tensor(3.0)
    deltas[Q0] = torch.kron(w1, w2)
    # factorised w2 (rank 2): scale alpha / 2
    w1, w2a, w2b = rnd(g, 8, 4, std=0.5), rnd(g, 16, 2, std=0.5), rnd(g, 2, 8, std=0.5)  # [128, 32]
    n = "transformer_blocks.1.img_mlp.net.0.proj"
    sd[f"lora_unet_{n.replace('.', '_')}.lokr_w1"] = w1
    sd[f"lora_unet_{n.replace('.', '_')}.lokr_w2_a"] = w2a
    sd[f"lora_unet_{n.replace('.', '_')}.lokr_w2_b"] = w2b
    sd[f"lora_unet_{n.replace('.', '_')}.alpha"] = torch.tensor(1.0)
    deltas[n] = torch.kron(w1, w2a @ w2b) * (1.0 / 2)
    # both factorised, under the ComfyUI prefix with dotted names: rank from w2 (3)
    w1a, w1b, w2a, w2b = rnd(g, 4, 2, std=0.5), rnd(g, 2, 2, std=0.5), rnd(g, 16, 3, std=0.5), rnd(g, 3, 16, std=0.5)
    n2 = "proj_out"  # [64, 32]
    for k, v in dict(lokr_w1_a=w1a, lokr_w1_b=w1b, lokr_w2_a=w2a, lokr_w2_b=w2b, alpha=torch.tensor(6.0)).items():
        sd[f"diffusion_model.{n2}.{k}"] = v
    deltas[n2] = torch.kron(w1a @ w1b, w2a @ w2b) * 2.0
    path = tmp_path / "lokr.safetensors"
    save_file(sd, path)
    check_both_modes(base, read_lora(path), reference(base, {k: 0.5 * d for k, d in deltas.items()}), sorted(deltas),
                     strength=0.5)


def test_loha(base, tmp_path):
    g = gen(5)
    sd, deltas = {}, {}
    for i, n in enumerate([AK1, "transformer_blocks.0.txt_mod.1"]):
        o, k = shape_of(base, n)
        w1a, w1b, w2a, w2b = rnd(g, o, 4, std=0.3), rnd(g, 4, k, std=0.3), rnd(g, o, 4, std=0.3), rnd(g, 4, k, std=0.3)
        flat = "lycoris_" + n.replace(".", "_")
        sd.update({f"{flat}.hada_w1_a": w1a, f"{flat}.hada_w1_b": w1b, f"{flat}.hada_w2_a": w2a,
                   f"{flat}.hada_w2_b": w2b, f"{flat}.alpha": torch.tensor(2.0 + i)})
        deltas[n] = (w1a @ w1b) * (w2a @ w2b) * (2.0 + i) / 4
    path = tmp_path / "loha.safetensors"
    save_file(sd, path)
    check_both_modes(base, read_lora(path), reference(base, deltas), sorted(deltas))


def _dora(W, dW, m, axis, eps):
    """DoRA written out: m * (W + dW) / ||W + dW||, the norm per output row or per input column."""
    V = W.float() + dW
    if axis == "out":
        return (m.reshape(-1, 1) / (V.norm(dim=1, keepdim=True) + eps)) * V - W.float()
    return (m.reshape(1, -1) / (V.norm(dim=0, keepdim=True) + eps)) * V - W.float()


def test_dora_peft_and_lycoris(base, tmp_path):
    g = gen(6)
    eps = torch.finfo(torch.float32).eps
    sd, deltas = {}, {}
    # PEFT: lora_magnitude_vector [out], norm per output row, alpha / r from .alpha
    n = Q0
    W = base.get_submodule(n).weight
    A, B = rnd(g, 4, DIM), rnd(g, DIM, 4)
    m = W.norm(dim=1) * (1 + rnd(g, DIM))
    sd.update({f"transformer.{n}.lora_A.weight": A, f"transformer.{n}.lora_B.weight": B,
               f"transformer.{n}.alpha": torch.tensor(8.0), f"transformer.{n}.lora_magnitude_vector": m})
    deltas[n] = _dora(W, B @ A * 2.0, m, "out", 0.0)
    # LyCORIS default: dora_scale [1, in] -> per input column
    n = "transformer_blocks.1.img_mlp.net.2"  # [32, 128]
    W = base.get_submodule(n).weight
    A, B = rnd(g, 4, FF), rnd(g, DIM, 4)
    m = W.norm(dim=0, keepdim=True) * (1 + rnd(g, 1, FF))
    flat = "lora_unet_" + n.replace(".", "_")
    sd.update({f"{flat}.lora_down.weight": A, f"{flat}.lora_up.weight": B, f"{flat}.alpha": torch.tensor(4.0),
               f"{flat}.dora_scale": m})
    deltas[n] = _dora(W, B @ A, m, "in", eps)
    # LyCORIS wd_on_out: dora_scale [out, 1], on a LoKr
    n = "transformer_blocks.0.txt_mlp.net.0.proj"  # [128, 32]
    W = base.get_submodule(n).weight
    w1, w2 = rnd(g, 8, 4, std=0.5), rnd(g, 16, 8, std=0.5)
    m = W.norm(dim=1, keepdim=True) * (1 + rnd(g, FF, 1))
    flat = "lycoris_" + n.replace(".", "_")
    sd.update({f"{flat}.lokr_w1": w1, f"{flat}.lokr_w2": w2, f"{flat}.dora_scale": m})
    deltas[n] = _dora(W, torch.kron(w1, w2), m, "out", eps)
    path = tmp_path / "dora.safetensors"
    save_file(sd, path)
    lora = read_lora(path)
    assert sorted(p.dora_axis for p in lora.patches) == ["in", "out", "out"]
    check_both_modes(base, lora, reference(base, {k: 1.5 * d for k, d in deltas.items()}), sorted(deltas),
                     strength=1.5)


def test_full_diffs_incl_norms(base, tmp_path):
    g = gen(7)
    sd, deltas, bias = {}, {}, {}
    for n in ["transformer_blocks.0.attn.to_add_out", "img_in"]:
        deltas[n] = rnd(g, *shape_of(base, n))
        bias[n] = rnd(g, shape_of(base, n)[0])
        sd[f"diffusion_model.{n}.diff"], sd[f"diffusion_model.{n}.diff_b"] = deltas[n], bias[n]
    n = "transformer_blocks.1.attn.norm_added_k"  # an RMSNorm scale: merged even in run-time mode
    deltas[n] = rnd(g, 16)
    sd[f"lycoris_{n.replace('.', '_')}.w_norm"] = deltas[n]
    n = "time_text_embed.timestep_embedder.linear_2"  # a bias-only patch
    bias[n] = rnd(g, DIM)
    sd[f"diffusion_model.{n}.diff_b"] = bias[n]
    path = tmp_path / "diff.safetensors"
    save_file(sd, path)
    check_both_modes(base, read_lora(path), reference(base, {k: -0.7 * d for k, d in deltas.items()},
                                                      {k: -0.7 * d for k, d in bias.items()}),
                     sorted(set(deltas) | set(bias)), strength=-0.7)


# ------------------------------------------------------------------------------------------------ fused QKV

def test_fused_qkv(base, tmp_path):
    g = gen(8)
    sd, deltas, bias = {}, {}, {}
    # diffusers-fused / Nunchaku name, plain LoRA: lora_B rows split into thirds, lora_A shared
    A, B = rnd(g, 4, DIM), rnd(g, 3 * DIM, 4)
    sd["transformer.transformer_blocks.0.attn.to_qkv.lora_A.weight"] = A
    sd["transformer.transformer_blocks.0.attn.to_qkv.lora_B.weight"] = B
    sd["transformer.transformer_blocks.0.attn.to_qkv.alpha"] = torch.tensor(2.0)
    for n, part in zip((Q0, K0, V0), (B @ A * 0.5).split(DIM)):
        deltas[n] = part
    # kohya flat Nunchaku text-stream name
    A, B = rnd(g, 2, DIM), rnd(g, 3 * DIM, 2)
    sd["lora_unet_transformer_blocks_1_attn_add_qkv_proj.lora_down.weight"] = A
    sd["lora_unet_transformer_blocks_1_attn_add_qkv_proj.lora_up.weight"] = B
    for n, part in zip((AQ1, AK1, AV1), (B @ A).split(DIM)):
        deltas[n] = part
    # LoKr over diffusers' to_added_qkv (not splittable as a Kronecker product: materialised, then split)
    w1, w2 = rnd(g, 3, 2, std=0.5), rnd(g, 32, 16, std=0.5)
    sd["lycoris_transformer_blocks_0_attn_to_added_qkv.lokr_w1"] = w1
    sd["lycoris_transformer_blocks_0_attn_to_added_qkv.lokr_w2"] = w2
    for n, part in zip((f"transformer_blocks.0.attn.{p}" for p in ("add_q_proj", "add_k_proj", "add_v_proj")),
                       torch.kron(w1, w2).split(DIM)):
        deltas[n] = part
    # Flux-style name with a full diff and bias diff
    d, db = rnd(g, 3 * DIM, DIM), rnd(g, 3 * DIM)
    sd["diffusion_model.transformer_blocks.1.img_attn.qkv.diff"] = d
    sd["diffusion_model.transformer_blocks.1.img_attn.qkv.diff_b"] = db
    for i, n in enumerate(f"transformer_blocks.1.attn.{p}" for p in ("to_q", "to_k", "to_v")):
        deltas[n], bias[n] = d[i * DIM:(i + 1) * DIM], db[i * DIM:(i + 1) * DIM]
    path = tmp_path / "fused.safetensors"
    save_file(sd, path)
    lora = read_lora(path)
    check_both_modes(base, lora, reference(base, deltas, bias), sorted(deltas))
    rep = match_lora(base, lora)
    assert rep.landed["transformer.transformer_blocks.0.attn.to_qkv.lora_B.weight"] == (Q0, K0, V0)
    assert rep.landed["lora_unet_transformer_blocks_1_attn_add_qkv_proj.lora_up.weight"] == (AQ1, AK1, AV1)


def test_fused_dora_norm_over_fused_weight(base, tmp_path):
    """A DoRA trained on a fused layer normalises over the fused weight: per-column norms span q, k and v."""
    g = gen(9)
    W = torch.cat([base.get_submodule(n).weight for n in (Q0, K0, V0)])
    A, B = rnd(g, 4, DIM), rnd(g, 3 * DIM, 4)
    m = W.norm(dim=0, keepdim=True) * (1 + rnd(g, 1, DIM))
    flat = "lora_unet_transformer_blocks_0_attn_to_qkv"
    path = tmp_path / "fused_dora.safetensors"
    save_file({f"{flat}.lora_down.weight": A, f"{flat}.lora_up.weight": B, f"{flat}.dora_scale": m}, path)
    d = _dora(W, B @ A, m, "in", torch.finfo(torch.float32).eps)
    check_both_modes(base, read_lora(path), reference(base, dict(zip((Q0, K0, V0), d.split(DIM)))), [Q0, K0, V0])


# ------------------------------------------------------------------------------------------- applying several

def _write_plain(path, factors, strength_prefix="transformer."):
    sd = {}
    for n, (A, B, alpha) in factors.items():
        sd[f"{strength_prefix}{n}.lora_A.weight"], sd[f"{strength_prefix}{n}.lora_B.weight"] = A, B
        sd[f"{strength_prefix}{n}.alpha"] = torch.tensor(alpha)
    save_file(sd, path)


def test_several_loras_strengths_runtime_equals_merged(base, tmp_path):
    fa = lora_factors(base, [Q0, AK1, "proj_out"], seed=10)
    fb = lora_factors(base, [Q0, "img_in", "transformer_blocks.1.img_mod.1"], seed=11, rank=2)
    _write_plain(tmp_path / "a.safetensors", fa)
    _write_plain(tmp_path / "b.safetensors", fb, "diffusion_model.")
    g = gen(12)
    w1, w2 = rnd(g, 4, 4, std=0.5), rnd(g, 8, 8, std=0.5)
    save_file({"lycoris_transformer_blocks_0_attn_to_q.lokr_w1": w1,
               "lycoris_transformer_blocks_0_attn_to_q.lokr_w2": w2}, tmp_path / "c.safetensors")
    loras = [read_lora(tmp_path / f"{x}.safetensors") for x in "abc"]
    da = {n: B @ A * alpha / A.shape[0] for n, (A, B, alpha) in fa.items()}
    db = {n: B @ A * alpha / A.shape[0] for n, (A, B, alpha) in fb.items()}
    dc = {Q0: torch.kron(w1, w2)}

    def expected(sa, sb, sc):
        tot = {}
        for d, s in ((da, sa), (db, sb), (dc, sc)):
            for n, x in d.items():
                tot[n] = tot.get(n, 0) + s * x
        return run(reference(base, tot))

    strengths = [0.7, -1.3, 0.4]
    merged, runtime = copy.deepcopy(base), copy.deepcopy(base)
    snap = snapshot(merged)
    hm = apply_loras(merged, list(zip(loras, strengths)), mode="merge")
    hr = apply_loras(runtime, list(zip(loras, strengths)), mode="runtime")
    assert [r.modules for r in hm.reports] == [sorted(fa), sorted(fb), [Q0]]
    want = expected(*strengths)
    om, orr = run(merged), run(runtime)
    assert rel_err(om, want) <= TOL and rel_err(orr, want) <= TOL and rel_err(orr, om) <= TOL
    for h in (hm, hr):  # strengths change without re-reading, both ways
        h.set_strength(1, 0.25)
        h.set_strength(2, -2.0)
    want = expected(0.7, 0.25, -2.0)
    assert rel_err(run(merged), want) <= TOL and rel_err(run(runtime), want) <= TOL
    for h in (hm, hr):
        for i in range(3):
            h.set_strength(i, 0.0)
    assert torch.equal(run(merged), run(base)) and torch.equal(run(runtime), run(base))
    assert_bit_exact(merged, snap)  # strength 0 everywhere is the original weights, exactly
    hm.remove()
    hr.remove()
    assert_bit_exact(merged, snap)
    assert_bit_exact(runtime, snap)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_unmerge_is_bit_exact(base, tmp_path, dtype):
    f = lora_factors(base, MODULES, seed=13)
    _write_plain(tmp_path / "a.safetensors", f)
    g = gen(14)
    sd = {"diffusion_model.transformer_blocks.0.attn.norm_q.diff": rnd(g, 16),
          "diffusion_model.proj_out.diff_b": rnd(g, 64),
          "lycoris_transformer_blocks_1_attn_to_v.hada_w1_a": rnd(g, DIM, 2),
          "lycoris_transformer_blocks_1_attn_to_v.hada_w1_b": rnd(g, 2, DIM),
          "lycoris_transformer_blocks_1_attn_to_v.hada_w2_a": rnd(g, DIM, 2),
          "lycoris_transformer_blocks_1_attn_to_v.hada_w2_b": rnd(g, 2, DIM)}
    save_file(sd, tmp_path / "b.safetensors")
    model = copy.deepcopy(base).to(dtype)
    snap = snapshot(model)
    base_out = run(model)
    for mode in ("merge", "runtime"):
        h = apply_loras(model, [(tmp_path / "a.safetensors", 1.1), (tmp_path / "b.safetensors", -0.9)], mode=mode)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, snap[k])]
        assert ("transformer_blocks.0.attn.norm_q.weight" in changed) and (len(changed) > 10) == (mode == "merge")
        assert rel_err(run(model), base_out) > 1e-3
        h.remove()
        assert_bit_exact(model, snap)
        h.remove()  # a second remove is a no-op
    with pytest.raises(LoraError, match="removed"):
        h.set_strength(0, 2.0)


def test_merge_in_bfloat16_rounds_once(base, tmp_path):
    f = lora_factors(base, [Q0], seed=15)
    _write_plain(tmp_path / "a.safetensors", f)
    model = copy.deepcopy(base).to(torch.bfloat16)
    w0 = model.get_submodule(Q0).weight.clone()
    apply_loras(model, [(tmp_path / "a.safetensors", 0.3)])
    A, B, alpha = f[Q0]
    assert torch.equal(model.get_submodule(Q0).weight, (w0.float() + 0.3 * (B @ A) * alpha / 4).to(torch.bfloat16))


def test_stacked_handles_remove_last_first(base, tmp_path):
    _write_plain(tmp_path / "a.safetensors", lora_factors(base, [Q0], seed=16))
    _write_plain(tmp_path / "b.safetensors", lora_factors(base, [Q0, "img_in"], seed=17))
    model = copy.deepcopy(base)
    snap = snapshot(model)
    h1 = apply_loras(model, [tmp_path / "a.safetensors"], mode="merge")
    h2 = apply_loras(model, [tmp_path / "b.safetensors"], mode="runtime")
    with pytest.raises(LoraError, match="remove those first"):
        h1.remove()
    with h2:
        pass  # the context manager removes
    h1.remove()
    assert_bit_exact(model, snap)


# --------------------------------------------------------------------------------------------- reporting, errors

def test_keys_not_landed_are_reported_by_name(base, tmp_path):
    f = lora_factors(base, [Q0, "proj_out"], seed=18)
    sd = {}
    for n, (A, B, alpha) in f.items():
        sd[f"transformer.{n}.lora_A.weight"], sd[f"transformer.{n}.lora_B.weight"] = A, B
    stray = {
        "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": "no module",     # block 7 does not exist
        "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": "no module",
        "lora_unet_single_blocks_0_linear1.lora_down.weight": "no module",          # a Flux key
        "lora_unet_single_blocks_0_linear1.lora_up.weight": "no module",
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": "text-encoder",
        "transformer.transformer_blocks.0.attn.to_k.lora_A.weight": "incomplete",   # lora_B missing
        "transformer.transformer_blocks.0.attn.to_v.alpha": "no adapter weights",   # an orphan alpha
        "transformer.proj_out.hada_t1": "Tucker",
        "transformer.foo.weird": "unknown suffix",
        # the same module again without the prefix: sorts after `transformer.` in the file, so it is the duplicate
        "transformer_blocks.0.attn.to_q.lora_A.weight": "duplicate: module 'transformer_blocks.0.attn.to_q'",
        "transformer_blocks.0.attn.to_q.lora_B.weight": "already patched by 'transformer.transformer_blocks.0",
    }
    for k in stray:
        up = "_B." in k or "_up." in k
        sd[k] = torch.tensor(1.0) if "alpha" in k else torch.zeros(32, 4) if up else torch.zeros(4, 32)
    path = tmp_path / "messy.safetensors"
    save_file(sd, path)
    lora = read_lora(path)
    h = apply_loras(copy.deepcopy(base), [lora], mode="runtime")
    rep = h.reports[0]
    assert rep.modules == sorted(f)
    assert set(rep.not_landed) == set(stray)
    for k, why in stray.items():
        assert why in rep.not_landed[k], (k, rep.not_landed[k])
    assert str(path) in str(rep) and "transformer.foo.weird" in str(rep)
    with pytest.raises(LoraError, match="strict"):
        apply_loras(copy.deepcopy(base), [lora], strict=True)


def test_a_lora_that_lands_nowhere_is_an_error_naming_the_file(base, tmp_path):
    path = tmp_path / "flux_lora.safetensors"
    save_file({"transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight": torch.zeros(4, 32),
               "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight": torch.zeros(32, 4)}, path)
    model = copy.deepcopy(base)
    snap = snapshot(model)
    for mode in ("merge", "runtime"):
        with pytest.raises(LoraError, match="flux_lora.safetensors.*none of its 2 keys lands"):
            apply_loras(model, [path], mode=mode)
    assert_bit_exact(model, snap)
    notlora = tmp_path / "weights.safetensors"
    save_file({"img_in.weight": torch.zeros(32, 64)}, notlora)
    with pytest.raises(LoraError, match="weights.safetensors: no LoRA weights recognised"):
        read_lora(notlora)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(LoraError, match="broken.safetensors"):
        read_lora(bad)


def test_shape_mismatch_raises_before_anything_is_patched(base, tmp_path):
    good = lora_factors(base, MODULES, seed=19)
    _write_plain(tmp_path / "good.safetensors", good)
    bad = dict(lora_factors(base, [Q0], seed=20))
    bad["transformer_blocks.1.attn.to_k"] = (torch.zeros(4, 3072), torch.zeros(3072, 4), 4.0)  # full-size model
    _write_plain(tmp_path / "bad.safetensors", bad)
    model = copy.deepcopy(base)
    snap = snapshot(model)
    for mode in ("merge", "runtime"):
        with pytest.raises(LoraError, match=r"bad.safetensors: key 'transformer.transformer_blocks.1.attn.to_k"
                                            r".lora_B.weight'.*\[3072, 3072\] delta.*\[32, 32\] weight"):
            apply_loras(model, [(tmp_path / "good.safetensors", 1.0), (tmp_path / "bad.safetensors", 1.0)],
                        mode=mode)
        assert_bit_exact(model, snap)
    # inconsistent factors within the file are caught when reading, naming the key
    path = tmp_path / "rank.safetensors"
    save_file({"diffusion_model.img_in.lora_down.weight": torch.zeros(4, 64),
               "diffusion_model.img_in.lora_up.weight": torch.zeros(32, 3)}, path)
    with pytest.raises(LoraError, match="rank.safetensors: key 'diffusion_model.img_in.lora_up.weight': rank 3"):
        read_lora(path)


# ----------------------------------------------------------------------------------------------------- saving

def test_saved_lora_round_trip_and_layout(base, tmp_path):
    f = lora_factors(base, MODULES, seed=21)
    path = tmp_path / "out.safetensors"
    save_lora(path, f, {"ss_note": "hi", "steps": 100}, model=base)
    sd = load_file(path)
    assert set(sd) == {f"transformer.{n}.lora_{x}.weight" for n in MODULES for x in "AB"}  # no .alpha
    deltas = {n: (B @ A) * alpha / 4 for n, (A, B, alpha) in f.items()}
    lora = read_lora(path)
    assert lora.metadata["ss_note"] == "hi" and lora.metadata["steps"] == "100"
    check_both_modes(base, lora, reference(base, deltas), MODULES)
    with pytest.raises(LoraError, match="reserved"):
        save_lora(path, f, {"lora_adapter_metadata": "{}"})
    with pytest.raises(LoraError, match="transformer_blocks.0.attn.to_q: a \\[64, 32\\] LoRA"):
        save_lora(path, {Q0: (torch.zeros(4, 32), torch.zeros(64, 4))}, model=base)


def test_diffusers_loads_our_saved_lora_identically(base, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from diffusers.loaders.lora_pipeline import QwenImageLoraLoaderMixin

    names = MODULES + [K0, V0, AQ1, AV1]
    f = {n: (A, B, alpha) for n, (A, B, alpha) in lora_factors(base, names, seed=22).items()}
    f["proj_out"] = (f["proj_out"][0][:2], f["proj_out"][1][:, :2], 5.0)  # a different rank on one module
    path = tmp_path / "ours.safetensors"
    save_lora(path, f)

    kw = {k: v for k, v in preset("tiny").to_dict().items() if k != "_class_name"}
    ref = diffusers.QwenImageTransformer2DModel(**kw).eval()
    ref.load_state_dict(base.state_dict())
    state = QwenImageLoraLoaderMixin.lora_state_dict(str(path))
    QwenImageLoraLoaderMixin.load_lora_into_transformer(state, transformer=ref, adapter_name="ours")
    assert sum(1 for n, _ in ref.named_modules() if n.endswith(".lora_A")) == len(names)

    ours = copy.deepcopy(base)
    apply_loras(ours, [path], mode="runtime")
    with torch.no_grad():
        r = ref(**inputs(), return_dict=False)[0]
    assert rel_err(run(ours), r) <= TOL
    assert rel_err(r, run(base)) > 1e-3


def test_peft_dora_matches_diffusers(base, tmp_path):
    """Our reading of PEFT's lora_magnitude_vector (norm per output row) against PEFT itself."""
    diffusers = pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    g = gen(23)
    sd, names = {}, [Q0, "transformer_blocks.1.img_mlp.net.2"]
    for n in names:
        W = base.get_submodule(n).weight
        o, k = W.shape
        sd[f"transformer.{n}.lora_A.weight"], sd[f"transformer.{n}.lora_B.weight"] = rnd(g, 4, k), rnd(g, o, 4)
        sd[f"transformer.{n}.lora_magnitude_vector"] = W.norm(dim=1) * (1 + rnd(g, o))
    path = tmp_path / "peft_dora.safetensors"
    save_file(sd, path)
    kw = {k: v for k, v in preset("tiny").to_dict().items() if k != "_class_name"}
    ref = diffusers.QwenImageTransformer2DModel(**kw).eval()
    ref.load_state_dict(base.state_dict())
    ref.load_lora_adapter(load_file(path), prefix="transformer", adapter_name="dora")
    assert any("lora_magnitude_vector" in n for n, _ in ref.named_parameters())
    ours = copy.deepcopy(base)
    apply_loras(ours, [path])
    with torch.no_grad():
        r = ref(**inputs(), return_dict=False)[0]
    assert rel_err(run(ours), r) <= TOL
    assert rel_err(r, run(base)) > 1e-3


def test_merge_without_backup(base, tmp_path):
    f = lora_factors(base, [Q0, "proj_out"], seed=24)
    _write_plain(tmp_path / "a.safetensors", f)
    g = gen(25)
    db = rnd(g, 64)
    save_file({"diffusion_model.proj_out.diff_b": db}, tmp_path / "b.safetensors")
    model = copy.deepcopy(base)
    h = apply_loras(model, [tmp_path / "a.safetensors", (tmp_path / "b.safetensors", 2.0)], backup=False)
    deltas = {n: B @ A * alpha / 4 for n, (A, B, alpha) in f.items()}
    assert rel_err(run(model), run(reference(base, deltas, {"proj_out": 2.0 * db}))) <= TOL
    with pytest.raises(LoraError, match="backup"):
        h.set_strength(0, 0.5)
    with pytest.raises(LoraError, match="backup"):
        h.remove()


class _Fp8Linear(torch.nn.Linear):
    """A stand-in for an fp8 layer: float8 weight, float32 scale, de-quantised for the matmul."""

    def __init__(self, linear):
        super().__init__(linear.in_features, linear.out_features, device="meta")
        scale = linear.weight.abs().max() / 448
        self.weight = torch.nn.Parameter((linear.weight / scale).to(torch.float8_e4m3fn), requires_grad=False)
        self.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.register_buffer("weight_scale", scale.detach().clone())
        self.compute_dtype = torch.float32

    def dequantized_weight(self, dtype=None):
        return self.weight.to(dtype or self.compute_dtype) * self.weight_scale.to(dtype or self.compute_dtype)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.dequantized_weight(x.dtype), self.bias.to(x.dtype))


def test_runtime_on_fp8_layers(base, tmp_path):
    model = copy.deepcopy(base)
    attn = model.get_submodule("transformer_blocks.0.attn")
    attn.to_q, attn.to_k = _Fp8Linear(attn.to_q), _Fp8Linear(attn.to_k)
    plain = copy.deepcopy(model)  # its fp8 layers, de-quantised, are the base weights the LoRA sees
    for n in (Q0, K0):
        parent, leaf = n.rsplit(".", 1)
        fp8 = plain.get_submodule(n)
        lin = torch.nn.Linear(DIM, DIM)
        with torch.no_grad():
            lin.weight.copy_(fp8.dequantized_weight(torch.float32))
            lin.bias.copy_(fp8.bias)
        setattr(plain.get_submodule(parent), leaf, lin)
    g = gen(26)
    A, B = rnd(g, 4, DIM), rnd(g, DIM, 4)
    W = plain.get_submodule(K0).weight
    m = W.norm(dim=1) * (1 + rnd(g, DIM))
    path = tmp_path / "fp8.safetensors"
    save_file({f"transformer.{Q0}.lora_A.weight": A, f"transformer.{Q0}.lora_B.weight": B,
               f"transformer.{K0}.lora_A.weight": A.clone(), f"transformer.{K0}.lora_B.weight": B.clone(),
               f"transformer.{K0}.lora_magnitude_vector": m}, path)
    with pytest.raises(LoraError, match="use mode='runtime'"):
        apply_loras(model, [path], mode="merge")
    snap = snapshot(model)
    h = apply_loras(model, [path], mode="runtime")
    want = run(reference(plain, {Q0: B @ A, K0: _dora(W, B @ A, m, "out", 0.0)}))
    assert rel_err(run(model), want) <= TOL
    h.remove()
    assert_bit_exact(model, snap)


def test_ambiguous_kohya_name_is_reported_not_guessed():
    """`a_b` could be module `a_b` or `a.b`: a kohya name that maps to two modules lands on neither."""
    toy = torch.nn.Module()
    toy.a_b = torch.nn.Linear(4, 4)
    toy.a = torch.nn.Module()
    toy.a.b = torch.nn.Linear(4, 4)
    toy.c = torch.nn.Linear(4, 4)
    sd = {"lora_unet_a_b.lora_down.weight": torch.ones(1, 4), "lora_unet_a_b.lora_up.weight": torch.ones(4, 1),
          "lora_unet_c.lora_down.weight": torch.ones(1, 4), "lora_unet_c.lora_up.weight": torch.ones(4, 1),
          "a.b.lora_A.weight": torch.ones(1, 4), "a.b.lora_B.weight": torch.ones(4, 1)}  # dotted: unambiguous
    rep = match_lora(toy, read_lora(sd, name="toy-lora"))
    assert rep.modules == ["a.b", "c"]
    assert "matches more than one module" in rep.not_landed["lora_unet_a_b.lora_down.weight"]
    assert rep.name == "toy-lora"
