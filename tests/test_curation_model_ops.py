"""The model-based curation ops (nsfw, watermark, clip_alignment, aesthetic, face_mosaic) on tiny random models of
the same architectures as their defaults, made here and loaded through the ops by path: statistics in range,
batching equal to one by one, thresholds dropping, label and model errors, and ops that survive pickling to a
worker. face_mosaic's measures run on given crops, and its detection through OpenCV's YuNet runner on a
YuNet-shaped network that finds bright squares (the real detector's weights are not shipped)."""
from __future__ import annotations

import io
import multiprocessing as mp
import os
import pickle

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from qwenimage.training.data.curation import ops  # noqa: F401  (registers every op)
from qwenimage.training.data.curation.op import Item, OpError, Record, build_op, run_op
from qwenimage.training.data.curation.ops import aesthetic_convert
from qwenimage.training.data.curation.ops.faces import blur_effect, mosaic_score

cv2 = pytest.importorskip("cv2")
transformers = pytest.importorskip("transformers")

TOWER = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
VISION = dict(TOWER, image_size=32, patch_size=8)
WORDS = ["a", "red", "green", "blue", "cat", "dog", "on", "the", "grass", "sky", "猫", "狗"]


def _png(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    arr[: size[1] // 2] = rng.integers(0, 255, 3)   # half flat colour, half noise: images differ in content
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _items(n: int, captions=None) -> list[Item]:
    captions = captions or [None] * n
    return [Item(Record(f"k{i}", f"k{i}.png", caption=captions[i]), data=_png(i)) for i in range(n)]


# ------------------------------------------------------------------------------------------- tiny models

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
    from transformers import (BertTokenizer, ChineseCLIPConfig, ChineseCLIPImageProcessorPil, ChineseCLIPModel,
                              CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast, SiglipConfig,
                              SiglipImageProcessorPil, SiglipModel, Siglip2Config, Siglip2ImageProcessorPil,
                              Siglip2Model, ViTConfig, ViTForImageClassification, ViTImageProcessorPil)

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_models")
    out = {}

    def classifier(name, labels):
        cfg = ViTConfig(**VISION, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
        ViTForImageClassification(cfg).save_pretrained(root / name)
        ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / name)
        out[name] = str(root / name)

    classifier("nsfw", ["normal", "nsfw"])                       # Falconsai/nsfw_image_detection's classes
    classifier("watermark", ["no_watermark", "watermark"])

    # Chinese-CLIP: BERT text tower with a WordPiece vocabulary
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (root / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    cc = ChineseCLIPConfig(text_config=dict(TOWER, vocab_size=len(vocab), max_position_embeddings=32),
                           vision_config=VISION, projection_dim=8)
    ChineseCLIPModel(cc).save_pretrained(root / "cclip")
    BertTokenizer(str(root / "vocab.txt")).save_pretrained(root / "cclip")
    ChineseCLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "cclip")
    out["cclip"] = str(root / "cclip")

    # SigLIP (google/siglip2-base-patch16-224 is this architecture) and SigLIP 2 NaFlex: a word-level fast tokenizer
    wl = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *WORDS])}
    tk = Tokenizer(tk_models.WordLevel(wl, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    text = dict(TOWER, vocab_size=len(wl), max_position_embeddings=16)
    SiglipModel(SiglipConfig(text_config=text, vision_config=VISION)).save_pretrained(root / "siglip")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "siglip")
    Siglip2Model(Siglip2Config(text_config=text, vision_config=dict(TOWER, patch_size=8, num_patches=16))
                 ).save_pretrained(root / "siglip2")
    Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16).save_pretrained(root / "siglip2")
    for name in ("siglip", "siglip2"):
        tok.save_pretrained(root / name)
        out[name] = str(root / name)

    # CLIP for the aesthetic predictor (projection width 12) and an MLP with the LAION predictor's key layout
    CLIPModel(CLIPConfig(text_config=dict(TOWER, vocab_size=16), vision_config=VISION, projection_dim=12)
              ).save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / "clip")
    out["clip"] = str(root / "clip")
    widths = [(0, 12, 16), (2, 16, 8), (4, 8, 6), (6, 6, 4), (7, 4, 1)]     # layers 1, 3, 5 are dropouts
    state = {}
    for i, n_in, n_out in widths:
        state[f"layers.{i}.weight"] = torch.randn(n_out, n_in)
        state[f"layers.{i}.bias"] = torch.randn(n_out)
    torch.save(state, root / "mlp.pth")
    out["mlp_state"] = state
    out["mlp_pth"] = str(root / "mlp.pth")
    return out


