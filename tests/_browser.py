"""A headless Chromium driven over the DevTools protocol with aiohttp (no extra dependency).

    async with Browser.launch(tmp_path) as b:
        page = await b.new_page()
        await page.goto(url)
        value = await page.eval("1 + 1")
        await page.screenshot(path)

`page.requests` records every request with its response status, `page.failures()` lists failed loads and
responses >= 400, `page.console_errors()` console errors and exceptions.

Helpers for the ComfyUI frontend in such a page (any test that drives the editor uses them):

    page = await open_editor(browser, url)        # fresh page, frontend booted, first graph configured
    g = await graph_of(page)                      # {"nodes": [[id, type, widget values]], "links": [...]}
    await listen(page); await click(page, RUN_BUTTON); events = await wait_run(page)
    shown = await output_images(page)             # images the SaveImage / PreviewImage nodes hold
    await command(page, "Comfy.LoadDefaultWorkflow"); texts = await toasts(page)
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
         "--disable-dev-shm-usage", "--window-size=1400,900", "--remote-debugging-port=0",
         "--remote-allow-origins=*"]


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


class CDPError(RuntimeError):
    pass


class Page:
    def __init__(self, session: aiohttp.ClientSession, ws):
        self._session = session
        self._ws = ws
        self._ids = 0
        self._pending: dict = {}
        self._waiters: list = []
        self.events: list = []
        self.requests: dict = {}  # requestId -> {url, method, status, failed, type}
        self.console: list = []  # (level, text, source)
        self._reader = asyncio.create_task(self._read())

    async def _read(self):
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(CDPError(json.dumps(data["error"])))
                    else:
                        fut.set_result(data.get("result", {}))
                continue
            self._on_event(data.get("method"), data.get("params", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CDPError("browser connection closed"))

    def _on_event(self, method, params):
        self.events.append((method, params))
        if method == "Network.requestWillBeSent":
            r = params["request"]
            self.requests[params["requestId"]] = {"url": r["url"], "method": r["method"], "status": None,
                                                  "failed": None, "type": params.get("type")}
        elif method == "Network.responseReceived":
            e = self.requests.setdefault(params["requestId"], {"url": params["response"]["url"], "method": "?",
                                                               "failed": None, "type": params.get("type")})
            e["status"] = params["response"]["status"]
        elif method == "Network.loadingFailed":
            e = self.requests.setdefault(params["requestId"], {"url": "?", "method": "?", "status": None,
                                                               "type": params.get("type")})
            e["failed"] = params.get("errorText") + (" (cancelled)" if params.get("canceled") else "")
            e["canceled"] = params.get("canceled", False)
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append((params.get("type"), text, "console"))
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            text = (d.get("exception") or {}).get("description") or d.get("text", "")
            self.console.append(("error", text, "exception"))
        elif method == "Log.entryAdded":
            e = params.get("entry", {})
            self.console.append((e.get("level"), f"{e.get('text', '')} {e.get('url', '')}".strip(),
                                 "log:" + e.get("source", "")))
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(method, params):
                fut.set_result(params)

    async def send(self, method, params=None, timeout=60):
        self._ids += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = fut
        await self._ws.send_str(json.dumps({"id": self._ids, "method": method, "params": params or {}}))
        return await asyncio.wait_for(fut, timeout)

    async def wait_event(self, pred, timeout=60):
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not fut]

    async def enable(self):
        for domain in ("Page", "Runtime", "Network", "Log"):
            await self.send(f"{domain}.enable")

    async def goto(self, url, timeout=60):
        loaded = asyncio.ensure_future(self.wait_event(lambda m, p: m == "Page.loadEventFired", timeout))
        await self.send("Page.navigate", {"url": url})
        await loaded

    async def eval(self, expression, timeout=60, await_promise=True):
        r = await self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": await_promise,
                                                 "returnByValue": True}, timeout=timeout)
        if r.get("exceptionDetails"):
            d = r["exceptionDetails"]
            raise CDPError((d.get("exception") or {}).get("description") or d.get("text"))
        return r.get("result", {}).get("value")

    async def wait_for(self, expression, timeout=60, interval=0.25):
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last_err = None
        while time.monotonic() < deadline:
            try:
                v = await self.eval(expression, timeout=max(1.0, deadline - time.monotonic()))
                if v:
                    return v
            except CDPError as e:
                last_err = e
            await asyncio.sleep(interval)
        raise TimeoutError(f"timed out waiting for {expression!r}" + (f" (last error: {last_err})" if last_err
                                                                       else ""))

    async def screenshot(self, path):
        r = await self.send("Page.captureScreenshot", {"format": "png"})
        Path(path).write_bytes(base64.b64decode(r["data"]))
        return path

    def failures(self):
        """Requests that failed to load (not cancelled) or answered >= 400."""
        out = []
        for r in self.requests.values():
            if r.get("failed") and not r.get("canceled"):
                out.append(f"{r['method']} {r['url']}: {r['failed']}")
            elif r.get("status") is not None and r["status"] >= 400:
                out.append(f"{r['method']} {r['url']}: HTTP {r['status']}")
        return out

    def console_errors(self):
        return [f"[{src}] {text}" for level, text, src in self.console if level in ("error", "assert")]

    async def close(self):
        await self._ws.close()
        self._reader.cancel()


class Browser:
    def __init__(self, proc, port, user_dir):
        self.proc, self.port, self.user_dir = proc, port, user_dir
        self.session = aiohttp.ClientSession()
        self.pages: list = []

    @classmethod
    def launch(cls, workdir, executable=None, timeout=60, window=(1400, 900)):
        """window: (width, height) of the page's viewport in CSS px."""
        return _Launcher(workdir, executable, timeout, window)

    async def new_page(self) -> Page:
        base = f"http://127.0.0.1:{self.port}"
        async with self.session.put(f"{base}/json/new?about:blank") as r:
            info = await r.json(content_type=None)
        ws = await self.session.ws_connect(info["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(self.session, ws)
        await page.enable()
        self.pages.append(page)
        return page

    async def close(self):
        for p in self.pages:
            try:
                await p.close()
            except Exception:  # noqa: BLE001
                pass
        await self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class _Launcher:
    def __init__(self, workdir, executable, timeout, window=(1400, 900)):
        self.workdir, self.executable, self.timeout = Path(workdir), executable or find_chromium(), timeout
        self.window = window
        self.browser = None

    async def __aenter__(self) -> Browser:
        if not self.executable:
            raise FileNotFoundError("no chromium executable")
        user_dir = self.workdir / "chromium-profile"
        user_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "chromium.log", "wb")
        flags = [f"--window-size={self.window[0]},{self.window[1]}" if f.startswith("--window-size=") else f
                 for f in FLAGS]
        proc = subprocess.Popen([self.executable, *flags, f"--user-data-dir={user_dir}", "about:blank"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LANG": "en_US.UTF-8"})
        port_file = user_dir / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if port_file.exists():
                lines = port_file.read_text().split()
                if lines:
                    self.browser = Browser(proc, int(lines[0]), user_dir)
                    return self.browser
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}: "
                                   f"{(self.workdir / 'chromium.log').read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.1)
        proc.kill()
        raise TimeoutError("chromium did not start")

    async def __aexit__(self, *exc):
        if self.browser is not None:
            await self.browser.close()


# ---- the ComfyUI frontend in a page

EDITOR_READY = ("window.app && app.graph && app.api && app.extensionManager && typeof LiteGraph !== 'undefined' && "
                "!!document.querySelector('canvas') && app.graph._nodes.length > 0")
RUN_BUTTON = '[data-testid="queue-button"]'  # the action bar's Run (the frontend's queue)
TOAST = '[data-testid="toast"], .p-toast-message'  # a toast (reka's, PrimeVue's in older frontends)
RUN_EVENTS = ("execution_start", "executing", "progress", "executed", "execution_cached", "execution_success",
              "execution_error", "execution_interrupted", "b_preview")
RUN_DONE = ("execution_success", "execution_error", "execution_interrupted")


async def open_editor(browser: Browser, url: str, timeout=90) -> Page:
    """A new page on the editor, once the frontend has booted and configured its first graph."""
    page = await browser.new_page()
    await page.goto(url.rstrip("/") + "/")
    await page.wait_for(EDITOR_READY, timeout=timeout)
    return page


async def graph_of(page: Page) -> dict:
    """The graph on the canvas: nodes as [id, type, widget values] by id, and links."""
    return json.loads(await page.eval(
        "JSON.stringify({nodes: app.graph._nodes.map(n => [String(n.id), n.type, (n.widgets || [])"
        ".map(w => w.value)]).sort((a, b) => Number(a[0]) - Number(b[0])), links: app.graph.serialize().links})"))


async def server_node_types(page: Page) -> list:
    """The node types the server publishes (/object_info), as the frontend fetched them."""
    return json.loads(await page.eval("app.api.getNodeDefs().then(d => JSON.stringify(Object.keys(d)))"))


async def click(page: Page, selector: str, timeout=30):
    """A real mouse click (pressed and released) at the middle of the first element `selector` matches."""
    box = await page.wait_for(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return ''; "
                              "const r = e.getBoundingClientRect(); return r.width > 0 ? "
                              "JSON.stringify([r.x + r.width / 2, r.y + r.height / 2]) : ''; })()", timeout=timeout)
    x, y = json.loads(box)
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        await page.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                     "clickCount": 1 if kind != "mouseMoved" else 0})


