"""The VAE against the reference (diffusers.AutoencoderKLQwenImage) on weights the reference saved itself, in
float32: encode (mean, log-variance, seeded sample), decode, latent normalisation; every file layout; errors."""
import json
import os

import pytest
import torch
from _tiny import official
from _util import rel_err
from safetensors.torch import save_file

from qwenimage.qwenimage_core.vae import (QwenImageVAE, VAEConfig, comfy_to_diffusers, load_vae, save_vae)
from qwenimage.qwenimage_core.weights import CheckpointError

diffusers = pytest.importorskip("diffusers")
TOL = 1e-4


def make_reference(tmp_path, seed=0, **over):
    cfg = official("vae")
    cfg.update(base_dim=8, num_res_blocks=1, **over)
    torch.manual_seed(seed)
    ref = diffusers.AutoencoderKLQwenImage(**cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g) if name.endswith("gamma")
                    else p + 0.05 * torch.randn(p.shape, generator=g))
    folder = tmp_path / f"vae_{seed}_{'_'.join(map(str, over.values()))}"
    ref.save_pretrained(folder)
    return ref, folder


def check(ref, ours, batch=2, h=48, w=80):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(batch, 3, 1, h, w, generator=g) * 2 - 1
    with torch.no_grad():
        rd, od = ref.encode(x).latent_dist, ours.encode(x)
        assert rel_err(od.mean, rd.mean) <= TOL
        assert rel_err(od.logvar, rd.logvar) <= TOL
        assert rel_err(od.sample(torch.Generator().manual_seed(5)),
                       rd.sample(torch.Generator().manual_seed(5))) <= TOL
        z = torch.randn(batch, 16, 1, h // 8, w // 8, generator=g)
        out, want = ours.decode(z), ref.decode(z).sample
        assert out.shape == want.shape == (batch, 3, 1, h, w)
        assert rel_err(out, want) <= TOL
        assert torch.equal(ours.decode(z[:, :, 0]), out[:, :, 0])  # 4-D in, 4-D out, same numbers


# (attn_scales is not tested: the reference itself cannot run encoder attention blocks)
@pytest.mark.parametrize("over", [{}, {"temperal_downsample": [True, True, False]}])
def test_parity_with_the_reference(tmp_path, over):
    ref, folder = make_reference(tmp_path, **over)
    ours = load_vae(str(folder))
    check(ref, ours)


def test_latent_normalisation_as_the_pipelines(tmp_path):
    ref, folder = make_reference(tmp_path)
    ours = load_vae(str(folder))
    z = torch.randn(2, 16, 1, 4, 6)
    mean = torch.tensor(ref.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(ref.config.latents_std).view(1, 16, 1, 1, 1)
    assert torch.equal(ours.normalize_latents(z), (z - mean) * inv_std)
    assert torch.equal(ours.denormalize_latents(z), z / inv_std + mean)


def test_official_config_keys_and_shapes(reference_dir):
    want = {}
    with open(os.path.join(reference_dir, "vae_keys_diffusers.tsv")) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                k, shape = line.rstrip("\n").split("\t")[:2]
                want[k] = tuple(int(s) for s in shape.split("x"))
    with torch.device("meta"):
        model = QwenImageVAE(VAEConfig())
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want


def test_comfyui_names_map_onto_diffusers(reference_dir):
    pairs = []
    with open(os.path.join(reference_dir, "vae_keys_comfyui_to_diffusers.tsv")) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                pairs.append(line.rstrip("\n").split("\t")[:2])
    assert len(pairs) == 194
    assert [comfy_to_diffusers(c) for c, _ in pairs] == [d for _, d in pairs]


def _comfy_state(ref, reference_dir):
    to_comfy = {}
    with open(os.path.join(reference_dir, "vae_keys_comfyui_to_diffusers.tsv")) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                c, d = line.rstrip("\n").split("\t")[:2]
                to_comfy[d] = c
    return {to_comfy[k]: v.contiguous() for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "vae."])
def test_comfyui_single_file_and_full_checkpoint(tmp_path, reference_dir, prefix):
    cfg = official("vae")
    cfg.update(base_dim=8)  # official depth and block counts, so every ComfyUI name exists
    torch.manual_seed(1)
    ref = diffusers.AutoencoderKLQwenImage(**cfg).eval()
    state = {prefix + k: v for k, v in _comfy_state(ref, reference_dir).items()}
    if prefix:
        state["model.diffusion_model.img_in.weight"] = torch.zeros(2, 2)  # other components are ignored
    path = tmp_path / "qwen_image_vae.safetensors"
    save_file(state, str(path))
    ours = load_vae(str(path))
    assert ours.config.num_res_blocks == 2 and ours.config.dim_mult == (1, 2, 4, 4)
    assert ours.config.temperal_downsample == (False, True, True)
    check(ref, ours, batch=1, h=32, w=32)


def test_save_and_dtype(tmp_path):
    ref, folder = make_reference(tmp_path)
    ours = load_vae(str(folder), dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    save_vae(load_vae(str(folder)), tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["base_dim"] == 8
    check(ref, load_vae(str(tmp_path / "again")))


@pytest.mark.parametrize("kind", ["decode", "encode"])
def test_tile_blending_is_exact_for_a_local_map(kind):
    """Tiling a per-pixel map must give back the untiled result exactly: the ramps sum to one everywhere and
    every tile lands where it belongs (odd sizes, a last tile flush with the edge)."""
    vae = QwenImageVAE(VAEConfig(base_dim=8, num_res_blocks=1))
    vae.enable_tiling(tile=96, overlap=32)
    g = torch.Generator().manual_seed(0)
    if kind == "decode":
        x = torch.randn(1, 16, 19, 27, generator=g)
        fn = lambda t: torch.nn.functional.interpolate(t, scale_factor=8, mode="nearest")[:, :3] * 2  # noqa: E731
        out, want = vae._tiled(fn, x, 8), fn(x)
    else:
        x = torch.randn(1, 3, 152, 216, generator=g)
        fn = lambda t: torch.nn.functional.avg_pool2d(t, 8).repeat(1, 8, 1, 1)  # noqa: E731
        out, want = vae._tiled(fn, x, 1 / 8), fn(x)
    assert out.shape == want.shape
    assert torch.allclose(out, want, atol=1e-6)


def test_tiled_vae_is_close_to_untiled(tmp_path):
    _, folder = make_reference(tmp_path)
    vae = load_vae(str(folder))
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, 8, 12, generator=g)
    x = torch.nn.functional.interpolate(small, size=(160, 224), mode="bicubic").clamp(0, 1) * 2 - 1
    with torch.no_grad():
        full_z = vae.encode(x).mean
        full_x = vae.decode(full_z)
        vae.enable_tiling(tile=128, overlap=64)
        tiled_z, tiled_x = vae.encode(x).mean, vae.decode(full_z)
    assert tiled_z.shape == full_z.shape and tiled_x.shape == full_x.shape
    assert not torch.equal(tiled_x, full_x)  # tiling really ran
    # Tiles see less context at their borders. A trained VAE is local enough for that to be invisible at the
    # default 256/64 tiles; these random weights reach across the whole image, so only a loose bound holds.
    assert (tiled_z - full_z).abs().mean() < 0.1 * full_z.abs().mean()
    assert (tiled_x - full_x).abs().mean() < 0.2 * full_x.abs().mean()


def test_errors_name_file_and_key(tmp_path):
    _, folder = make_reference(tmp_path)
    wfile = folder / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(wfile))
    bad = dict(state)
    del bad["decoder.conv_in.bias"]
    save_file(bad, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing\.safetensors.*missing keys: 'decoder\.conv_in\.bias'"):
        load_vae(str(tmp_path / "missing.safetensors"))
    bad = dict(state, **{"decoder.conv_in.bias": torch.zeros(3)})
    save_file(bad, str(tmp_path / "shape.safetensors"))
    with pytest.raises(CheckpointError, match=r"shape\.safetensors.*'decoder\.conv_in\.bias'"):
        load_vae(str(tmp_path / "shape.safetensors"))
    bad = dict(state, **{"decoder.extra.weight": torch.zeros(3)})
    save_file(bad, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"extra\.safetensors.*unexpected keys: 'decoder\.extra\.weight'"):
        load_vae(str(tmp_path / "extra.safetensors"))
    data = wfile.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors"):
        load_vae(str(tmp_path / "cut.safetensors"))
    with pytest.raises(CheckpointError, match="no vae/ folder"):
        load_vae(str(tmp_path))


def test_bad_sizes():
    vae = QwenImageVAE(VAEConfig(base_dim=8, num_res_blocks=1))
    with pytest.raises(ValueError, match="image size 50x48 must be a multiple of 8"):
        vae.encode(torch.zeros(1, 3, 48, 50))
    with pytest.raises(ValueError, match="one frame"):
        vae.decode(torch.zeros(1, 16, 2, 4, 4))