# ------------------------------------------------------------------------------------------- classifiers

def _stat(op, items, stat):
    return [d[stat] for d in op.compute_batch(items)]


def test_nsfw_probability_batched_equals_one_by_one_and_matches_the_model(models):
    op = build_op({"op": "nsfw", "model": models["nsfw"], "batch_size": 3})
    items = _items(5)
    batched = _stat(op, items, "nsfw")
    single = [op.compute(it)["nsfw"] for it in items]
    assert all(0.0 <= p <= 1.0 for p in batched)
    assert np.allclose(batched, single, atol=1e-5)
    assert len(set(np.round(batched, 6))) > 1                        # different images, different scores
    # the probability of the class named "nsfw" (index 1), and "normal" is its complement
    normal = build_op({"op": "nsfw", "model": models["nsfw"], "label": "Normal"})
    assert np.allclose(np.add(batched, _stat(normal, items, "nsfw")), 1.0, atol=1e-5)
    by_index = build_op({"op": "nsfw", "model": models["nsfw"], "label": 1})
    assert np.allclose(_stat(by_index, items, "nsfw"), batched, atol=1e-6)


def test_classifier_threshold_drops_above_it_and_default_rule(models):
    items = _items(6)
    scores = _stat(build_op({"op": "nsfw", "model": models["nsfw"]}), items, "nsfw")
    cut = float(np.median(scores))
    op = build_op({"op": "nsfw", "model": models["nsfw"], "batch_size": 4, "keep": {"nsfw": [0.0, cut]}})
    run_op(op, items)
    for it, s in zip(items, scores):
        assert it.stats["nsfw"] == pytest.approx(s, abs=1e-5)
        assert (it.record.dropped is not None) == (s > cut)
        if s > cut:
            assert it.record.dropped.startswith("nsfw: nsfw=")
    assert build_op({"op": "nsfw"}).keep == {"nsfw": (0.0, 0.5)}
    assert build_op({"op": "watermark"}).keep == {"watermark": (0.0, 0.8)}


def test_watermark_scores_the_watermark_class_not_no_watermark(models):
    items = _items(3)
    wm = _stat(build_op({"op": "watermark", "model": models["watermark"]}), items, "watermark")
    clean = _stat(build_op({"op": "watermark", "model": models["watermark"], "label": "no_watermark"}), items,
                  "watermark")
    assert np.allclose(np.add(wm, clean), 1.0, atol=1e-5)
    model = transformers.AutoModelForImageClassification.from_pretrained(models["watermark"])
    proc = transformers.AutoImageProcessor.from_pretrained(models["watermark"], backend="pil")
    with torch.no_grad():
        p = model(**proc(images=[it.small for it in items], return_tensors="pt")).logits.softmax(-1)[:, 1]
    assert np.allclose(wm, p.numpy(), atol=1e-5)


def test_unknown_label_names_the_classes(models):
    op = build_op({"op": "nsfw", "model": models["nsfw"], "label": "porn"})
    with pytest.raises(OpError, match=r"no class 'porn'.*'normal'.*'nsfw'"):
        op.compute(_items(1)[0])


def test_missing_model_stops_the_run_naming_it(tmp_path):
    items = _items(2)
    op = build_op({"op": "nsfw", "model": str(tmp_path / "no_such_model")})
    with pytest.raises(OpError, match="no_such_model"):
        run_op(op, items)                                         # a config error, not two dropped samples
    assert all(it.record.dropped is None for it in items)
    op = build_op({"op": "watermark", "model": "nobody-here/no-such-watermark-model", "offline": True})
    with pytest.raises(OpError, match=r"no-such-watermark-model.*huggingface-cli download"):
        op.compute(items[0])
    with pytest.raises(OpError, match="batch_size"):
        build_op({"op": "nsfw", "batch_size": 0})


@pytest.fixture
def no_network(monkeypatch):
    """A machine without network: every connection fails; the per-process answer is asked afresh and forgotten."""
    import socket

    from qwenimage.training.data.curation.ops import _model

    probes = []

    def refuse(*args, **kwargs):
        probes.append(args)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _model.hub_reachable.cache_clear()
    yield probes
    _model.hub_reachable.cache_clear()


