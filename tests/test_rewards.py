"""The built-in scorers: OCR text accuracy (English and Chinese, on rendered text), JPEG (in)compressibility, CLIP
score and PickScore on a tiny random CLIP, the Qwen2.5-VL judge on a tiny random Qwen2.5-VL, the HTTP reward
against scripts/reward_server.py, and the errors each gives."""
import glob
import http.server
import json
import os
import random
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from qwenimage.training.eval.text_metrics import char_accuracy, normalized_edit_distance, quoted_text
from qwenimage.training.rewards import REGISTRY, RewardError, WeightedSum, build, score
from qwenimage.training.rewards.clip import ModelMissing
from qwenimage.training.rewards.http import post_json
from qwenimage.training.rewards.vlm_judge import parse_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CJK_FONTS = [p for pat in ("NotoSansCJK*", "NotoSerifCJK*", "wqy-*", "*uming*", "*ukai*", "DroidSansFallback*")
             for p in sorted(glob.glob(f"/usr/share/fonts/**/{pat}.tt[cf]", recursive=True))
             + sorted(glob.glob(f"/usr/share/fonts/**/{pat}.otf", recursive=True))]


def jpeg_or_bug(images, prompts, metadata):  # served by the reward server as "test_rewards:jpeg_or_bug"
    if "fail" in prompts:
        raise ZeroDivisionError("the plugin's own bug")
    return build("jpeg_incompressibility")[1](images, prompts, metadata)


# ------------------------------------------------------------------------------------------------ text metrics

def test_quoted_text_and_character_accuracy():
    assert quoted_text('a shop sign that says "OPEN 24h" and a banner “营业中”, 「欢迎」') == ["OPEN 24h", "营业中", "欢迎"]
    assert quoted_text("the dog's bowl, no text") == []
    assert char_accuracy("OPEN 24h", "open24h") == 1.0            # case and spaces are ignored by default
    assert char_accuracy("OPEN 24h", "open24h", ignore_case=False) < 1.0
    assert char_accuracy("ＯＰＥＮ", "OPEN") == 1.0                  # full-width forms (NFKC)
    assert char_accuracy("OPEX", "OPEN") == 0.75                    # one substitution in four
    assert char_accuracy("", "OPEN") == 0.0
    assert char_accuracy("a much longer reading than the target", "OPEN") == 0.0   # clipped at 0
    assert char_accuracy("通义千问", "通义千间") == 0.75
    assert normalized_edit_distance("", "") == 0.0
    assert char_accuracy("Hello world", "Hello, world!") < 1.0
    assert char_accuracy("Hello world", "Hello, world!", ignore_punct=True) == 1.0
    assert char_accuracy("欢迎光临", "欢迎光临！", ignore_punct=True) == 1.0


# ----------------------------------------------------------------------------------------------------- OCR

def render(text: str, font, size=(320, 96)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((size[0] // 2, size[1] // 2), text, fill="black", font=font, anchor="mm")
    return im


@pytest.fixture(scope="module")
def ocr():
    return build("ocr")  # the models load once for the module


def scrambled(text: str, alphabet: str, seed: int = 0) -> str:
    """Other characters of the same alphabet, none where the original has one."""
    rng = random.Random(seed)
    return "".join(" " if c == " " else rng.choice([a for a in alphabet if a != c]) for c in text)


def test_ocr_reward_english(ocr):
    name, fn = ocr
    font = ImageFont.load_default(size=36)  # Pillow's own scalable font: on every machine
    targets = ["HELLO WORLD", "Qwen Image 2025"]
    prompts = [f'a poster with the words "{t}" in black' for t in targets]
    good = [render(t, font) for t in targets]
    bad = [render(scrambled(t, "ABCDEFGHKMPRSTUVWXYZ"), font) for t in targets]
    values = score(name, fn, good + bad + [Image.new("RGB", (320, 96), "white")], prompts * 2 + prompts[:1])
    assert values[:2] == pytest.approx([1.0, 1.0], abs=0.1), values
    assert max(values[2:4]) < 0.4, values
    assert values[4] == 0.0  # nothing written, nothing read


@pytest.mark.skipif(not CJK_FONTS, reason="no CJK font on this machine (Debian: fonts-noto-cjk or "
                    "fonts-wqy-microhei, which .ci/run installs)")
def test_ocr_reward_chinese(ocr):
    name, fn = ocr
    font = ImageFont.truetype(CJK_FONTS[0], 40)
    targets = ["通义千问图像", "欢迎光临"]
    prompts = [f"一张海报，上面写着“{t}”" for t in targets]
    good = [render(t, font) for t in targets]
    bad = [render(scrambled(t, "山水天地日月风云花草"), font) for t in targets]
    values = score(name, fn, good + bad, prompts * 2)
    assert min(values[:2]) >= 0.8, values
    assert max(values[2:]) < 0.4, values


def test_ocr_reward_target_from_metadata_and_errors(ocr):
    name, fn = ocr
    im = render("OPEN", ImageFont.load_default(size=40))
    assert score(name, fn, [im], ["a shop door"], [{"text": "OPEN"}]) == pytest.approx([1.0], abs=0.1)
    with pytest.raises(RewardError, match=r"scorer 'ocr' failed: ValueError: prompt 'a shop door' quotes no text"):
        score(name, fn, [im], ["a shop door"])


# ---------------------------------------------------------------------------------------------------- JPEG

def test_jpeg_orders_flat_below_noisy():
    rng = np.random.default_rng(0)
    flat = Image.new("RGB", (128, 128), (90, 120, 200))
    noisy = Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8))
    half = Image.fromarray(np.where(rng.random((128, 128, 1)) < 0.5, noisy, np.asarray(flat)).astype(np.uint8))
    images, prompts = [flat, half, noisy], ["p"] * 3
    inc = score("jpeg_incompressibility", build("jpeg_incompressibility")[1], images, prompts)
    comp = score("jpeg_compressibility", build("jpeg_compressibility")[1], images, prompts)
    assert inc[0] < inc[1] < inc[2] and inc[2] > 10 * inc[0]
    assert comp == pytest.approx([-v / 500 for v in inc])
    assert WeightedSum([{"name": "jpeg_incompressibility", "weight": 2.0}])(images, prompts) == [2 * v for v in inc]


# -------------------------------------------------------------------------------------------- CLIP, PickScore

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP with its own tokenizer and PIL image processor, saved as a hub folder is."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(d)
    CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=32).save_pretrained(d)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return str(d), model


