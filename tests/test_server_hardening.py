"""`qwenimage serve` against hostile and odd clients (issue 17): previews only when asked (a third-party API client
gets the saved PNG), cross-site and DNS-rebinding requests refused, pixel and cache limits, and malformed requests
answered 4xx with a reason without breaking later ones. Every case runs over HTTP against a running server."""
import asyncio
import http.client
import io
import json
import struct
import urllib.parse
import uuid
import zlib

import aiohttp
import pytest
import torch

from qwenimage.nodes import host, limits
from qwenimage.nodes import server as S
from qwenimage.nodes.builtins import BUILTIN_NODE_DISPLAY_NAME_MAPPINGS, LoadImage
from qwenimage.nodes.execution import Executor, validate_prompt
from test_server import MAPPINGS, call, graph, multipart, png_bytes, wait_done


class StubLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 64, "min": 16, "max": 16384}),
                             "height": ("INT", {"default": 64, "min": 16, "max": 16384}),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 64})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "test"

    def make(self, width, height, batch_size):
        return ({"samples": torch.zeros(batch_size, 16, 1, height // 8, width // 8)},)


class StubLatentSink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "take"
    CATEGORY = "test"

    def take(self, latent):
        return {"ui": {"shape": [list(latent["samples"].shape)]}}


HMAPPINGS = {**MAPPINGS, "StubLatent": StubLatent, "StubLatentSink": StubLatentSink}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    """A server as `qwenimage serve` starts it by default, with small pixel limits (100 x 100 per image, 64 x 64 x 2
    per latent batch) so that "too big" costs nothing to make."""
    root = tmp_path_factory.mktemp("hardened")
    old = (host.models_dir(), host.input_dir(), host.output_dir(), host.temp_dir())
    S.configure(root / "models", root / "input", root / "output", root / "temp")
    small = limits.Limits(max_image_pixels=100 * 100, max_latent_pixels=64 * 64 * 2, max_cache_mb=64)
    server = S.PromptServer(HMAPPINGS, BUILTIN_NODE_DISPLAY_NAME_MAPPINGS, user_dir=root / "user", limits=small)
    previous = limits.LIMITS
    thread = S.ServerThread(server)
    url = thread.start()
    yield type("Srv", (), {"url": url, "root": root, "server": server,
                           "port": urllib.parse.urlsplit(url).port})
    thread.stop()
    limits.install(limits.Limits())
    host.set_models_dir(old[0])
    host.set_dirs(*old[1:])
    assert previous is small


def raw(srv, method, path, body: bytes = b"", headers=None):
    """(status, body bytes) of a request sent exactly as given (no Content-Type or Host added but Host's default)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=bool(headers and "Host" in headers), skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def upload(srv, name, content, route="/api/upload/image", headers=None, **fields):
    body, h = multipart(fields, {"image": (name, content, "image/png")})
    return call(srv, "POST", route, data=body, headers={**h, **(headers or {})})


def fake_png(width, height) -> bytes:
    """A PNG whose header says width x height (no real pixel data): enough for anything that reads sizes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ previews

async def simplified_client(srv, prompt, output_node="5"):
    """What comfy-api-simplified's queue_and_wait_images does: POST /prompt (JSON bytes, no Content-Type), then
    listen on the websocket; binary frames are taken as the images (their first 8 bytes cut); with none, the
    saved images come from /history + /view."""
    cid = str(uuid.uuid4())
    status, body = raw(srv, "POST", "/prompt", json.dumps({"prompt": prompt, "client_id": cid}).encode())
    assert status == 200, body
    pid = json.loads(body)["prompt_id"]
    images = []
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{srv.url}/ws?clientId={cid}") as ws:
        while True:
            m = await asyncio.wait_for(ws.receive(), 30)
            if m.type == aiohttp.WSMsgType.BINARY:
                images.append(m.data[8:])
                continue
            msg = json.loads(m.data)
            if msg["type"] == "status" and msg["data"]["status"]["exec_info"]["queue_remaining"] == 0:
                break
            if msg["type"] == "executing" and msg["data"]["node"] is None and msg["data"]["prompt_id"] == pid:
                break
    if images:
        return images
    history = wait_done(srv, pid)  # the client reads /history once; waiting only makes the test deterministic
    return [call(srv, "GET", "/view?" + urllib.parse.urlencode({"filename": im["filename"], "subfolder":
                                                               im["subfolder"], "type": im["type"]}))[1]
            for im in history["outputs"][output_node]["images"]]


async def frames_of(srv, prompt, extra=None):
    """Binary frames a client connected before queueing receives during the run."""
    cid = uuid.uuid4().hex
    frames = []
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{srv.url}/ws?clientId={cid}") as ws:
        body = {"prompt": prompt, "client_id": cid, **({"extra_data": extra} if extra else {})}
        async with session.post(f"{srv.url}/api/prompt", json=body) as r:
            assert r.status == 200, await r.text()
            pid = (await r.json())["prompt_id"]
        while True:
            m = await asyncio.wait_for(ws.receive(), 30)
            if m.type == aiohttp.WSMsgType.BINARY:
                frames.append(m.data)
            elif json.loads(m.data)["type"] == "executing" and json.loads(m.data)["data"] == {"node": None,
                                                                                              "prompt_id": pid}:
                return frames


def test_api_client_gets_the_saved_png_and_no_previews(srv):
    images = asyncio.run(simplified_client(srv, graph(seed=101, steps=3, prefix="client")))
    assert len(images) == 1 and images[0][:8] == b"\x89PNG\r\n\x1a\n"
    saved = sorted((srv.root / "output").glob("client_*.png"))
    assert len(saved) == 1 and saved[0].read_bytes() == images[0]
    assert asyncio.run(frames_of(srv, graph(seed=102, steps=3))) == []  # connected first: still none


def test_previews_when_the_prompt_or_the_server_asks(srv):
    frames = asyncio.run(frames_of(srv, graph(seed=103, steps=3), extra={"preview_method": "auto"}))
    assert len(frames) == 3 and all(f[:4] == struct.pack(">I", 1) and f[8:10] == b"\xff\xd8" for f in frames)
    srv.server.preview_method = "latent2rgb"  # as --preview-method latent2rgb
    try:
        assert len(asyncio.run(frames_of(srv, graph(seed=104, steps=2)))) == 2
        assert len(asyncio.run(frames_of(srv, graph(seed=105, steps=2), extra={"preview_method": "default"}))) == 2
        assert asyncio.run(frames_of(srv, graph(seed=106, steps=2), extra={"preview_method": "none"})) == []
    finally:
        srv.server.preview_method = "none"
    status, body, _ = call(srv, "POST", "/api/prompt", {"prompt": graph(), "extra_data": {"preview_method": "x"}})
    assert status == 400 and "preview_method" in body["error"]["message"]
    with pytest.raises(ValueError, match="preview method"):
        S.PromptServer(HMAPPINGS, {}, preview_method="taesd")


def test_serve_flags():
    import argparse

    p = argparse.ArgumentParser()
    S.register_cli(p.add_subparsers())
    a = p.parse_args(["serve"])
    assert a.preview_method == "none" and a.allow_origin == [] and a.allow_host == []
    assert (a.max_image_pixels, a.max_latent_pixels) == (limits.Limits().max_image_pixels,
                                                          limits.Limits().max_latent_pixels)
    a = p.parse_args(["serve", "--preview-method", "auto", "--max-image-pixels", "1000", "--max-cache-mb", "5",
                      "--allow-origin", "https://proxy.example", "--allow-host", "box"])
    assert (a.preview_method, a.max_image_pixels, a.max_cache_mb, a.allow_origin, a.allow_host) == \
        ("auto", 1000, 5.0, ["https://proxy.example"], ["box"])
    for bad in (["--preview-method", "fast"], ["--max-image-pixels", "0"], ["--max-cache-mb", "inf"]):
        with pytest.raises(SystemExit):
            p.parse_args(["serve", *bad])


# ------------------------------------------------------------------------------------------------ cross-site

def _nothing_queued(srv):
    assert call(srv, "GET", "/api/queue")[1]["queue_pending"] == []


def test_cross_site_requests_are_refused(srv):
    prompt = json.dumps({"prompt": graph(seed=201)}).encode()
    own = f"http://127.0.0.1:{srv.port}"
    n_history = len(call(srv, "GET", "/api/history")[1])
    refused = [
        {"Origin": "null"},                                        # sandboxed iframe, file:// page
        {"Origin": "http://evil.example"},
        {"Origin": f"http://127.0.0.1:{srv.port + 1}"},            # another local port is another site
        {"Referer": "http://evil.example/page.html"},              # a browser that sent no Origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": f"evil.example:{srv.port}", "Origin": f"http://evil.example:{srv.port}"},  # DNS rebinding
    ]
    for h in refused:
        for ctype in ("text/plain", "application/json"):
            status, body = raw(srv, "POST", "/api/prompt", prompt, {**h, "Content-Type": ctype})
            assert status == 403 and body, (h, status)
        assert upload(srv, "cs.png", png_bytes(), headers=h)[0] == 403, h
        assert raw(srv, "POST", "/api/settings", b'{"Comfy.X": 1}', h)[0] == 403, h
        assert raw(srv, "POST", "/api/userdata/workflows%2Fcs.json", b"{}", h)[0] == 403, h
        assert raw(srv, "POST", "/api/interrupt", b"", h)[0] == 403, h
    _nothing_queued(srv)
    assert len(call(srv, "GET", "/api/history")[1]) == n_history
    assert not (srv.root / "input" / "cs.png").exists() and not (srv.root / "user" / "default" / "workflows").exists()
    assert "Comfy.X" not in call(srv, "GET", "/api/settings")[1]
    # a rebound name cannot even read
    assert raw(srv, "GET", "/api/history", headers={"Host": f"evil.example:{srv.port}"})[0] == 403
    # the server's own page, loopback names and script clients are served
    for h in ({"Origin": own}, {"Origin": f"http://localhost:{srv.port}", "Host": f"localhost:{srv.port}"},
              {"Host": f"[::1]:{srv.port}", "Origin": f"http://[::1]:{srv.port}"}, {"Sec-Fetch-Site": "same-origin"},
              {"Referer": own + "/"}, {}):
        assert raw(srv, "POST", "/api/settings", b'{"Comfy.Y": 2}', h)[0] == 200, h
    # a link followed from another site still opens the page
    assert raw(srv, "GET", "/", headers={"Sec-Fetch-Site": "cross-site", "Referer": "https://example.org/"})[0] == 200


def test_cross_site_websocket_is_refused(srv):
    async def connect(origin):
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"{srv.url}/ws?clientId=x", origin=origin):
                    return True
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert asyncio.run(connect("http://evil.example")) == 403
    assert asyncio.run(connect("null")) == 403
    assert asyncio.run(connect(srv.url)) is True


def test_odd_websocket_messages_are_ignored(srv):
    async def go():
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{srv.url}/ws?clientId=odd") as ws:
            await ws.send_str(json.dumps({"type": "feature_flags", "data": [1, 2]}))
            await ws.send_str("{not json")
            await ws.send_bytes(b"\x00\x01")
            await asyncio.sleep(0.2)
            return srv.server.client_flags.get("odd")

    assert asyncio.run(go()) == {}
    _healthy(srv)


def test_allowed_origins_and_hosts(tmp_path):
    server = S.PromptServer(HMAPPINGS, {}, user_dir=tmp_path / "user", allowed_origins=["https://proxy.example/"],
                            allowed_hosts=["mybox"])
    with S.ServerThread(server) as url:
        s = type("Srv", (), {"url": url, "port": urllib.parse.urlsplit(url).port})
        ok = {"Origin": "https://proxy.example", "Host": "mybox"}
        assert raw(s, "POST", "/api/settings", b"{}", ok)[0] == 200
        assert raw(s, "POST", "/api/settings", b"{}", {**ok, "Origin": "https://other.example"})[0] == 403
        assert raw(s, "GET", "/api/queue", headers={"Host": "otherbox"})[0] == 403


def test_malformed_origin_and_host_headers_are_400(srv):
    for h in ({"Origin": "http://[::1"}, {"Origin": "http://127.0.0.1:99999"}, {"Host": "127.0.0.1:abc"},
              {"Referer": "http://[bad"}, {"Origin": "http://"}):
        status, body = raw(srv, "POST", "/api/prompt", b"{}", h)
        assert status == 400 and body, (h, status, body)


# ------------------------------------------------------------------------------------------------ limits

def latent_graph(w, h, batch):
    return {"1": {"class_type": "StubLatent", "inputs": {"width": w, "height": h, "batch_size": batch}},
            "2": {"class_type": "StubLatentSink", "inputs": {"latent": ["1", 0]}}}


def load_scale_graph(name, w=0, h=0):
    return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                         "width": w, "height": h, "crop": "disabled"}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


def _limit_error(body, flag):
    text = json.dumps(body)
    assert flag in text, text
    return text


def test_pixel_limits_at_upload_load_and_validation(srv):
    # upload: refused from the header, nothing written
    status, body, _ = upload(srv, "huge.png", png_bytes(size=(120, 100)))
    assert status == 400 and b"--max-image-pixels" in body and not (srv.root / "input" / "huge.png").exists()
    assert upload(srv, "fine.png", png_bytes(size=(100, 100)))[0] == 200
    # a file already in the input folder: refused at validation, and by the node itself if run directly
    (srv.root / "input" / "big.png").write_bytes(png_bytes(size=(101, 100)))
    status, body, _ = call(srv, "POST", "/api/prompt", {"prompt": load_scale_graph("big.png")})
    assert status == 400
    _limit_error(body, "--max-image-pixels")
    with pytest.raises(limits.PixelLimitError, match="--max-image-pixels"):
        LoadImage().load_image("big.png")
    # image sizes made by a node: at validation, and at run time when only known then (keep-aspect scaling)
    status, body, _ = call(srv, "POST", "/api/prompt", {"prompt": load_scale_graph("fine.png", 200, 200)})
    assert status == 400 and body["node_errors"]["2"]["errors"][0]["type"] == "pixel_limit_exceeded"
    _limit_error(body, "--max-image-pixels")
    status, r, _ = call(srv, "POST", "/api/prompt", {"prompt": load_scale_graph("fine.png", 0, 150)})
    assert status == 200
    h = wait_done(srv, r["prompt_id"])
    assert h["status"]["status_str"] == "error" and "--max-image-pixels" in json.dumps(h["status"])
    # latent batches: width x height x batch
    status, body, _ = call(srv, "POST", "/api/prompt", {"prompt": latent_graph(16384, 16384, 64)})
    assert status == 400
    _limit_error(body, "--max-latent-pixels")
    assert call(srv, "POST", "/api/prompt", {"prompt": latent_graph(64, 64, 3)})[0] == 400
    status, r, _ = call(srv, "POST", "/api/prompt", {"prompt": latent_graph(64, 64, 2)})
    assert status == 200 and wait_done(srv, r["prompt_id"])["status"]["status_str"] == "success"


def test_view_preview_refuses_non_images_and_huge_images(srv):
    (srv.root / "output" / "notes.txt").write_text("not a picture")
    (srv.root / "output" / "vast.png").write_bytes(fake_png(20000, 20000))
    for name in ("notes.txt", "vast.png"):
        for extra in ({"preview": "webp;90"}, {"preview": "jpeg;50"}, {"channel": "rgb"}, {"channel": "a"}):
            q = urllib.parse.urlencode({"filename": name, "type": "output", **extra})
            status, body, _ = call(srv, "GET", "/api/view?" + q)
            assert status == 400 and body, (name, extra, status)
    status, body, _ = call(srv, "GET", "/api/view?filename=vast.png&type=output&preview=webp")
    assert b"--max-image-pixels" in body
    assert call(srv, "GET", "/api/view?filename=notes.txt&type=output")[0] == 200  # the file itself, as is
    # the default limits also refuse it (20000 x 20000 is beyond them), from the header
    with pytest.raises(limits.PixelLimitError):
        previous = limits.install(limits.Limits())
        try:
            S.routes_files.check_image(io.BytesIO(fake_png(20000, 20000)), "vast.png")
        finally:
            limits.install(previous)


def test_output_cache_is_bounded_by_memory():
    g = {"1": {"class_type": "StubLatent", "inputs": {"width": 512, "height": 512, "batch_size": 4}},
         "2": {"class_type": "StubLatentSink", "inputs": {"latent": ["1", 0]}}}  # 4 x 16 x 64 x 64 floats = 1 MiB
    previous = limits.install(limits.Limits(max_cache_mb=0.5))
    try:
        assert validate_prompt(g, HMAPPINGS).ok
        ex = Executor(HMAPPINGS)
        assert ex.execute(g, "a").status == "success"
        assert ex.cache_bytes() <= 0.5 * 2 ** 20
        with pytest.raises(KeyError):
            ex.outputs("1")  # the latent was dropped
        assert ex.execute(g, "b").ran == []  # the sink is cached: nothing upstream of it runs again
        ex.reset()
        limits.install(limits.Limits(max_cache_mb=2))
        assert ex.execute(g, "c").ran == ["1", "2"]
        assert ex.cache_bytes() == 4 * 16 * 64 * 64 * 4 and ex.outputs("1")[0]["samples"].shape == (4, 16, 1, 64, 64)
        assert ex.execute(g, "d").ran == []
    finally:
        limits.install(previous)


# ------------------------------------------------------------------------------------------------ protocol

def _healthy(srv):
    """Later requests still work: history and jobs are strict JSON, a prompt runs."""
    for path in ("/api/history", "/api/jobs", "/api/queue"):
        status, body = raw(srv, "GET", path)
        assert status == 200, (path, body[:200])
        json.loads(body, parse_constant=lambda c: pytest.fail(f"{path} answered {c}"))
    status, r, _ = call(srv, "POST", "/api/prompt", {"prompt": graph(seed=int(uuid.uuid4().int % 1000))})
    assert status == 200 and wait_done(srv, r["prompt_id"])["status"]["status_str"] == "success"


def test_non_finite_numbers_and_deep_nesting_are_refused(srv):
    base = json.dumps({"prompt": graph(seed=301)})
    for bad in (base[:-1] + ', "number": NaN}', base[:-1] + ', "number": Infinity}',
                base[:-1] + ', "number": -Infinity}',
                base[:-1] + ', "number": 1e400}',
                base.replace('"delay": 0.0', '"delay": NaN'), base.replace('"seed": 301', '"seed": Infinity')):
        status, body = raw(srv, "POST", "/api/prompt", bad.encode(), {"Content-Type": "application/json"})
        assert status == 400 and b"finite" in body, (bad[-40:], status, body)
    deep = "[" * 974 + "]" * 974
    g = graph(seed=302)
    g["4"]["inputs"]["unused"] = "DEEP"
    status, body = raw(srv, "POST", "/api/prompt", json.dumps({"prompt": g}).replace('"DEEP"', deep).encode())
    assert status == 400 and b"nested deeper" in body
    _healthy(srv)


MALFORMED = [  # (method, path, body): each was a 500 before
    ("POST", "/api/prompt", {"prompt": {"1": {"class_type": ["SaveImage"], "inputs": {}}}}),
    ("POST", "/api/prompt", {"prompt": {"1": {"class_type": {"a": 1}, "inputs": {}}}}),
    ("POST", "/api/prompt", {"prompt": {"1": {"class_type": 5, "inputs": {}}}}),
    ("POST", "/api/prompt", {"prompt": graph(), "number": "abc"}),
    ("POST", "/api/prompt", {"prompt": graph(), "number": [1]}),
    ("POST", "/api/prompt", {"prompt": graph(), "number": 10 ** 400}),
    ("POST", "/api/prompt", {"prompt": graph(), "extra_data": "x"}),
    ("POST", "/api/prompt", {"prompt": graph(), "extra_data": [1, 2]}),
    ("POST", "/api/prompt", {"prompt": graph(), "partial_execution_targets": 5}),
    ("POST", "/api/prompt", {"prompt": graph(), "partial_execution_targets": "5"}),
    ("POST", "/api/prompt", {"prompt": graph(), "partial_execution_targets": [[1]]}),
    ("POST", "/api/prompt", {"prompt": graph(), "prompt_id": ["x"]}),
    ("POST", "/api/prompt", {"prompt": graph(), "client_id": 5}),
    ("POST", "/api/prompt", {"prompt": []}),
    ("POST", "/api/prompt", [1, 2]),
    ("POST", "/api/queue", {"delete": 5}),
    ("POST", "/api/queue", {"delete": [[1]]}),
    ("POST", "/api/history", {"delete": 7}),
    ("POST", "/api/history", {"delete": "abc"}),
    ("POST", "/api/jobs/cancel", {"job_ids": 5}),
    ("POST", "/api/jobs/cancel", {"job_ids": [{}]}),
    ("POST", "/api/interrupt", {"prompt_id": [1]}),
    ("POST", "/api/interrupt", [1]),
    ("POST", "/api/free", "x"),
    ("POST", "/api/settings", [1, 2]),
    ("POST", "/api/settings", "str"),
    ("POST", "/api/userdata/.", {"a": 1}),
    ("POST", "/api/userdata/%2E", {"a": 1}),
    ("POST", "/api/userdata/workflows", {"a": 1}),  # a folder (made below)
    ("POST", "/api/userdata/" + "x" * 300 + ".json", {}),
]


def test_malformed_requests_are_4xx_with_a_reason(srv):
    (srv.root / "user" / "default" / "workflows").mkdir(parents=True, exist_ok=True)
    for method, path, body in MALFORMED:
        before = call(srv, "GET", "/api/queue")[1]
        status, reply = raw(srv, method, path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        assert 400 <= status < 500 and reply.strip(), (path, body, status, reply)
        assert call(srv, "GET", "/api/queue")[1] == before
    # a list in the settings file (written as user data) is ignored, not a 500 on every later read
    assert raw(srv, "POST", "/api/userdata/comfy.settings.json", b"[1, 2]")[0] == 200
    status, settings, _ = call(srv, "GET", "/api/settings")
    assert status == 200 and settings["Comfy.TutorialCompleted"] is True
    assert call(srv, "POST", "/api/settings/Comfy.Z", 3)[0] == 200 and call(srv, "GET", "/api/settings/Comfy.Z")[1] == 3
    # a mask upload whose original_ref is not an object
    for ref in ("[1, 2]", "5", "{", '"x"'):
        assert upload(srv, "m.png", png_bytes(), route="/api/upload/mask", original_ref=ref)[0] == 400, ref
    # odd bodies on every JSON route
    for path in ("/api/prompt", "/api/queue", "/api/history", "/api/interrupt", "/api/free", "/api/jobs/cancel",
                 "/api/settings", "/api/settings/Comfy.W"):
        for body in (b"{", b"\xff\xfe\x00", b'{"a": NaN}', b"5", b'"x"', b"null", b'{"clear": [1], "delete": {}}',
                     b"[" * 5000):
            status, reply = raw(srv, "POST", path, body)
            assert status < 500, (path, body[:20], status, reply)
    _healthy(srv)


def test_a_client_prompt_id_is_never_reused(srv):
    pid = "client-chosen-id"
    status, r, _ = call(srv, "POST", "/api/prompt", {"prompt": graph(seed=401), "prompt_id": pid})
    assert status == 200 and r["prompt_id"] == pid
    first = wait_done(srv, pid)
    status, body, _ = call(srv, "POST", "/api/prompt", {"prompt": graph(seed=402), "prompt_id": pid})
    assert status == 400 and "already used" in body["error"]["message"]
    assert call(srv, "GET", f"/api/history/{pid}")[1][pid] == first
    call(srv, "POST", "/api/history", {"delete": [pid]})
    assert call(srv, "POST", "/api/prompt", {"prompt": graph(seed=403), "prompt_id": pid})[0] == 200
    wait_done(srv, pid)


def test_long_upload_names_keep_their_extension(srv):
    for name in ("a" * 300 + ".png", "\U0001F600" * 150 + ".png", "b" * 250):
        status, r, _ = upload(srv, name, png_bytes((1, 2, 3, 255)))
        assert status == 200, (name[:10], r)
        assert len(r["name"].encode()) <= 200 and (r["name"].endswith(".png") or "." not in name)
        assert (srv.root / "input" / r["name"]).is_file()
        # a second, different file of that name gets a numbered name that still fits
        status, r2, _ = upload(srv, name, png_bytes((4, 5, 6, 255)))
        assert status == 200 and r2["name"] != r["name"] and (srv.root / "input" / r2["name"]).is_file()
    assert S.sanitize_filename("\U0001F600" * 150 + ".png").endswith("\U0001F600.png")
    # folders: a name too long, or a file where a folder should be
    assert upload(srv, "x.png", png_bytes(), subfolder="a" * 300)[0] == 400
    (srv.root / "input" / "plain.txt").write_text("x")
    assert upload(srv, "x.png", png_bytes(), subfolder="plain.txt")[0] == 400
    assert 400 <= call(srv, "GET", "/api/view?filename=x.png&type=input&subfolder=" + "a" * 300)[0] < 500


def test_uploads_and_user_files_get_the_usual_mode(srv):
    import os

    umask = os.umask(0)
    os.umask(umask)
    status, r, _ = upload(srv, "mode.png", png_bytes((7, 7, 7, 255)))
    assert status == 200 and (srv.root / "input" / r["name"]).stat().st_mode & 0o777 == 0o666 & ~umask
    assert raw(srv, "POST", "/api/userdata/workflows%2Fmode.json", b"{}")[0] == 200
    assert (srv.root / "user" / "default" / "workflows" / "mode.json").stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------------------------ issue 23

def test_start_up_sweeps_only_our_own_temporaries(tmp_path):
    """A kill -9 during Save Image leaves output/.tmp-<hex>.png: the next start deletes such files (not a
    lookalike, a folder, a symlink, or one so young it may be another process's write in progress)."""
    import os

    old = (host.models_dir(), host.input_dir(), host.output_dir(), host.temp_dir())
    S.configure(tmp_path / "models", tmp_path / "input", tmp_path / "output", tmp_path / "temp")
    (tmp_path / "output" / "sub").mkdir()
    (tmp_path / "user" / "default").mkdir(parents=True)
    stale = [tmp_path / "output" / ".tmp-0123456789abcdef.png",
             tmp_path / "output" / "sub" / ".tmp-aaaaaaaaaaaaaaaa.png",
             tmp_path / "input" / ".tmp-bbbbbbbbbbbbbbbb.part",
             tmp_path / "user" / "default" / ".tmp-cccccccccccccccc.part"]
    outside = tmp_path / "precious.png"
    outside.write_bytes(b"x")
    kept = [tmp_path / "output" / ".tmp-notours.png", tmp_path / "output" / "a.tmp-0123456789abcdef.png",
            tmp_path / "output" / "ComfyUI_00001_.png", tmp_path / "temp" / ".tmp-dddddddddddddddd.png"]  # young
    for p in stale + kept:
        p.write_bytes(b"\x89PNG half written")
    (tmp_path / "output" / ".tmp-eeeeeeeeeeeeeeee").mkdir()
    link = tmp_path / "output" / ".tmp-ffffffffffffffff.png"
    link.symlink_to(outside)
    for p in stale + kept[:-1] + [link]:
        os.utime(p, (1e9, 1e9), follow_symlinks=False)
    os.utime(outside, (1e9, 1e9))
    try:
        server = S.PromptServer(HMAPPINGS, {}, user_dir=tmp_path / "user")
        with S.ServerThread(server):
            pass
    finally:
        host.set_models_dir(old[0])
        host.set_dirs(*old[1:])
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept) and link.is_symlink() and outside.read_bytes() == b"x"
    assert (tmp_path / "output" / ".tmp-eeeeeeeeeeeeeeee").is_dir()
    assert S.app.sweep_temporaries([tmp_path / "temp"], older_than_s=0) == 1  # the second pass, once it is old


def test_only_images_are_uploaded_and_served_inline(srv):
    """Stored XSS: x.html (.xhtml, .svg, .js) holding anything was accepted and served inline as text/html."""
    for name in ("x.html", "x.xhtml", "x.svg", "x.js", "x.htm", "x.png.html"):
        status, body, _ = upload(srv, name, png_bytes())
        assert status == 400 and b"not an image file name" in body, (name, status, body)
        assert not (srv.root / "input" / name).exists()
    status, r, _ = upload(srv, "pasted", png_bytes((9, 9, 9, 255)))  # no extension: the format's own
    assert status == 200 and r["name"] == "pasted.png"
    # a file left by an older server, or put there by hand: only ever a download, never a page
    (srv.root / "input" / "old.html").write_text("<script>fetch('/api/prompt')</script>")
    (srv.root / "input" / "old.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'><script>1</script></svg>")
    for name in ("old.html", "old.svg"):
        status, _, h = call(srv, "GET", f"/api/view?filename={name}&type=input")
        assert status == 200 and h["Content-Type"] == "application/octet-stream", (name, dict(h))
        assert h["Content-Disposition"].startswith("attachment;") and h["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in h["Content-Security-Policy"]
    status, body, h = call(srv, "GET", "/api/view?filename=pasted.png&type=input")
    assert status == 200 and h["Content-Type"] == "image/png" and body[:4] == b"\x89PNG"
    assert "attachment" not in h["Content-Disposition"] and h["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in h["Content-Security-Policy"]
    # user data is the frontend's JSON and CSS, never a page either
    assert raw(srv, "POST", "/api/userdata/evil.html", b"<script>1</script>")[0] == 200
    status, _, h = call(srv, "GET", "/api/userdata/evil.html")
    assert status == 200 and h["Content-Type"] == "application/octet-stream"
    assert h["Content-Disposition"].startswith("attachment;")
    assert raw(srv, "POST", "/api/userdata/workflows%2Fw.json", b'{"a": 1}')[0] == 200
    status, body, h = call(srv, "GET", "/api/userdata/workflows%2Fw.json")
    assert body == {"a": 1} and h["Content-Type"] == "application/json" and h["X-Content-Type-Options"] == "nosniff"


def test_odd_upload_names_and_paths_are_4xx(srv):
    """A 10,000-character or control-character name, or a path longer than the file system allows, was a 500."""
    names = ["a" * 10000 + ".png", "a\x01b.png", "a\x7fb.png", "\x1b[31mred.png", "a\rb.png", "a\nb.png"]
    for name in names:
        status, body, _ = upload(srv, name, png_bytes())
        assert status == 400 or (status == 200 and "\x7f" not in body["name"]), (name[:12], status, body)
    # what a header may carry is stored without controls, separators or a right-to-left override ('xexe.png')
    status, body, _ = upload(srv, "x\u202egnp.exe\u2028\x85.png", png_bytes((3, 1, 4, 255)))
    assert status == 200 and body["name"] == "x_gnp.exe__.png", body
    assert S.sanitize_filename("\udcff\x7f.png") == "__.png"  # a name that was not UTF-8
    assert S.sanitize_filename("\U0001F468\u200d\U0001F469.png") == "\U0001F468\u200d\U0001F469.png"
    deep = "/".join(["b" * 150] * 40)
    status, body, _ = upload(srv, "x.png", png_bytes(), subfolder=deep)
    assert status == 400 and b"longer than" in body, (status, body)
    assert raw(srv, "POST", "/api/userdata/" + urllib.parse.quote(deep + "/w.json", safe=""), b"{}")[0] == 400
    assert raw(srv, "GET", "/api/userdata/" + urllib.parse.quote(deep + "/w.json", safe=""))[0] == 400
    assert 400 <= call(srv, "GET", "/api/view?type=input&filename=x.png&subfolder=" + deep)[0] < 500
    _healthy(srv)


def test_a_full_disk_is_507_with_the_reason_and_nothing_changes(srv, monkeypatch):
    import errno

    from qwenimage.nodes.server import routes_files, routes_user

    assert call(srv, "POST", "/api/settings", {"Comfy.Before": 1})[0] == 200

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(routes_files, "atomic_write", full)
    monkeypatch.setattr(routes_user, "atomic_write", full)
    before = sorted(p.name for p in (srv.root / "input").iterdir())
    status, body, _ = upload(srv, "full.png", png_bytes((1, 1, 1, 255)))
    assert status == 507 and "disk is full" in json.dumps(body), (status, body)
    assert sorted(p.name for p in (srv.root / "input").iterdir()) == before
    for path, data in (("/api/settings", b'{"Comfy.After": 2}'), ("/api/settings/Comfy.After", b"2"),
                       ("/api/userdata/workflows%2Ffull.json", b"{}")):
        status, body = raw(srv, "POST", path, data)
        assert status == 507 and b"disk is full" in body, (path, status, body)
    monkeypatch.undo()
    settings = call(srv, "GET", "/api/settings")[1]
    assert settings["Comfy.Before"] == 1 and "Comfy.After" not in settings
    assert not (srv.root / "user" / "default" / "workflows" / "full.json").exists()


def test_a_deeply_nested_websocket_message_is_ignored(srv):
    """100,000 levels of nesting in a text frame ended that socket's handler (a RecursionError)."""
    async def go():
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{srv.url}/ws?clientId=deep") as ws:
            assert json.loads((await ws.receive()).data)["type"] == "status"
            await ws.send_str("[" * 100_000 + "]" * 100_000)
            await ws.send_str(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
            m = await asyncio.wait_for(ws.receive(), 30)
            assert m.type == aiohttp.WSMsgType.TEXT, m
            return json.loads(m.data)["type"]

    assert asyncio.run(go()) == "feature_flags"
    _healthy(srv)


def test_a_user_data_path_ending_in_a_separator_is_refused(srv):
    """`POST /api/userdata/fresh_folder%2F` answered 200 and wrote a file named fresh_folder."""
    for path in ("fresh_folder%2F", "fresh_folder%2F.", "a%2Fb%5C"):
        status, body = raw(srv, "POST", "/api/userdata/" + path, b"{}")
        assert status == 400 and b"names a folder" in body, (path, status, body)
    assert not (srv.root / "user" / "default" / "fresh_folder").exists()
    assert raw(srv, "POST", "/api/userdata/moved.json", b"{}")[0] == 200
    assert raw(srv, "POST", "/api/userdata/moved.json/move/dest_folder%2F", b"")[0] == 400
    assert (srv.root / "user" / "default" / "moved.json").is_file()


def test_serve_port_out_of_range_is_a_usage_error(capsys):
    from qwenimage.cli import main

    for port in ("99999", "0", "-1", "http"):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--port", port])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "is not a TCP port" in err and len(err.strip().splitlines()) == 1, err
