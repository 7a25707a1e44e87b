"""The Qwen2.5-VL text encoder: prompt encoding against the reference pipelines, and loading from every layout.

A tiny random Qwen2.5-VL (hidden 64, 2 layers, vision depth 2) stands in for the 7B model; the tokenizer is the
real Qwen2.5 one the package ships (qwenimage_core/qwen25_tokenizer).

How the reference is run: `QwenImagePipeline`, `QwenImageEditPipeline` and `QwenImageEditPlusPipeline` are built
with only the text encoder, tokenizer and (edit) processor set, and their own `encode_prompt` is called. The edit
pipelines need a `Qwen2VLProcessor`, whose constructor refuses to run without torchvision (it looks up the video
processor class, which needs it). The real `Qwen2VLProcessor` is built anyway with that class check switched off
for the constructor only, around the PIL `Qwen2VLImageProcessor`; its video half is never used. So the reference
inputs (image-token expansion, padding, pixel values) come from transformers' own processor code.

With transformers 5 the reference pipelines do not pass `mm_token_type_ids` to the model, which then gives the
vision tokens 1D positions instead of Qwen2.5-VL's 3D ones (diffusers issue #14194). Our encoder passes them by
default; the tests compare that against the reference run through a text encoder that forwards them (the fix),
and `multimodal_rope=False` against the unmodified reference.
"""
import importlib
import json
import os
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from qwenimage.qwenimage_core import text_encoder as te
from qwenimage.qwenimage_core.text_encoder import (QwenTextEncoder, TextEncoderLoadError, load_text_encoder,
                                                   resize_for_vision)

from _tiny import TOKENIZER_DIR, ForwardTokenTypes, rand_image, reference_processor, tiny_te_config
from _util import rel_err

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

TOL = 1e-5


# ------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def config(tokenizer):
    return tiny_te_config(len(tokenizer))


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    m = transformers.Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():  # larger weights than the 0.02 init, so positions and every layer matter in the output
        for name, p in m.named_parameters():
            if name.endswith("weight") and p.dim() >= 2:
                p.normal_(0, 0.1)
    return m.eval()


@pytest.fixture(scope="module")
def image_processor():
    return te.default_image_processor()


@pytest.fixture(scope="module")
def encoder(model, tokenizer, image_processor):
    return QwenTextEncoder(model, tokenizer, image_processor)


@pytest.fixture(scope="module")
def ref_processor(tokenizer, image_processor):
    """The real transformers Qwen2VLProcessor (images only; its torchvision-needing class check skipped)."""
    return reference_processor(tokenizer, image_processor)


def _pipe(cls, text_encoder, tokenizer, processor=None):
    kw = dict(scheduler=None, vae=None, text_encoder=text_encoder, tokenizer=tokenizer, transformer=None)
    if processor is not None:
        kw["processor"] = processor
    return cls(**kw)


@pytest.fixture(scope="module")
def ref_t2i(model, tokenizer):
    return _pipe(diffusers.QwenImagePipeline, model, tokenizer)


