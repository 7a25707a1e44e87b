"""One judge for the VLM-judged scorers (vlm_questions, edit_judge, prompt_following): a question about one or
more images goes to a local Qwen2.5-VL (`model=`, through transformers) or to an OpenAI-compatible
/v1/chat/completions endpoint (`endpoint=`: vLLM, SGLang, a hosted API), and the answer is parsed.

An answer that does not parse is asked again (sampled: `retries` times); a judge that cannot be reached, times out
or answers an HTTP error is not asked again (the timeout was already waited). Either way the image's value is
None and the reason is kept: evaluation records it (`fn.failures[i]`), it never stops the run. Used as an RL
reward, a failure stops the step with that reason (a reward of None would train on nothing)."""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Sequence

from .base import RewardError
from .http import encode_png, post_json
from .vlm_judge import QwenVLChat


class JudgeUnavailable(RuntimeError):
    """The judge gave no answer at all (timeout, HTTP error, a reply without a message)."""


class LocalVLM:
    """Qwen2.5-VL through transformers (vlm_judge.QwenVLChat, no torchvision); several images go into one user
    turn, in order, before the question. Greedy first; retries sample."""

    def __init__(self, model: str, max_new_tokens: int = 64, min_pixels: int = 256 * 28 * 28,
                 max_pixels: int = 768 * 28 * 28, device: str = "cpu", dtype: str = "bfloat16",
                 offline: bool = False):
        self.vlm = QwenVLChat(model, min_pixels, max_pixels, device, dtype, offline)
        self.max_new_tokens = int(max_new_tokens)

    def inputs(self, images, question: str) -> dict:
        return self.vlm.chats([images], [question])

    def ask(self, images, question: str, attempt: int) -> str:
        return self.vlm.answers(self.inputs(images, question), attempt, self.max_new_tokens)[0]


class OpenAIEndpoint:
    """POST {messages: [user: images as PNG data URIs, then the question], model} to an OpenAI-compatible chat
    completions URL; the answer is choices[0].message.content. The key, if any, is read from the environment
    variable named by `api_key_env` (never from a config file)."""

    def __init__(self, endpoint: str, model_name: str | None = None, api_key_env: str | None = None,
                 timeout: float = 120.0, max_tokens: int = 256, temperature: float = 1.0):
        self.url, self.model_name, self.timeout = endpoint, model_name, float(timeout)
        self.max_tokens, self.temperature = int(max_tokens), float(temperature)
        self.headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"judge endpoint {endpoint}: environment variable {api_key_env} (api_key_env) is not "
                                 "set")
            self.headers["Authorization"] = f"Bearer {key}"

    def ask(self, images, question: str, attempt: int) -> str:
        content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + encode_png(im.convert("RGB"))}}
                   for im in images] + [{"type": "text", "text": question}]
        payload = {"messages": [{"role": "user", "content": content}], "max_tokens": self.max_tokens,
                   "temperature": 0.0 if attempt == 0 else self.temperature, "seed": attempt}
        if self.model_name:  # left out when not given: a server of one model may not need it, hosted APIs do
            payload["model"] = self.model_name
        try:
            reply = post_json(self.url, payload, self.timeout, self.headers)
        except RewardError as e:  # timeout, HTTP error, unreachable, not JSON: said by post_json
            raise JudgeUnavailable(str(e).replace("reward server", "judge endpoint", 1)) from None
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeUnavailable(f"judge endpoint {self.url} answered without choices[0].message.content: "
                                   f"{json.dumps(reply)[:200]}") from None


class Judge:
    """`model=` (a Qwen2.5-VL hub name or folder) or `endpoint=` (an OpenAI-compatible chat completions URL), or a
    ready `backend` with `ask(images, question, attempt) -> str`. `ask` returns (value, None) or (None, reason)."""

    def __init__(self, model: str | None = None, endpoint: str | None = None, backend=None, *, retries: int = 2,
                 model_name: str | None = None, api_key_env: str | None = None, timeout: float = 120.0,
                 max_new_tokens: int = 64, temperature: float = 1.0, min_pixels: int = 256 * 28 * 28,
                 max_pixels: int = 768 * 28 * 28, device: str = "cpu", dtype: str = "bfloat16", offline: bool = False):
        if sum(x is not None for x in (model, endpoint, backend)) != 1:
            raise ValueError("a judge needs one of model= (a Qwen2.5-VL hub name or folder) or endpoint= (an "
                             "OpenAI-compatible /v1/chat/completions URL)")
        if backend is None and endpoint is not None:
            backend = OpenAIEndpoint(endpoint, model_name, api_key_env, timeout, max_new_tokens, temperature)
        elif backend is None:
            backend = LocalVLM(model, max_new_tokens, min_pixels, max_pixels, device, dtype, offline)
        self.backend, self.retries = backend, int(retries)

    def ask(self, images: Sequence, question: str, parse: Callable[[str], object]) -> tuple[object, str | None]:
        answers = []
        for attempt in range(self.retries + 1):
            try:
                answers.append(self.backend.ask(list(images), question, attempt))
            except JudgeUnavailable as e:
                return None, str(e)
            value = parse(answers[-1])
            if value is not None:
                return value, None
        return None, f"no valid answer in {len(answers)} tries; last answer: {answers[-1][:200]!r}"