def direct_cosines(model, processor, images, prompts):
    """The cosine computed from the towers and projections, not through CLIPModel.forward."""
    x = processor(text=prompts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=x["pixel_values"]).pooler_output)
        txt = model.text_projection(model.text_model(input_ids=x["input_ids"],
                                                     attention_mask=x["attention_mask"]).pooler_output)
    return torch.nn.functional.cosine_similarity(img, txt).tolist()


def test_clip_score_and_pickscore_on_a_tiny_clip(tiny_clip):
    from transformers import AutoProcessor

    path, model = tiny_clip
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    prompts = ["a red cat", "a blue dog on grass", "text"]
    expected = direct_cosines(model, AutoProcessor.from_pretrained(path), images, prompts)
    clip = build({"name": "clip_score", "model": path, "offline": True, "batch_size": 2})
    assert score(*clip, images, prompts) == pytest.approx(expected, abs=1e-5)
    pick = build({"name": "pickscore", "model": path, "processor": path, "offline": True})
    scale = model.logit_scale.exp().item() / 26
    assert score(*pick, images, prompts) == pytest.approx([scale * c for c in expected], abs=1e-4)


def test_missing_models_are_named(tmp_path):
    with pytest.raises(ModelMissing, match=r"CLIP model processor '.*nowhere': no such folder"):
        build({"name": "clip_score", "model": str(tmp_path / "nowhere")})  # an empty path: not a folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelMissing, match=r"'.*empty' cannot be loaded from that folder"):
        build({"name": "clip_score", "model": str(tmp_path / "empty")})
    with pytest.raises(ModelMissing, match=r"PickScore model processor 'no-org/no-such-model' cannot be loaded from "
                                           r"the local cache.*huggingface-cli download no-org/no-such-model"):
        build({"name": "pickscore", "processor": "no-org/no-such-model", "offline": True})


# ----------------------------------------------------------------------------------------------- VLM judge

def test_parse_score():
    assert parse_score("Score: 4", 5) == 4.0
    assert parse_score("**Score**: 3. The dog is missing.", 5) == 3.0
    assert parse_score("I would say score 5", 5) == 5.0
    assert parse_score(" 2 ", 5) == 2.0
    assert parse_score("Score: 7", 5) is None and parse_score("Score: 0", 5) is None   # out of range
    assert parse_score("a lovely picture", 5) is None
    assert parse_score("Score: 8", 10) == 8.0