def test_an_unreachable_hub_fails_at_once_naming_the_model(no_network, monkeypatch):
    """Without network the hub client retried for ~115 s before the op failed: the hub is asked once (a TCP
    connection), and then only the local cache is read, so the error comes at once, naming the model and the fix."""
    import huggingface_hub

    from qwenimage.training.data.curation.ops._model import hub_reachable, local_or_hub_file

    asked = []

    class Model:
        @classmethod
        def from_pretrained(cls, path, local_files_only=False, **kw):
            asked.append(local_files_only)
            raise OSError(f"{path} is not in the cache")

    op = build_op({"op": "nsfw", "model": "nobody-here/no-such-model"})   # offline not set
    with pytest.raises(OpError, match=r"no-such-model.*huggingface-cli download.*cannot be reached from here"):
        op.pretrained(Model, op.model, "image classifier")
    assert asked == [True] and len(no_network) == 1                       # the cache only; the hub asked once
    op.load = lambda: pytest.fail("load() imports transformers and torch: the missing model is said before")
    with pytest.raises(OpError, match=r"model 'nobody-here/no-such-model' is not in the local cache.*cannot be "
                                      r"reached.*huggingface-cli download"):
        op.compute(_items(1)[0])

    def download(repo, filename, local_files_only=False, **kw):
        asked.append(local_files_only)
        raise FileNotFoundError(filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(OpError, match=r"no-mlp/model.safetensors is not in the local cache.*cannot be reached"):
        local_or_hub_file("aesthetic", "aesthetic MLP", "nobody-here/no-mlp", "model.safetensors", False)
    assert asked == [True, True] and len(no_network) == 1                 # the answer is kept per process
    hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False and len(no_network) == 1              # offline by the environment: not asked


def _score_in_worker(op, data):
    torch.set_num_threads(1)  # the engine gives each worker its share of the cores; here one
    return op.compute(Item(Record("w", "w.png"), data=data))


def test_model_ops_pickle_without_their_model_and_run_in_a_worker(models):
    op = build_op({"op": "nsfw", "model": models["nsfw"]})
    item = _items(1)[0]
    here = op.compute(item)["nsfw"]
    assert op._loaded is not None
    blob = pickle.dumps(op)
    assert len(blob) < 4000                                       # the loaded model stays behind
    assert pickle.loads(blob)._loaded is None
    with mp.get_context("forkserver").Pool(1) as pool:            # the engine's pool: the op goes through a pipe
        there = pool.apply(_score_in_worker, (op, _png(0)))["nsfw"]
    assert there == pytest.approx(here, abs=1e-5)


def test_threads_option_pins_torch_threads_on_load(models):
    before = torch.get_num_threads()
    try:
        build_op({"op": "nsfw", "model": models["nsfw"], "threads": 3}).compute(_items(1)[0])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    with pytest.raises(OpError, match="threads must be a positive integer"):
        build_op({"op": "nsfw", "threads": 0})


# ------------------------------------------------------------------------------------------- alignment

def _reference_cosines(path, items):
    """Cosines from the model's own logits (logit_scale * cos [+ bias]), independent of the op's pairing."""
    model = transformers.AutoModel.from_pretrained(path).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    proc = transformers.AutoImageProcessor.from_pretrained(path, backend="pil")
    siglip = model.config.model_type.startswith("siglip")
    text = tok([it.caption for it in items], return_tensors="pt", padding="max_length" if siglip else True,
               max_length=model.config.text_config.max_position_embeddings, truncation=True)
    with torch.no_grad():
        out = model(**text, **proc(images=[it.small for it in items], return_tensors="pt"))
    logits = out.logits_per_image.diagonal()
    if siglip:
        logits = logits - model.logit_bias
    return (logits / model.logit_scale.exp()).detach().numpy()


@pytest.mark.parametrize("siglip", ["siglip", "siglip2"])
def test_clip_alignment_scores_pair_each_image_with_its_caption(models, siglip):
    captions = ["a red cat", "the dog on the grass", "蓝 猫", "blue sky", "a green dog"]
    items = _items(5, captions)
    op = build_op({"op": "clip_alignment", "models": {"clip_score": models["cclip"], "siglip_score": models[siglip]},
                   "batch_size": 2})
    batched = op.compute_batch(items)
    single = [op.compute(it) for it in items]
    for stat, path in (("clip_score", models["cclip"]), ("siglip_score", models[siglip])):
        got = np.array([d[stat] for d in batched])
        assert np.all(np.abs(got) <= 1.0 + 1e-5)
        assert np.allclose(got, [d[stat] for d in single], atol=1e-4)
        assert np.allclose(got, _reference_cosines(path, items), atol=1e-4)
    shouted = op.compute(Item(Record("u", "u.png", caption="A RED Cat"), data=_png(0)))
    assert shouted["siglip_score"] == pytest.approx(batched[0]["siglip_score"], abs=1e-5)   # SigLIP: lowercased


def test_clip_alignment_options_no_caption_and_thresholds(models):
    items = _items(4, ["a red cat", None, "the sky", "a blue dog"])
    op = build_op({"op": "clip_alignment", "models": {"clip_score": models["cclip"]}})
    stats = op.compute_batch(items)
    assert [set(d) for d in stats] == [{"clip_score"}] * 4
    assert stats[1]["clip_score"] is None and all(isinstance(stats[i]["clip_score"], float) for i in (0, 2, 3))
    cut = float(np.median([stats[i]["clip_score"] for i in (0, 2, 3)]))
    op = build_op({"op": "clip_alignment", "models": {"clip_score": models["cclip"]},
                   "keep": {"clip_score": [cut, float("inf")]}})
    run_op(op, items)
    assert items[1].record.dropped is None and items[1].stats == {}     # uncaptioned: not judged (needs_caption)
    for i in (0, 2, 3):
        assert (items[i].record.dropped is None) == (stats[i]["clip_score"] >= cut)
    with pytest.raises(OpError, match="models must map"):
        build_op({"op": "clip_alignment", "models": {"clap_score": "x"}})
    with pytest.raises(OpError, match="keep.siglip_score needs a model"):
        build_op({"op": "clip_alignment", "models": {"clip_score": "x"}, "keep": {"siglip_score": [0, 1]}})
    with pytest.raises(OpError, match="models = "):
        build_op({"op": "clip_alignment", "model": "x"})


# ------------------------------------------------------------------------------------------- aesthetic

def test_aesthetic_is_the_mlp_over_the_normalised_clip_embedding(models, tmp_path):
    mlp = tmp_path / "aesthetic.safetensors"
    assert aesthetic_convert.main([models["mlp_pth"], str(mlp)]) == 0
    assert sorted(safetensors.torch.load_file(str(mlp))) == sorted(models["mlp_state"])
    op = build_op({"op": "aesthetic", "clip_model": models["clip"], "model": str(mlp), "batch_size": 3})
    items = _items(4)
    got = _stat(op, items, "aesthetic")
    assert np.allclose(got, [op.compute(it)["aesthetic"] for it in items], atol=1e-5)
    # by hand: CLIPModel's own normalised image_embeds through the five linear layers
    clip = transformers.CLIPModel.from_pretrained(models["clip"]).eval()
    proc = transformers.AutoImageProcessor.from_pretrained(models["clip"], backend="pil")
    with torch.no_grad():
        x = clip(input_ids=torch.zeros(len(items), 2, dtype=torch.long),
                 **proc(images=[it.small for it in items], return_tensors="pt")).image_embeds
        for i in (0, 2, 4, 6, 7):
            x = torch.nn.functional.linear(x, models["mlp_state"][f"layers.{i}.weight"],
                                           models["mlp_state"][f"layers.{i}.bias"])
    assert np.allclose(got, x.squeeze(-1).numpy(), atol=1e-4)
    # the public .pth as it is (tensors only) gives the same scores; a folder holding model_file works too
    from_pth = build_op({"op": "aesthetic", "clip_model": models["clip"], "model": models["mlp_pth"]})
    assert np.allclose(_stat(from_pth, items, "aesthetic"), got, atol=1e-5)
    op = build_op({"op": "aesthetic", "clip_model": models["clip"], "model": str(tmp_path),
                   "model_file": "aesthetic.safetensors", "keep": {"aesthetic": [float(np.median(got)), float("inf")]}})
    run_op(op, items)
    assert [it.record.dropped is None for it in items] == [s >= np.median(got) for s in got]


class _NotATensor:
    pass


def test_aesthetic_errors_name_the_fix(models, tmp_path):
    item = _items(1)[0]
    clip = models["clip"]
    with pytest.raises(OpError, match=r"nobody-here/no-mlp/aesthetic-model.pth.*huggingface-cli download"):
        build_op({"op": "aesthetic", "clip_model": clip, "model": "nobody-here/no-mlp", "offline": True}).compute(item)
    with pytest.raises(OpError, match="has no aesthetic-model.pth"):
        build_op({"op": "aesthetic", "clip_model": clip, "model": str(tmp_path)}).compute(item)
    torch.save({"layers.0.weight": _NotATensor()}, tmp_path / "code.pth")      # pickled code is refused, not run
    with pytest.raises(OpError, match="not a tensors-only .pth"):
        build_op({"op": "aesthetic", "clip_model": clip, "model": str(tmp_path / "code.pth")}).compute(item)
    from safetensors.torch import save_file

    save_file({"layers.0.weight": torch.zeros(1, 20), "layers.0.bias": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(OpError, match="takes 20-wide embeddings"):
        build_op({"op": "aesthetic", "clip_model": clip, "model": str(tmp_path / "w.safetensors")}).compute(item)
    save_file({"fc.weight": torch.zeros(1, 12)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(OpError, match="not an aesthetic MLP"):
        build_op({"op": "aesthetic", "clip_model": clip, "model": str(tmp_path / "w.safetensors")}).compute(item)
    assert build_op({"op": "aesthetic"}).model == "trl-lib/ddpo-aesthetic-predictor"


# ------------------------------------------------------------------------------------------- faces

def _texture(seed=0, size=(96, 112)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random(size) * 255).astype(np.float32), (0, 0), 1.0)


def _pixelate(gray: np.ndarray, block: int) -> np.ndarray:
    h, w = gray.shape
    small = cv2.resize(gray, (w // block, h // block), interpolation=cv2.INTER_AREA)
    out = cv2.resize(small, (w // block * block, h // block * block), interpolation=cv2.INTER_NEAREST)
    return np.pad(out, ((5, 0), (3, 0)), mode="edge")             # the grid need not start at the box's corner


@pytest.mark.parametrize("block", [8, 12, 16])
def test_mosaic_score_finds_pixelation_and_not_texture_or_edges(block):
    face = _texture()
    assert mosaic_score(_pixelate(face, block)) > 0.8
    assert mosaic_score(face) < 0.1
    assert mosaic_score(cv2.GaussianBlur(face, (0, 0), 4)) < 0.1
    edges = np.zeros((100, 100), np.float32)
    edges[:, 50:] = 200
    edges[50:] += 50                                               # one strong edge each way is not a grid
    assert mosaic_score(edges) < 0.2
    assert mosaic_score(np.full((60, 60), 128, np.float32)) == 0.0


def test_blur_effect_rises_with_blur():
    face = _texture()
    values = [blur_effect(face)] + [blur_effect(cv2.GaussianBlur(face, (0, 0), s)) for s in (1, 2, 4, 8)]
    assert values[0] < 0.3 and values[-1] > 0.8
    assert values == sorted(values)


def _image_with(faces: dict) -> tuple[bytes, list]:
    """A 320x256 grey image with the given crops pasted at (x, y); returns PNG bytes and their boxes."""
    canvas = np.full((256, 320), 120, np.float32)
    boxes = []
    for (x, y), crop in faces.items():
        canvas[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
        boxes.append((x, y, crop.shape[1], crop.shape[0]))
    buf = io.BytesIO()
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).convert("RGB").save(buf, "PNG")
    return buf.getvalue(), boxes


def test_face_mosaic_op_measures_the_worst_face_and_keeps_images_without_faces(monkeypatch):
    sharp, mosaic = _texture(1), _pixelate(_texture(2), 12)
    data, boxes = _image_with({(10, 10): sharp, (150, 20): mosaic})
    op = build_op({"op": "face_mosaic"})
    monkeypatch.setattr(op, "detect", lambda item: boxes)
    item = Item(Record("f", "f.png"), data=data)
    run_op(op, [item])
    s = item.stats
    assert s["faces"] == 2 and s["face_mosaic"] > 0.8 and s["face_blur"] < 0.3
    assert item.record.dropped.startswith("face_mosaic: face_mosaic=")
    # only the sharp face: kept
    monkeypatch.setattr(op, "detect", lambda item: boxes[:1])
    item = Item(Record("g", "g.png"), data=data)
    run_op(op, [item])
    assert item.stats["face_mosaic"] < 0.1 and item.record.dropped is None
    # a face too small to judge counts, but is not measured; no face at all: zeros, kept
    monkeypatch.setattr(op, "detect", lambda item: [(0, 0, 20, 20)])
    assert op.compute(Item(Record("h", "h.png"), data=data)) == {"faces": 1, "face_mosaic": 0.0, "face_blur": 0.0}
    monkeypatch.setattr(op, "detect", lambda item: [])
    item = Item(Record("n", "n.png"), data=data)
    run_op(op, [item])
    assert item.stats == {"faces": 0, "face_mosaic": 0.0, "face_blur": 0.0} and item.record.dropped is None


FAKE_YUNET = os.path.join(os.path.dirname(__file__), "fixtures", "fake_yunet.onnx")


def _bright_face(pixelate: bool) -> np.ndarray:
    """A 64 x 64 bright textured square (what the fake YuNet takes for a face), pixelated in 16 px blocks or not."""
    rng = np.random.default_rng(3)
    face = cv2.GaussianBlur((200 + rng.random((64, 64)) * 55).astype(np.float32), (0, 0), 1.0)
    if pixelate:
        face = cv2.resize(cv2.resize(face, (4, 4), interpolation=cv2.INTER_AREA), (64, 64),
                          interpolation=cv2.INTER_NEAREST)
    return face


def test_face_mosaic_through_opencv_yunet_end_to_end():
    """OpenCV's own cv2.FaceDetectorYN with a YuNet-shaped network (tests/fixtures/make_fake_yunet.py) that
    finds bright 32 px cells: detection on the 512 px analysis copy, boxes mapped back to the 1024 px image."""
    def image(face):
        canvas = np.zeros((640, 1024), np.float32)
        if face is not None:
            canvas[128:192, 192:256] = face                    # one 32 px cell at (96, 64) in the analysis copy
        buf = io.BytesIO()
        Image.fromarray(canvas.astype(np.uint8)).convert("RGB").save(buf, "PNG")
        return Item(Record("f", "f.png"), data=buf.getvalue())

    op = build_op({"op": "face_mosaic", "detector": FAKE_YUNET})
    assert op.detect(image(_bright_face(False))) == [(192, 128, 64, 64)]
    mosaic, sharp, empty = image(_bright_face(True)), image(_bright_face(False)), image(None)
    run_op(op, [mosaic, sharp, empty])
    assert mosaic.stats["faces"] == 1 and mosaic.stats["face_mosaic"] > 0.8
    assert mosaic.record.dropped.startswith("face_mosaic: face_mosaic=")
    assert sharp.stats["faces"] == 1 and sharp.stats["face_mosaic"] < 0.1 and sharp.stats["face_blur"] < 0.5
    assert sharp.record.dropped is None
    assert empty.stats == {"faces": 0, "face_mosaic": 0.0, "face_blur": 0.0} and empty.record.dropped is None
    # a folder holding detector_file; the loaded detector stays behind when the op is pickled
    op = build_op({"op": "face_mosaic", "detector": os.path.dirname(FAKE_YUNET), "detector_file": "fake_yunet.onnx"})
    assert op.compute(image(_bright_face(False)))["faces"] == 1 and op._yunet is not None
    copy = pickle.loads(pickle.dumps(op))
    assert copy._yunet is None and copy.compute(image(_bright_face(False)))["faces"] == 1


def test_face_detector_errors_name_the_file(tmp_path):
    item = _items(1)[0]
    with pytest.raises(OpError, match="no such file or folder"):
        build_op({"op": "face_mosaic", "detector": str(tmp_path / "yunet.onnx")}).compute(item)
    with pytest.raises(OpError, match="has no face_detection_yunet_2023mar.onnx"):
        build_op({"op": "face_mosaic", "detector": str(tmp_path)}).compute(item)
    (tmp_path / "bad.onnx").write_bytes(b"not a network")
    with pytest.raises(OpError, match="not a YuNet face detector"):
        build_op({"op": "face_mosaic", "detector": str(tmp_path / "bad.onnx")}).compute(item)
    with pytest.raises(OpError, match=r"nobody-here/no-yunet.*huggingface-cli download"):
        build_op({"op": "face_mosaic", "detector": "nobody-here/no-yunet", "offline": True}).compute(item)
    with pytest.raises(OpError, match="mosaic_blocks"):
        build_op({"op": "face_mosaic", "mosaic_blocks": [16, 8]})
