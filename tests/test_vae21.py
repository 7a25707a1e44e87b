"""The Qwen-Image 2.1 VAE against the reference (diffusers.AutoencoderKLQwenImage21) on tiny random configs, in
float32: RGBA encode (mean, log-variance) and decode, tiled decode and encode as diffusers tiles, the latent
statistics as the 2.1 pipeline applies them; the diffusers folder and Comfy-Org's single-file layout; detection
of the other VAE families. Parity measure: max |ours - reference| <= 1e-5 * max |reference|."""
import json

import pytest
import torch
from _util import rel_err
from safetensors.torch import load_file, save_file

from qwenimage.qwenimage_core.vae import LATENT_STATS_KEY, QwenImageVAE, VAEConfig, load_vae, save_comfyui_vae, save_vae
from qwenimage.qwenimage_core.vae21 import (QwenImage21VAE, VAE21Config, comfy21_to_diffusers,
                                            denormalize_latents21, diffusers_to_comfy21, load_vae21,
                                            normalize_latents21, save_comfyui_vae21, vae_family)
from qwenimage.qwenimage_core.weights import CheckpointError

diffusers = pytest.importorskip("diffusers")
TOL = 1e-5


def reference(seed=0, **over):
    """A tiny reference with weights perturbed off their init (norm gains != 1), so every layer matters."""
    cfg = {k: v for k, v in VAE21Config.tiny(**over).to_dict().items() if k != "_class_name"}
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKLQwenImage21(**cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g) if name.endswith("gamma")
                    else p + 0.05 * torch.randn(p.shape, generator=g))
    return ref


@pytest.fixture(scope="module")
def ref_folder(tmp_path_factory):
    ref = reference()
    folder = tmp_path_factory.mktemp("vae21") / "vae"
    ref.save_pretrained(folder)
    return ref, folder


