"""Evaluation's scorers (registered rewards with a multi-metric `metrics` call): text rendering by OCR under the
suites' rules, edit fidelity (PSNR cap, SSIM, LPIPS), and the VLM judges (yes/no questions with DPG's dependency
rule, GEdit's SC/PQ, prompt following) against a scripted OpenAI-compatible endpoint and a tiny local Qwen2.5-VL:
answers parsed, a malformed one retried then recorded, a timeout recorded."""
import base64
import http.server
import json
import math
import socket
import threading

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from qwenimage.training.rewards import RewardError, build, score
from qwenimage.training.rewards.base import metrics
from qwenimage.training.rewards.fidelity import PSNR_CAP
from qwenimage.training.rewards.judge_backend import parse_scores, parse_yes_no
from qwenimage.training.rewards.text_rendering import text_scores
from qwenimage.training.rewards.vlm_questions import dependency_score, geneval_questions
from test_rewards import CJK_FONTS, scrambled, tiny_qwen25vl  # noqa: F401  (the tiny Qwen2.5-VL fixture)
from _tiny import smooth_image
from test_train_vae import write_tiny_vgg


def render(text: str, font, size=(480, 96)) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((size[0] // 2, size[1] // 2), text, fill="black", font=font, anchor="mm")
    return im


# ------------------------------------------------------------------------------------------ text rendering

def test_text_rules_on_strings():
    # CVTG: case and punctuation do not count; words are matched as a multiset, in any order.
    assert text_scores("fresh BREWS every morning", ["Fresh brews, every morning!"], "cvtg") == \
        {"word_accuracy": 1.0, "char_accuracy": 1.0, "ned": 1.0}
    s = text_scores("every morning fresh", ["Fresh brews, every morning"], "cvtg")
    assert s["word_accuracy"] == 0.75 and s["ned"] < 0.75   # order costs in NED only
    assert text_scores("open open", ["open open open"], "cvtg")["word_accuracy"] == pytest.approx(2 / 3)
    # LongText-Bench: X-Omni's character filter; English by words, Chinese by characters.
    assert text_scores("Visit EVExpo2023.com", ["Visit EVExpo2023.com for details"], "longtext")["word_accuracy"] == 0.5
    zh = text_scores("中央公园2公里", ["中央公园 - 2公里"], "longtext")
    assert zh["word_accuracy"] == zh["char_accuracy"] == 1.0
    assert text_scores("本地烘", ["本地烘焙，始于1998"], "longtext")["word_accuracy"] == 0.3  # 3 of 10 chars
    # ChineseWord: character-level accuracy.
    assert text_scores("龍", ["龍鳳"], "chineseword")["char_accuracy"] == 0.5
    # characters in order (edit distance), not counted in any order: nothing of "OPEN DAILY" was read
    wrong = text_scores("CLOSED FOREVER", ["OPEN DAILY"], "cvtg")
    assert wrong["char_accuracy"] == 0.0 and wrong["word_accuracy"] == 0.0
    assert text_scores("OPEN DAILX", ["OPEN DAILY"], "cvtg")["char_accuracy"] == pytest.approx(8 / 9)
    assert text_scores("DAILY OPEN", ["OPEN DAILY"], "cvtg")["char_accuracy"] < 0.5   # order counts
    assert text_scores("", ["OPEN"], "quoted") == {"word_accuracy": 0.0, "char_accuracy": 0.0, "ned": 0.0}
    with pytest.raises(ValueError, match=r"text rule 'mario' is not one of"):
        text_scores("a", ["a"], "mario")


@pytest.fixture(scope="module")
def text_rendering():
    return build({"name": "text_rendering", "rule": "cvtg"})  # the OCR models load once for the module


def test_text_rendering_reads_rendered_english(text_rendering):
    name, fn = text_rendering
    font = ImageFont.load_default(size=36)
    texts = [["OPEN DAILY", "9 TO 5"], ["Qwen Image 2025"]]
    good = [render("  ".join(t), font) for t in texts]
    bad = [render(scrambled("  ".join(t), "ABCDEFGHKMPRSTUVWXYZ"), font) for t in texts]
    meta = [{"texts": t, "text_rule": "cvtg", "language": "en"} for t in texts] * 2
    out = metrics(name, fn, good + bad, ["a poster"] * 4, meta)
    assert set(out) == {"word_accuracy", "char_accuracy", "ned"}
    for m in out:
        assert min(out[m][:2]) >= 0.9, (m, out, fn.details)
        assert max(out[m][2:]) < 0.4, (m, out, fn.details)
    assert fn.details[0]["targets"] == texts[0] and fn.failures == {}
    # as a reward: one float per image (word accuracy by default); the prompt's quotes are the target
    assert score(name, fn, good[1:2], ['a sign that says "Qwen Image 2025"'])[0] >= 0.9


@pytest.mark.skipif(not CJK_FONTS, reason="no CJK font on this machine (fonts-noto-cjk or fonts-wqy-microhei)")
def test_text_rendering_chinese_characters(text_rendering):
    name, fn = text_rendering
    font = ImageFont.truetype(CJK_FONTS[0], 40)
    targets = ["通义千问图像", "欢迎光临"]
    good = [render(t, font) for t in targets]
    bad = [render(scrambled(t, "山水天地日月风云花草"), font) for t in targets]
    meta = [{"texts": [t], "text_rule": "chineseword"} for t in targets] * 2
    out = metrics(name, fn, good + bad, ["p"] * 4, meta)
    assert min(out["char_accuracy"][:2]) >= 0.8, (out, fn.details)
    assert max(out["char_accuracy"][2:]) < 0.3, (out, fn.details)
    assert out["word_accuracy"] == out["char_accuracy"]  # Chinese words are characters


def test_text_rendering_records_a_row_without_target(text_rendering):
    name, fn = text_rendering
    im = Image.new("RGB", (64, 32), "white")
    out = metrics(name, fn, [im, im], ["no quotes here", 'says "HI"'], [{}, {}])
    assert out["word_accuracy"] == [None, 0.0]
    assert "no target text" in fn.failures[0] and 1 not in fn.failures
    with pytest.raises(RewardError, match=r"scorer 'text_rendering': image 0: no target text"):
        score(name, fn, [im], ["no quotes here"])
    with pytest.raises(ValueError, match=r"rule 'nope' is not one of"):
        build({"name": "text_rendering", "rule": "nope"})


# -------------------------------------------------------------------------------------------------- fidelity

def test_edit_fidelity(tmp_path):
    rng = np.random.default_rng(0)
    target = smooth_image(64, 48, seed=0)
    target.save(tmp_path / "target.png")
    noisy = Image.fromarray(np.clip(np.asarray(target, np.int16) + rng.integers(-20, 21, (48, 64, 3)), 0, 255)
                            .astype(np.uint8))
    vgg = write_tiny_vgg(tmp_path / "vgg.safetensors")
    name, fn = build({"name": "edit_fidelity", "lpips_weights": str(vgg)})
    meta = [{"target": str(tmp_path / "target.png")}] * 3 + [{"target": str(tmp_path / "nope.png")}, {}]
    big = target.resize((128, 96), Image.LANCZOS)  # resized back to the target's size: nearly identical
    out = metrics(name, fn, [target, noisy, big, target, target], ["p"] * 5, meta)
    assert out["psnr"][0] == PSNR_CAP and out["ssim"][0] == pytest.approx(1.0) and out["lpips"][0] == pytest.approx(0)
    assert 20 < out["psnr"][1] < 40 and out["ssim"][1] < 0.99 and out["lpips"][1] > 0
    assert out["psnr"][2] > 30 and out["ssim"][2] > 0.9
    assert out["psnr"][3] is None and "target image not found" in fn.failures[3]
    assert out["ssim"][4] is None and "no ground-truth image" in fn.failures[4]
    assert all(math.isfinite(v) for vs in out.values() for v in vs if v is not None)
    name, fn = build({"name": "edit_fidelity"})   # no LPIPS weights: no lpips metric; the reward is SSIM
    assert score(name, fn, [target, noisy], ["p", "p"], meta[:2])[0] == pytest.approx(1.0)
    assert set(metrics(name, fn, [target], ["p"], meta[:1])) == {"psnr", "ssim"}


# ---------------------------------------------------------------------------------------------- judge parsing

def test_answer_parsing():
    assert parse_yes_no("Yes.") is True and parse_yes_no("**No**, there is no cat") is False
    assert parse_yes_no("yes and no") is None and parse_yes_no("a cat") is None
    assert parse_scores('||V^=^V||\n{"score": [7, 8], "reasoning": "ok"}\n||V^=^V||', 2) == [7.0, 8.0]
    assert parse_scores('```json\n{"score": [6.5, 9], "reasoning": "x"}\n```', 2) == [6.5, 9.0]
    assert parse_scores("SC: 7, PQ: 8", 2, labels=("SC", "PQ")) == [7.0, 8.0]
    assert parse_scores("output score = [3, 10]", 2) == [3.0, 10.0]
    assert parse_scores("Score: 7", 1) == [7.0] and parse_scores("7", 1) == [7.0]
    assert parse_scores('{"score": [11, 3]}', 2) is None and parse_scores("[7]", 2) is None
    assert parse_scores("great picture", 1) is None


def test_geneval_questions_and_the_dependency_rule():
    qs = geneval_questions({"tag": "position", "include": [
        {"class": "banana", "count": 1}, {"class": "elephant", "count": 1, "position": ["right of", 0]}]})
    assert [q["question"] for q in qs] == ["Is there a banana in the image?", "Is there an elephant in the image?",
                                           "Is the elephant right of the banana?"]
    assert qs[2]["depends"] == [2, 1]
    qs = geneval_questions({"tag": "counting", "include": [{"class": "bus", "count": 3}],
                            "exclude": [{"class": "bus", "count": 4}]})
    assert [q["question"] for q in qs] == ["Are there exactly 3 buses in the image?"]
    qs = geneval_questions({"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"}]})
    assert qs[1] == {"id": 2, "question": "Is the dog red?", "depends": [1]}
    with pytest.raises(ValueError, match="no 'include'"):
        geneval_questions({"tag": "x"})
    dpg = [{"id": 1, "question": "cat?", "depends": [0]}, {"id": 2, "question": "black cat?", "depends": [1]},
           {"id": 3, "question": "a ball?", "depends": [0]}]
    assert dependency_score(dpg, {1: False, 2: True, 3: True}) == pytest.approx(1 / 3)   # child of a "no" is 0
    assert dependency_score(dpg, {1: True, 2: True, 3: False}) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------- judge over HTTP

