"""The node pack: loaded the way ComfyUI loads it, every node's class contract, the shipped workflows (UI and API
formats agree, and each runs on tiny stand-in models), graphs give the core pipeline's images, and bad input
gets a message a user understands."""
import glob
import importlib.util
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _graph import is_widget, run_prompt, speed_up, ui_to_api
from _models import FILES, write_input_images, write_tiny_models

from qwenimage.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, host
from qwenimage.nodes.builtins import BUILTIN_NODE_CLASS_MAPPINGS
from qwenimage.qwenimage_core import QwenImage
from qwenimage.qwenimage_core.lora import LoraError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
EDIT_AREA = 128 * 128
ALL = {**BUILTIN_NODE_CLASS_MAPPINGS, **NODE_CLASS_MAPPINGS}
# ComfyUI's own node names (core and comfy_extras) that ours must never take
COMFY_BUILTINS = {
    "KSampler", "KSamplerAdvanced", "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPLoader", "DualCLIPLoader",
    "UNETLoader", "VAELoader", "VAEDecode", "VAEEncode", "VAEDecodeTiled", "VAEEncodeTiled", "VAEEncodeForInpaint",
    "EmptyLatentImage", "EmptySD3LatentImage", "LoraLoader", "LoraLoaderModelOnly", "LoadImage", "SaveImage",
    "PreviewImage", "ImageScale", "SetLatentNoiseMask", "ModelSamplingAuraFlow", "TextEncodeQwenImageEdit",
    "TextEncodeQwenImageEditPlus", "CFGNorm", "ConditioningZeroOut", "EmptyQwenImageLayeredLatentImage",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tokenizer):
    """A models folder with tiny models under the real files' names, input pictures, an output folder; edits
    at 128x128 pixels rather than a megapixel (the tiny models would take minutes on a CPU)."""
    import qwenimage.qwenimage_core.pipeline as pl

    mp = pytest.MonkeyPatch()
    mp.setattr(pl, "EDIT_AREA", EDIT_AREA)
    root = tmp_path_factory.mktemp("comfy")
    paths = write_tiny_models(root / "models", len(tokenizer))
    inputs = write_input_images(root / "input")
    old = (host.models_dir(), host.input_dir(), host.output_dir(), host.temp_dir())
    host.set_models_dir(root / "models")
    host.set_dirs(input=root / "input", output=root / "output", temp=root / "temp")
    yield {"root": root, "paths": paths, "inputs": inputs}
    host.set_models_dir(old[0])
    host.set_dirs(*old[1:])
    host.free_memory()
    mp.undo()


def _run(prompt, **kw):
    return run_prompt(prompt, ALL, **kw)


def _node(name, **inputs):
    cls = NODE_CLASS_MAPPINGS[name]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def _api(name):
    with open(os.path.join(REPO, "workflows", "api", f"{name}.json"), encoding="utf-8") as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------------------------- loading