async def command(page: Page, command_id: str):
    """Run one of the frontend's commands (as its menus and keybindings do), e.g. Comfy.LoadDefaultWorkflow."""
    await page.eval(f"app.extensionManager.command.execute({json.dumps(command_id)}).then(() => true)")


async def listen(page: Page):
    """Record the server's run messages in the page (window.__events), from now on."""
    await page.eval("(() => { window.__events = []; if (window.__listening) return true; window.__listening = true;"
                    f"for (const e of {json.dumps(list(RUN_EVENTS))}) app.api.addEventListener(e, ev => "
                    "window.__events.push([e, e === 'b_preview' ? ev.detail.size : ev.detail])); return true; })()")


async def wait_run(page: Page, timeout=120) -> list:
    """The run messages recorded by `listen` once the run has ended (succeeded, failed or was interrupted)."""
    await page.wait_for(f"window.__events.some(e => {json.dumps(list(RUN_DONE))}.includes(e[0]))", timeout=timeout)
    return json.loads(await page.eval("JSON.stringify(window.__events)"))


async def output_images(page: Page, timeout=30) -> list:
    """The loaded images of the SaveImage / PreviewImage nodes ({src, w, complete}), once at least one is there."""
    js = ("JSON.stringify(app.graph._nodes.filter(n => n.type === 'SaveImage' || n.type === 'PreviewImage')"
          ".flatMap(n => (n.imgs || []).map(i => ({src: i.src, w: i.naturalWidth, complete: i.complete}))))")
    got = await page.wait_for(f"(() => {{ const r = {js}; return JSON.parse(r).some(i => i.complete && i.w > 0) ? r "
                              f": ''; }})()", timeout=timeout)
    return json.loads(got)