# ------------------------------------------------------------------------------------------------ answer parsing

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_NUM = r"-?\d+(?:\.\d+)?"


def parse_yes_no(answer: str) -> bool | None:
    """True for an answer whose first yes/no word is "yes" ("Yes.", "**Yes**, there is a dog"), False for "no";
    None when it has neither, or both in its first sentence ("yes and no")."""
    words = _YES_NO.findall(answer.split(".")[0]) or _YES_NO.findall(answer)
    if not words or len({w.lower() for w in words}) > 1:
        return None
    return words[0].lower() == "yes"


def parse_scores(answer: str, count: int, low: float = 0.0, high: float = 10.0,
                 labels: Sequence[str] = ()) -> list[float] | None:
    """`count` numbers in [low, high] from a judge's answer, found as (first that works): a JSON object's "score"
    list (VIEScore's {"score": [7, 8], "reasoning": ...}, also inside ```json fences or delimiters); labelled
    numbers ("SC: 7, PQ: 8" for labels ("SC", "PQ")); a bracketed list ("score = [7, 8]"); with count 1, an answer
    that is only a number or "Score: N". None when none of these gives `count` numbers in range."""
    def ok(values):
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            return None
        return values if len(values) == count and all(low <= v <= high for v in values) else None

    for block in re.findall(r"\{[^{}]*\}", answer):
        try:
            obj = json.loads(block)
        except ValueError:
            continue
        score = obj.get("score", obj.get("scores")) if isinstance(obj, dict) else None
        found = ok(score if isinstance(score, list) else [score])
        if found:
            return found
    if labels:
        found = [re.search(rf"\b{re.escape(lab)}\b\W{{0,4}}({_NUM})", answer, re.IGNORECASE) for lab in labels]
        if all(found):
            return ok([m.group(1) for m in found])
    for block in re.findall(r"\[([^\[\]]*)\]", answer):
        found = ok(re.findall(_NUM, block)) if re.fullmatch(rf"\s*{_NUM}(\s*,\s*{_NUM})*\s*", block) else None
        if found:
            return found
    if count == 1:
        m = re.fullmatch(rf"\s*({_NUM})\s*\.?\s*", answer) or re.search(rf"score\W{{0,4}}({_NUM})", answer, re.I)
        return ok([m.group(1)]) if m else None
    return None


class JudgedScorer:
    """The shared shape of a judged scorer: `metrics(images, prompts, metadata) -> {metric: [float | None]}`,
    `failures` (index -> reason) and `details` (index -> what the judge said) of the last call; `__call__` is the
    reward, `self.reward` of the metrics scaled to [0, 1] by `self.scale`, and raises on any failure."""
    name: str
    reward: str
    scale: float = 1.0

    def __init__(self, **judge):
        self.judge = Judge(**judge)
        self.failures: dict[int, str] = {}
        self.details: dict[int, object] = {}

    def metrics(self, images, prompts, metadata) -> dict[str, list[float | None]]:
        self.failures, self.details = {}, {}
        rows = [self.score_one(im, p, m or {}, i) for i, (im, p, m) in enumerate(zip(images, prompts, metadata))]
        names = self.metric_names()
        return {name: [None if r is None else r[name] for r in rows] for name in names}

    def score_one(self, image, prompt: str, meta: dict, index: int) -> dict | None:
        """{metric: value} for one image, or None after recording self.failures[index]."""
        raise NotImplementedError

    def metric_names(self) -> list[str]:
        raise NotImplementedError

    def fail(self, index: int, reason: str) -> None:
        self.failures[index] = reason
        return None

    def __call__(self, images, prompts, metadata):
        values = self.metrics(images, prompts, metadata)[self.reward]
        if self.failures:
            i, reason = next(iter(self.failures.items()))
            raise RewardError(f"scorer {self.name!r}: no judged value for image {i}: {reason}")
        return [v / self.scale for v in values]