def test_pack_loads_the_way_comfyui_loads_it(monkeypatch):
    # ComfyUI: module name = the folder's path with '.' -> '_x_', spec from its __init__.py, exec_module
    name = REPO.replace(".", "_x_") + "-custom"
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    had_nodes = "nodes" in sys.modules
    spec.loader.exec_module(module)
    assert set(module.NODE_CLASS_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    assert set(module.NODE_DISPLAY_NAME_MAPPINGS) == set(module.NODE_CLASS_MAPPINGS)
    assert ("nodes" in sys.modules) == had_nodes, "the pack must not register a top-level 'nodes' module"
    assert not set(module.NODE_CLASS_MAPPINGS) & set(BUILTIN_NODE_CLASS_MAPPINGS), "builtins are server-only"


def test_pyproject_has_the_registry_section():
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        comfy = tomllib.load(fh)["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert os.path.isfile(os.path.join(REPO, "requirements.txt"))


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_node_class_contract(name):
    cls = NODE_CLASS_MAPPINGS[name]
    assert name.startswith("QwenImage") and name not in COMFY_BUILTINS
    assert NODE_DISPLAY_NAME_MAPPINGS[name]
    spec = cls.INPUT_TYPES()
    assert isinstance(spec, dict) and isinstance(spec.get("required"), dict)
    assert set(spec) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for inp, entry in spec.get(section, {}).items():
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (name, inp)
            typ, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            assert isinstance(typ, (str, list)), (name, inp)
            assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
            if isinstance(typ, list):
                assert typ and all(isinstance(v, str) for v in typ), (name, inp)
                assert opts.get("default", typ[0]) in typ, (name, inp)
            elif typ in ("INT", "FLOAT"):
                lo, hi, d = opts["min"], opts["max"], opts["default"]
                assert lo <= d <= hi, (name, inp, lo, d, hi)
                assert opts.get("step", 1) > 0
                assert isinstance(d, int) if typ == "INT" else isinstance(d, float)
            elif typ == "BOOLEAN":
                assert isinstance(opts["default"], bool)
            elif typ == "STRING":
                assert isinstance(opts.get("default", ""), str)
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    assert len(getattr(cls, "OUTPUT_TOOLTIPS", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    assert callable(getattr(cls, cls.FUNCTION))
    assert cls.CATEGORY.startswith("Qwen-Image/") and cls.DESCRIPTION


# ---------------------------------------------------------------------------------------------- workflows

def test_every_workflow_is_there_in_both_formats():
    names = {os.path.basename(p)[:-5] for p in WORKFLOWS}
    assert {"text_to_image", "image_to_image", "inpainting", "edit", "multi_image_edit", "text_to_image_lora",
            "lightning_8_steps"} <= names
    for p in WORKFLOWS:
        assert os.path.isfile(os.path.join(os.path.dirname(p), "api", os.path.basename(p)))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: os.path.basename(p)[:-5])
def test_ui_and_api_formats_describe_the_same_graph(path, env):
    with open(path, encoding="utf-8") as fh:
        ui = json.load(fh)
    api = _api(os.path.basename(path)[:-5])
    converted = ui_to_api(ui, ALL)
    assert converted == {k: {"inputs": v["inputs"], "class_type": v["class_type"]} for k, v in api.items()}
    # the UI graph is well-formed: links join existing slots of matching types, laid out without overlaps
    nodes = {n["id"]: n for n in ui["nodes"]}
    for lid, a, sa, b, sb, typ in ui["links"]:
        assert nodes[a]["outputs"][sa]["type"] == typ and lid in nodes[a]["outputs"][sa]["links"]
        assert nodes[b]["inputs"][sb]["type"] == typ and nodes[b]["inputs"][sb]["link"] == lid
    boxes = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in ui["nodes"]]
    for i, p in enumerate(boxes):
        for q in boxes[i + 1:]:
            assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1], f"nodes overlap: {p} {q}"
    notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note"]
    assert notes and all(f in notes[0] for f in ("diffusion_models/", "text_encoders/", "vae/"))
    # and valid against the contracts: every required input given, every combo value offered (the tiny models
    # carry the real files' names), every link typed as the input expects
    for nid, node in api.items():
        cls = ALL[node["class_type"]]
        spec = cls.INPUT_TYPES()
        for inp, (typ, *_) in spec["required"].items():
            assert inp in node["inputs"], (nid, inp)
        for inp, value in node["inputs"].items():
            typ = {**spec["required"], **spec.get("optional", {})}[inp][0]
            if isinstance(value, list):
                src = ALL[api[value[0]]["class_type"]]
                assert src.RETURN_TYPES[value[1]] == typ, (nid, inp)
            elif isinstance(typ, list):
                assert value in typ, (nid, inp, value)
            else:
                assert is_widget(typ)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: os.path.basename(p)[:-5])
