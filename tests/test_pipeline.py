"""The five pipelines end to end against the reference: each diffusers pipeline is built from tiny random
components, saved with `save_pretrained`, loaded back through `load_pipeline`, and both are run with the same
seed, settings and inputs; the images must agree within 2/255 per pixel, with and without true CFG.

The edit references run their text encoder through `ForwardTokenTypes` (the diffusers#14194 fix that our
encoder applies by default; see test_text_encoder.py), so the vision tokens get Qwen2.5-VL's 3D positions in both.
"""
import json

import numpy as np
import pytest
import torch
from _tiny import (ForwardTokenTypes, reference_processor, smooth_image, tiny_text_encoder,
                   tiny_transformer, tiny_vae, official_scheduler)
from _util import rel_err
from PIL import Image, ImageDraw

from qwenimage.qwenimage_core import pipeline as pl
from qwenimage.qwenimage_core.sampling import Interrupted
from qwenimage.qwenimage_core.text_encoder import default_image_processor

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

STEPS = 3
MAX_PIXEL_DIFF = 2  # of 255
NEG = "blurry, low quality"
CLASSES = {
    "t2i": "QwenImagePipeline", "img2img": "QwenImageImg2ImgPipeline", "inpaint": "QwenImageInpaintPipeline",
    "edit": "QwenImageEditPipeline", "edit_plus": "QwenImageEditPlusPipeline",
}


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def parts(tokenizer):
    te = tiny_text_encoder(len(tokenizer))
    return dict(transformer=tiny_transformer(), vae=tiny_vae(), text_encoder=te, tokenizer=tokenizer,
                scheduler=official_scheduler(),
                processor=reference_processor(tokenizer, default_image_processor()))