async def toasts(page: Page) -> list:
    """The texts of the toasts on screen."""
    return json.loads(await page.eval(
        f"JSON.stringify([...document.querySelectorAll({json.dumps(TOAST)})].map(e => e.innerText))"))


async def node_on_screen(page: Page, node_type: str) -> dict:
    """Where the first node of a type is drawn, in CSS px of the page ({left, top, right, bottom}, title bar
    included), and the canvas element's box ({canvas: ...}): the canvas draws graph point p at
    (p + offset) * scale, from the canvas element's corner."""
    return json.loads(await page.eval(
        "(() => { const n = app.graph._nodes.find(n => n.type === " + json.dumps(node_type) + "); "
        "const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect(), t = LiteGraph.NODE_TITLE_HEIGHT; "
        "const x = v => r.left + (v + ds.offset[0]) * ds.scale, y = v => r.top + (v + ds.offset[1]) * ds.scale; "
        "return JSON.stringify({left: x(n.pos[0]), top: y(n.pos[1] - t), right: x(n.pos[0] + n.size[0]), "
        "bottom: y(n.pos[1] + n.size[1]), scale: ds.scale, "
        "canvas: {left: r.left, top: r.top, right: r.right, bottom: r.bottom}}); })()"))


async def template_cards(page: Page, count: int, timeout=30) -> dict:
    """The template browser's cards once `count` are there: name -> [title, thumbnail loaded (bool)]. A card's
    last line of text is its title (above it, its kind: 'Node graph')."""
    js = ("JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-testid^=\"template-workflow-\"]')]"
          ".map(e => [e.dataset.testid.slice('template-workflow-'.length), [e.innerText.trim().split('\\n').pop(), "
          "[...e.querySelectorAll('img')].some(i => i.complete && i.naturalWidth > 0)]])))")
    got = await page.wait_for(f"(() => {{ const r = {js}; return Object.keys(JSON.parse(r)).length >= {count} ? r "
                              ": ''; })()", timeout=timeout)
    return json.loads(got)
