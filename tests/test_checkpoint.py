"""load_transformer over every layout it accepts, and the clear errors it gives for everything it refuses."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from _tiny import random_tiny_transformer
from qwenimage.qwenimage_core import CheckpointError, QwenImageTransformer, load_transformer, preset
from qwenimage.qwenimage_core.checkpoint import save_comfyui_transformer, save_transformer

diffusers = pytest.importorskip("diffusers")


@pytest.fixture()
def model():
    return random_tiny_transformer()


def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 5, 24, generator=g),
                timestep=torch.tensor([0.5]), img_shapes=[(1, 4, 4)])


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_diffusers_folder_roundtrip_and_reference_reads_ours(tmp_path, model):
    save_transformer(model, tmp_path / "m" / "transformer")
    loaded = load_transformer(str(tmp_path / "m"))  # the model folder: transformer/ is found
    assert same_weights(model, loaded) and loaded.config == model.config
    assert not any(p.is_meta for p in loaded.parameters()) and not any(p.requires_grad for p in loaded.parameters())
    ref = diffusers.QwenImageTransformer2DModel.from_pretrained(tmp_path / "m" / "transformer")
    with torch.no_grad():
        assert torch.allclose(ref(**inputs(), return_dict=False)[0], loaded(**inputs()), atol=1e-5)


def test_sharded_folder_with_index(tmp_path, model):
    save_transformer(model, tmp_path / "t", max_shard_bytes=20_000)
    shards = [n for n in os.listdir(tmp_path / "t") if n.endswith(".safetensors")]
    assert len(shards) > 3 and os.path.isfile(tmp_path / "t" / "diffusion_pytorch_model.safetensors.index.json")
    assert same_weights(model, load_transformer(str(tmp_path / "t")))


def test_reference_sharded_save_loads(tmp_path):
    cfg = {k: v for k, v in preset("tiny").to_dict().items() if k != "_class_name"}
    ref = diffusers.QwenImageTransformer2DModel(**cfg)
    ref.save_pretrained(tmp_path / "r", max_shard_size="30KB")
    ours = load_transformer(str(tmp_path / "r"))
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_comfyui_single_file_bare_and_prefixed(tmp_path, model, prefix):
    state = {prefix + k: v for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "qwen_image_bf16.safetensors")  # no config metadata: inferred from shapes
    loaded = load_transformer(str(tmp_path / "qwen_image_bf16.safetensors"))
    assert same_weights(model, loaded)
    assert loaded.config.num_layers == 2 and loaded.config.inner_dim == 32 and loaded.config.joint_attention_dim == 24


def test_full_comfyui_checkpoint_ignores_other_components(tmp_path, model):
    state = {"model.diffusion_model." + k: v for k, v in model.state_dict().items()}
    state["vae.decoder.conv_in.weight"] = torch.zeros(3, 3)
    state["text_encoders.qwen25_7b.transformer.model.norm.weight"] = torch.ones(4)
    save_file(state, tmp_path / "full.safetensors")
    assert same_weights(model, load_transformer(str(tmp_path / "full.safetensors")))


def test_edit_2511_marker_key_loads_and_sets_zero_cond_t(tmp_path, model):
    state = dict(model.state_dict())
    state["__index_timestep_zero__"] = torch.zeros(0)
    save_file(state, tmp_path / "edit2511.safetensors")
    loaded = load_transformer(str(tmp_path / "edit2511.safetensors"))
    assert loaded.config.zero_cond_t and same_weights(model, loaded)
    save_comfyui_transformer(loaded, str(tmp_path / "ours.safetensors"), prefix="model.diffusion_model.")
    again = load_transformer(str(tmp_path / "ours.safetensors"))
    assert again.config.zero_cond_t and same_weights(model, again)


def test_official_shapes_infer_official_config():
    from qwenimage.qwenimage_core.checkpoint import infer_transformer_config

    with torch.device("meta"):
        full = QwenImageTransformer(preset("qwen-image"))
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    assert infer_transformer_config(shapes) == preset("qwen-image")
    assert infer_transformer_config(shapes, ["__index_timestep_zero__"]).zero_cond_t


def test_dtype_and_device_on_load(tmp_path, model):
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    bf = load_transformer(str(tmp_path / "m.safetensors"), dtype=torch.bfloat16, device="cpu")
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())
    assert torch.equal(bf.img_in.weight, model.img_in.weight.to(torch.bfloat16))
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in model.state_dict().items()}
    save_file(fp8, tmp_path / "fp8.safetensors")
    up = load_transformer(str(tmp_path / "fp8.safetensors"), weight_dtype=torch.bfloat16)  # de-quantised on request
    assert up.img_in.weight.dtype == torch.bfloat16
    assert torch.equal(up.img_in.weight, fp8["img_in.weight"].to(torch.bfloat16))


# ------------------------------------------------------------------------------------------------------ errors

def test_missing_key_is_named(tmp_path, model):
    state = dict(model.state_dict())
    del state["transformer_blocks.1.attn.to_k.weight"]
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*missing keys: 'transformer_blocks\.1\.attn\.to_k\.weight'"):
        load_transformer(str(tmp_path / "m.safetensors"), config=model.config)


def test_unexpected_key_is_named(tmp_path, model):
    state = dict(model.state_dict())
    state["transformer_blocks.0.attn.lora_A.weight"] = torch.zeros(2, 2)
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected keys: 'transformer_blocks\.0\.attn\.lora_A\.weight'"):
        load_transformer(str(tmp_path / "m.safetensors"))


def test_config_that_does_not_match_the_weights(tmp_path, model):
    save_transformer(model, tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["joint_attention_dim"] = 40
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config does not match the weights.*'txt_in\.weight'.*\[32, 24\].*\[32, 40\]"):
        load_transformer(str(tmp_path / "t"))


def test_unknown_config_field_is_named(tmp_path, model):
    save_transformer(model, tmp_path / "t")
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    cfg["use_quantum_rope"] = True
    (tmp_path / "t" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*use_quantum_rope"):
        load_transformer(str(tmp_path / "t"))


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a safetensors file"):
        load_transformer(str(p))


def test_truncated_file(tmp_path, model):
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: truncated file"):
        load_transformer(str(tmp_path / "cut.safetensors"))


def test_pickled_weights_are_refused_not_loaded(tmp_path, model):
    save_transformer(model, tmp_path / "t")
    os.remove(tmp_path / "t" / "diffusion_pytorch_model.safetensors")
    (tmp_path / "t" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match=r"pickled weights are never loaded"):
        load_transformer(str(tmp_path / "t"))


def test_missing_shard_and_missing_path(tmp_path, model):
    save_transformer(model, tmp_path / "t", max_shard_bytes=20_000)
    victim = sorted(n for n in os.listdir(tmp_path / "t") if n.endswith(".safetensors"))[1]
    os.remove(tmp_path / "t" / victim)
    with pytest.raises(CheckpointError, match=victim):
        load_transformer(str(tmp_path / "t"))
    with pytest.raises(CheckpointError, match="no such file"):
        load_transformer(str(tmp_path / "nope.safetensors"))


def test_a_vae_file_is_not_mistaken_for_a_transformer(tmp_path):
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4)}, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError, match="not a Qwen-Image transformer"):
        load_transformer(str(tmp_path / "vae.safetensors"))


def test_atomic_save_leaves_the_old_file_on_failure(tmp_path, model, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_comfyui_transformer(model, str(path))
    before = path.read_bytes()
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_comfyui_transformer(model, str(path))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.safetensors"]
    assert load_file(path).keys() == model.state_dict().keys()