def _reference(kind, parts, fixed_te=False, processor=True):
    cls = getattr(diffusers, CLASSES[kind])
    kw = {k: v for k, v in parts.items() if k != "processor" or kind.startswith("edit")}
    if fixed_te:
        kw["text_encoder"] = ForwardTokenTypes(parts["text_encoder"],
                                               parts["tokenizer"].convert_tokens_to_ids("<|image_pad|>"))
    if not processor and "processor" in kw:
        kw["processor"] = None
    pipe = cls(**kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_reference(kind, parts, folder):
    """save_pretrained, except the edit pipelines' processor: transformers cannot save a Qwen2VLProcessor whose
    video half is missing (no torchvision here), so its two real halves are saved into processor/ as the hub
    folders hold them, and model_index.json names it as save_pretrained would."""
    _reference(kind, parts, processor=False).save_pretrained(folder)
    if kind.startswith("edit"):
        parts["processor"].image_processor.save_pretrained(folder / "processor")
        parts["tokenizer"].save_pretrained(folder / "processor")
        index = json.loads((folder / "model_index.json").read_text())
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
        (folder / "model_index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def saved(parts, tmp_path_factory):
    """kind -> (reference pipeline to run, our pipeline loaded from the reference's saved folder, the folder)."""
    root = tmp_path_factory.mktemp("models")
    cache = {}

    def get(kind):
        if kind not in cache:
            folder = root / kind
            save_reference(kind, parts, folder)
            ours = pl.load_pipeline(str(folder), dtype=torch.float32)
            cache[kind] = (_reference(kind, parts, fixed_te=kind.startswith("edit")), ours, folder)
        return cache[kind]

    return get


def _pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def run_pair(ref, ours, *, cfg, ref_kwargs, our_kwargs, seed=7):
    neg = NEG if cfg > 1 else None
    prompt = ref_kwargs.get("prompt")
    ref_neg = [neg] * len(prompt) if neg and isinstance(prompt, list) else neg  # the reference wants one each
    r = ref(negative_prompt=ref_neg, true_cfg_scale=cfg, num_inference_steps=STEPS,
            generator=torch.Generator("cpu").manual_seed(seed), output_type="pil", **ref_kwargs).images
    o = ours.generate(negative_prompt=neg, cfg=cfg, steps=STEPS, seed=seed, **our_kwargs)
    a, b = _pixels(o), _pixels(r)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a - b).max()
    assert diff <= MAX_PIXEL_DIFF, f"max pixel difference {diff}/255"
    assert a.std() > 5  # a real picture, not a constant that would match anything
    return o


def mask_image(w, h):
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).rectangle([w // 4, h // 3, 3 * w // 4, h - 4], fill=255)
    return m


# ------------------------------------------------------------------------------------------------ parity

@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_text_to_image_batch_of_prompts(saved, cfg):
    ref, ours, _ = saved("t2i")
    kw = dict(prompt=["A red fox in the snow.", "A neon sign that reads 'Qwen', rainy night street, reflections"],
              height=48, width=80)
    run_pair(ref, ours, cfg=cfg, ref_kwargs=kw, our_kwargs=kw)


@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_text_to_image_several_per_prompt(saved, cfg):
    # One prompt: the reference repeats a list of prompts' embeddings as [p0, p0, p1, p1] but their padding masks
    # as [m0, m1, m0, m1] (`mask.repeat(1, n, 1)` on a 2-D mask), so with several padded prompts and n > 1 its
    # middle images use the wrong mask. Ours keeps each mask with its prompt; parity is checked where the
    # reference is right.
    ref, ours, _ = saved("t2i")
    kw = dict(prompt="A lighthouse at dusk", height=32, width=64)
    run_pair(ref, ours, cfg=cfg, ref_kwargs=dict(**kw, num_images_per_prompt=2), our_kwargs=dict(**kw, num_images=2))


def test_several_per_prompt_keep_their_prompt_mask(saved):
    _, ours, _ = saved("t2i")
    prompts = ["A cat.", "A red fox jumping over a sleeping dog in a snowy forest"]
    both = ours.generate(prompts, width=32, height=32, steps=2, cfg=1.0, seed=[1, 2, 3, 4], num_images=2)
    alone = ours.generate(prompts[0], width=32, height=32, steps=2, cfg=1.0, seed=[2], num_images=1)
    # item 1 is prompt 0 with seed 2; padding to the longer prompt's length must not change it
    assert np.abs(_pixels(both[1:2]) - _pixels(alone)).max() <= 1


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_image_to_image(saved, cfg):
    ref, ours, _ = saved("img2img")
    img = smooth_image(64, 48, seed=3)
    kw = dict(prompt="A watercolor landscape", image=img, height=48, width=64, strength=0.7)
    run_pair(ref, ours, cfg=cfg, ref_kwargs=kw, our_kwargs=kw)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_inpaint(saved, cfg):
    ref, ours, _ = saved("inpaint")
    img, mask = smooth_image(64, 64, seed=4), mask_image(64, 64)
    kw = dict(prompt="A cat sitting on the sofa", image=img, height=64, width=64, strength=0.9)
    out = run_pair(ref, ours, cfg=cfg, ref_kwargs=dict(**kw, mask_image=mask), our_kwargs=dict(**kw, mask=mask))
    assert out[0].size == (64, 64)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_edit(saved, cfg):
    ref, ours, _ = saved("edit")
    assert ours.edit_template == "edit"
    kw = dict(prompt="Turn the sky purple", height=48, width=64)
    run_pair(ref, ours, cfg=cfg, ref_kwargs=dict(**kw, image=smooth_image(96, 64, 5)),
             our_kwargs=dict(**kw, references=[smooth_image(96, 64, 5)]))


def test_edit_default_size_follows_the_reference_image(saved):
    ref, ours, _ = saved("edit")
    out = run_pair(ref, ours, cfg=1.0, ref_kwargs=dict(prompt="Add a hat", image=smooth_image(40, 60, 6)),
                   our_kwargs=dict(prompt="Add a hat", references=smooth_image(40, 60, 6)))
    assert out[0].size == (832, 1248)  # about a megapixel at 2:3, rounded to 32, as the reference


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_edit_plus_two_references(saved, cfg):
    ref, ours, _ = saved("edit_plus")
    assert ours.edit_template == "edit_plus"
    refs = [smooth_image(96, 64, 8), smooth_image(50, 70, 9)]
    kw = dict(prompt="Picture 1 person wears the jacket from picture 2", height=48, width=48)
    run_pair(ref, ours, cfg=cfg, ref_kwargs=dict(**kw, image=refs), our_kwargs=dict(**kw, references=refs))


# ----------------------------------------------------------------------------------- behaviour and errors

def test_callback_sees_every_step_and_interrupt_stops(saved):
    _, ours, _ = saved("t2i")
    seen = []
    ours.generate("a house", width=32, height=32, steps=4, cfg=1.0,
                  callback=lambda i, n, x, x0: seen.append((i, n, tuple(x.shape), tuple(x0.shape))))
    assert seen == [(i, 4, (1, 4, 64), (1, 4, 64)) for i in range(4)]
    calls = []
    with pytest.raises(Interrupted):
        ours.generate("a house", width=32, height=32, steps=4, cfg=1.0,
                      interrupt=lambda: calls.append(1) or len(calls) > 2)
    assert len(calls) == 3


def test_seed_list_reproduces_each_image_alone(saved):
    _, ours, _ = saved("t2i")
    both = ours.generate(["a boat", "a boat"], width=32, height=32, steps=2, cfg=1.0, seed=[5, 9])
    alone = ours.generate("a boat", width=32, height=32, steps=2, cfg=1.0, seed=[9])
    assert np.array_equal(np.asarray(both[1]), np.asarray(alone[0]))
    assert not np.array_equal(np.asarray(both[0]), np.asarray(both[1]))


def test_size_not_a_multiple_of_16_is_refused_with_the_rounding(saved):
    _, ours, _ = saved("t2i")
    with pytest.raises(ValueError, match=r"width 100 .*96 or 112"):
        ours.generate("x", width=100, height=64, steps=1)


def test_missing_reference_and_wrong_mask(saved):
    _, ours, _ = saved("edit_plus")
    with pytest.raises(ValueError, match=r"references\[1\] is missing"):
        ours.generate("x", references=[smooth_image(32, 32, 1), None], steps=1)
    with pytest.raises(ValueError, match="1 to 3"):
        ours.generate("x", references=[smooth_image(32, 32, 1)] * 4, steps=1)
    _, ours, _ = saved("inpaint")
    with pytest.raises(ValueError, match=r"mask is 32x32 but the image is 64x64"):
        ours.generate("x", image=smooth_image(64, 64, 1), mask=mask_image(32, 32), steps=1)


def test_folder_missing_a_component(saved, tmp_path):
    import shutil

    _, _, folder = saved("t2i")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(FileNotFoundError, match=r"broken.*missing vae/"):
        pl.load_pipeline(str(broken))


def test_t2i_model_refuses_edits(saved):
    _, ours, _ = saved("t2i")
    with pytest.raises(ValueError, match="not an edit model"):
        ours.generate("x", references=[smooth_image(32, 32, 1)], steps=1)


# ----------------------------------------------------------------------------------------- command line

def test_generate_command_writes_a_png_with_its_settings(saved, tmp_path, capsys):
    from qwenimage.cli import main

    _, ours, folder = saved("t2i")
    out = tmp_path / "out" / "fox.png"
    rc = main(["generate", str(folder), "-p", "a fox", "-W", "48", "-H", "32", "--steps", "2", "--cfg", "2.5",
               "--seed", "3", "--dtype", "float32", "-o", str(out)])
    assert rc == 0
    with Image.open(out) as im:
        im.load()
        assert im.size == (48, 32) and im.format == "PNG"
        settings = json.loads(im.text["qwenimage"])
        assert "Steps: 2" in im.text["parameters"] and "Seed: 3" in im.text["parameters"]
        got = np.asarray(im)
    assert settings["prompt"] == "a fox" and settings["cfg"] == 2.5 and settings["seed"] == 3
    want = ours.generate("a fox", width=48, height=32, steps=2, cfg=2.5, seed=3)[0]
    assert np.array_equal(got, np.asarray(want))
    assert [p.name for p in out.parent.iterdir()] == ["fox.png"]  # no temporary file left behind


def test_generate_command_errors_are_clean(saved, tmp_path, capsys):
    from qwenimage.cli import main

    _, _, folder = saved("t2i")
    out = tmp_path / "x.png"
    assert main(["generate", str(folder), "-p", "x", "-W", "50", "-H", "32", "-o", str(out)]) == 2
    assert "width 50" in capsys.readouterr().err
    assert main(["generate", str(folder), "-p", "x", "-r", str(tmp_path / "nope.png"), "-o", str(out)]) == 2
    assert "reference image not found" in capsys.readouterr().err
    assert not out.exists()


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from qwenimage.cli import main

    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import by some hub versions, at call time by others
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["download", "qwen-image-edit-2509", "--dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "could not download Qwen/Qwen-Image-Edit-2509" in err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("*.safetensors"))
    assert main(["download", "qwen-image-9000"]) == 2
    assert "unknown model 'qwen-image-9000'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- LoRA and low VRAM

def test_load_lora_changes_the_image_and_unload_restores_it(saved, tmp_path):
    from qwenimage.qwenimage_core import save_lora

    _, ours, _ = saved("t2i")
    kw = dict(prompt="a red barn", width=32, height=32, steps=2, cfg=1.0, seed=1)
    base = _pixels(ours.generate(**kw))
    weights = {n: p.detach().clone() for n, p in ours.transformer.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    dim = ours.transformer.config.inner_dim
    loras = {f"transformer_blocks.{i}.attn.{m}": (torch.randn(4, dim, generator=g), torch.randn(dim, 4, generator=g))
             for i in range(2) for m in ("to_q", "to_v", "add_k_proj")}
    save_lora(tmp_path / "style.safetensors", loras)
    report = ours.load_lora(str(tmp_path / "style.safetensors"), strength=0.8)
    assert len(report.landed) == 12 and not report.not_landed
    assert np.abs(_pixels(ours.generate(**kw)) - base).max() > 10
    ours.unload_loras()
    assert all(torch.equal(p, weights[n]) for n, p in ours.transformer.state_dict().items())
    assert np.array_equal(_pixels(ours.generate(**kw)), base)


def test_vram_budget_streams_blocks_and_gives_the_same_image(saved, monkeypatch):
    from qwenimage.qwenimage_core import offload

    _, ours, folder = saved("t2i")
    kw = dict(prompt="a red barn", width=32, height=32, steps=2, cfg=3.0, seed=1)
    want = _pixels(ours.generate(**kw))
    # the tiny model fits any real budget; force the plan a 12 GB budget gives the 20B model: one block
    # resident, the rest streamed, text encoder streamed layer by layer
    monkeypatch.setattr(offload, "plan_for_budget", lambda *a, **k: offload.VramPlan(1, True, True, "forced"))
    low = pl.load_pipeline(str(folder), device="cpu", dtype=torch.float32, vram_budget_gb=12)
    assert low.transformer._block_swap.resident == 1 and low.placement.plan.detail == "forced"
    # bit-identical math; on this CPU the copies' memory alignment (vs. the memory-mapped weights) may pick
    # another GEMM summation order, hence float32 round-off, no more
    got = low.generate(**kw, output_type="latent")
    ref = ours.generate(**kw, output_type="latent")
    assert rel_err(got, ref) < 1e-5
    assert np.abs(_pixels(low.decode(got, 32, 32)) - want).max() <= 1
    assert low.transformer._block_swap.max_loaded <= 2


def test_three_comfyui_files_give_the_folder_result(saved, parts, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from qwenimage.qwenimage_core import save_comfyui_transformer
    from qwenimage.qwenimage_core import text_encoder as te

    _, ours, _ = saved("t2i")
    d = tmp_path / "comfy"
    d.mkdir()
    save_comfyui_transformer(ours.transformer, str(d / "qwen_image_bf16.safetensors"))
    inner = parts["text_encoder"].model
    save_file({te.model_name_to_disk_key(n): t.contiguous() for n, t in inner.state_dict().items()},
              str(d / "qwen_2.5_vl_7b.safetensors"))
    save_file({k: v.contiguous() for k, v in parts["vae"].state_dict().items()}, str(d / "qwen_image_vae.safetensors"))
    parts["tokenizer"].save_pretrained(d / "tokenizer")  # found next to the text encoder file
    # the single file carries no config: a real one is Qwen2.5-VL-7B, this one is tiny
    monkeypatch.setattr(te, "official_text_encoder_config", lambda: parts["text_encoder"].config)
    three = pl.load_pipeline([str(d / "qwen_image_bf16.safetensors"), str(d / "qwen_2.5_vl_7b.safetensors"),
                              str(d / "qwen_image_vae.safetensors")], dtype=torch.float32)
    kw = dict(prompt="a red barn", width=48, height=32, steps=2, cfg=2.0, seed=4)
    assert np.abs(_pixels(three.generate(**kw)) - _pixels(ours.generate(**kw))).max() <= 1
    with pytest.raises(FileNotFoundError, match="vae file not found"):
        pl.load_pipeline([str(d / "qwen_image_bf16.safetensors"), str(d / "qwen_2.5_vl_7b.safetensors"),
                          str(d / "nope.safetensors")])