@pytest.fixture(scope="module")
def tiny_qwen25vl(tmp_path_factory):
    """A tiny random Qwen2.5-VL with a small word-level tokenizer holding Qwen's chat and vision tokens, saved as a
    hub folder is (the real 151k-token tokenizer would make loading it most of the test's time)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
    words = ["[UNK]", "Score", ":", "1", "2", "3", "4", "5", "a", "the", "image", "prompt", "system", "user",
             "assistant", "You", "are", "helpful"]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", additional_special_tokens=special)
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e4}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[0], window_size=112),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    d = tmp_path_factory.mktemp("qwen25vl")
    model.save_pretrained(d / "random")
    tok.save_pretrained(d / "random")
    # Rigged: the last norm keeps one channel, the head maps its sign to "4" or "5": a well-formed first token.
    with torch.no_grad():
        norm, head = model.model.language_model.norm.weight, model.lm_head.weight
        norm.zero_()[0] = 1.0
        head.zero_()
        head[tok.convert_tokens_to_ids("4"), 0], head[tok.convert_tokens_to_ids("5"), 0] = 10.0, -10.0
    model.save_pretrained(d / "rigged")
    tok.save_pretrained(d / "rigged")
    return d


def test_vlm_judge_on_a_tiny_qwen25vl(tiny_qwen25vl):
    image, prompt = Image.new("RGB", (96, 64), "orange"), 'a sign that says "hi"'
    opts = dict(offline=True, dtype="float32", min_pixels=28 * 28, max_pixels=64 * 28 * 28)
    name, fn = build({"name": "vlm_judge", "model": str(tiny_qwen25vl / "rigged"), "max_new_tokens": 1, **opts})
    rng_before = torch.random.get_rng_state()
    assert score(name, fn, [image, image], [prompt, "x"]) in ([0.8, 0.8], [1.0, 1.0], [0.8, 1.0], [1.0, 0.8])
    # A random model answers nonsense: asked again (sampled), then stopped with its answer quoted.
    name, fn = build({"name": "vlm_judge", "model": str(tiny_qwen25vl / "random"), "max_new_tokens": 3,
                      "retries": 1, **opts})
    with pytest.raises(RewardError, match=r"'vlm_judge' failed: ValueError: the judge gave no score from 1 to 5 in 2 "
                                          r"answers for prompt 'a sign that says \"hi\"'; last answer: "):
        score(name, fn, [image], [prompt])
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # sampling retries leave training's RNG alone


def test_vlm_judge_retries_until_it_parses(tiny_qwen25vl):
    name, judge = build({"name": "vlm_judge", "model": str(tiny_qwen25vl / "random"), "offline": True,
                         "dtype": "float32", "min_pixels": 28 * 28, "max_pixels": 64 * 28 * 28})
    answers = iter(["What a lovely picture", "Score: 9", "Score: 3"])
    seen = []
    judge.answer = lambda inputs, attempt: seen.append(attempt) or next(answers)
    assert score(name, judge, [Image.new("RGB", (64, 64))], ["p"]) == [0.6]
    assert seen == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------- HTTP

@pytest.fixture(scope="module")
def reward_server():
    """scripts/reward_server.py on a free port, serving a plugin from this file (jpeg, or a bug on "fail")."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "reward_server.py"), "--scorer",
                          "test_rewards:jpeg_or_bug", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    line = p.stdout.readline()
    assert line.startswith("listening on http://"), (line, p.stderr.read() if p.poll() is not None else "")
    yield line.split()[-1]
    p.terminate()
    p.wait(10)


def test_http_reward_against_the_reference_server(reward_server):
    rng = np.random.default_rng(2)
    images = [Image.new("RGB", (64, 64), "red"), Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))]
    prompts = ["flat", "noise"]
    name, fn = build({"name": "http", "url": reward_server, "timeout": 30})
    remote = score(name, fn, images, prompts, [{"seed": 1}, {"seed": 2}])
    assert remote == score(*build("jpeg_incompressibility"), images, prompts)   # PNG round trip is lossless
    assert remote[0] < remote[1]
    with pytest.raises(RewardError, match=r"reward server http://.* answered HTTP 500 .*'test_rewards:jpeg_or_bug' "
                                          r"failed: ZeroDivisionError: the plugin's own bug"):
        score(name, fn, images, ["flat", "fail"])
    with pytest.raises(RewardError, match=r"answered HTTP 400 Bad Request: .*bad request: KeyError: 'prompts'"):
        post_json(reward_server, {"images": []}, timeout=30)


def one_shot_server(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _Answers(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("body, message", [
    (b"<html>oops</html>", r"answered with something that is not JSON: b'<html>oops</html>'"),
    (b'{"score": [1]}', r"answered without a \"scores\" list"),
    (b'{"scores": [1.0]}', r"scorer 'http' returned 1 scores for 2 images"),
    (b'{"scores": [1.0, NaN]}', r"scorer 'http' returned a non-finite score for image 1"),
])
def test_http_reward_bad_answers_are_named(body, message):
    server, url = one_shot_server(type("H", (_Answers,), {"body": body}))
    try:
        with pytest.raises(RewardError, match=message):
            score(*build({"name": "http", "url": url}), [Image.new("RGB", (8, 8))] * 2, ["a", "b"])
    finally:
        server.shutdown()


def test_http_reward_timeout_and_unreachable():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with pytest.raises(RewardError, match=rf"reward server {url} did not answer within 0.5 s"):
            score(*build({"name": "http", "url": url, "timeout": 0.5}), [Image.new("RGB", (8, 8))], ["a"])
    finally:
        silent.close()
    with pytest.raises(RewardError, match=rf"reward server {url} cannot be reached"):
        score(*build({"name": "http", "url": url, "timeout": 5}), [Image.new("RGB", (8, 8))], ["a"])


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match=r"scorer 'jpeg_compressibility': .*unexpected keyword argument 'qualty'"):
        build({"name": "jpeg_compressibility", "qualty": 90})


def test_builtin_scorers_are_registered():
    assert {"ocr", "jpeg_compressibility", "jpeg_incompressibility", "clip_score", "pickscore", "vlm_judge",
            "http"} <= set(REGISTRY)
