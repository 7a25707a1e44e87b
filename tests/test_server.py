"""`qwenimage serve`: the ComfyUI HTTP and websocket API as the frontend and API clients use it.

Most tests run small stand-in nodes (fast, deterministic, countable); `test_real_workflow_*` run a shipped API
workflow on tiny models through the server. Covered: every route the frontend calls (status and JSON shape, with
and without the /api prefix), object_info, prompt validation errors (nothing queued), the websocket message
sequence with binary previews, output caching (a new seed re-runs only the sampler and what follows), interrupt,
queue and history, jobs, uploads and views (path traversal refused), PNG metadata, settings and user data."""
import asyncio
import io
import json
import os
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import aiohttp
import pytest
import torch
from PIL import Image

from qwenimage.nodes import host
from qwenimage.nodes import server as S
from qwenimage.nodes.builtins import BUILTIN_NODE_CLASS_MAPPINGS, BUILTIN_NODE_DISPLAY_NAME_MAPPINGS
from qwenimage.nodes.execution import validate_prompt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALLS = []


# ------------------------------------------------------------------------------------------------ stand-in nodes

class StubLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": (["a.safetensors", "b.safetensors"],)}}

    RETURN_TYPES = ("STUB_MODEL",)
    FUNCTION = "load"
    CATEGORY = "test"

    def load(self, name):
        CALLS.append("StubLoader")
        return ({"name": name},)


class StubEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("STUB_MODEL",), "text": ("STRING", {"multiline": True})}}

    RETURN_TYPES = ("STUB_COND",)
    FUNCTION = "encode"
    CATEGORY = "test"

    def encode(self, model, text):
        CALLS.append("StubEncode")
        return (text,)


class StubSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("STUB_MODEL",), "cond": ("STUB_COND",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "steps": ("INT", {"default": 3, "min": 1, "max": 10000}),
            "size": ("INT", {"default": 16, "min": 8, "max": 64, "step": 8}),
            "delay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0}),
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "sample"
    CATEGORY = "test"

    def sample(self, model, cond, seed, steps, size, delay):
        CALLS.append("StubSampler")
        bar = host.progress(steps)
        g = torch.Generator().manual_seed(seed)
        img = torch.rand(1, size, size, 3, generator=g)
        for i in range(steps):
            host.check_interrupt()
            time.sleep(delay)
            preview = Image.fromarray((img[0].numpy() * 255).astype("uint8"))
            bar.update(i + 1, preview)
        return (img,)


class StubInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "test"

    def invert(self, image):
        CALLS.append("StubInvert")
        return (1.0 - image,)


MAPPINGS = {"StubLoader": StubLoader, "StubEncode": StubEncode, "StubSampler": StubSampler,
            "StubInvert": StubInvert, **BUILTIN_NODE_CLASS_MAPPINGS}


def graph(seed=1, steps=3, delay=0.0, prefix="test"):
    return {
        "1": {"class_type": "StubLoader", "inputs": {"name": "a.safetensors"}},
        "2": {"class_type": "StubEncode", "inputs": {"model": ["1", 0], "text": "a cat"}},
        "3": {"class_type": "StubSampler", "inputs": {"model": ["1", 0], "cond": ["2", 0], "seed": seed,
                                                      "steps": steps, "size": 16, "delay": delay}},
        "4": {"class_type": "StubInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    old = (host.models_dir(), host.input_dir(), host.output_dir(), host.temp_dir())
    S.configure(root / "models", root / "input", root / "output", root / "temp")
    server = S.PromptServer(MAPPINGS, BUILTIN_NODE_DISPLAY_NAME_MAPPINGS, user_dir=root / "user")
    thread = S.ServerThread(server)
    url = thread.start()
    yield type("Srv", (), {"url": url, "root": root, "server": server})
    thread.stop()
    host.set_models_dir(old[0])
    host.set_dirs(*old[1:])


def call(srv, method, path, body=None, data=None, headers=None):
    """(status, parsed JSON or bytes, headers)."""
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(srv.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, raw, h = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, h = e.code, e.read(), e.headers
    if "json" in (h.get("Content-Type") or ""):
        return status, json.loads(raw or b"null"), h
    return status, raw, h


def multipart(fields: dict, files: dict):
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, content, ctype) in files.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                  f"Content-Type: {ctype}\r\n\r\n".encode())
        out.write(content)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def png_bytes(color=(255, 0, 0, 255), size=(8, 6)):
    buf = io.BytesIO()
    Image.new("RGBA", size, color).save(buf, format="PNG")
    return buf.getvalue()


def wait_done(srv, prompt_id, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, hist, _ = call(srv, "GET", f"/history/{prompt_id}")
        if prompt_id in hist:
            return hist[prompt_id]
        time.sleep(0.05)
    raise TimeoutError(prompt_id)


def run(srv, prompt, extra=None, client_id=None):
    body = {"prompt": prompt}
    if extra:
        body["extra_data"] = extra
    if client_id:
        body["client_id"] = client_id
    status, r, _ = call(srv, "POST", "/prompt", body)
    assert status == 200, r
    return r["prompt_id"], wait_done(srv, r["prompt_id"])


async def ws_run(srv, prompt, until=("execution_success", "execution_error", "execution_interrupted"),
                 flags=None, during=None, extra=None):
    """Connect a websocket, queue `prompt` for it, collect messages (binary ones as ("binary", type, payload))
    until the run ends. `during(msgs)` is awaited once after the first progress message."""
    cid = uuid.uuid4().hex
    msgs = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{srv.url}/ws?clientId={cid}") as ws:
            if flags is not None:
                await ws.send_str(json.dumps({"type": "feature_flags", "data": flags}))
            body = {"prompt": prompt, "client_id": cid, **({"extra_data": extra} if extra else {})}
            async with session.post(f"{srv.url}/api/prompt", json=body) as r:
                assert r.status == 200, await r.text()
                pid = (await r.json())["prompt_id"]
            fired = False
            while True:
                m = await asyncio.wait_for(ws.receive(), 30)
                if m.type == aiohttp.WSMsgType.BINARY:
                    msgs.append(("binary", struct.unpack(">I", m.data[:4])[0], m.data[4:]))
                    continue
                if m.type != aiohttp.WSMsgType.TEXT:
                    break
                d = json.loads(m.data)
                msgs.append((d["type"], d["data"]))
                if d["type"] == "progress" and during and not fired:
                    fired = True
                    await during(session)
                if d["type"] in until and d["data"].get("prompt_id") == pid:
                    # the final "executing: null" follows
                    m = await asyncio.wait_for(ws.receive(), 10)
                    d = json.loads(m.data)
                    msgs.append((d["type"], d["data"]))
                    break
    return cid, pid, msgs


# ------------------------------------------------------------------------------------------------ routes

FRONTEND_GETS = {  # path -> expected JSON type (None: not JSON)
    "/object_info": dict, "/object_info/SaveImage": dict, "/embeddings": list, "/extensions": list,
    "/system_stats": dict, "/prompt": dict, "/queue": dict, "/history": dict, "/history?max_items=64": dict,
    "/users": dict, "/settings": dict, "/settings/Comfy.Locale": type(None),
    "/userdata?dir=workflows&recurse=true&split=false&full_info=true": list,
    "/userdata?dir=subgraphs&recurse=true&split=false&full_info=true": list,
    "/userdata/comfy.templates.json": list, "/i18n": dict, "/experiment/models": list,
    "/experiment/models/vae": list, "/workflow_templates": dict, "/features": dict, "/node_replacements": dict,
    "/global_subgraphs": dict, "/jobs?status=in_progress,pending&limit=200&offset=0": dict,
    "/jobs?status=completed,failed,cancelled&limit=64&offset=0": dict, "/models": list, "/models/vae": list,
}


@pytest.mark.parametrize("prefix", ["/api", ""])
def test_frontend_routes_answer(srv, prefix):
    for path, kind in FRONTEND_GETS.items():
        status, body, _ = call(srv, "GET", prefix + path)
        assert status == 200, (prefix + path, status, body)
        assert isinstance(body, kind), (prefix + path, type(body))
    status, body, h = call(srv, "GET", "/")
    assert status == 200 and b"<html" in body.lower() and h["Content-Type"].startswith("text/html")
    for path in ("/user.css", "/api/userdata/user.css"):
        status, body, h = call(srv, "GET", path)
        assert status == 200 and h["Content-Type"].startswith("text/css")
    for path, kind in (("/templates/index.json", list), ("/templates/index_logo.json", dict)):
        status, body, _ = call(srv, "GET", path)
        assert status == 200 and isinstance(body, kind)
    # every extension script listed is served
    status, exts, _ = call(srv, "GET", "/api/extensions")
    for e in exts[:5]:
        assert call(srv, "GET", e)[0] == 200


def test_shipped_workflows_are_offered_as_templates(srv, tmp_path):
    """Issue 24: the shipped workflows are the core template index (the frontend titles those cards by their
    title; a pack's only by file name), demo first, with graph and thumbnail under /templates/; not listed again
    as a pack's, while another pack's template folder still is."""
    shipped = sorted(p[:-5] for p in os.listdir(os.path.join(REPO, "workflows")) if p.endswith(".json"))
    for locale in ("", ".zh"):
        status, index, _ = call(srv, "GET", f"/templates/index{locale}.json")
        assert status == 200 and [c["moduleName"] for c in index] == ["default"], index
        cards = index[0]["templates"]
        assert cards[0]["name"] == "demo" and sorted(c["name"] for c in cards) == shipped
    for card in cards:
        assert {card["mediaType"], card["mediaSubtype"]} == {"image", "jpg"}, card
        assert card["title"] != card["name"] and "_" not in card["title"] and card["description"], card
        status, wf, _ = call(srv, "GET", f"/templates/{card['name']}.json")
        assert status == 200 and wf["extra"]["template"]["title"] == card["title"]
        status, jpg, h = call(srv, "GET", f"/templates/{card['name']}-1.jpg")
        assert status == 200 and h["Content-Type"] == "image/jpeg" and jpg[:2] == b"\xff\xd8", card
    assert next(c for c in cards if c["name"] == "lightning_8_steps")["title"] == "Lightning: 8 steps"
    for bad in ("/templates/nothing.json", "/templates/nothing-1.jpg", "/templates/demo.jpg", "/templates/demo-2.jpg",
                "/templates/api-1.jpg", "/templates/..%2Fpyproject.toml", "/templates/..%2Fworkflows%2Fdemo.json",
                "/templates/%2E%2E%2Fdemo.json", "/api/workflow_templates/Qwen-Image/..%2Fpyproject.toml",
                "/api/workflow_templates/Other/edit.json"):
        assert call(srv, "GET", bad)[0] == 404, bad
    status, body, _ = call(srv, "GET", "/api/workflow_templates")
    assert status == 200 and body == {}, body  # no duplicate cards
    (tmp_path / "ex.json").write_text(json.dumps({"nodes": [], "links": []}))
    srv.server.template_dirs["Other"] = tmp_path  # another pack's templates stay a custom-node module
    try:
        assert call(srv, "GET", "/api/workflow_templates")[1] == {"Other": ["ex"]}
        assert call(srv, "GET", "/api/workflow_templates/Other/ex.json")[0] == 200
    finally:
        del srv.server.template_dirs["Other"]


def test_template_index_without_titles(tmp_path):
    """A workflow with no extra.template (or an unreadable one) is still a card: titled by its file name."""
    from qwenimage.nodes.server.routes_system import template_index

    (tmp_path / "plain.json").write_text(json.dumps({"nodes": [], "extra": {"template": {"title": 3}}}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "demo.json").write_text(json.dumps({"extra": {"template": {"title": "D", "description": "d"}}}))
    [category] = template_index(tmp_path)
    assert [(t["name"], t["title"], t["description"]) for t in category["templates"]] == \
        [("demo", "D", "d"), ("broken", "broken", "broken"), ("plain", "plain", "plain")]
    assert template_index(tmp_path / "none") == []


def test_shapes_of_info_routes(srv):
    _, stats, _ = call(srv, "GET", "/api/system_stats")
    assert set(stats) == {"system", "devices"}
    for k in ("os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version", "argv"):
        assert k in stats["system"]
    assert {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total",
            "torch_vram_free"} <= set(stats["devices"][0])
    _, q, _ = call(srv, "GET", "/api/queue")
    assert q == {"queue_running": [], "queue_pending": []} or set(q) == {"queue_running", "queue_pending"}
    _, p, _ = call(srv, "GET", "/api/prompt")
    assert isinstance(p["exec_info"]["queue_remaining"], int)
    _, u, _ = call(srv, "GET", "/api/users")
    assert u["storage"] == "server"
    _, f, _ = call(srv, "GET", "/api/features")
    assert f["supports_preview_metadata"] is True and f["max_upload_size"] > 0
    _, jobs, _ = call(srv, "GET", "/api/jobs?status=completed&limit=5&offset=0")
    assert set(jobs["pagination"]) == {"offset", "limit", "total", "has_more"}


def test_object_info_has_comfyui_shape(srv):
    _, info, _ = call(srv, "GET", "/api/object_info")
    assert set(MAPPINGS) <= set(info)
    keys = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
            "description", "python_module", "category", "output_node"}
    for name, entry in info.items():
        assert keys <= set(entry), name
        assert entry["name"] == name
        assert len(entry["output"]) == len(entry["output_is_list"]) == len(entry["output_name"])
        for section, names in entry["input_order"].items():
            assert names == list(entry["input"][section])
    save = info["SaveImage"]
    assert save["output_node"] is True and save["output"] == [] and save["display_name"] == "Save Image"
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert save["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    load = info["LoadImage"]
    assert load["output"] == ["IMAGE", "MASK"] and load["input"]["required"]["image"][1] == {"image_upload": True}
    assert isinstance(load["input"]["required"]["image"][0], list)
    sampler = info["StubSampler"]["input"]["required"]
    assert sampler["seed"] == ["INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                       "control_after_generate": True}]
    assert info["StubLoader"]["input"]["required"]["name"] == [["a.safetensors", "b.safetensors"]]
    assert info["StubLoader"]["python_module"].startswith("custom_nodes.")
    _, one, _ = call(srv, "GET", "/api/object_info/StubInvert")
    assert list(one) == ["StubInvert"] and one["StubInvert"] == info["StubInvert"]
    assert call(srv, "GET", "/api/object_info/Nope")[1] == {}


# ------------------------------------------------------------------------------------------------ validation

def _bad(srv, prompt):
    before = call(srv, "GET", "/api/queue")[1]
    status, body, _ = call(srv, "POST", "/api/prompt", {"prompt": prompt})
    assert status == 400, body
    assert set(body) == {"error", "node_errors"}
    assert {"type", "message", "details", "extra_info"} <= set(body["error"])
    assert call(srv, "GET", "/api/queue")[1] == before  # nothing queued
    return body


def test_validation_errors_in_comfyui_format(srv):
    p = graph()
    p["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    body = _bad(srv, p)
    assert body["error"]["type"] == "missing_node_type" and "NoSuchNode" in body["error"]["message"]
    assert body["error"]["extra_info"]["node_id"] == "9"

    p = graph()
    del p["3"]["inputs"]["steps"]
    body = _bad(srv, p)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errs = body["node_errors"]["3"]
    assert errs["class_type"] == "StubSampler" and errs["dependent_outputs"] == ["5"]
    assert errs["errors"][0]["type"] == "required_input_missing"
    assert errs["errors"][0]["extra_info"]["input_name"] == "steps"

    cases = [
        ("3", "seed", -1, "value_smaller_than_min"),
        ("3", "size", 128, "value_bigger_than_max"),
        ("3", "steps", "many", "invalid_input_type"),
        ("1", "name", "c.safetensors", "value_not_in_list"),
        ("3", "cond", ["9", 0], "bad_linked_input"),  # a link to a node that is not there
        ("3", "cond", ["2", 3], "bad_linked_input"),  # an output slot that does not exist
        ("3", "cond", ["2"], "bad_linked_input"),  # not [node, slot]
        ("3", "cond", ["1", 0], "return_type_mismatch"),  # STUB_MODEL into STUB_COND
    ]
    for nid, name, value, kind in cases:
        p = graph()
        p[nid]["inputs"][name] = value
        body = _bad(srv, p)
        types = [e["type"] for e in body["node_errors"][nid]["errors"]]
        assert kind in types, (name, value, body)
        assert body["node_errors"][nid]["errors"][0]["extra_info"]["input_name"] == name

    p = graph()
    del p["5"]
    assert _bad(srv, p)["error"]["type"] == "prompt_no_outputs"
    assert _bad(srv, {"1": {"inputs": {}}})["error"]["type"] == "invalid_prompt"
    status, body, _ = call(srv, "POST", "/api/prompt", {"client_id": "x"})
    assert status == 400 and body["error"]["type"] == "no_prompt"
    # LoadImage's own VALIDATE_INPUTS: the file must exist
    p = {"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
         "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    body = _bad(srv, p)
    assert body["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"


def test_validate_prompt_standalone():
    v = validate_prompt(graph(), MAPPINGS)
    assert v.ok and v.error is None and v.node_errors == {} and v.outputs == ["5"]


# ------------------------------------------------------------------------------------------------ execution

def test_websocket_message_sequence(srv):
    cid, pid, msgs = asyncio.run(ws_run(srv, graph(seed=7, steps=3, prefix="ws"),
                                      extra={"preview_method": "auto"}))
    kinds = [m[0] for m in msgs]
    assert msgs[0][0] == "status" and msgs[0][1]["sid"] == cid
    assert msgs[0][1]["status"]["exec_info"]["queue_remaining"] >= 0
    run_msgs = [m for m in msgs if m[0] not in ("status", "binary", "progress_state")]
    names = [m[0] for m in run_msgs]
    assert names[0] == "execution_start" and names[1] == "execution_cached"
    executing = [m[1]["node"] for m in run_msgs if m[0] == "executing"]
    assert executing[-1] is None and set(executing[:-1]) <= {"1", "2", "3", "4", "5"}
    # dependency order: each node after what it links to
    order = [n for n in executing[:-1]]
    for a, b in (("1", "2"), ("2", "3"), ("3", "4"), ("4", "5")):
        if a in order and b in order:
            assert order.index(a) < order.index(b)
    progress = [m[1] for m in run_msgs if m[0] == "progress"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(p["node"] == "3" and p["prompt_id"] == pid for p in progress)
    executed = [m[1] for m in run_msgs if m[0] == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "5" and executed[0]["prompt_id"] == pid
    images = executed[0]["output"]["images"]
    assert images[0]["type"] == "output" and images[0]["filename"].startswith("ws_")
    assert names.index("execution_success") > names.index("executed")
    assert run_msgs[-1] == ("executing", {"node": None, "prompt_id": pid})
    # previews: ComfyUI's binary frame (type 1, image type 1 = JPEG, then the JPEG) for a client without flags
    frames = [m for m in msgs if m[0] == "binary"]
    assert len(frames) == 3 and all(f[1] == 1 for f in frames)
    assert struct.unpack(">I", frames[0][2][:4])[0] == 1 and frames[0][2][4:6] == b"\xff\xd8"
    assert Image.open(io.BytesIO(frames[0][2][4:])).size == (16, 16)
    assert "progress_state" in kinds


def test_preview_with_metadata_when_the_client_supports_it(srv):
    _, pid, msgs = asyncio.run(ws_run(srv, graph(seed=8, steps=2), flags={"supports_preview_metadata": True},
                                      extra={"preview_method": "latent2rgb"}))
    assert ("feature_flags" in [m[0] for m in msgs])
    frames = [m for m in msgs if m[0] == "binary"]
    assert frames and all(f[1] == 4 for f in frames)
    n = struct.unpack(">I", frames[0][2][:4])[0]
    meta = json.loads(frames[0][2][4:4 + n])
    assert meta["node_id"] == "3" and meta["prompt_id"] == pid and meta["image_type"] == "image/jpeg"
    assert frames[0][2][4 + n:4 + n + 2] == b"\xff\xd8"


def test_new_seed_reruns_only_the_sampler_and_what_follows(srv):
    call(srv, "POST", "/api/free", {"free_memory": True})  # applied before the next prompt runs
    CALLS.clear()
    _, h1 = run(srv, graph(seed=11))
    assert CALLS == ["StubLoader", "StubEncode", "StubSampler", "StubInvert"]
    CALLS.clear()
    _, pid, msgs = asyncio.run(ws_run(srv, graph(seed=12)))
    assert CALLS == ["StubSampler", "StubInvert"]
    cached = [m[1] for m in msgs if m[0] == "execution_cached"][0]
    assert sorted(cached["nodes"]) == ["1", "2"] and cached["prompt_id"] == pid
    executing = [m[1]["node"] for m in msgs if m[0] == "executing" and m[1]["node"] is not None]
    assert executing == ["3", "4", "5"]
    # the very same graph again: everything cached, the output node's UI still reported
    CALLS.clear()
    _, pid, msgs = asyncio.run(ws_run(srv, graph(seed=12)))
    assert CALLS == []
    executed = [m[1] for m in msgs if m[0] == "executed"]
    assert executed and executed[0]["node"] == "5"
    assert wait_done(srv, pid)["outputs"]["5"] == executed[0]["output"]
    # changing the prompt text re-encodes but does not reload
    CALLS.clear()
    p = graph(seed=12)
    p["2"]["inputs"]["text"] = "a dog"
    run(srv, p)
    assert CALLS == ["StubEncode", "StubSampler", "StubInvert"]
    # /free unloads: the next run loads again
    call(srv, "POST", "/api/free", {"unload_models": True, "free_memory": True})
    CALLS.clear()
    run(srv, p)
    assert CALLS[0] == "StubLoader"


def test_interrupt_stops_between_steps(srv):
    async def interrupt(session):
        async with session.post(f"{srv.url}/api/interrupt", json={}) as r:
            assert r.status == 200

    t = time.monotonic()
    _, pid, msgs = asyncio.run(ws_run(srv, graph(seed=21, steps=500, delay=0.02), during=interrupt))
    assert time.monotonic() - t < 8
    kinds = [m[0] for m in msgs]
    assert "execution_interrupted" in kinds and "execution_success" not in kinds
    data = [m[1] for m in msgs if m[0] == "execution_interrupted"][0]
    assert data["node_id"] == "3" and data["node_type"] == "StubSampler" and data["prompt_id"] == pid
    assert "1" in data["executed"]
    steps = [m[1]["value"] for m in msgs if m[0] == "progress"]
    assert 0 < max(steps) < 500
    hist = wait_done(srv, pid)
    assert hist["status"]["status_str"] == "error" and hist["status"]["completed"] is False
    # the next prompt runs normally (the flag was cleared)
    _, h = run(srv, graph(seed=22, steps=2))
    assert h["status"]["status_str"] == "success"
    _, job, _ = call(srv, "GET", f"/api/jobs/{pid}")
    assert job["status"] == "cancelled"


def test_node_error_is_reported(srv):
    p = graph(seed=31)
    p["6"] = {"class_type": "LoadImage", "inputs": {"image": "later.png"}}
    p["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    path = srv.root / "input" / "later.png"
    Image.new("RGB", (4, 4)).save(path)
    status, r, _ = call(srv, "POST", "/api/prompt", {"prompt": p})
    assert status == 200
    path.write_bytes(b"not a png any more")  # valid when queued, broken when run
    h = wait_done(srv, r["prompt_id"])
    assert h["status"]["status_str"] == "error"
    err = [d for e, d in h["status"]["messages"] if e == "execution_error"][0]
    assert err["node_id"] == "6" and err["node_type"] == "LoadImage" and err["exception_message"]
    assert isinstance(err["traceback"], list)
    path.unlink()


def test_queue_history_and_jobs(srv):
    # a slow prompt runs while two wait behind it
    s1, r1, _ = call(srv, "POST", "/api/prompt", {"prompt": graph(seed=41, steps=200, delay=0.01)})
    s2, r2, _ = call(srv, "POST", "/api/prompt", {"prompt": graph(seed=42)})
    s3, r3, _ = call(srv, "POST", "/api/prompt", {"prompt": graph(seed=43), "front": True})
    assert (s1, s2, s3) == (200, 200, 200) and r1["node_errors"] == {}
    assert r3["number"] <= 0 < r2["number"]  # "front" queues with a negative number, ahead of the rest
    deadline = time.monotonic() + 10
    while not call(srv, "GET", "/api/queue")[1]["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    _, q, _ = call(srv, "GET", "/api/queue")
    assert [x[1] for x in q["queue_running"]] == [r1["prompt_id"]]
    assert [x[1] for x in q["queue_pending"]] == [r3["prompt_id"], r2["prompt_id"]]
    item = q["queue_pending"][0]
    assert len(item) == 5 and item[2] == {k: v for k, v in graph(seed=43).items()} and item[4] == ["5"]
    _, jobs, _ = call(srv, "GET", "/api/jobs?status=in_progress,pending&limit=200&offset=0")
    assert {j["id"]: j["status"] for j in jobs["jobs"]} == {r1["prompt_id"]: "in_progress",
                                                           r2["prompt_id"]: "pending", r3["prompt_id"]: "pending"}
    assert call(srv, "GET", "/api/prompt")[1]["exec_info"]["queue_remaining"] == 3
    call(srv, "POST", "/api/queue", {"delete": [r2["prompt_id"]]})
    _, q, _ = call(srv, "GET", "/api/queue")
    assert [x[1] for x in q["queue_pending"]] == [r3["prompt_id"]]
    call(srv, "POST", "/api/interrupt", {"prompt_id": "not-the-running-one"})  # ignored
    h1 = wait_done(srv, r1["prompt_id"])
    assert h1["status"]["status_str"] == "success"
    h3 = wait_done(srv, r3["prompt_id"])
    assert set(h3) >= {"prompt", "outputs", "status", "meta"}
    assert h3["prompt"][1] == r3["prompt_id"] and h3["prompt"][4] == ["5"]
    assert h3["outputs"]["5"]["images"][0]["type"] == "output"
    assert h3["status"]["completed"] is True
    assert [m[0] for m in h3["status"]["messages"]][:2] == ["execution_start", "execution_cached"]
    _, hist, _ = call(srv, "GET", "/api/history?max_items=1")
    assert list(hist) == [r3["prompt_id"]]
    _, job, _ = call(srv, "GET", f"/api/jobs/{r3['prompt_id']}")
    assert job["status"] == "completed" and job["outputs_count"] == 1
    assert job["preview_output"]["nodeId"] == "5" and job["preview_output"]["mediaType"] == "images"
    assert job["outputs"] == h3["outputs"] and job["workflow"]["prompt"] == h3["prompt"][2]
    assert call(srv, "GET", "/api/jobs/nope")[0] == 404
    call(srv, "POST", "/api/history", {"delete": [r3["prompt_id"]]})
    assert call(srv, "GET", f"/api/history/{r3['prompt_id']}")[1] == {}
    call(srv, "POST", "/api/queue", {"clear": True})
    assert call(srv, "GET", "/api/queue")[1]["queue_pending"] == []


def test_output_png_embeds_the_graph(srv):
    workflow = {"last_node_id": 5, "nodes": [{"id": 5, "type": "SaveImage"}], "links": [], "version": 0.4}
    prompt = graph(seed=51, prefix="meta/run")
    _, h = run(srv, prompt, extra={"extra_pnginfo": {"workflow": workflow}})
    img = h["outputs"]["5"]["images"][0]
    assert img["subfolder"] == "meta" and img["filename"] == "run_00001_.png"
    status, data, hd = call(srv, "GET", "/api/view?" + urllib.parse.urlencode(
        {"filename": img["filename"], "subfolder": "meta", "type": "output"}))
    assert status == 200 and hd["Content-Type"] == "image/png"
    png = Image.open(io.BytesIO(data))
    assert json.loads(png.text["prompt"]) == prompt
    assert json.loads(png.text["workflow"]) == workflow
    _, h = run(srv, prompt | {"3": {**prompt["3"], "inputs": {**prompt["3"]["inputs"], "seed": 52}}})
    assert h["outputs"]["5"]["images"][0]["filename"] == "run_00002_.png"  # the counter continues
    status, data, hd = call(srv, "GET", "/api/view?" + urllib.parse.urlencode(
        {"filename": img["filename"], "subfolder": "meta", "type": "output", "preview": "webp;50"}))
    assert status == 200 and hd["Content-Type"] == "image/webp"


# ------------------------------------------------------------------------------------------------ files

def upload(srv, name, content, ctype="image/png", route="/api/upload/image", **fields):
    body, headers = multipart(fields, {"image": (name, content, ctype)})
    return call(srv, "POST", route, data=body, headers=headers)


def test_upload_and_view(srv):
    red, blue = png_bytes((255, 0, 0, 255)), png_bytes((0, 0, 255, 255))
    status, r, _ = upload(srv, "pic.png", red)
    assert status == 200 and r == {"name": "pic.png", "subfolder": "", "type": "input"}
    assert upload(srv, "pic.png", red)[1]["name"] == "pic.png"  # the same file again: reused
    assert upload(srv, "pic.png", blue)[1]["name"] == "pic (1).png"  # no overwrite unless asked
    assert upload(srv, "pic.png", blue, overwrite="true")[1]["name"] == "pic.png"
    assert (srv.root / "input" / "pic.png").read_bytes() == blue
    status, r, _ = upload(srv, "sub.png", red, subfolder="clipspace")
    assert status == 200 and r["subfolder"] == "clipspace"
    assert (srv.root / "input" / "clipspace" / "sub.png").is_file()
    status, data, _ = call(srv, "GET", "/api/view?filename=pic.png&type=input&subfolder=")
    assert status == 200 and data == blue
    status, data, _ = call(srv, "GET", "/view?filename=sub.png&type=input&subfolder=clipspace")
    assert status == 200 and data == red
    assert call(srv, "GET", "/api/view?filename=pic.png%20%5Binput%5D")[0] == 200
    status, data, _ = call(srv, "GET", "/api/view?filename=pic.png&type=input&channel=rgb")
    assert status == 200 and Image.open(io.BytesIO(data)).mode == "RGB"
    # the new file is offered by LoadImage
    _, info, _ = call(srv, "GET", "/api/object_info/LoadImage")
    assert "pic.png" in info["LoadImage"]["input"]["required"]["image"][0]
    assert call(srv, "GET", "/api/view?filename=nothere.png&type=input")[0] == 404
    assert upload(srv, "notes.png", b"this is text, not a picture")[0] == 400


def test_mask_upload_merges_alpha(srv):
    base = Image.new("RGB", (8, 6), (10, 20, 30))
    buf = io.BytesIO()
    base.save(buf, format="PNG")
    upload(srv, "photo.png", buf.getvalue())
    mask = Image.new("RGBA", (8, 6), (0, 0, 0, 0))
    mask.putpixel((1, 1), (0, 0, 0, 255))
    mbuf = io.BytesIO()
    mask.save(mbuf, format="PNG")
    status, r, _ = upload(srv, "clipspace-mask-1.png", mbuf.getvalue(), route="/api/upload/mask", type="input",
                          subfolder="clipspace",
                          original_ref=json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"}))
    assert status == 200 and r["subfolder"] == "clipspace"
    out = Image.open(srv.root / "input" / "clipspace" / r["name"])
    assert out.mode == "RGBA" and out.getpixel((1, 1)) == (10, 20, 30, 255) and out.getpixel((0, 0))[3] == 0
    status, _, _ = upload(srv, "m.png", mbuf.getvalue(), route="/api/upload/mask",
                          original_ref=json.dumps({"filename": "../../etc/passwd", "type": "input"}))
    assert status in (400, 403)


def test_path_traversal_is_refused(srv):
    secret = srv.root / "secret.png"
    secret.write_bytes(png_bytes())
    (srv.root / "output" / "ok.png").write_bytes(png_bytes())
    attempts = [
        {"filename": "../secret.png", "type": "output"},
        {"filename": "..\\secret.png", "type": "output"},
        {"filename": "secret.png", "type": "output", "subfolder": ".."},
        {"filename": "secret.png", "type": "output", "subfolder": "../"},
        {"filename": "secret.png", "type": "output", "subfolder": "sub/../.."},
        {"filename": str(secret), "type": "output"},
        {"filename": "/etc/passwd", "type": "output"},
        {"filename": "passwd", "type": "output", "subfolder": "/etc"},
        {"filename": "ok.png", "type": "../output"},
        {"filename": "ok.png", "type": "models"},
        {"filename": "../secret.png [output]"},
    ]
    for q in attempts:
        status, body, _ = call(srv, "GET", "/api/view?" + urllib.parse.urlencode(q))
        assert status in (400, 403, 404), (q, status)
        assert body != secret.read_bytes()
    assert call(srv, "GET", "/api/view?filename=ok.png&type=output")[0] == 200
    # encoded traversal in the path itself never reaches a file outside the static root
    for path in ("/%2e%2e/secret.png", "/../secret.png", "/assets/%2e%2e/%2e%2e/secret.png"):
        assert call(srv, "GET", path)[0] in (400, 403, 404)
    # uploads: names are reduced to a bare file name inside the folder; folders outside are refused
    status, r, _ = upload(srv, "../../escape.png", png_bytes())
    assert status == 200 and r["name"] == "escape.png" and r["subfolder"] == ""
    assert (srv.root / "input" / "escape.png").is_file() and not (srv.root.parent / "escape.png").exists()
    for sub in ("..", "../output", "/tmp", "a/../../.."):
        status, _, _ = upload(srv, "x.png", png_bytes(), subfolder=sub)
        assert status == 400, sub
    assert upload(srv, "x.png", png_bytes(), type="models")[0] == 400
    assert upload(srv, "..", png_bytes())[0] == 400
    assert not list(srv.root.glob("x.png")) and not (srv.root / "output" / "x.png").exists()
    # user data stays in the user folder
    for p in ("..%2Fsecret.png", "%2E%2E%2F%2E%2E%2Fsecret.png", "workflows%2F..%2F..%2F..%2Fsecret.png"):
        assert call(srv, "GET", f"/api/userdata/{p}")[0] in (400, 403, 404)
        assert call(srv, "POST", f"/api/userdata/{p}", data=b"x")[0] in (400, 403, 404)
    assert call(srv, "GET", "/api/userdata?dir=..%2F..")[0] in (400, 403)


def test_upload_size_limit(tmp_path):
    server = S.PromptServer(MAPPINGS, {}, user_dir=tmp_path / "user", max_upload_mb=0.01)
    with S.ServerThread(server) as url:
        s = type("Srv", (), {"url": url})
        big = io.BytesIO()
        Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3)).save(big, format="PNG")
        status, _, _ = upload(s, "big.png", big.getvalue())
        assert status == 413


# ------------------------------------------------------------------------------------------------ users

def test_settings_and_userdata(srv):
    assert call(srv, "POST", "/api/settings/Comfy.Locale", "en")[0] == 200
    assert call(srv, "GET", "/api/settings/Comfy.Locale")[1] == "en"
    assert call(srv, "POST", "/api/settings", {"Comfy.A": 1, "Comfy.B": [1, 2]})[0] == 200
    _, settings, _ = call(srv, "GET", "/api/settings")
    assert settings["Comfy.Locale"] == "en" and settings["Comfy.B"] == [1, 2]
    wf = json.dumps({"nodes": [], "links": []}).encode()
    status, r, _ = call(srv, "POST", "/api/userdata/workflows%2Fmine.json?overwrite=false&full_info=true", data=wf)
    assert status == 200 and r["path"] == "workflows/mine.json" and r["size"] == len(wf)
    assert call(srv, "POST", "/api/userdata/workflows%2Fmine.json?overwrite=false", data=wf)[0] == 409
    _, listing, _ = call(srv, "GET", "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")
    assert [x["path"] for x in listing] == ["mine.json"] and {"size", "modified"} <= set(listing[0])
    _, listing, _ = call(srv, "GET", "/api/userdata?dir=workflows&recurse=true&split=true")
    assert listing == [["mine.json", "mine.json"]]
    status, data, _ = call(srv, "GET", "/api/userdata/workflows%2Fmine.json")
    assert status == 200 and json.loads(data if isinstance(data, bytes) else json.dumps(data)) == json.loads(wf)
    status, r, _ = call(srv, "POST", "/api/userdata/workflows%2Fmine.json/move/workflows%2Fyours.json")
    assert status == 200 and r == "workflows/yours.json"
    assert call(srv, "GET", "/api/userdata/workflows%2Fmine.json")[0] == 404
    assert call(srv, "DELETE", "/api/userdata/workflows%2Fyours.json")[0] == 204
    assert call(srv, "GET", "/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")[1] == []
    assert call(srv, "GET", "/api/userdata")[0] == 400


# ------------------------------------------------------------------------------------------------ real nodes

def test_serve_command_is_registered():
    import argparse

    from qwenimage.nodes.server import register_cli

    ap = argparse.ArgumentParser()
    register_cli(ap.add_subparsers(dest="command"))
    a = ap.parse_args(["serve", "--port", "9999", "--models-dir", "m", "--output-dir", "o", "--input-dir", "i"])
    assert (a.listen, a.port, a.models_dir, a.output_dir, a.input_dir) == ("127.0.0.1", 9999, "m", "o", "i")


def test_real_workflow_caches_models_across_seeds(tmp_path, tokenizer):
    """A shipped API workflow on tiny models: the second run with a new seed runs the sampler, the decoder and the
    saver only; the loaders and text encodes come from the cache."""
    from _graph import speed_up
    from _models import write_input_images, write_tiny_models

    from qwenimage.nodes import NODE_CLASS_MAPPINGS

    write_tiny_models(tmp_path / "models", len(tokenizer))
    write_input_images(tmp_path / "input")
    old = (host.models_dir(), host.input_dir(), host.output_dir(), host.temp_dir())
    S.configure(tmp_path / "models", tmp_path / "input", tmp_path / "output", tmp_path / "temp")
    try:
        server = S.PromptServer(user_dir=tmp_path / "user")
        assert set(NODE_CLASS_MAPPINGS) <= set(server.mappings)
        with open(os.path.join(REPO, "workflows", "api", "text_to_image.json")) as f:
            prompt = speed_up(json.load(f))
        with S.ServerThread(server) as url:
            s = type("Srv", (), {"url": url})
            _, h1 = run(s, prompt)
            assert h1["status"]["status_str"] == "success", h1["status"]
            sampler = next(k for k, v in prompt.items() if v["class_type"] == "QwenImageSampler")
            prompt[sampler]["inputs"]["seed"] += 1
            _, pid, msgs = asyncio.run(ws_run(s, prompt))
            cached = set([m[1] for m in msgs if m[0] == "execution_cached"][0]["nodes"])
            ran = [m[1]["node"] for m in msgs if m[0] == "executing" and m[1]["node"] is not None]
            downstream = {sampler}
            changed = True
            while changed:  # everything that depends on the sampler
                changed = False
                for nid, node in prompt.items():
                    if nid not in downstream and any(isinstance(v, list) and v[0] in downstream
                                                     for v in node["inputs"].values()):
                        downstream.add(nid)
                        changed = True
            assert set(ran) == downstream
            assert cached == set(prompt) - downstream - {n for n, v in prompt.items()
                                                         if v["class_type"] == "Note"}
            h2 = wait_done(s, pid)
            out = h2["outputs"]
            img = next(iter(out.values()))["images"][0]
            assert call(s, "GET", "/api/view?" + urllib.parse.urlencode(img))[0] == 200
    finally:
        host.set_models_dir(old[0])
        host.set_dirs(*old[1:])
        host.free_memory()


def test_pack_extension_dirs_are_listed_and_served(srv, tmp_path):
    ext = tmp_path / "ext"
    (ext / "sub").mkdir(parents=True)
    (ext / "sub" / "hello.js").write_text("console.log('hi')")
    ours = srv.server.extension_dirs.get("qwenimage")
    srv.server.extension_dirs["qwenimage"] = ext
    try:
        _, listed, _ = call(srv, "GET", "/api/extensions")
        assert "/extensions/qwenimage/sub/hello.js" in listed
        assert any(e.startswith("/extensions/core/") for e in listed)  # the frontend's own still listed
        status, body, _ = call(srv, "GET", "/extensions/qwenimage/sub/hello.js")
        assert status == 200 and body == b"console.log('hi')"
        core = next(e for e in listed if e.startswith("/extensions/core/"))
        assert call(srv, "GET", core)[0] == 200
        assert call(srv, "GET", "/extensions/qwenimage/..%2F..%2Fetc%2Fpasswd")[0] in (403, 404)
        assert call(srv, "GET", "/extensions/qwenimage/nope.js")[0] == 404
    finally:  # put our own extension back: later tests on this server expect it
        if ours is None:
            srv.server.extension_dirs.pop("qwenimage")
        else:
            srv.server.extension_dirs["qwenimage"] = ours