class ScriptedJudge(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint answering from a script: a function of the question's text."""
    script = None
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][0]["content"]
        question = content[-1]["text"]
        images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
        self.seen.append({"question": question, "images": images, "auth": self.headers.get("Authorization"),
                          "temperature": body["temperature"]})
        answer = type(self).script(question, len(self.seen))
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    servers = []

    def start(script):
        handler = type("H", (ScriptedJudge,), {"script": staticmethod(script), "seen": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions", handler.seen

    yield start
    for s in servers:
        s.shutdown()


def test_vlm_questions_over_http(judge_server, monkeypatch):
    def script(question, n):
        if "cat" in question and "black" not in question:
            return "No."
        if "ball" in question and n < 5:
            return "I cannot tell"          # malformed: asked again
        return "Yes, it is."
    url, seen = judge_server(script)
    monkeypatch.setenv("JUDGE_KEY", "sekrit")
    name, fn = build({"name": "vlm_questions", "endpoint": url, "api_key_env": "JUDGE_KEY", "retries": 2})
    questions = [{"id": 1, "question": "Is there a cat?", "depends": [0]},
                 {"id": 2, "question": "Is the cat black?", "depends": [1]},
                 {"id": 3, "question": "Is there a ball?", "depends": [0]}]
    img = Image.new("RGB", (32, 32), "red")
    out = metrics(name, fn, [img, img], ["p", "p"], [{"questions": questions}, {"questions": questions[2:]}])
    # image 0: cat no -> black cat zeroed; the ball asked 3 times (2 malformed) then yes -> 1/3
    assert out == {"question_score": [pytest.approx(1 / 3), 1.0]}
    assert [a["answer"] for a in fn.details[0]] == ["no", "yes", "yes"] and fn.failures == {}
    assert [s["temperature"] for s in seen[2:5]] == [0.0, 1.0, 1.0]   # greedy, then sampled retries
    assert seen[0]["auth"] == "Bearer sekrit"
    assert seen[0]["images"][0].startswith("data:image/png;base64,")
    png = base64.b64decode(seen[0]["images"][0].split(",", 1)[1])
    assert png[:4] == b"\x89PNG"
    # GenEval spec turned into questions, all-or-nothing
    geneval = {"geneval": {"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "black"}]}}
    assert metrics(name, fn, [img], ["p"], [geneval]) == {"question_score": [1.0]}
    geneval = {"geneval": {"tag": "two", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}]}}
    assert metrics(name, fn, [img], ["p"], [geneval]) == {"question_score": [0.0]}


def test_malformed_answers_are_retried_then_recorded(judge_server):
    url, seen = judge_server(lambda q, n: "SC: 7, PQ: 8" if "naturalness" in q else "A lovely edit!")
    name, fn = build({"name": "edit_judge", "endpoint": url, "retries": 1})
    img = Image.new("RGB", (32, 32), "blue")
    out = metrics(name, fn, [img], ["make it blue"], [{"source": img}])
    assert out == {"sc": [None], "pq": [None], "overall": [None]}
    assert fn.failures[0] == "SC: no valid answer in 2 tries; last answer: 'A lovely edit!'"
    assert len(seen) == 2
    with pytest.raises(RewardError, match=r"scorer 'edit_judge': no judged value for image 0: SC: no valid answer"):
        score(name, fn, [img], ["make it blue"], [{"source": img}])


def test_edit_judge_and_prompt_following_over_http(judge_server, tmp_path):
    def script(question, n):
        if "editing instruction" in question.lower():
            return '{"score": [9, 4], "reasoning": "followed, but the background changed"}'
        if "naturalness" in question:
            return "output score = [8, 7]"
        return "Score: 6"
    url, seen = judge_server(script)
    src = tmp_path / "src.png"
    Image.new("RGB", (32, 32), "white").save(src)
    edited = Image.new("RGB", (32, 32), "blue")
    name, fn = build({"name": "edit_judge", "endpoint": url})
    out = metrics(name, fn, [edited, edited], ["paint it blue"] * 2,
                  [{"source": str(src), "instruction": "Paint it blue"}, {"inputs": [str(tmp_path / "gone.png")]}])
    assert out["sc"][0] == 4.0 and out["pq"][0] == 7.0 and out["overall"][0] == pytest.approx(math.sqrt(28))
    assert out["sc"][1] is None and "edit source image not found" in fn.failures[1]
    assert len(seen[0]["images"]) == 2 and len(seen[1]["images"]) == 1   # SC sees source + edit; PQ the edit
    assert "Editing instruction: Paint it blue" in seen[0]["question"]
    name, fn = build({"name": "prompt_following", "endpoint": url})
    assert score(name, fn, [edited], ["a blue square"]) == [0.6]
    assert "Prompt: a blue square" in seen[-1]["question"]


def test_judge_timeout_is_recorded():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/chat/completions"
    try:
        name, fn = build({"name": "prompt_following", "endpoint": url, "timeout": 0.3})
        out = metrics(name, fn, [Image.new("RGB", (8, 8))], ["p"], [{}])
    finally:
        silent.close()
    assert out == {"prompt_following": [None]}
    assert fn.failures == {0: f"judge endpoint {url} did not answer within 0.3 s"}


def test_judge_options_are_checked(monkeypatch):
    with pytest.raises(ValueError, match=r"a judge needs one of model= .* or endpoint="):
        build({"name": "vlm_questions"})
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match=r"environment variable NO_SUCH_KEY \(api_key_env\) is not set"):
        build({"name": "edit_judge", "endpoint": "http://127.0.0.1:9/v1/chat/completions",
               "api_key_env": "NO_SUCH_KEY"})


# -------------------------------------------------------------------------------------- local judge model

def test_edit_judge_on_a_tiny_local_qwen25vl(tiny_qwen25vl):  # noqa: F811
    """Two images in one chat go through the real model (image tokens match the grids); its random answers do
    not parse, so the image is a recorded failure quoting the answer, not a crash."""
    name, fn = build({"name": "edit_judge", "model": str(tiny_qwen25vl / "random"), "offline": True,
                      "dtype": "float32", "min_pixels": 28 * 28, "max_pixels": 64 * 28 * 28, "max_new_tokens": 3,
                      "retries": 0})
    src, edited = Image.new("RGB", (64, 56), "white"), Image.new("RGB", (56, 84), "blue")
    inputs = fn.judge.backend.inputs([src, edited], "question")
    pads = int((inputs["input_ids"] == fn.judge.backend.vlm.image_token_id).sum())
    assert pads == int(inputs["image_grid_thw"].prod(-1).sum()) // 4 and inputs["image_grid_thw"].shape[0] == 2
    out = metrics(name, fn, [edited], ["make it blue"], [{"source": src}])
    assert out["overall"] == [None] and fn.failures[0].startswith("SC: no valid answer in 1 tries; last answer: ")