def test_each_api_workflow_runs_on_tiny_models(path, env):
    name = os.path.basename(path)[:-5]
    prompt = speed_up(_api(name))
    outputs, ui = _run(prompt)
    saved = [im for u in ui.values() if u for im in u["images"]]
    assert len(saved) == 1
    im = Image.open(host.output_dir() / saved[0]["subfolder"] / saved[0]["filename"])
    src = Image.open(env["inputs"]["example.png"])
    if name.endswith("edit"):  # about a megapixel at the last reference's aspect
        last = Image.open(env["inputs"]["example_2.png" if name.startswith("multi") else "example.png"])
        from qwenimage.qwenimage_core.images import calculate_dimensions

        assert im.size == calculate_dimensions(EDIT_AREA, last.width / last.height)
    elif name in ("image_to_image", "inpainting"):
        assert im.size == src.size
    else:
        assert im.size == (64, 48)
    assert np.asarray(im).std() > 3
    assert json.loads(im.text["prompt"]) == prompt


# ---------------------------------------------------------------------------------------------- parity

@pytest.fixture(scope="module")
def loaded(env):
    model = _node("QwenImageModelLoader", unet_name=FILES["diffusion_model"], weight_dtype="default")[0]
    te = _node("QwenImageTextEncoderLoader", clip_name=FILES["text_encoder"], device="default")[0]
    vae = _node("QwenImageVAELoader", vae_name=FILES["vae"])[0]
    return model, te, vae


@pytest.fixture(scope="module")
def vaes(loaded):
    """The tiny VAE as loaded (the official latent statistics) and a copy that carries its own, as the demo VAE
    does: graph latents keep the official statistics, so the VAE nodes must convert."""
    import copy

    vae = loaded[2]
    own = copy.deepcopy(vae)
    g = torch.Generator().manual_seed(11)
    mean = torch.tensor(vae.config.latents_mean) + torch.randn(16, generator=g)
    std = torch.tensor(vae.config.latents_std) * (0.5 + torch.rand(16, generator=g))
    own.config = vae.config.replace(latents_mean=tuple(mean.tolist()), latents_std=tuple(std.tolist()))
    return {"official": vae, "own": own}


def _t2i_graph(model, te, vae, *, prompt="a red barn", neg="blurry", w=64, h=48, batch=1, steps=3, cfg=2.0,
               seed=7, shift_mode="dynamic", shift=3.1):
    pos = _node("QwenImageTextEncode", text_encoder=te, text=prompt)[0]
    negc = _node("QwenImageTextEncode", text_encoder=te, text=neg)[0]
    lat = _node("QwenImageEmptyLatent", aspect="custom", width=w, height=h, batch_size=batch)[0]
    out = _node("QwenImageSampler", model=model, positive=pos, negative=negc, latent=lat, seed=seed, steps=steps,
                cfg=cfg, shift_mode=shift_mode, shift=shift, denoise=1.0)[0]
    return _node("QwenImageVAEDecode", vae=vae, samples=out, tiled=False, tile_size=256, overlap=64)[0]


def _same(image, pils):
    ref = np.stack([np.asarray(p, dtype=np.float32) / 255 for p in pils])
    got = image.numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.5 / 255 + 1e-6  # the pipeline's PNG rounds the very same floats
    assert ref.std() > 0.01


@pytest.mark.parametrize("stats", ["official", "own"])
@pytest.mark.parametrize("kw", [dict(), dict(batch=2, cfg=1.0), dict(shift_mode="fixed", shift=3.1, seed=3)])
def test_text_to_image_graph_gives_the_pipeline_image(loaded, vaes, kw, stats):
    model, te, _ = loaded
    vae = vaes[stats]
    image = _t2i_graph(model, te, vae, **kw)
    pipe = QwenImage(model.transformer, vae, te)
    shift = kw.get("shift") if kw.get("shift_mode") == "fixed" else None
    pils = pipe.generate("a red barn", negative_prompt="blurry", width=64, height=48, steps=3,
                         cfg=kw.get("cfg", 2.0), seed=kw.get("seed", 7), num_images=kw.get("batch", 1), shift=shift)
    _same(image, pils)