@pytest.fixture(scope="module")
def ref_edit(model, tokenizer, ref_processor):
    fixed = ForwardTokenTypes(model, tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    return (_pipe(diffusers.QwenImageEditPipeline, model, tokenizer, ref_processor),
            _pipe(diffusers.QwenImageEditPipeline, fixed, tokenizer, ref_processor))


@pytest.fixture(scope="module")
def ref_edit_plus(model, tokenizer, ref_processor):
    fixed = ForwardTokenTypes(model, tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    return (_pipe(diffusers.QwenImageEditPlusPipeline, model, tokenizer, ref_processor),
            _pipe(diffusers.QwenImageEditPlusPipeline, fixed, tokenizer, ref_processor))


def assert_same(ours, ref):
    (e, m), (re_, rm) = ours, ref
    assert e.shape == re_.shape and e.dtype == re_.dtype
    assert rel_err(e, re_) <= TOL
    if rm is None:  # the reference drops an all-ones mask
        assert bool(m.all())
    else:
        assert torch.equal(m, rm.to(m.dtype))


PROMPTS = ["A cat.", "A red fox jumping over a sleeping dog in a snowy forest, watercolor, soft light", ""]

# ------------------------------------------------------------------------------------------- templates, tokens


def test_templates_match_reference(ref_t2i, ref_edit, ref_edit_plus):
    assert te.T2I_TEMPLATE == ref_t2i.prompt_template_encode
    assert te.EDIT_TEMPLATE == ref_edit[0].prompt_template_encode
    assert te.EDIT_PLUS_TEMPLATE == ref_edit_plus[0].prompt_template_encode
    assert te.DROP_TOKENS == {"t2i": ref_t2i.prompt_template_encode_start_idx,
                              "edit": ref_edit[0].prompt_template_encode_start_idx,
                              "edit_plus": ref_edit_plus[0].prompt_template_encode_start_idx}


def test_template_prefix_token_counts(tokenizer):
    """The dropped prefix is exactly the system block plus "<|im_start|>user\\n": 34 tokens for t2i, 64 for edit."""
    def n(text):
        return len(tokenizer(text).input_ids)

    assert n(te.T2I_TEMPLATE.split("{}")[0]) == 34
    assert n(te.EDIT_TEMPLATE.split("<|vision_start|>")[0]) == 64
    assert n(te.EDIT_PLUS_TEMPLATE.split("{}")[0]) == 64
    for p in PROMPTS[:2]:  # the prefix tokenizes the same inside a full prompt
        full = tokenizer(te.T2I_TEMPLATE.format(p)).input_ids
        assert full[:34] == tokenizer(te.T2I_TEMPLATE.split("{}")[0]).input_ids


# ------------------------------------------------------------------------------------------ t2i parity

def test_t2i_parity_batch_of_different_lengths(encoder, ref_t2i):
    ours = encoder.encode(PROMPTS)
    ref = ref_t2i.encode_prompt(PROMPTS, device=torch.device("cpu"))
    assert ours[0].shape[0] == 3 and ours[0].shape[2] == 64
    assert ours[1].dtype == torch.long and ours[1].sum(1).tolist() == [int(x) for x in ref[1].sum(1)]
    assert_same(ours, ref)
    # padding rows are exact zeros, as the reference's
    assert torch.count_nonzero(ours[0][ours[1] == 0]) == 0


def test_t2i_max_sequence_length_and_repeats(encoder, ref_t2i):
    long_prompt = " ".join(["many words"] * 40)
    cpu = torch.device("cpu")
    ours = encoder.encode([long_prompt, "short"], max_sequence_length=20)
    ref = ref_t2i.encode_prompt([long_prompt, "short"], device=cpu, max_sequence_length=20)
    assert ours[0].shape[1] == 20
    assert_same(ours, ref)
    # one prompt, several images: same as the reference
    assert_same(encoder.encode(["A cat."], num_images_per_prompt=3),
                ref_t2i.encode_prompt(["A cat."], device=cpu, num_images_per_prompt=3))
    # several prompts: embeddings as the reference's; the mask follows them ([p0, p0, p1, p1])
    e, m = encoder.encode(PROMPTS[:2], num_images_per_prompt=2)
    re_, _ = ref_t2i.encode_prompt(PROMPTS[:2], device=cpu, num_images_per_prompt=2)
    assert rel_err(e, re_) <= TOL
    e1, m1 = encoder.encode(PROMPTS[:2])
    assert torch.equal(m, m1.repeat_interleave(2, 0)) and torch.equal(e, e1.repeat_interleave(2, 0))
    with pytest.raises(ValueError, match="1024"):
        encoder.encode(["x"], max_sequence_length=1025)


def test_t2i_truncates_at_1024_prompt_tokens(encoder, ref_t2i):
    prompt = "word " * 1100
    ours = encoder.encode([prompt])
    assert ours[0].shape[1] == 1024
    assert_same(ours, ref_t2i.encode_prompt([prompt], device=torch.device("cpu")))


def test_every_template_caps_the_prompt_at_1024_tokens_and_says_what_was_cut(encoder, caplog):
    """Issue 23 item 7: an edit instruction was never truncated, so 100,000 characters ran the encoder for
    minutes (+2.3 GB) while text-to-image cut at 1,024 tokens. Both are cut the same way now, with a warning."""
    img = rand_image(64, 64, 11)
    long, longer = "word " * 1100, "word " * 20000 + "THE END"
    for template, images in (("edit", img), ("edit_plus", [img]), ("t2i", None)):
        caplog.clear()
        with caplog.at_level("WARNING", logger=te.__name__):
            cut = encoder.encode([longer], images=images, template=template)
        assert cut[0].shape == encoder.encode([long], images=images, template=template)[0].shape, template
        msg = " ".join(r.getMessage() for r in caplog.records)
        assert "prompt cut to its first 1024 tokens" in msg and "THE END" not in msg.split("from")[0], msg
    kept = te.cap_prompt(encoder.tokenizer, longer)
    assert longer.startswith(kept) and len(encoder.tokenizer(kept, add_special_tokens=False).input_ids) == 1024
    assert torch.equal(encoder.prepare_inputs([longer], img, "edit")["input_ids"],
                       encoder.prepare_inputs([kept], img, "edit")["input_ids"])
    assert te.cap_prompt(encoder.tokenizer, "short prompt") == "short prompt"
    cjk = "长" * 5000  # a window of 8 x 1024 characters is enough when tokens are short
    assert len(encoder.tokenizer(te.cap_prompt(encoder.tokenizer, cjk), add_special_tokens=False).input_ids) == 1024


@pytest.mark.parametrize("template", ["t2i", "edit"])
def test_encoding_checks_the_interrupt_before_every_layer(encoder, template):
    """The nodes' Cancel reached the sampler between steps but not the encoder; now a hook before each decoder
    layer and vision block asks `interrupt()` (the same contract as sampling's)."""
    from qwenimage.qwenimage_core.sampling import Interrupted

    calls = []

    def interrupt():
        calls.append(1)
        return len(calls) == 2
    images = rand_image(64, 64, 12) if template == "edit" else None
    with pytest.raises(Interrupted, match="while encoding"):
        encoder.encode(["a cat"], images=images, template=template, interrupt=interrupt)
    assert len(calls) == 2  # stopped at the second layer, not after the last
    calls.clear()
    encoder.encode(["a cat"], images=images, template=template, interrupt=lambda: calls.append(1) and False)
    layers = len(encoder.model.language_model.layers) + (len(encoder.model.visual.blocks) if images else 0)
    assert len(calls) == layers
    assert not any(m._forward_pre_hooks for m in encoder.model.modules())  # hooks removed after the encode


def test_the_encode_nodes_pass_the_hosts_interrupt(monkeypatch):
    from qwenimage.nodes import conditioning, host

    seen = {}

    class Encoder:
        def encode(self, texts, images=None, template="t2i", interrupt=None):
            seen["interrupt"] = interrupt
            interrupt()
            return torch.zeros(1, 1, 4), torch.ones(1, 1, dtype=torch.long)
    host.request_interrupt()
    try:
        with pytest.raises(host.Interrupted):
            conditioning.QwenImageTextEncode().encode(Encoder(), "x" * 100_000)
    finally:
        host.clear_interrupt()
    assert seen["interrupt"] is host.check_interrupt


# ----------------------------------------------------------------------------------------- edit parity

def test_edit_inputs_match_qwen2vl_processor(encoder, ref_processor):
    imgs = [rand_image(100, 70, 1), rand_image(64, 120, 2)]
    prompts = ["make it blue", "add a hat to the person on the left"]
    ours = encoder.prepare_inputs(prompts, imgs, "edit")
    ref = ref_processor(text=[te.EDIT_TEMPLATE.format(p) for p in prompts], images=imgs, padding=True,
                        return_tensors="pt")
    for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(ours[k], ref[k].to(ours[k].dtype)), k


def test_edit_parity_one_image(encoder, model, tokenizer, image_processor, ref_edit):
    ref_plain, ref_fixed = ref_edit
    img = rand_image(100, 70, 3)
    cpu = torch.device("cpu")
    ours = encoder.encode(["make it blue"], images=img, template="edit")
    assert_same(ours, ref_fixed.encode_prompt(["make it blue"], image=img, device=cpu))
    legacy = QwenTextEncoder(model, tokenizer, image_processor, multimodal_rope=False)
    ours_1d = legacy.encode(["make it blue"], images=img, template="edit")
    assert_same(ours_1d, ref_plain.encode_prompt(["make it blue"], image=img, device=cpu))
    # the two position schemes really differ (the point of the fix)
    assert rel_err(ours[0], ours_1d[0]) > 1e-3
    # kept: <|vision_start|>, one token per merged 2x2 patch, <|vision_end|>, the prompt and the closing tokens
    grid = encoder.prepare_inputs(["x"], img, "edit")["image_grid_thw"]
    n_vision = int(grid.prod() // 4)
    n_text = len(tokenizer("make it blue<|im_end|>\n<|im_start|>assistant\n").input_ids)
    assert ours[0].shape[1] == 2 + n_vision + n_text


def test_edit_parity_batch_one_image_each(encoder, ref_edit):
    imgs = [rand_image(100, 70, 4), rand_image(64, 120, 5)]
    prompts = ["make it blue", "add a hat to the person on the left, keep everything else"]
    ours = encoder.encode(prompts, images=imgs, template="edit")
    assert_same(ours, ref_edit[1].encode_prompt(prompts, image=imgs, device=torch.device("cpu")))
    assert ours[1].sum(1).tolist()[0] < ours[1].shape[1]


def test_edit_plus_parity_two_images_of_different_sizes(encoder, model, tokenizer, image_processor,
                                                        ref_edit_plus):
    ref_plain, ref_fixed = ref_edit_plus
    imgs = [rand_image(100, 70, 6), rand_image(60, 130, 7)]
    cpu = torch.device("cpu")
    prompt = ["put the cat from picture 2 on the sofa in picture 1"]
    ours = encoder.encode(prompt, images=imgs, template="edit_plus")
    assert_same(ours, ref_fixed.encode_prompt(prompt, image=imgs, device=cpu))
    legacy = QwenTextEncoder(model, tokenizer, image_processor, multimodal_rope=False)
    assert_same(legacy.encode(prompt, images=imgs, template="edit_plus"),
                ref_plain.encode_prompt(prompt, image=imgs, device=cpu))
    # no images: the edit-plus template with the bare prompt
    assert_same(encoder.encode(prompt, template="edit_plus"), ref_fixed.encode_prompt(prompt, device=cpu))


def test_edit_plus_batch_shares_the_image_set(encoder):
    """The reference encodes one prompt at a time; a batch shares the image set and equals those, padded."""
    imgs = [rand_image(100, 70, 8), rand_image(60, 130, 9)]
    prompts = ["swap the two animals", "make picture 1 look like a painting in the style of picture 2, at dusk"]
    e, m = encoder.encode(prompts, images=imgs, template="edit_plus")
    for i, p in enumerate(prompts):
        ei, mi = encoder.encode([p], images=imgs, template="edit_plus")
        n = ei.shape[1]
        assert int(m[i].sum()) == n and bool(mi.all())
        assert rel_err(e[i, :n], ei[0]) <= TOL
        assert torch.count_nonzero(e[i, n:]) == 0


def test_encode_input_checks(encoder):
    img = rand_image(64, 64, 10)
    with pytest.raises(ValueError, match="image"):
        encoder.encode(["x"], template="edit")
    with pytest.raises(ValueError, match="no images"):
        encoder.encode(["x"], images=img)
    with pytest.raises(ValueError, match="one image per prompt"):
        encoder.encode(["x", "y", "z"], images=[img, img], template="edit")
    with pytest.raises(ValueError, match="unknown template"):
        encoder.encode(["x"], template="edit_pro")
    with pytest.raises(ValueError, match="reserved"):
        encoder.encode(["a <|image_pad|> b"])


# -------------------------------------------------------------------------------------- image resizing

@pytest.mark.parametrize("size", [(100, 70), (1920, 1080), (512, 2048), (333, 333)])
def test_resize_for_vision_as_the_pipelines(size):
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    img = rand_image(*size, 11)
    vae_proc = VaeImageProcessor(vae_scale_factor=16)
    w, h, _ = edit.calculate_dimensions(1024 * 1024, size[0] / size[1])
    assert te.vision_size(*size, "edit") == (w, h)
    assert np.array_equal(np.asarray(resize_for_vision(img, "edit")), np.asarray(vae_proc.resize(img, h, w)))
    w, h = plus.calculate_dimensions(plus.CONDITION_IMAGE_SIZE, size[0] / size[1])
    assert te.vision_size(*size, "edit_plus") == (w, h)
    out = resize_for_vision([img, img], "edit_plus")
    assert all(np.array_equal(np.asarray(o), np.asarray(vae_proc.resize(img, h, w))) for o in out)


def test_encode_resize_images(encoder):
    img = rand_image(150, 90, 12)
    a = encoder.encode(["x"], images=[img], template="edit_plus", resize_images=True)
    b = encoder.encode(["x"], images=[resize_for_vision(img, "edit_plus")], template="edit_plus")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------------- official config, keys

def test_official_config_and_on_disk_names(reference_dir):
    facts = json.load(open(os.path.join(reference_dir, "official_configs.json")))["text_encoder"]
    cfg = te.official_text_encoder_config()
    tc = getattr(cfg, "text_config", cfg)
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "rms_norm_eps"):
        assert getattr(tc, k) == facts[k], k
    theta = getattr(tc, "rope_theta", None) or tc.rope_parameters["rope_theta"]
    assert theta == facts["rope_theta"]
    for k, v in facts["vision_config"].items():
        assert getattr(cfg.vision_config, k) == v, k

    model = te._build_empty_model(cfg)
    params = dict(model.named_parameters())
    assert all(p.is_meta for p in params.values())
    head = facts["vocab_size"] * facts["hidden_size"]
    assert sum(p.numel() for p in params.values()) == facts["_params"] - head  # all but lm_head

    disk = {}
    for line in open(os.path.join(reference_dir, "text_encoder_keys.tsv")):
        key, shape = line.rstrip("\n").split("\t")
        disk[key] = tuple(int(s) for s in shape.split("x"))
    assert "lm_head.weight" in disk
    mapped = {te.disk_key_to_model_name(k): s for k, s in disk.items() if k != "lm_head.weight"}
    assert mapped == {n: tuple(p.shape) for n, p in params.items()}
    assert all(te.model_name_to_disk_key(te.disk_key_to_model_name(k)) == k for k in disk)


# --------------------------------------------------------------------------------------------- loading

def disk_state(model):
    """The model's state as save_pretrained / ComfyUI write it (model.layers.*, visual.*, lm_head)."""
    inner = model.model
    state = {te.model_name_to_disk_key(n): t.detach().clone() for n, t in inner.state_dict().items()}
    state["lm_head.weight"] = model.lm_head.weight.detach().clone()
    return state


def _check_loaded(enc, encoder, exact=True, tol=TOL):
    img = rand_image(90, 60, 13)
    for args in (dict(prompts=PROMPTS[:2]), dict(prompts=["make it blue"], images=img, template="edit")):
        a, b = enc.encode(**args), encoder.encode(**args)
        assert torch.equal(a[1], b[1])
        if exact:
            assert torch.equal(a[0], b[0])
        else:
            assert rel_err(a[0], b[0]) <= tol, rel_err(a[0], b[0])


def test_load_diffusers_folder(tmp_path, model, tokenizer, encoder):
    model.save_pretrained(tmp_path / "text_encoder")
    os.symlink(TOKENIZER_DIR, tmp_path / "tokenizer")  # (a symlink: a saved copy is no different, just slower)
    proc = te.default_image_processor()
    proc.save_pretrained(tmp_path / "processor")
    enc = load_text_encoder(tmp_path, dtype=torch.float32)
    assert isinstance(enc.model, transformers.Qwen2_5_VLModel) and not hasattr(enc.model, "lm_head")
    assert enc.dtype == torch.float32 and enc.device.type == "cpu" and enc.hidden_size == 64
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert all(not b.is_meta for b in enc.model.buffers())
    _check_loaded(enc, encoder)
    # the text_encoder folder itself; the tokenizer is found beside it
    enc2 = load_text_encoder(tmp_path / "text_encoder")
    assert enc2.dtype == torch.float32  # stored dtype by default
    _check_loaded(enc2, encoder)
    # bfloat16 on request, or by casting a loaded encoder; rotary buffers stay float32 either way
    enc3 = load_text_encoder(tmp_path, dtype=torch.bfloat16)
    assert enc3.dtype == torch.bfloat16
    assert enc3.model.language_model.rotary_emb.inv_freq.dtype == torch.float32
    ref = encoder.encode(PROMPTS)[0]
    assert enc3.encode(PROMPTS)[0].dtype == torch.bfloat16 and rel_err(enc3.encode(PROMPTS)[0], ref) < 0.05
    enc2.to("cpu", torch.bfloat16)
    assert enc2.dtype == torch.bfloat16 and enc2.model.visual.rotary_pos_emb.inv_freq.dtype == torch.float32
    assert torch.equal(enc2.encode(PROMPTS)[0], enc3.encode(PROMPTS)[0])


def test_load_sharded_folder_and_processor_config(tmp_path, model, tokenizer, encoder):
    model.save_pretrained(tmp_path / "text_encoder", max_shard_size="2MB")
    assert (tmp_path / "text_encoder" / "model.safetensors.index.json").is_file()
    tokenizer.save_pretrained(tmp_path / "tokenizer")  # a saved copy (tokenizer.json) loads too
    proc = te.image_processor_class().from_dict({**te.QWEN25_VL_IMAGE_PROCESSOR_CONFIG, "max_pixels": 200704,
                                                 "size": {"shortest_edge": 3136, "longest_edge": 200704}})
    proc.save_pretrained(tmp_path / "processor")
    enc = load_text_encoder(tmp_path)
    assert enc.image_processor.size["longest_edge"] == 200704
    assert torch.equal(enc.encode(PROMPTS)[0], encoder.encode(PROMPTS)[0])


@pytest.mark.parametrize("prefix", ["", te.COMFY_CHECKPOINT_PREFIX])
def test_load_comfyui_single_file(tmp_path, model, config, encoder, prefix):
    state = {prefix + k: v for k, v in disk_state(model).items() if k != "lm_head.weight"}
    if prefix:  # a full checkpoint: the other components are ignored
        state["model.diffusion_model.img_in.weight"] = torch.zeros(4, 4)
        state["vae.decoder.conv_in.weight"] = torch.zeros(2)
    path = tmp_path / "qwen_2.5_vl_7b_tiny.safetensors"
    save_file(state, str(path))
    enc = load_text_encoder(path, config=config, tokenizer_path=TOKENIZER_DIR)
    assert enc.dtype == torch.float32
    _check_loaded(enc, encoder)
    # with lm_head (as save_pretrained writes it) too; a tokenizer/ folder beside the file is found
    save_file({prefix + k: v for k, v in disk_state(model).items()}, str(path))
    os.symlink(TOKENIZER_DIR, tmp_path / "tokenizer")
    assert te.find_tokenizer_dir(path) == tmp_path / "tokenizer"
    _check_loaded(load_text_encoder(path, config=config), encoder)


def _fp8_state(model, scaled):
    state, quantized = {}, {}
    for k, v in disk_state(model).items():
        if k == "lm_head.weight":
            continue
        if v.dim() == 2 and "embed_tokens" not in k:  # Linear weights, as ComfyUI's fp8 files
            if scaled:
                scale = v.abs().max().float() / 448.0
                q = (v / scale).to(torch.float8_e4m3fn)
                state[k[: -len(".weight")] + ".scale_weight"] = scale.reshape(())
                quantized[k] = q.float() * scale
            else:
                q = v.to(torch.float8_e4m3fn)
                quantized[k] = q.float()
            state[k] = q
        else:
            state[k] = v.to(torch.bfloat16)
            quantized[k] = state[k].float()
    if scaled:
        state["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return state, quantized


@pytest.mark.parametrize("scaled", [True, False])
def test_load_fp8_single_file(tmp_path, model, config, encoder, scaled):
    state, expect = _fp8_state(model, scaled)
    path = tmp_path / "qwen_2.5_vl_7b_fp8_scaled.safetensors"
    save_file(state, str(path))
    enc = load_text_encoder(path, config=config, tokenizer_path=TOKENIZER_DIR, dtype=torch.float32)
    loaded = {te.model_name_to_disk_key(n): p for n, p in enc.model.named_parameters()}
    assert loaded.keys() == expect.keys()
    for k, v in expect.items():  # up-cast (times the scale) exactly
        assert torch.equal(loaded[k], v), k
    # outputs within fp8 rounding of the full-precision model (e4m3: 3 mantissa bits, ~6% per weight)
    img = rand_image(90, 60, 13)
    for args in (dict(prompts=PROMPTS[:2]), dict(prompts=["make it blue"], images=img, template="edit")):
        (a, am), (b, bm) = enc.encode(**args), encoder.encode(**args)
        assert torch.equal(am, bm)
        assert rel_err(a, b) < 0.25 and torch.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    # default dtype for fp8 files: bfloat16
    assert load_text_encoder(path, config=config, tokenizer_path=TOKENIZER_DIR).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------- errors

@pytest.fixture()
def single_file(tmp_path, model):
    def write(mutate):
        state = {k: v for k, v in disk_state(model).items() if k != "lm_head.weight"}
        mutate(state)
        path = tmp_path / "qwen_2.5_vl_7b_bad.safetensors"
        save_file(state, str(path))
        return path
    return write


def test_error_missing_key(single_file, config):
    path = single_file(lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(TextEncoderLoadError) as e:
        load_text_encoder(path, config=config, tokenizer_path=TOKENIZER_DIR)
    assert str(path) in str(e.value) and "'model.layers.1.mlp.up_proj.weight'" in str(e.value)
    assert "missing" in str(e.value)


def test_error_wrong_shape(single_file, config):
    path = single_file(lambda s: s.__setitem__("model.norm.weight", torch.ones(65)))
    with pytest.raises(TextEncoderLoadError) as e:
        load_text_encoder(path, config=config, tokenizer_path=TOKENIZER_DIR)
    msg = str(e.value)
    assert str(path) in msg and "'model.norm.weight'" in msg and "[65]" in msg and "[64]" in msg


def test_error_unexpected_key(single_file, config):
    path = single_file(lambda s: s.__setitem__("model.layers.7.mlp.up_proj.weight", torch.ones(2)))
    with pytest.raises(TextEncoderLoadError) as e:
        load_text_encoder(path, config=config, tokenizer_path=TOKENIZER_DIR)
    assert str(path) in str(e.value) and "'model.layers.7.mlp.up_proj.weight'" in str(e.value)


def test_error_official_config_on_a_tiny_file(single_file):
    path = single_file(lambda s: None)
    with pytest.raises(TextEncoderLoadError, match="config does not match the weights") as e:  # before building
        load_text_encoder(path, tokenizer_path=TOKENIZER_DIR)
    assert "num_hidden_layers = 28 in the config, but the file has 2" in str(e.value)
    assert "file has [151669, 64], config (text_config.hidden_size = 3584) needs [151669, 3584]" in str(e.value)


def test_error_not_safetensors(tmp_path):
    path = tmp_path / "qwen_2.5_vl_7b.safetensors"
    path.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(TextEncoderLoadError) as e:
        load_text_encoder(path, tokenizer_path=TOKENIZER_DIR)
    assert str(path) in str(e.value) and "not a safetensors file" in str(e.value)
    other = tmp_path / "unet.safetensors"
    save_file({"conv.weight": torch.zeros(2)}, str(other))
    with pytest.raises(TextEncoderLoadError, match="not a Qwen2.5-VL text encoder"):
        load_text_encoder(other, tokenizer_path=TOKENIZER_DIR)


def test_error_pickled_weights(tmp_path, config):
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    config.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02not loaded")
    with pytest.raises(TextEncoderLoadError, match="pickled weights are never loaded"):
        load_text_encoder(tmp_path, tokenizer_path=TOKENIZER_DIR)
    with pytest.raises(TextEncoderLoadError, match="pickled"):
        load_text_encoder(folder / "pytorch_model.bin", tokenizer_path=TOKENIZER_DIR)
    with pytest.raises(TextEncoderLoadError, match="no such file"):
        load_text_encoder(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------------------- tokenizer lookup

def test_tokenizer_lookup_comfyui_bundled_and_hub(tmp_path, monkeypatch):
    weights = tmp_path / "models" / "text_encoders" / "qwen_2.5_vl_7b.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")

    def offline():
        raise OSError("no connection (offline)")

    monkeypatch.setattr(te, "_hub_tokenizer_dir", offline)
    # nothing beside the file and no ComfyUI: the package's own copy, offline
    assert te.find_tokenizer_dir(weights) == te.bundled_tokenizer_dir()
    assert te.is_tokenizer_dir(te.bundled_tokenizer_dir())
    # that copy removed too: the hub, and when offline an error naming every place looked in
    monkeypatch.setattr(te, "bundled_tokenizer_dir", lambda: tmp_path / "removed")
    with pytest.raises(TextEncoderLoadError) as e:
        te.find_tokenizer_dir(weights)
    msg = str(e.value)
    assert "Qwen/Qwen-Image" in msg and "offline" in msg and "tokenizer_path" in msg
    assert str(tmp_path / "removed") in msg and str(weights.parent / "tokenizer") in msg
    with pytest.raises(TextEncoderLoadError, match="not a tokenizer folder"):
        te.find_tokenizer_dir(weights, tokenizer_path=tmp_path)

    # inside ComfyUI: comfy/text_encoders/qwen25_tokenizer, found without importing comfy
    comfy = tmp_path / "ComfyUI" / "comfy"
    (comfy / "text_encoders").mkdir(parents=True)
    (comfy / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    os.symlink(TOKENIZER_DIR, comfy / "text_encoders" / "qwen25_tokenizer")
    monkeypatch.syspath_prepend(str(tmp_path / "ComfyUI"))
    importlib.invalidate_caches()
    assert "comfy" not in sys.modules
    assert te.find_tokenizer_dir(weights) == comfy / "text_encoders" / "qwen25_tokenizer"
    assert "comfy" not in sys.modules
    # the hub is the last resort
    hub = tmp_path / "hub" / "tokenizer"
    os.makedirs(hub.parent)
    os.symlink(TOKENIZER_DIR, hub)
    monkeypatch.setattr(te, "comfyui_tokenizer_dir", lambda: None)
    monkeypatch.setattr(te, "_hub_tokenizer_dir", lambda: hub)
    assert te.find_tokenizer_dir(weights) == hub
    with pytest.raises(TextEncoderLoadError):
        te.find_tokenizer_dir(weights, allow_download=False)
