"""A headless Chromium driven over the DevTools protocol with aiohttp (no extra dependency).

    async with Browser.launch(tmp_path) as b:
        page = await b.new_page()
        await page.goto(url)
        value = await page.eval("1 + 1")
        await page.screenshot(path)

`page.requests` records every request with its response status, `page.failures()` lists failed loads and
responses >= 400, `page.console_errors()` console errors and exceptions.
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
    def launch(cls, workdir, executable=None, timeout=60):
        return _Launcher(workdir, executable, timeout)

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
    def __init__(self, workdir, executable, timeout):
        self.workdir, self.executable, self.timeout = Path(workdir), executable or find_chromium(), timeout
        self.browser = None

    async def __aenter__(self) -> Browser:
        if not self.executable:
            raise FileNotFoundError("no chromium executable")
        user_dir = self.workdir / "chromium-profile"
        user_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "chromium.log", "wb")
        proc = subprocess.Popen([self.executable, *FLAGS, f"--user-data-dir={user_dir}", "about:blank"],
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
