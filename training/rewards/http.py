"""A reward computed by another process, over HTTP: for scorers that need their own environment, GPU or machine
(a big VLM served elsewhere, a GenEval detector). scripts/reward_server.py is a small reference server.

Request: POST `url` with JSON {"prompts": [str], "images": [base64 PNG], "metadata": [object]}.
Answer: 200 with JSON {"scores": [float, one per image]}; anything else stops the run with what went wrong (no
answer within the timeout, an HTTP error with the server's message, not JSON, no "scores")."""
from __future__ import annotations

import base64
import io
import json
import socket
import urllib.error
import urllib.request

from .base import RewardError, register


def encode_png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data, validate=True))).convert("RGB")


def post_json(url: str, payload: dict, timeout: float, headers: dict | None = None) -> dict:
    body = json.dumps(payload, default=str).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        detail = e.read(500).decode("utf-8", "replace").strip()
        raise RewardError(f"reward server {url} answered HTTP {e.code} {e.reason}: {detail}") from None
    except (socket.timeout, TimeoutError):
        raise RewardError(f"reward server {url} did not answer within {timeout:g} s") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise RewardError(f"reward server {url} did not answer within {timeout:g} s") from None
        raise RewardError(f"reward server {url} cannot be reached: {e.reason}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise RewardError(f"reward server {url} answered with something that is not JSON: {raw[:200]!r}") from None


@register("http")
def http_reward(url: str, timeout: float = 300.0, headers: dict | None = None):
    """POST the batch to `url`; `timeout`: seconds the server may stay silent (connecting, or before its answer);
    `headers`: e.g. an Authorization header."""
    def fn(images, prompts, metadata):
        answer = post_json(url, {"prompts": list(prompts), "images": [encode_png(im) for im in images],
                                 "metadata": list(metadata)}, float(timeout), headers)
        if not isinstance(answer, dict) or "scores" not in answer:
            raise RewardError(f"reward server {url} answered without a \"scores\" list: {str(answer)[:200]}")
        return answer["scores"]

    return fn