@pytest.mark.parametrize("stats", ["official", "own"])
def test_edit_graph_gives_the_pipeline_image(loaded, vaes, env, stats):
    _, te, _ = loaded
    vae = vaes[stats]
    edit_model = _node("QwenImageModelLoader", unet_name=FILES["edit_model"], weight_dtype="default")[0]
    load = BUILTIN_NODE_CLASS_MAPPINGS["LoadImage"]
    img1 = load().load_image("example.png")[0]
    img2 = load().load_image("example_2.png")[0]
    tmpl = "edit_plus (Edit-2509/2511)"
    pos, lat = _node("QwenImageEditEncode", text_encoder=te, vae=vae, prompt="swap them", image1=img1,
                     image2=img2, template=tmpl)
    neg, _ = _node("QwenImageEditEncode", text_encoder=te, vae=vae, prompt=" ", image1=img1, image2=img2,
                   template=tmpl)
    out = _node("QwenImageSampler", model=edit_model, positive=pos, negative=neg, latent=lat, seed=5, steps=2,
                cfg=2.5, shift_mode="dynamic", shift=3.1, denoise=1.0)[0]
    image = _node("QwenImageVAEDecode", vae=vae, samples=out, tiled=False, tile_size=256, overlap=64)[0]
    pipe = QwenImage(edit_model.transformer, vae, te, edit_template="edit_plus")
    refs = [Image.open(env["inputs"][n]).convert("RGB") for n in ("example.png", "example_2.png")]
    _same(image, pipe.generate("swap them", negative_prompt=" ", references=refs, steps=2, cfg=2.5, seed=5))


@pytest.mark.parametrize("stats", ["official", "own"])
def test_image_to_image_and_inpaint_graphs_add_no_math(loaded, vaes, env, stats):
    """VAE Encode (the posterior's mode, as ComfyUI) then the sampler with denoise and a mask: the core's
    `sample` with the same start latents and mask gives the same latents, and VAE Decode the pipeline's
    decode of them (with the VAE's own statistics, where it has them)."""
    from qwenimage.qwenimage_core.pipeline import sample
    from qwenimage.qwenimage_core.sampling import Conditioning
    from qwenimage.qwenimage_core.schedules import unpack_latents
    from qwenimage.qwenimage_core.vae import denormalize_latents

    model, te, _ = loaded
    vae = vaes[stats]
    load = BUILTIN_NODE_CLASS_MAPPINGS["LoadImage"]
    img, mask = load().load_image("example_mask.png")
    lat = _node("QwenImageVAEEncode", vae=vae, pixels=img, tiled=False, tile_size=256, overlap=64)[0]
    pos = _node("QwenImageTextEncode", text_encoder=te, text="a door")[0]
    neg = _node("QwenImageTextEncode", text_encoder=te, text=" ")[0]
    for m, denoise in ((None, 0.6), (mask, 1.0)):
        out = _node("QwenImageSampler", model=model, positive=pos, negative=neg, latent=lat, seed=1, steps=4,
                    cfg=3.0, shift_mode="dynamic", shift=3.1, denoise=denoise, mask=m)[0]["samples"]
        x = torch.from_numpy(np.asarray(Image.open(env["inputs"]["example_mask.png"]).convert("RGB"),
                                        dtype=np.float32) / 255).permute(2, 0, 1)[None, :, None] * 2 - 1
        clean = vae.normalize_latents(vae.encode(x).mode())
        pm = None if m is None else torch.from_numpy(
            1 - np.asarray(Image.open(env["inputs"]["example_mask.png"]).getchannel("A"), dtype=np.float32) / 255)
        ref = sample(model.transformer, Conditioning(*te.encode(["a door"])), Conditioning(*te.encode([" "])),
                     width=64, height=48, steps=4, cfg=3.0, seed=1, clean=clean, strength=denoise,
                     mask=None if pm is None else pm[None, None])
        want = denormalize_latents(unpack_latents(ref, 6, 8))  # graph latents: the official statistics
        assert torch.allclose(out, want, atol=1e-4), (out - want).abs().max()
        image = _node("QwenImageVAEDecode", vae=vae, samples={"samples": out}, tiled=False, tile_size=256,
                      overlap=64)[0]
        pixels = vae.decode(vae.denormalize_latents(unpack_latents(ref, 6, 8)))[:, :, 0]
        assert (image - (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)).abs().max() <= 1e-4
        if m is not None:  # the kept region stays the input's latents
            keep = (torch.nn.functional.interpolate(pm[None, None], size=(6, 8)) < 0.5)[0, 0]
            assert torch.allclose(out[..., keep], lat["samples"][..., keep], atol=1e-4)


