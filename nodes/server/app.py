"""The PromptServer: its state (queue, sockets, executor), messages to websocket clients, the worker thread
that runs prompts, and the aiohttp app assembled from the route modules."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import struct
import threading
import time
import traceback
from pathlib import Path
from typing import Optional

from aiohttp import web

from .. import host
from ..execution import Executor
from ..limits import Limits
from ..limits import install as install_limits
from . import first_screen, guards, routes_files, routes_prompt, routes_system, routes_user
from .previews import SERVER_METHODS, preview_frame, previews_wanted
from .queue import PromptQueue, progress_entry, public_item
from .replies import SERVER, bad_requests, json_default

log = logging.getLogger("qwenimage.server")

MAX_UPLOAD_MB = 100
ROUTE_MODULES = (routes_system, routes_prompt, routes_files, routes_user, first_screen)
# the names qwenimage_core.images.create_temp gives (".tmp-" + 16 hex digits + a short suffix): only ours are swept
TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{16}(\.[A-Za-z0-9]{1,8})?")
TEMP_GRACE_S = 30.0  # a younger temporary may be another process's write in progress: swept on the second pass


def sweep_temporaries(folders, older_than_s: float = TEMP_GRACE_S) -> int:
    """Delete our own temporaries (TEMP_NAME, regular files, not modified for `older_than_s`) under `folders`,
    subfolders included: what a kill -9 during a save left behind. Returns how many were deleted."""
    cutoff = time.time() - older_than_s
    removed = 0
    for folder in folders:
        for root, _dirs, files in os.walk(folder):  # symlinked folders are not followed
            for name in filter(TEMP_NAME.fullmatch, files):
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except OSError as e:  # gone meanwhile, or not ours to delete
                    log.debug("temporary %s not swept: %s", path, e)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted save", removed)
    return removed


def default_mappings():
    """Our node pack plus the built-in stand-ins, with display names."""
    from .. import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from ..builtins import BUILTIN_NODE_CLASS_MAPPINGS, BUILTIN_NODE_DISPLAY_NAME_MAPPINGS

    return ({**BUILTIN_NODE_CLASS_MAPPINGS, **NODE_CLASS_MAPPINGS},
            {**BUILTIN_NODE_DISPLAY_NAME_MAPPINGS, **NODE_DISPLAY_NAME_MAPPINGS})


# What a first run imports that start-up does not: transformers' Qwen2.5-VL, ~80% of a cold first Run.
# `qwenimage serve` has its worker import them before it takes the first prompt (one thread: transformers'
# lazy modules are not safe to import from two threads at once).
WARM_IMPORTS = ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "transformers.models.qwen2.tokenization_qwen2")


class PromptServer:
    def __init__(self, mappings=None, display_names=None, web_root=None, user_dir="user",
                 max_upload_mb: float = MAX_UPLOAD_MB, preview_method: str = "none", limits: Optional[Limits] = None,
                 allowed_origins=(), allowed_hosts=()):
        if mappings is None:
            mappings, dn = default_mappings()
            display_names = {**dn, **(display_names or {})}
        self.mappings = mappings
        self.display_names = display_names or {}
        self.web_root = Path(web_root) if web_root else routes_system.frontend_root()
        self.user_root = Path(user_dir)
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        if preview_method not in SERVER_METHODS:
            raise ValueError(f"preview method {preview_method!r}: one of {', '.join(SERVER_METHODS)}")
        self.preview_method = preview_method
        if limits is not None:
            install_limits(limits)  # the nodes (Load Image, ...) and the validator read the process's limits
        self.allowed_origins = {o.rstrip("/") for o in allowed_origins}
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        # folders others add to: pack name -> JS extension folder; template module -> folder of UI workflows
        self.extension_dirs: dict[str, Path] = {first_screen.PACK: first_screen.WEB_DIR}
        self.template_dirs: dict[str, Path] = {routes_system.TEMPLATES_MODULE: routes_system.WORKFLOWS_DIR}
        self.executor = Executor(mappings)
        self.queue = PromptQueue(self._queue_changed)
        self.sockets: dict = {}  # sid -> ws
        self.client_flags: dict = {}  # sid -> feature flags the client announced
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.number = 0
        self.client_id = None  # sid of the client whose prompt is running
        self.last_node_id = None
        self.running_prompt_id = None
        self._worker: Optional[threading.Thread] = None
        self.warm_modules: tuple = ()  # modules the worker imports before its first prompt (WARM_IMPORTS)
        self._stop = threading.Event()
        self.app = self._make_app()

    # ---- messages (thread-safe)
    def feature_flags(self) -> dict:
        return {"supports_preview_metadata": True, "max_upload_size": self.max_upload,
                "extension": {"manager": {"supports_v4": False}}}

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.queue.remaining()}}

    def _queue_changed(self):
        self.send_sync("status", {"status": self.queue_info()})

    def send_sync(self, event, data, sid=None):
        """Send a message from any thread."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(lambda: loop.create_task(self.send(event, data, sid)))
        except RuntimeError:  # loop shutting down
            pass

    async def send(self, event, data, sid=None):
        """A JSON message {type, data}, or for an int event a binary frame (4-byte type, then data)."""
        if isinstance(event, int):
            for ws in self._targets(sid):
                await self._safe(ws.send_bytes, struct.pack(">I", event) + bytes(data))
            return
        msg = json.dumps({"type": event, "data": data}, default=json_default)
        for ws in self._targets(sid):
            await self._safe(ws.send_str, msg)

    def _targets(self, sid):
        if sid is None:
            return list(self.sockets.values())
        ws = self.sockets.get(sid)
        return [ws] if ws is not None else []

    @staticmethod
    async def _safe(fn, payload):
        try:
            await fn(payload)
        except (ConnectionError, RuntimeError) as e:  # closed socket
            log.debug("websocket send failed: %s", e)

    def cancel(self, prompt_id) -> bool:
        """Drop a pending prompt or interrupt the running one."""
        if self.queue.delete(prompt_id):
            return True
        if prompt_id == self.running_prompt_id:
            host.request_interrupt()
            return True
        return False

    # ---- the worker
    def start_worker(self):
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="qwenimage-prompt-worker", daemon=True)
            self._worker.start()

    def stop_worker(self):
        self._stop.set()
        host.request_interrupt()
        self.queue.wake()
        if self._worker is not None:
            self._worker.join(timeout=10)
            self._worker = None
        host.clear_interrupt()  # the stop request must not cancel the next run in this process

    def _apply_flags(self):
        flags = self.queue.take_flags()
        if flags.get("unload_models") or flags.get("free_memory"):
            self.executor.reset()  # cached outputs hold the loaded models
            host.free_memory(unload_models=True)

    def _warm(self):
        import importlib

        t0 = time.perf_counter()
        for name in self.warm_modules:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - the run that needs it reports the error
                log.debug("warm-up import of %s failed: %s", name, e)
        if self.warm_modules:
            log.debug("warm-up imports took %.1f s", time.perf_counter() - t0)

    def _work(self):
        self._warm()
        while not self._stop.is_set():
            self._apply_flags()
            item = self.queue.get(timeout=0.5)
            if item is not None:
                self._run(item)

    def _run(self, item):
        number, prompt_id, prompt, extra_data, outputs = item[:5]
        sid = extra_data.get("client_id")
        self.client_id, self.running_prompt_id = sid, prompt_id
        previews = previews_wanted(self.preview_method, extra_data)
        on_event = self._event_sender(sid, prompt_id, previews)
        try:
            result = self.executor.execute(prompt, prompt_id, extra_data, on_event, outputs=outputs, previews=previews)
            status_str = "success" if result.status == "success" else "error"
            entry = {"prompt": public_item(item), "outputs": result.ui,
                     "status": {"status_str": status_str, "completed": result.status == "success",
                                "messages": [list(m) for m in result.messages]},
                     "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None,
                                    "real_node_id": nid} for nid in result.ui}}
        except Exception as e:  # noqa: BLE001 - never let the worker die
            traceback.print_exc()
            entry = {"prompt": public_item(item), "outputs": {},
                     "status": {"status_str": "error", "completed": False,
                                "messages": [["execution_error", {"prompt_id": prompt_id,
                                                                  "exception_message": str(e)}]]},
                     "meta": {}}
        self.client_id = self.running_prompt_id = self.last_node_id = None
        self.queue.task_done(item, entry)

    def _event_sender(self, sid, prompt_id, previews: bool):
        """The executor's event callback: websocket messages to the prompt's client, with progress_state, and
        previews only if the run asked for them."""
        progress_nodes: dict = {}

        def on_event(event, data):
            if event == "preview":
                if not previews:
                    return
                with_meta = bool(self.client_flags.get(sid, {}).get("supports_preview_metadata"))
                self.send_sync(*preview_frame(data["image"], data["node"], prompt_id, with_meta), sid)
                return
            if event == "executing":
                self.last_node_id = node = data.get("node")
                for st in progress_nodes.values():
                    if st["state"] == "running":
                        st["state"] = "finished"
                if node is not None:
                    progress_nodes[node] = progress_entry(node, prompt_id, 0, 1, "running")
                self.send_sync(event, data, sid)
                self.send_sync("progress_state", {"prompt_id": prompt_id, "nodes": progress_nodes}, sid)
                return
            if event == "progress" and data.get("node") is not None:
                progress_nodes[data["node"]] = progress_entry(data["node"], prompt_id, data["value"], data["max"],
                                                              "running")
                self.send_sync(event, data, sid)
                self.send_sync("progress_state", {"prompt_id": prompt_id, "nodes": dict(progress_nodes)}, sid)
                return
            self.send_sync(event, data, sid)

        return on_event

    # ---- the app
    def _make_app(self) -> web.Application:
        """Every route of ROUTE_MODULES at /route and at /api/route (not /internal), then the frontend's files."""
        app = web.Application(client_max_size=self.max_upload,
                              middlewares=[guards.same_origin_only, bad_requests, guards.cache_control])
        app[SERVER] = self
        for module in ROUTE_MODULES:
            for r in module.routes:
                if isinstance(r, web.RouteDef) and not r.path.startswith("/internal"):
                    app.router.add_route(r.method, "/api" + r.path, r.handler, **r.kwargs)
        for module in ROUTE_MODULES:
            app.add_routes(module.routes)
        app.add_routes([web.static("/", self.web_root, follow_symlinks=False)])
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    def temp_folders(self) -> list:
        return [host.output_dir(), host.input_dir(), host.temp_dir(), self.user_root]

    async def _on_startup(self, app):
        self.loop = asyncio.get_running_loop()
        sweep_temporaries(self.temp_folders())
        self.loop.call_later(TEMP_GRACE_S, self.loop.run_in_executor, None, sweep_temporaries, self.temp_folders())
        self.start_worker()

    async def _on_shutdown(self, app):
        for ws in list(self.sockets.values()):
            await ws.close()
        await asyncio.get_running_loop().run_in_executor(None, self.stop_worker)