def check(ref, ours, batch=2, h=32, w=48):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(batch, 4, 1, h, w, generator=g) * 2 - 1  # RGBA
    z = torch.randn(batch, ref.config.z_dim, 1, h // 16, w // 16, generator=g)
    with torch.no_grad():
        rd, od = ref.encode(x).latent_dist, ours.encode(x)
        assert od.mean.shape == rd.mean.shape == (batch, ref.config.z_dim, 1, h // 16, w // 16)
        assert rel_err(od.mean, rd.mean) <= TOL
        assert rel_err(od.logvar, rd.logvar) <= TOL
        assert torch.equal(ours.encode(x[:, :, 0]).mean, od.mean[:, :, 0])  # 4-D in, 4-D out
        out, want = ours.decode(z), ref.decode(z).sample
        assert out.shape == want.shape == (batch, 4, 1, h, w)
        assert rel_err(out, want) <= TOL


def test_rgba_parity_from_the_diffusers_folder(ref_folder):
    ref, folder = ref_folder
    ours = load_vae21(str(folder))
    assert ours.config == VAE21Config.tiny() and ours.scale_factor == 16
    check(ref, ours)


def test_parity_two_res_blocks_and_no_decoder_width():
    """num_res_blocks 2, decoder_base_dim None (= base_dim), every level temporal."""
    over = {"num_res_blocks": 2, "decoder_base_dim": None, "temperal_downsample": (True, True, True, True)}
    ref = reference(seed=1, **over)
    ours = QwenImage21VAE(VAE21Config.tiny(**over)).eval()
    ours.load_state_dict(ref.state_dict())
    check(ref, ours, batch=1, h=48, w=32)


@pytest.mark.parametrize("tile, overlap, hw", [(64, 16, (7, 8)), (64, 32, (5, 7)), (96, 32, (7, 3))])
def test_tiled_decode_and_encode_equal_the_reference(ref_folder, tile, overlap, hw):
    """Tiles every stride from 0, the last ones cut short (even below the overlap), blended as diffusers does."""
    ref, folder = ref_folder
    ours = load_vae21(str(folder))
    ours.enable_tiling(tile, overlap)
    ref.enable_tiling(tile, tile, tile - overlap, tile - overlap)
    g = torch.Generator().manual_seed(4)
    z = torch.randn(1, 8, 1, *hw, generator=g)
    x = torch.rand(1, 4, 1, hw[0] * 16, hw[1] * 16, generator=g) * 2 - 1
    try:
        with torch.no_grad():
            want = ref.decode(z).sample
            assert rel_err(ours.decode(z), want) <= TOL
            ours.disable_tiling()
            assert rel_err(ours.decode(z), want) > 1e-3  # tiling really ran
            ours.enable_tiling(tile, overlap)
            assert rel_err(ours.encode(x).mean, ref.encode(x).latent_dist.mean) <= TOL
    finally:
        ref.disable_tiling()


def test_latent_statistics_as_the_pipeline():
    """(z - mean) / std on the way in (the reference's _encode_vae_image), z * std + mean on the way out."""
    c = VAE21Config.tiny()
    z = torch.randn(2, 8, 1, 3, 5)
    mean, std = (torch.tensor(v).view(1, 8, 1, 1, 1) for v in (c.latents_mean, c.latents_std))
    assert torch.equal(normalize_latents21(z, c), (z - mean) / std)
    assert torch.equal(denormalize_latents21(z, c), z * std + mean)
    vae = QwenImage21VAE(c)
    assert torch.equal(vae.normalize_latents(z[:, :, 0]), normalize_latents21(z[:, :, 0], c))


def test_official_config_keys_and_shapes():
    """The official config builds exactly the reference's parameter names and shapes (on the meta device)."""
    with torch.device("meta"):
        ref = diffusers.AutoencoderKLQwenImage21()
        ours = QwenImage21VAE()
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    assert want["decoder.conv_in.weight"] == (1152, 64, 3, 3) and want["encoder.conv_in.weight"] == (96, 4, 3, 3)
    assert {k: v for k, v in VAE21Config().to_dict().items() if k != "_class_name"} == \
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in ref.config.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------- ComfyUI layout

# Comfy-Org's qwen_image_2.1_vae_bf16.safetensors: Wan-2.2 names, causal convolutions 5-D with kernel depth 1
COMFY_NAMES = {
    "conv1.weight": "quant_conv.weight",
    "conv2.bias": "post_quant_conv.bias",
    "encoder.conv1.weight": "encoder.conv_in.weight",
    "encoder.downsamples.0.downsamples.0.residual.2.weight": "encoder.down_blocks.0.resnets.0.conv1.weight",
    "encoder.downsamples.1.downsamples.0.shortcut.weight": "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    "encoder.downsamples.0.downsamples.2.resample.1.weight": "encoder.down_blocks.0.downsampler.resample.1.weight",
    "encoder.downsamples.1.downsamples.2.time_conv.weight": "encoder.down_blocks.1.downsampler.time_conv.weight",
    "encoder.middle.1.to_qkv.weight": "encoder.mid_block.attentions.0.to_qkv.weight",
    "encoder.head.0.gamma": "encoder.norm_out.gamma",
    "decoder.upsamples.0.upsamples.0.residual.2.weight": "decoder.up_blocks.0.resnets.0.conv1.weight",
    "decoder.upsamples.0.upsamples.2.residual.3.gamma": "decoder.up_blocks.0.resnets.2.norm2.gamma",
    "decoder.upsamples.0.upsamples.3.resample.1.weight": "decoder.up_blocks.0.upsampler.resample.1.weight",
    "decoder.upsamples.0.upsamples.3.time_conv.weight": "decoder.up_blocks.0.upsampler.time_conv.weight",
    "decoder.middle.2.residual.6.weight": "decoder.mid_block.resnets.1.conv2.weight",
    "decoder.head.2.weight": "decoder.conv_out.weight",
}


def test_comfyui_names_both_ways():
    for comfy, ours in COMFY_NAMES.items():
        assert comfy21_to_diffusers(comfy, 2) == ours and diffusers_to_comfy21(ours, 2) == comfy
    with torch.device("meta"):
        keys = QwenImage21VAE().state_dict()
    assert all(comfy21_to_diffusers(diffusers_to_comfy21(k, 2), 2) == k for k in keys)
    assert len({diffusers_to_comfy21(k, 2) for k in keys}) == len(keys)


@pytest.mark.parametrize("prefix", ["", "vae."])
def test_comfyui_single_file_loads_and_matches(tmp_path, prefix):
    """A tiny file under Comfy-Org's names and 5-D shapes (written here by hand from the reference's weights)."""
    ref = reference(seed=2, num_res_blocks=2)
    state = {}
    for k, v in ref.state_dict().items():
        five = k.endswith(".weight") and "conv" in k.rsplit(".", 2)[-2]  # every causal conv, not resample.1
        state[prefix + diffusers_to_comfy21(k, 2)] = (v[:, :, None] if five else v).contiguous()
    assert state[prefix + "decoder.head.2.weight"].shape == (4, 6, 1, 3, 3)
    assert state[prefix + "conv1.weight"].shape == (16, 16, 1, 1, 1)
    if prefix:  # other components of a full checkpoint are left alone
        state["model.diffusion_model.img_in.weight"] = torch.zeros(2, 2)
    path = tmp_path / "qwen_image_2.1_vae_bf16.safetensors"
    c = VAE21Config.tiny(num_res_blocks=2)
    stats = json.dumps({"mean": list(c.latents_mean), "std": list(c.latents_std)})  # not the official z_dim
    save_file(state, str(path), {LATENT_STATS_KEY: stats})
    ours = load_vae21(str(path))
    assert ours.config == c  # the architecture read off the shapes
    check(ref, ours, batch=1)
    # and our writer gives the very same file back
    save_comfyui_vae21(ours, tmp_path / "again.safetensors")
    again = load_file(str(tmp_path / "again.safetensors"))
    assert again.keys() == {k[len(prefix):] for k in state if k.startswith(prefix)}
    save_file({k: v for k, v in state.items() if k.startswith(prefix)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match=r"bare\.safetensors: latents_mean and latents_std need z_dim = 8"):
        load_vae21(str(tmp_path / "bare.safetensors"))  # no official statistics for 8 channels: said
    assert all(torch.equal(again[k[len(prefix):]], v) for k, v in state.items() if k.startswith(prefix))


def test_statistics_travel_in_comfyui_metadata(tmp_path):
    vae = QwenImage21VAE(VAE21Config.tiny())
    save_comfyui_vae21(vae, tmp_path / "v.safetensors")
    assert load_vae21(str(tmp_path / "v.safetensors")).config == vae.config
    save_vae(vae, tmp_path / "folder")
    assert json.loads((tmp_path / "folder" / "config.json").read_text())["_class_name"] == "AutoencoderKLQwenImage21"
    assert load_vae21(str(tmp_path / "folder")).config == vae.config


# ------------------------------------------------------------------------------------------ detection, errors

def test_families_by_keys(tmp_path):
    v21 = QwenImage21VAE(VAE21Config.tiny())
    v20 = QwenImageVAE(VAEConfig.tiny())
    shapes = lambda sd: {k: tuple(v.shape) for k, v in sd.items()}  # noqa: E731
    assert vae_family(shapes(v21.state_dict())) == "qwen-image-2.1"
    assert vae_family(shapes(v20.state_dict())) == "qwen-image"
    save_comfyui_vae21(v21, tmp_path / "c21.safetensors")
    save_comfyui_vae(v20, tmp_path / "c20.safetensors")
    assert vae_family(shapes(load_file(str(tmp_path / "c21.safetensors")))) == "qwen-image-2.1"
    assert vae_family(shapes(load_file(str(tmp_path / "c20.safetensors")))) == "qwen-image"
    wan22 = {"encoder.conv1.weight": (160, 12, 3, 3, 3),
             "encoder.downsamples.0.downsamples.0.residual.2.weight": (160, 160, 3, 3, 3)}
    assert vae_family(wan22) == "wan-2.2"
    assert vae_family({"img_in.weight": (2, 2)}) is None
    # a 20B VAE handed to the 2.1 loader (and the other way round) is named, not half-loaded
    with pytest.raises(CheckpointError, match=r"c20\.safetensors: not a Qwen-Image 2\.1 VAE: this is the Qwen-Image "
                                              r"\(20B\)"):
        load_vae21(str(tmp_path / "c20.safetensors"))
    save_vae(v20, tmp_path / "f20")
    with pytest.raises(CheckpointError, match=r"f20: not a Qwen-Image 2\.1 VAE: this is the Qwen-Image \(20B\)"):
        load_vae21(str(tmp_path / "f20"))
    save_vae(v21, tmp_path / "f21")
    for where, path in (("c21.safetensors", tmp_path / "c21.safetensors"), ("f21", tmp_path / "f21")):
        with pytest.raises(CheckpointError, match=rf"{where}: this is the Qwen-Image 2\.1 VAE .*load_vae21.*, not the "
                                                  r"Qwen-Image \(20B\) VAE"):
            load_vae(str(path))


def test_errors_name_file_and_key(tmp_path, ref_folder):
    _, folder = ref_folder
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))

    def fails(name, tensors, pattern):
        save_file(tensors, str(tmp_path / name))
        with pytest.raises(CheckpointError, match=pattern):
            load_vae21(str(tmp_path / name), config=VAE21Config.tiny())

    fails("missing.safetensors", {k: v for k, v in state.items() if k != "decoder.conv_in.bias"},
          r"missing\.safetensors.*missing keys: 'decoder\.conv_in\.bias'")
    fails("shape.safetensors", {**state, "decoder.conv_in.bias": torch.zeros(3)},
          r"shape\.safetensors.*shape mismatch.*'decoder\.conv_in\.bias'")
    fails("other.safetensors", {"img_in.weight": torch.zeros(2, 2)},
          r"other\.safetensors: not a Qwen-Image 2\.1 VAE: this is no VAE we know")
    cfg = json.loads((folder / "config.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**cfg, "is_residual": False}))
    save_file(state, str(bad / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match=r"config\.json: is_residual = False"):
        load_vae21(str(bad))
    (bad / "config.json").write_text(json.dumps({**cfg, "num_res_blocks": "20000"}))
    with pytest.raises(CheckpointError, match=r"config\.json: config field 'num_res_blocks' = '20000' must be a posi"):
        load_vae21(str(bad))


def test_bad_inputs():
    vae = QwenImage21VAE(VAE21Config.tiny())
    with pytest.raises(ValueError, match="image size 40x32 must be a multiple of 16"):
        vae.encode(torch.zeros(1, 4, 32, 40))
    with pytest.raises(ValueError, match="encodes 4-channel \\(RGBA\\) images, got 3 channels"):
        vae.encode(torch.zeros(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match="decodes 8-channel latents, got 16 channels"):
        vae.decode(torch.zeros(1, 16, 2, 2))
    with pytest.raises(ValueError, match="multiples of 16"):
        vae.enable_tiling(tile=72)
    with pytest.raises(ValueError, match="at most half the tile"):
        vae.enable_tiling(tile=64, overlap=48)