def test_lora_chain_changes_the_image_like_the_pipeline_and_leaves_the_base(loaded, env):
    model, te, vae = loaded
    base = _t2i_graph(model, te, vae)
    lm = _node("QwenImageLoraLoader", model=model, lora_name=FILES["lora"], strength=0.8)[0]
    lm = _node("QwenImageLoraLoader", model=lm, lora_name=FILES["lightning"], strength=1.0)[0]
    with_lora = _t2i_graph(lm, te, vae)
    assert (with_lora - base).abs().max() > 0.02
    pipe = QwenImage(model.transformer, vae, te)
    model.transformer._node_loras[1].remove()  # the pipeline applies the same LoRAs its own way
    model.transformer._node_loras = ((), None)
    pipe.load_lora(env["paths"]["lora"], 0.8)
    pipe.load_lora(env["paths"]["lightning"], 1.0)
    try:
        _same(with_lora, pipe.generate("a red barn", negative_prompt="blurry", width=64, height=48, steps=3,
                                       cfg=2.0, seed=7))
    finally:
        pipe.unload_loras()
    assert torch.equal(_t2i_graph(model, te, vae), base)  # the cached base model is the base again


def test_progress_previews_and_interrupt(loaded):
    model, te, vae = loaded
    seen = []
    host.set_progress_hook(lambda v, total, preview: seen.append((v, total, preview.size)))
    try:
        _t2i_graph(model, te, vae, steps=3)
    finally:
        host.set_progress_hook(None)
    assert [s[:2] for s in seen] == [(1, 3), (2, 3), (3, 3)] and seen[0][2][0] > 0
    seen.clear()  # a run that sends no previews: the sampler makes none (progress still flows)
    host.set_progress_hook(lambda v, total, preview: seen.append((v, total, preview)), previews=False)
    try:
        _t2i_graph(model, te, vae, steps=3)
    finally:
        host.set_progress_hook(None)
    assert seen == [(1, 3, None), (2, 3, None), (3, 3, None)]
    host.request_interrupt()
    try:
        with pytest.raises(host.Interrupted):
            _t2i_graph(model, te, vae, steps=3)
    finally:
        host.clear_interrupt()


def test_loaded_models_are_cached_and_released_when_settings_change(env):
    a = _node("QwenImageModelLoader", unet_name=FILES["diffusion_model"], weight_dtype="default",
              unique_id="9")[0]
    b = _node("QwenImageModelLoader", unet_name=FILES["diffusion_model"], weight_dtype="default",
              unique_id="9")[0]
    assert a.transformer is b.transformer
    c = _node("QwenImageModelLoader", unet_name=FILES["diffusion_model"], weight_dtype="bf16", unique_id="9")[0]
    assert c.transformer is not a.transformer and c.transformer.dtype == torch.bfloat16
    assert host.cache_stats()["model:9"].endswith(FILES["diffusion_model"])
    d = _node("QwenImageModelLoader", unet_name=FILES["diffusion_model"], weight_dtype="bf16", unique_id="9")[0]
    assert d.transformer is c.transformer


def test_gpu_blocks_streams_blocks_and_gives_the_same_image(loaded):
    model, te, vae = loaded
    low = _node("QwenImageModelLoader", unet_name=FILES["diffusion_model"], weight_dtype="default", gpu_blocks=1,
                unique_id="low")[0]
    assert torch.equal(_t2i_graph(low, te, vae), _t2i_graph(model, te, vae))
    swap = low.transformer._block_swap
    assert swap.resident == 1 and 1 <= swap.max_loaded <= 2
    host.MODELS.release("model:low")


def test_fp8_weight_dtype_keeps_fp8_layers(env):
    from qwenimage.qwenimage_core.fp8 import FP8Linear

    m = _node("QwenImageModelLoader", unet_name=FILES["diffusion_model"], weight_dtype="fp8_e4m3fn",
              unique_id="fp8")[0]
    assert any(isinstance(x, FP8Linear) for x in m.transformer.modules())
    host.MODELS.release("model:fp8")


# ------------------------------------------------------------------------------------------------ errors

def test_bad_input_gets_a_message_a_user_understands(loaded, env, tmp_path):
    model, te, vae = loaded
    img = torch.rand(1, 48, 64, 3)
    with pytest.raises(ValueError, match="exactly 1 reference image, got 2"):
        _node("QwenImageEditEncode", text_encoder=te, vae=vae, prompt="x", image1=img, image2=img,
              template="edit (Qwen-Image-Edit)")
    with pytest.raises(ValueError, match="width 1000 is not a multiple of 16.*use 992 or 1008"):
        _node("QwenImageEmptyLatent", aspect="custom", width=1000, height=1024, batch_size=1)
    with pytest.raises(ValueError, match="width 50 is not a multiple of 16"):
        _node("QwenImageVAEEncode", vae=vae, pixels=torch.rand(1, 48, 50, 3), tiled=False, tile_size=256,
              overlap=64)
    with pytest.raises(FileNotFoundError, match=r"not found; searched .*diffusion_models"):
        _node("QwenImageModelLoader", unet_name="missing.safetensors", weight_dtype="default")
    with pytest.raises(FileNotFoundError, match="invalid"):
        _node("QwenImageVAELoader", vae_name="../../etc/passwd")
    # a LoRA made for a model of another size: refused at the loader, naming the file's problem
    from qwenimage.qwenimage_core import save_lora

    bad = env["root"] / "models" / "loras" / "other_model.safetensors"
    save_lora(bad, {"transformer_blocks.0.attn.to_q": (torch.randn(2, 48), torch.randn(48, 2))})
    with pytest.raises(LoraError, match="does not fit this Qwen-Image model"):
        _node("QwenImageLoraLoader", model=model, lora_name="other_model.safetensors", strength=1.0)
    with pytest.raises(ValueError, match="not Qwen-Image latents"):
        _node("QwenImageVAEDecode", vae=vae, samples={"samples": torch.zeros(1, 4, 8, 8)}, tiled=False,
              tile_size=256, overlap=64)
    with pytest.raises(ValueError, match="overlap 256 must be smaller than tile_size 256"):
        _node("QwenImageVAEDecode", vae=vae, samples={"samples": torch.zeros(1, 16, 1, 6, 8)}, tiled=True,
              tile_size=256, overlap=256)


def test_tiled_vae_nodes_match_untiled_closely(loaded):
    _, _, vae = loaded
    z = {"samples": torch.randn(1, 16, 1, 24, 40)}
    full = _node("QwenImageVAEDecode", vae=vae, samples=z, tiled=False, tile_size=256, overlap=64)[0]
    tiled = _node("QwenImageVAEDecode", vae=vae, samples=z, tiled=True, tile_size=128, overlap=64)[0]
    assert full.shape == tiled.shape == (1, 192, 320, 3)
    assert (full - tiled).abs().mean() < 0.05
    assert vae.tiling is None  # the shared VAE is left as it was


def test_inside_comfyui_the_host_defers_to_comfyui(monkeypatch, tmp_path, env):
    """With ComfyUI's modules importable (stand-ins here, with the real ones' signatures), the pack takes model
    folders from folder_paths, reports progress through comfy.utils.ProgressBar and stops with ComfyUI's own
    interrupt exception."""
    import types

    class InterruptProcessingException(Exception):
        pass

    state = {"interrupted": False, "bars": []}
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(env["root"] / "models")
    fp.folder_names_and_paths = {}
    fp.get_folder_paths = lambda kind: [os.path.join(fp.models_dir, kind)]
    fp.get_filename_list = lambda kind: sorted(os.listdir(os.path.join(fp.models_dir, kind)))
    fp.get_input_directory = lambda: str(tmp_path / "in")
    fp.get_output_directory = lambda: str(tmp_path / "out")
    fp.get_temp_directory = lambda: str(tmp_path / "tmp")
    mm = types.ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.interrupt_current_processing = lambda v=True: state.update(interrupted=v)
    mm.processing_interrupted = lambda: state["interrupted"]

    def throw():
        if state["interrupted"]:
            state["interrupted"] = False
            raise InterruptProcessingException()

    mm.throw_exception_if_processing_interrupted = throw

    class ProgressBar:
        def __init__(self, total):
            state["bars"].append([])

        def update_absolute(self, value, total=None, preview=None):
            state["bars"][-1].append((value, total, preview[0] if preview else None))

    cu = types.ModuleType("comfy.utils")
    cu.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, cu
    for name, mod in {"folder_paths": fp, "comfy": comfy, "comfy.model_management": mm, "comfy.utils": cu}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    name = "custom_nodes_x_qwen-image"
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    h = sys.modules[name + ".nodes.host"]
    assert h.IN_COMFYUI and h.output_dir() == tmp_path / "out"
    nodes = module.NODE_CLASS_MAPPINGS
    assert FILES["vae"] in nodes["QwenImageVAELoader"].INPUT_TYPES()["required"]["vae_name"][0]

    def node(n, **kw):
        return getattr(nodes[n](), nodes[n].FUNCTION)(**kw)[0]

    model = node("QwenImageModelLoader", unet_name=FILES["diffusion_model"], weight_dtype="default", gpu_blocks=-1)
    te = node("QwenImageTextEncoderLoader", clip_name=FILES["text_encoder"], device="default")
    pos = node("QwenImageTextEncode", text_encoder=te, text="a cat")
    lat = node("QwenImageEmptyLatent", aspect="custom", width=32, height=32, batch_size=1)
    kw = dict(model=model, positive=pos, negative=pos, latent=lat, seed=1, steps=2, cfg=1.0, shift_mode="dynamic",
              shift=3.1, denoise=1.0)
    node("QwenImageSampler", **kw)
    assert [(v, t) for v, t, _ in state["bars"][-1]] == [(1, 2), (2, 2)]
    assert state["bars"][-1][0][2] == "JPEG"
    state["interrupted"] = True
    with pytest.raises(InterruptProcessingException):
        node("QwenImageSampler", **kw)
    h.free_memory()


def test_models_overview_says_what_goes_where(env, tmp_path):
    text = host.models_overview()
    assert FILES["vae"] in text and FILES["diffusion_model"] in text
    old = host.models_dir()
    host.set_models_dir(tmp_path / "fresh")
    try:
        text = host.models_overview()
        assert "diffusion_models/  (empty) put qwen_image_fp8_e4m3fn.safetensors" in text
        assert (tmp_path / "fresh" / "text_encoders").is_dir()  # made, so a new user sees where files go
    finally:
        host.set_models_dir(old)


def test_the_server_logs_each_job_with_its_time_and_a_progress_bar(caplog, capsys):
    """As ComfyUI prints "got prompt" and "Prompt executed in N seconds": queued, started, done with the time,
    failed with the node and the reason; nodes that report steps get a text progress bar."""
    import logging

    from qwenimage.nodes.execution import Executor
    from qwenimage.nodes.server.queue import PromptQueue

    class Steps:
        OUTPUT_NODE, RETURN_TYPES, FUNCTION = True, (), "run"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"fail": ("BOOLEAN", {"default": False})}}

        def run(self, fail):
            bar = host.progress(3)
            for i in range(3):
                bar.update(i + 1)
            if fail:
                raise ValueError("the file x.safetensors is not a model")
            return ()

    caplog.set_level(logging.INFO, logger="qwenimage.server")
    PromptQueue(lambda: None).put((0, "p1", {}, {}, [], {}))
    ex = Executor({"Steps": Steps})
    assert ex.execute({"1": {"class_type": "Steps", "inputs": {"fail": False}}}, "p1").status == "success"
    assert ex.execute({"1": {"class_type": "Steps", "inputs": {"fail": True}}}, "p2").status == "error"
    text = caplog.text
    assert "got prompt p1" in text and "Prompt p1 started" in text
    assert re.search(r"Prompt executed in \d+\.\d\d seconds", text), text
    assert re.search(r"Prompt p2 failed after \d+\.\d\d seconds in node 1 \(Steps\): the file x.safetensors is "
                     r"not a model", text), text
    assert "3/3" in capsys.readouterr().err  # the progress bar
