"""`qwenimage serve`: our own small ComfyUI-compatible server.

It serves the official ComfyUI web frontend (the `comfyui-frontend-package` wheel's static files) and speaks the
ComfyUI HTTP and websocket API over this node pack plus stand-ins for the few ComfyUI built-in nodes our workflows
use (nodes/builtins.py), so the same frontend, workflow files and API clients work against ComfyUI or us.

Every route is served both at `/route` and at `/api/route`, as ComfyUI does. Prompts are validated on arrival
(ComfyUI's error format, nothing queued on error) and run one at a time by a worker thread (nodes/execution.py),
so the event loop stays responsive: interrupts, queue views and websocket progress work during a run.

Files: outputs and previews are written by SaveImage/PreviewImage; `/view` and `/upload/*` are confined to the
input, output and temp folders (names sanitised, no path escapes, no overwrite unless asked, a size limit).
The user folder (`--user-dir`, default `user/`) holds settings and saved workflows under `default/`.
"""
from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import logging
import mimetypes
import os
import re
import struct
import sys
import threading
import time
import traceback
import uuid
from io import BytesIO
from pathlib import Path
from typing import Optional

from aiohttp import WSMsgType, web

from . import host
from .execution import SENSITIVE_EXTRA_DATA_KEYS, Executor, validate_prompt

log = logging.getLogger("qwenimage.server")

MAX_UPLOAD_MB = 100
MAX_HISTORY = 10000
PREVIEW_MAX = 512


# Settings the server answers until the user saves their own: this is not ComfyUI, so the frontend should not
# ask api.comfy.org whether a newer ComfyUI exists, nor open its (empty here) template browser on first start.
DEFAULT_SETTINGS = {"Comfy.Notification.ShowVersionUpdates": False, "Comfy.TutorialCompleted": True}


def rel_is(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"
TEMPLATES_MODULE = "Qwen-Image"


def example_workflows() -> list[str]:
    """The shipped UI-format workflows (workflows/*.json, not the *_api.json twins), by name."""
    if not WORKFLOWS_DIR.is_dir():
        return []
    return sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json") if not p.stem.endswith("_api"))


def frontend_root() -> Path:
    """The static folder of the installed `comfyui-frontend-package` wheel."""
    try:
        import comfyui_frontend_package
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the ComfyUI frontend is not installed: pip install comfyui-frontend-package") from e
    root = Path(list(comfyui_frontend_package.__path__)[0]) / "static"
    if not (root / "index.html").is_file():
        raise RuntimeError(f"no index.html in {root}: reinstall comfyui-frontend-package")
    return root


def frontend_version() -> str:
    try:
        from importlib.metadata import version

        return version("comfyui-frontend-package")
    except Exception:  # noqa: BLE001
        return "unknown"


def default_mappings():
    """Our node pack plus the built-in stand-ins, with display names."""
    from . import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .builtins import BUILTIN_NODE_CLASS_MAPPINGS, BUILTIN_NODE_DISPLAY_NAME_MAPPINGS

    return ({**BUILTIN_NODE_CLASS_MAPPINGS, **NODE_CLASS_MAPPINGS},
            {**BUILTIN_NODE_DISPLAY_NAME_MAPPINGS, **NODE_DISPLAY_NAME_MAPPINGS})


# ------------------------------------------------------------------------------------------------ object_info

def node_info(name: str, cls, display_names: dict) -> dict:
    """One entry of /object_info, the shape ComfyUI publishes."""
    it = cls.INPUT_TYPES()
    ret = list(getattr(cls, "RETURN_TYPES", ()))
    info = {
        "input": it,
        "input_order": {section: list(values.keys()) for section, values in it.items()},
        "output": ret,
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(ret))),
        "output_name": list(getattr(cls, "RETURN_NAMES", ret)),
        "name": name,
        "display_name": display_names.get(name, name),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE",
                                 "nodes" if cls.__module__.endswith(".builtins") else "custom_nodes.qwenimage"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if getattr(cls, "API_NODE", False):
        info["api_node"] = True
    return info


# ------------------------------------------------------------------------------------------------ files

_BAD_CHARS = re.compile(r'[\x00-\x1f<>:"|?*\\/]')


def sanitize_filename(name: str) -> str:
    """A bare file name: no folders, no control or reserved characters, not hidden, not '.'/'..'."""
    name = os.path.basename(str(name).replace("\\", "/")).strip()
    name = _BAD_CHARS.sub("_", name).lstrip(".").strip()
    if not name or name in (".", ".."):
        raise ValueError("invalid file name")
    return name[:200]


def safe_join(base, *parts) -> Path:
    """base/parts..., refusing absolute parts, '..' and anything resolving outside base (symlinks included)."""
    base = Path(base).resolve()
    rel = "/".join(p for p in parts if p)
    if "\x00" in rel or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise PermissionError("absolute path")
    if any(seg == ".." for seg in re.split(r"[\\/]", rel)):
        raise PermissionError("path escapes its folder")
    path = (base / rel).resolve() if rel else base
    if path != base and base not in path.parents:
        raise PermissionError("path escapes its folder")
    return path


def dir_by_type(kind: Optional[str]) -> Optional[Path]:
    kind = kind or "input"
    return {"input": host.input_dir, "output": host.output_dir, "temp": host.temp_dir}.get(kind, lambda: None)()


def split_annotated(name: str):
    for tag in ("output", "input", "temp"):
        if name.endswith(f" [{tag}]"):
            return name[: -len(tag) - 3], tag
        if name.endswith(f"[{tag}]"):
            return name[: -len(tag) - 2], tag
    return name, None


# ------------------------------------------------------------------------------------------------ the queue

class PromptQueue:
    """Pending prompts by priority number (ComfyUI's heap), the running one, and the history."""

    def __init__(self, on_change):
        self._cond = threading.Condition()
        self._heap: list = []
        self._counter = itertools.count()
        self.running: dict = {}  # prompt_id -> item
        self.history: dict = {}
        self._on_change = on_change
        self.flags: dict = {}

    def put(self, item):
        with self._cond:
            heapq.heappush(self._heap, (item[0], next(self._counter), item))
            self._cond.notify_all()
        self._on_change()

    def get(self, timeout=None):
        """The next prompt, or None on timeout or when /free flags wait (they apply before the next prompt)."""
        with self._cond:
            while not self._heap or self.flags:
                if self.flags or not self._cond.wait(timeout):
                    return None
            _, _, item = heapq.heappop(self._heap)
            self.running[item[1]] = item
        self._on_change()
        return item

    def task_done(self, item, entry: dict):
        with self._cond:
            self.running.pop(item[1], None)
            self.history[item[1]] = entry
            while len(self.history) > MAX_HISTORY:
                self.history.pop(next(iter(self.history)))
        self._on_change()

    def pending(self) -> list:
        with self._cond:
            return [x[2] for x in sorted(self._heap)]

    def current(self):
        with self._cond:
            return list(self.running.values()), [x[2] for x in sorted(self._heap)]

    def remaining(self) -> int:
        with self._cond:
            return len(self._heap) + len(self.running)

    def wipe(self):
        with self._cond:
            self._heap.clear()
        self._on_change()

    def delete(self, prompt_id) -> bool:
        with self._cond:
            n = len(self._heap)
            self._heap = [x for x in self._heap if x[2][1] != prompt_id]
            heapq.heapify(self._heap)
            removed = len(self._heap) != n
        if removed:
            self._on_change()
        return removed

    def set_flag(self, name, value):
        with self._cond:
            self.flags[name] = value
            self._cond.notify_all()

    def take_flags(self) -> dict:
        with self._cond:
            f, self.flags = self.flags, {}
            return f

    def wake(self):
        with self._cond:
            self._cond.notify_all()


def _public_item(item):
    """A queue item as the API shows it: (number, prompt_id, prompt, extra_data, outputs), secrets dropped."""
    return list(item[:5])


# ------------------------------------------------------------------------------------------------ the server

class PromptServer:
    def __init__(self, mappings=None, display_names=None, web_root=None, user_dir="user",
                 max_upload_mb: float = MAX_UPLOAD_MB):
        if mappings is None:
            mappings, dn = default_mappings()
            display_names = {**dn, **(display_names or {})}
        self.mappings = mappings
        self.display_names = display_names or {}
        self.web_root = Path(web_root) if web_root else frontend_root()
        self.user_root = Path(user_dir)
        self.max_upload = int(max_upload_mb * 1024 * 1024)
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
        if isinstance(event, int):
            targets = self._targets(sid)
            for ws in targets:
                await self._safe(ws.send_bytes, struct.pack(">I", event) + bytes(data))
            return
        msg = json.dumps({"type": event, "data": data}, default=_json_default)
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

    def _preview_bytes(self, image, sid, node_id, prompt_id):
        from PIL import Image, ImageOps

        image = image.convert("RGB")
        if max(image.size) > PREVIEW_MAX:  # shrink only (ComfyUI's contain() also blows small previews up)
            image = ImageOps.contain(image, (PREVIEW_MAX, PREVIEW_MAX), Image.BILINEAR)
        buf = BytesIO()
        image.save(buf, format="JPEG", quality=95)
        jpeg = buf.getvalue()
        if self.client_flags.get(sid, {}).get("supports_preview_metadata"):
            meta = json.dumps({"node_id": node_id, "display_node_id": node_id, "real_node_id": node_id,
                               "parent_node_id": None, "prompt_id": prompt_id,
                               "image_type": "image/jpeg"}).encode()
            return BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA, struct.pack(">I", len(meta)) + meta + jpeg
        return BinaryEventTypes.PREVIEW_IMAGE, struct.pack(">I", 1) + jpeg

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
            host.free_memory(unload_models=bool(flags.get("unload_models") or flags.get("free_memory")))

    def _work(self):
        while not self._stop.is_set():
            self._apply_flags()
            item = self.queue.get(timeout=0.5)
            if item is None:
                continue
            number, prompt_id, prompt, extra_data, outputs = item[:5]
            sid = extra_data.get("client_id")
            self.client_id, self.running_prompt_id = sid, prompt_id
            progress_nodes: dict = {}

            def on_event(event, data, sid=sid, prompt_id=prompt_id):
                if event == "preview":
                    kind, payload = self._preview_bytes(data["image"], sid, data["node"], prompt_id)
                    self.send_sync(kind, payload, sid)
                    return
                if event == "executing":
                    self.last_node_id = data.get("node")
                    node = data.get("node")
                    for st in progress_nodes.values():
                        if st["state"] == "running":
                            st["state"] = "finished"
                    if node is not None:
                        progress_nodes[node] = _progress_entry(node, prompt_id, 0, 1, "running")
                    self.send_sync(event, data, sid)
                    self.send_sync("progress_state", {"prompt_id": prompt_id, "nodes": progress_nodes}, sid)
                    return
                if event == "progress" and data.get("node") is not None:
                    progress_nodes[data["node"]] = _progress_entry(data["node"], prompt_id, data["value"],
                                                                   data["max"], "running")
                    self.send_sync(event, data, sid)
                    self.send_sync("progress_state", {"prompt_id": prompt_id, "nodes": dict(progress_nodes)}, sid)
                    return
                self.send_sync(event, data, sid)

            try:
                result = self.executor.execute(prompt, prompt_id, extra_data, on_event, outputs=outputs)
                status_str = "success" if result.status == "success" else "error"
                entry = {"prompt": _public_item(item), "outputs": result.ui,
                         "status": {"status_str": status_str, "completed": result.status == "success",
                                    "messages": [list(m) for m in result.messages]},
                         "meta": {nid: {"node_id": nid, "display_node": nid, "parent_node": None,
                                        "real_node_id": nid} for nid in result.ui}}
            except Exception as e:  # noqa: BLE001 - never let the worker die
                traceback.print_exc()
                entry = {"prompt": _public_item(item), "outputs": {},
                         "status": {"status_str": "error", "completed": False,
                                    "messages": [["execution_error", {"prompt_id": prompt_id,
                                                                      "exception_message": str(e)}]]},
                         "meta": {}}
            self.client_id = self.running_prompt_id = self.last_node_id = None
            self.queue.task_done(item, entry)

    # ---- the app
    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_upload, middlewares=[_cache_control, _origin_only])
        routes = web.RouteTableDef()
        s = self

        @routes.get("/ws")
        async def websocket(request):
            ws = web.WebSocketResponse(heartbeat=30)
            await ws.prepare(request)
            sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
            old = s.sockets.pop(sid, None)
            if old is not None and not old.closed:
                await old.close()
            s.sockets[sid] = ws
            try:
                await s.send("status", {"status": s.queue_info(), "sid": sid}, sid)
                if s.client_id == sid and s.last_node_id is not None:
                    await s.send("executing", {"node": s.last_node_id}, sid)
                first = True
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT:
                        try:
                            data = json.loads(msg.data)
                        except ValueError:
                            continue
                        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                            s.client_flags[sid] = data.get("data") or {}
                            await s.send("feature_flags", s.feature_flags(), sid)
                        first = False
                    elif msg.type == WSMsgType.ERROR:
                        log.warning("websocket closed with exception %s", ws.exception())
            finally:
                if s.sockets.get(sid) is ws:
                    s.sockets.pop(sid, None)
                    s.client_flags.pop(sid, None)
            return ws

        @routes.get("/")
        async def root(request):
            return web.FileResponse(s.web_root / "index.html",
                                    headers={"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})

        @routes.get("/templates/{name}")
        async def templates(request):
            # ComfyUI serves the comfyui-workflow-templates package here; we ship none: empty indexes
            name = request.match_info["name"]
            if re.fullmatch(r"index(\.[A-Za-z_-]+)?\.json", name):
                return web.json_response([])
            if name == "index_logo.json":
                return web.json_response({})
            return web.Response(status=404)

        @routes.get("/user.css")
        async def user_css(request):  # index.html links it; ComfyUI answers 404 when absent, we answer empty
            return web.Response(text="", content_type="text/css")

        # ---- info
        @routes.get("/embeddings")
        async def embeddings(request):
            return web.json_response([])

        @routes.get("/models")
        async def model_types(request):
            return web.json_response(list(host.MODEL_KINDS) if hasattr(host, "MODEL_KINDS") else [])

        @routes.get("/models/{folder}")
        async def models_in(request):
            folder = request.match_info["folder"]
            try:
                return web.json_response(host.list_models(folder))
            except ValueError:
                return web.Response(status=404)

        @routes.get("/experiment/models")
        async def experiment_models(request):
            kinds = list(getattr(host, "MODEL_KINDS", ()))
            out = []
            for k in kinds:
                try:
                    folders = [str(p) for p in host._folders(k)]  # noqa: SLF001
                except Exception:  # noqa: BLE001
                    folders = [str(host.models_dir() / k)]
                out.append({"name": k, "folders": folders})
            return web.json_response(out)

        @routes.get("/experiment/models/{folder}")
        async def experiment_models_in(request):
            folder = request.match_info["folder"]
            try:
                names = host.list_models(folder)
            except ValueError:
                return web.Response(status=404)
            return web.json_response([{"name": n, "pathIndex": 0} for n in names])

        @routes.get("/experiment/models/preview/{folder}/{path_index}/{filename:.*}")
        async def model_preview(request):
            return web.Response(status=404)

        @routes.get("/extensions")
        async def extensions(request):
            root = s.web_root
            files = sorted(p for p in (root / "extensions").rglob("*.js")) if (root / "extensions").is_dir() \
                else []
            return web.json_response(["/" + p.relative_to(root).as_posix() for p in files])

        @routes.get("/i18n")
        async def i18n(request):
            return web.json_response({})

        @routes.get("/workflow_templates")
        async def workflow_templates(request):
            # as ComfyUI lists a custom node pack's example workflows: the template browser shows ours
            return web.json_response({TEMPLATES_MODULE: example_workflows()} if example_workflows() else {})

        @routes.get("/workflow_templates/{module}/{name}")
        async def workflow_template(request):
            name = request.match_info["name"]
            if request.match_info["module"] != TEMPLATES_MODULE or name[:-5] not in example_workflows():
                return web.Response(status=404)
            return web.FileResponse(WORKFLOWS_DIR / name)

        @routes.get("/global_subgraphs")
        async def global_subgraphs(request):
            return web.json_response({})

        @routes.get("/global_subgraphs/{id}")
        async def global_subgraph(request):
            return web.json_response({"error": "not found"}, status=404)

        @routes.get("/node_replacements")
        async def node_replacements(request):
            return web.json_response({})

        @routes.get("/features")
        async def features(request):
            return web.json_response(s.feature_flags())

        @routes.get("/system_stats")
        async def system_stats(request):
            import torch

            ram_total, ram_free = _ram()
            dev = host.vram_stats()
            return web.json_response({
                "system": {"os": os.name if os.name != "posix" else sys.platform, "ram_total": ram_total,
                           "ram_free": ram_free, "comfyui_version": _version(),
                           "required_frontend_version": frontend_version(),
                           "installed_templates_version": None, "required_templates_version": None,
                           "python_version": sys.version, "pytorch_version": torch.__version__,
                           "embedded_python": False, "argv": sys.argv},
                "devices": [dev],
            })

        @routes.get("/object_info")
        async def object_info(request):
            out = {}
            for name, cls in s.mappings.items():
                try:
                    out[name] = node_info(name, cls, s.display_names)
                except Exception:  # noqa: BLE001
                    log.error("object_info failed for %s:\n%s", name, traceback.format_exc())
            return _json(out)

        @routes.get("/object_info/{node_class}")
        async def object_info_one(request):
            name = request.match_info["node_class"]
            cls = s.mappings.get(name)
            return _json({name: node_info(name, cls, s.display_names)} if cls else {})

        @routes.get("/view_metadata/{folder}")
        async def view_metadata(request):
            folder = request.match_info["folder"]
            filename = request.rel_url.query.get("filename", "")
            if not filename.endswith(".safetensors"):
                return web.Response(status=404)
            try:
                path = host.model_path(folder, filename)
                with open(path, "rb") as f:
                    n = struct.unpack("<Q", f.read(8))[0]
                    if n > 64 << 20:
                        return web.Response(status=404)
                    header = json.loads(f.read(n))
            except (FileNotFoundError, ValueError, OSError, struct.error):
                return web.Response(status=404)
            if "__metadata__" not in header:
                return web.Response(status=404)
            return web.json_response(header["__metadata__"])

        # ---- the queue
        @routes.get("/prompt")
        async def get_prompt(request):
            return web.json_response(s.queue_info())

        @routes.post("/prompt")
        async def post_prompt(request):
            try:
                data = await request.json()
            except ValueError:
                return web.json_response({"error": {"type": "invalid_json", "message": "Body is not JSON",
                                                    "details": "", "extra_info": {}}, "node_errors": {}},
                                         status=400)
            if not isinstance(data, dict):
                data = {}
            if "number" in data:
                number = float(data["number"])
            else:
                number = s.number
                if data.get("front"):
                    number = -number
                s.number += 1
            if "prompt" not in data:
                err = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                       "extra_info": {}}
                return web.json_response({"error": err, "node_errors": {}}, status=400)
            prompt = data["prompt"]
            prompt_id = str(data.get("prompt_id") or uuid.uuid4())
            targets = data.get("partial_execution_targets")
            v = await asyncio.get_running_loop().run_in_executor(None, validate_prompt, prompt, s.mappings, targets)
            if not v.ok:
                log.warning("invalid prompt: %s", v.error)
                return web.json_response({"error": v.error, "node_errors": v.node_errors}, status=400)
            extra = dict(data.get("extra_data") or {})
            if "client_id" in data:
                extra["client_id"] = data["client_id"]
            sensitive = {k: extra.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra}
            extra["create_time"] = int(time.time() * 1000)
            s.queue.put((number, prompt_id, {str(k): v_ for k, v_ in prompt.items()}, extra, v.outputs,
                         sensitive))
            return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": v.node_errors})

        @routes.get("/queue")
        async def get_queue(request):
            running, pending = s.queue.current()
            return _json({"queue_running": [_public_item(x) for x in running],
                          "queue_pending": [_public_item(x) for x in pending]})

        @routes.post("/queue")
        async def post_queue(request):
            data = await _json_body(request)
            if data.get("clear"):
                s.queue.wipe()
            for pid in data.get("delete") or []:
                s.queue.delete(pid)
            return web.Response(status=200)

        @routes.post("/interrupt")
        async def interrupt(request):
            data = await _json_body(request)
            pid = data.get("prompt_id")
            if pid is None or pid == s.running_prompt_id:
                if s.running_prompt_id is not None:
                    host.request_interrupt()
            return web.Response(status=200)

        @routes.post("/free")
        async def free(request):
            data = await _json_body(request)
            if data.get("unload_models"):
                s.queue.set_flag("unload_models", True)
            if data.get("free_memory"):
                s.queue.set_flag("free_memory", True)
            return web.Response(status=200)

        @routes.get("/history")
        async def get_history(request):
            q = request.rel_url.query
            items = list(s.queue.history.items())
            offset = _int(q.get("offset"), 0)
            max_items = q.get("max_items")
            if offset:
                items = items[: max(0, len(items) - offset)] if offset > 0 else items
            if max_items is not None:
                items = items[-_int(max_items, len(items)):] if _int(max_items, 0) > 0 else []
            return _json(dict(items))

        @routes.get("/history/{prompt_id}")
        async def get_history_one(request):
            pid = request.match_info["prompt_id"]
            entry = s.queue.history.get(pid)
            return _json({pid: entry} if entry is not None else {})

        @routes.post("/history")
        async def post_history(request):
            data = await _json_body(request)
            if data.get("clear"):
                s.queue.history.clear()
            for pid in data.get("delete") or []:
                s.queue.history.pop(pid, None)
            return web.Response(status=200)

        # ---- jobs (the frontend's queue and history panels)
        @routes.get("/jobs")
        async def jobs(request):
            q = request.rel_url.query
            wanted = [x for x in q.get("status", "").split(",") if x] or None
            running, pending = s.queue.current()
            out = []
            if wanted is None or "in_progress" in wanted:
                out += [_job_from_queue(x, "in_progress") for x in running]
            if wanted is None or "pending" in wanted:
                out += [_job_from_queue(x, "pending") for x in pending]
            for pid, h in list(s.queue.history.items()):
                j = _job_from_history(pid, h)
                if wanted is None or j["status"] in wanted:
                    out.append(j)
            wid = q.get("workflow_id")
            if wid:
                out = [j for j in out if j.get("workflow_id") == wid]
            out.sort(key=lambda j: j.get("create_time") or 0, reverse=q.get("sort_order", "desc") == "desc")
            total = len(out)
            offset, limit = max(0, _int(q.get("offset"), 0)), _int(q.get("limit"), None)
            page = out[offset:] if limit is None else out[offset: offset + max(0, limit)]
            return _json({"jobs": page, "pagination": {"offset": offset, "limit": limit if limit is not None
                                                        else total, "total": total,
                                                        "has_more": offset + len(page) < total}})

        @routes.get("/jobs/{job_id}")
        async def job(request):
            pid = request.match_info["job_id"]
            if pid in s.queue.history:
                return _json(_job_from_history(pid, s.queue.history[pid], full=True))
            running, pending = s.queue.current()
            for items, st in ((running, "in_progress"), (pending, "pending")):
                for x in items:
                    if x[1] == pid:
                        return _json(_job_from_queue(x, st))
            return web.json_response({"error": "Job not found"}, status=404)

        @routes.post("/jobs/{job_id}/cancel")
        async def job_cancel(request):
            pid = request.match_info["job_id"]
            return web.json_response({"cancelled": [pid] if s._cancel(pid) else []})

        @routes.post("/jobs/cancel")
        async def jobs_cancel(request):
            data = await _json_body(request)
            ids = data.get("job_ids") or data.get("ids") or []
            return web.json_response({"cancelled": [pid for pid in ids if s._cancel(pid)]})

        # ---- files
        @routes.post("/upload/image")
        async def upload_image(request):
            return await s._upload(request, mask=False)

        @routes.post("/upload/mask")
        async def upload_mask(request):
            return await s._upload(request, mask=True)

        @routes.get("/view")
        async def view(request):
            return await s._view(request)

        # ---- users, settings, user data
        @routes.get("/users")
        async def users(request):
            return web.json_response({"storage": "server", "migrated": True})

        @routes.post("/users")
        async def create_user(request):
            return web.json_response({"error": "multi-user mode is not supported"}, status=400)

        @routes.get("/settings")
        async def settings(request):
            return web.json_response(s._settings())

        @routes.post("/settings")
        async def post_settings(request):
            data = await _json_body(request)
            cur = s._settings(defaults=False)
            cur.update(data)
            s._save_settings(cur)
            return web.Response(status=200)

        @routes.get("/settings/{id}")
        async def setting(request):
            return web.json_response(s._settings().get(request.match_info["id"]))

        @routes.post("/settings/{id}")
        async def post_setting(request):
            try:
                value = await request.json()
            except ValueError:
                return web.Response(status=400, text="body is not JSON")
            cur = s._settings(defaults=False)
            cur[request.match_info["id"]] = value
            s._save_settings(cur)
            return web.Response(status=200)

        @routes.get("/userdata")
        async def list_userdata(request):
            return s._list_userdata(request, v2=False)

        @routes.get("/v2/userdata")
        async def list_userdata_v2(request):
            return s._list_userdata(request, v2=True)

        @routes.get("/userdata/{file}")
        async def get_userdata(request):
            path = s._user_path(request.match_info["file"])
            if path is None:
                return web.Response(status=400, text="invalid path")
            if not path.is_file():
                # files the frontend reads at start: answer their empty content rather than 404
                if path.name == "user.css":
                    return web.Response(text="", content_type="text/css")
                if rel_is(path, s.user_dir / "comfy.templates.json"):
                    return web.json_response([])
                return web.Response(status=404)
            return web.FileResponse(path)

        @routes.post("/userdata/{file}")
        async def post_userdata(request):
            path = s._user_path(request.match_info["file"])
            if path is None:
                return web.Response(status=400, text="invalid path")
            q = request.rel_url.query
            overwrite = q.get("overwrite", "true") != "false"
            if path.exists() and not overwrite:
                return web.Response(status=409, text="File already exists")
            body = await request.read()
            _atomic_write(path, body)
            return web.json_response(s._file_info(path) if q.get("full_info", "false").lower() == "true"
                                     else s._rel(path))

        @routes.delete("/userdata/{file}")
        async def delete_userdata(request):
            path = s._user_path(request.match_info["file"])
            if path is None:
                return web.Response(status=400, text="invalid path")
            if not path.is_file():
                return web.Response(status=404)
            path.unlink()
            return web.Response(status=204)

        @routes.post("/userdata/{file}/move/{dest}")
        async def move_userdata(request):
            src = s._user_path(request.match_info["file"])
            dst = s._user_path(request.match_info["dest"])
            if src is None or dst is None:
                return web.Response(status=400, text="invalid path")
            if not src.is_file():
                return web.Response(status=404)
            overwrite = request.rel_url.query.get("overwrite", "true") != "false"
            if dst.exists() and not overwrite:
                return web.Response(status=409, text="File already exists")
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            return web.json_response(s._file_info(dst) if request.rel_url.query.get("full_info", "false") == "true"
                                     else s._rel(dst))

        # ---- ComfyUI's /internal routes the frontend's panels read
        @routes.get("/internal/logs")
        async def internal_logs(request):
            return web.json_response("")

        @routes.get("/internal/logs/raw")
        async def internal_logs_raw(request):
            return web.json_response({"entries": [], "size": {"cols": 80, "rows": 24}})

        @routes.patch("/internal/logs/subscribe")
        async def internal_logs_subscribe(request):
            return web.Response(status=200)

        @routes.get("/internal/folder_paths")
        async def internal_folder_paths(request):
            out = {}
            for k in getattr(host, "MODEL_KINDS", ()):
                try:
                    out[k] = [[str(p) for p in host._folders(k)], []]  # noqa: SLF001
                except Exception:  # noqa: BLE001
                    pass
            return web.json_response(out)

        @routes.get("/internal/files/{directory_type}")
        async def internal_files(request):
            base = dir_by_type(request.match_info["directory_type"])
            if base is None:
                return web.json_response("Invalid directory type", status=400)
            files = sorted((p for p in Path(base).glob("*") if p.is_file()), key=lambda p: p.stat().st_mtime,
                           reverse=True) if Path(base).is_dir() else []
            return web.json_response([p.name for p in files])

        api = web.RouteTableDef()
        for r in routes:
            if isinstance(r, web.RouteDef) and not r.path.startswith("/internal"):
                api.route(r.method, "/api" + r.path)(r.handler, **r.kwargs)
        app.add_routes(api)
        app.add_routes(routes)
        app.add_routes([web.static("/", self.web_root, follow_symlinks=False)])
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app):
        self.loop = asyncio.get_running_loop()
        self.start_worker()

    async def _on_shutdown(self, app):
        for ws in list(self.sockets.values()):
            await ws.close()
        await asyncio.get_running_loop().run_in_executor(None, self.stop_worker)

    def _cancel(self, prompt_id) -> bool:
        if self.queue.delete(prompt_id):
            return True
        if prompt_id == self.running_prompt_id:
            host.request_interrupt()
            return True
        return False

    # ---- uploads and views
    async def _upload(self, request, mask: bool):
        try:
            post = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": f"upload larger than {self.max_upload} bytes"}, status=413)
        except ValueError:
            return web.Response(status=400, text="expected multipart form data")
        image = post.get("image")
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400, text="no image")
        kind = post.get("type") or "input"
        base = dir_by_type(kind)
        if base is None:
            return web.Response(status=400, text="invalid type")
        try:
            name = sanitize_filename(image.filename or "")
            subfolder = str(post.get("subfolder", "") or "")
            folder = safe_join(base, subfolder)
        except (ValueError, PermissionError) as e:
            return web.Response(status=400, text=f"invalid file name: {e}")
        data = image.file.read()
        if len(data) > self.max_upload:
            return web.json_response({"error": "file too large"}, status=413)
        overwrite = str(post.get("overwrite", "")).lower() in ("true", "1")
        if mask:
            try:
                data = self._merge_mask(post.get("original_ref"), data)
            except PermissionError as e:
                return web.Response(status=403, text=str(e))
            except (ValueError, FileNotFoundError, OSError) as e:
                return web.Response(status=400, text=f"bad mask upload: {e}")
        else:
            try:
                from PIL import Image

                with Image.open(BytesIO(data)) as im:
                    im.verify()
            except Exception:  # noqa: BLE001
                return web.Response(status=400, text="not an image")
        folder.mkdir(parents=True, exist_ok=True)
        stem, ext = os.path.splitext(name)
        path = folder / name
        i = 1
        while path.exists() and not overwrite:
            if hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
                break  # the same file again: reuse it
            name = f"{stem} ({i}){ext}"
            path = folder / name
            i += 1
        else:
            _atomic_write(path, data)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    def _merge_mask(self, original_ref, mask_bytes: bytes) -> bytes:
        """The original image with the uploaded mask's alpha (ComfyUI's mask editor protocol)."""
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        ref = json.loads(original_ref or "{}")
        fname, tag = split_annotated(str(ref.get("filename", "")))
        base = dir_by_type(tag or ref.get("type") or "output")
        if base is None:
            raise ValueError("invalid type")
        path = safe_join(base, str(ref.get("subfolder", "") or ""), fname)
        with Image.open(path) as orig:
            meta = PngInfo()
            for k, v in (getattr(orig, "text", None) or {}).items():
                meta.add_text(k, v)
            orig = orig.convert("RGBA")
            with Image.open(BytesIO(mask_bytes)) as m:
                orig.putalpha(m.convert("RGBA").getchannel("A").resize(orig.size))
            buf = BytesIO()
            orig.save(buf, format="PNG", compress_level=4, pnginfo=meta)
            return buf.getvalue()

    async def _view(self, request):
        q = request.rel_url.query
        if "filename" not in q:
            return web.Response(status=404)
        filename, tag = split_annotated(q["filename"])
        if not filename or filename.startswith(("/", "\\")) or ".." in filename:
            return web.Response(status=400)
        base = dir_by_type(tag or q.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        try:
            folder = safe_join(base, q.get("subfolder", ""))
            path = safe_join(folder, os.path.basename(filename))
        except PermissionError:
            return web.Response(status=403)
        if not path.is_file():
            return web.Response(status=404)
        name = path.name
        from PIL import Image

        if "preview" in q:
            info = q["preview"].split(";")
            fmt = info[0] if info[0] in ("webp", "jpeg") and "a" not in q.get("channel", "") else "webp"
            quality = int(info[-1]) if info[-1].isdigit() else 90
            with Image.open(path) as img:
                if fmt == "jpeg" or q.get("channel") == "rgb":
                    img = img.convert("RGB")
                buf = BytesIO()
                img.save(buf, format=fmt, quality=quality)
            return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}",
                                headers={"Content-Disposition": f'filename="{_ascii(name)}"'})
        channel = q.get("channel", "rgba")
        if channel in ("rgb", "a"):
            with Image.open(path) as img:
                if channel == "rgb":
                    out = img.convert("RGB")
                else:
                    a = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
                    out = Image.new("RGBA", img.size)
                    out.putalpha(a)
                buf = BytesIO()
                out.save(buf, format="PNG")
            return web.Response(body=buf.getvalue(), content_type="image/png",
                                headers={"Content-Disposition": f'filename="{_ascii(name)}"'})
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Disposition": f'filename="{_ascii(name)}"',
                                               "Content-Type": ctype})

    # ---- user files
    @property
    def user_dir(self) -> Path:
        return self.user_root / "default"

    def _user_path(self, rel: str) -> Optional[Path]:
        try:
            return safe_join(self.user_dir, rel)
        except PermissionError:
            return None

    def _rel(self, path: Path) -> str:
        return path.resolve().relative_to(self.user_dir.resolve()).as_posix()

    def _file_info(self, path: Path, base: Optional[Path] = None) -> dict:
        st = path.stat()
        rel = path.resolve().relative_to((base or self.user_dir).resolve()).as_posix()
        return {"path": rel, "size": st.st_size, "modified": int(st.st_mtime * 1000),
                "created": int(st.st_ctime * 1000)}

    def _list_userdata(self, request, v2: bool):
        q = request.rel_url.query
        directory = q.get("dir", q.get("path", ""))
        if not directory and not v2:
            return web.Response(status=400, text="Directory not provided")
        base = self._user_path(directory)
        if base is None:
            return web.Response(status=403, text="Invalid directory")
        if not base.is_dir():  # ComfyUI answers 404; an empty listing is as valid and logs no failed request
            return web.json_response([])
        if v2:
            out = []
            for p in sorted(base.iterdir()):
                st = p.stat()
                out.append({"name": p.name, "path": self._rel(p), "type": "directory" if p.is_dir() else "file",
                            "size": st.st_size if p.is_file() else None, "modified": st.st_mtime})
            return web.json_response(out)
        recurse = q.get("recurse", "").lower() == "true"
        full = q.get("full_info", "").lower() == "true"
        split = q.get("split", "").lower() == "true"
        files = sorted(p for p in (base.rglob("*") if recurse else base.glob("*")) if p.is_file())
        out = []
        for p in files:
            if full:
                out.append(self._file_info(p, base))
                continue
            rel = p.relative_to(base).as_posix()
            out.append([rel] + rel.split("/") if split else rel)
        return web.json_response(out)

    def _settings(self, defaults: bool = True) -> dict:
        path = self.user_dir / "comfy.settings.json"
        try:
            saved = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            saved = {}
        return {**DEFAULT_SETTINGS, **saved} if defaults else saved

    def _save_settings(self, settings: dict):
        _atomic_write(self.user_dir / "comfy.settings.json", json.dumps(settings, indent=4).encode())


# ------------------------------------------------------------------------------------------------ helpers

def _progress_entry(node, prompt_id, value, max_, state):
    return {"value": value, "max": max_, "state": state, "node_id": node, "prompt_id": prompt_id,
            "display_node_id": node, "parent_node_id": None, "real_node_id": node}


def _job_from_queue(item, status):
    extra = item[3] or {}
    wf = ((extra.get("extra_pnginfo") or {}).get("workflow") or {})
    job = {"id": item[1], "status": status, "priority": item[0], "create_time": extra.get("create_time", 0),
           "outputs_count": 0, "previewable_outputs_count": 0}
    if isinstance(wf, dict) and wf.get("id"):
        job["workflow_id"] = wf["id"]
    return job


def _job_from_history(pid, h, full=False):
    number, _, prompt, extra, _ = h["prompt"][:5]
    st = h.get("status") or {}
    status = "completed" if st.get("status_str", "success") == "success" else "failed"
    start = end = err = None
    for ev, data in st.get("messages", []):
        if not isinstance(data, dict):
            continue
        if ev == "execution_start":
            start = data.get("timestamp")
        elif ev in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if ev == "execution_error":
                err = data
            if ev == "execution_interrupted":
                status = "cancelled"
    count, preview = 0, None
    for nid, out in (h.get("outputs") or {}).items():
        for media, items in (out or {}).items():
            if media == "animated" or not isinstance(items, list):
                continue
            for it in items:
                if not isinstance(it, dict):
                    continue
                count += 1
                if media in ("images", "video", "audio") and (preview is None or
                                                              (it.get("type") == "output" and
                                                               preview.get("type") != "output")):
                    preview = {**it, "nodeId": nid, "mediaType": media}
    job = {"id": pid, "status": status, "priority": number, "create_time": (extra or {}).get("create_time", 0),
           "execution_start_time": start, "execution_end_time": end, "outputs_count": count,
           "previewable_outputs_count": count, "preview_output": preview}
    if err is not None:
        job["execution_error"] = {k: err.get(k) for k in ("prompt_id", "timestamp", "node_id", "node_type",
                                                          "executed", "exception_message", "exception_type",
                                                          "traceback", "current_inputs", "current_outputs")
                                  if err.get(k) is not None}
        job["execution_error"].setdefault("node_id", "")
        job["execution_error"].setdefault("node_type", "")
        job["execution_error"].setdefault("exception_message", "")
        job["execution_error"].setdefault("exception_type", "")
        job["execution_error"].setdefault("traceback", [])
    wf = ((extra or {}).get("extra_pnginfo") or {}).get("workflow")
    if isinstance(wf, dict) and wf.get("id"):
        job["workflow_id"] = wf["id"]
    if full:
        job["outputs"] = h.get("outputs") or {}
        job["execution_status"] = st
        job["workflow"] = {"prompt": prompt, "extra_data": extra}
    return job


def _json_default(o):
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def _json(obj, status=200):
    return web.Response(text=json.dumps(obj, default=_json_default), status=status, content_type="application/json")


async def _json_body(request) -> dict:
    try:
        data = await request.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _int(v, default):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _ascii(name: str) -> str:
    return name.encode("ascii", "replace").decode().replace('"', "_")


def _atomic_write(path: Path, data: bytes):
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _ram():
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total, vm.available
    except ImportError:
        try:
            info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
            kb = lambda k: int(info[k].strip().split()[0]) * 1024  # noqa: E731
            return kb("MemTotal"), kb("MemAvailable")
        except (OSError, KeyError, ValueError):
            return 0, 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"qwenimage {version('qwenimage')}"
    except Exception:  # noqa: BLE001
        return "qwenimage"


@web.middleware
async def _cache_control(request, handler):
    response = await handler(request)
    if request.path.endswith((".js", ".css", ".json")) or request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


@web.middleware
async def _origin_only(request, handler):
    """Refuse cross-site requests to a loopback server (a web page POSTing to 127.0.0.1), as ComfyUI does."""
    from urllib.parse import urlsplit

    origin, hostname = request.headers.get("Origin"), request.headers.get("Host")
    if origin and hostname and origin != "null":
        o, h = urlsplit(origin), urlsplit("//" + hostname)
        loop_host = (h.hostname or "") in ("localhost", "127.0.0.1", "::1") or (h.hostname or "").startswith("127.")
        if loop_host and (o.hostname, o.port or h.port) != (h.hostname, h.port or o.port):
            return web.Response(status=403)
    return await handler(request)


# ------------------------------------------------------------------------------------------------ running

def configure(models_dir=None, input_dir=None, output_dir=None, temp_dir=None):
    if models_dir:
        host.set_models_dir(models_dir)
    host.set_dirs(input=input_dir, output=output_dir, temp=temp_dir)
    for d in (host.input_dir(), host.output_dir(), host.temp_dir()):
        Path(d).mkdir(parents=True, exist_ok=True)


class ServerThread:
    """The server on a background thread (tests, notebooks): `with ServerThread(server) as url: ...`."""

    def __init__(self, server: PromptServer, host_: str = "127.0.0.1", port: int = 0):
        self.server, self.host, self.port = server, host_, port
        self.url = None
        self._ready = threading.Event()
        self._thread = None
        self._loop = None
        self._runner = None
        self._error = None

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="qwenimage-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        return self.url

    def _run(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

        async def go():
            self._runner = web.AppRunner(self.server.app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
            self.url = f"http://{self.host}:{port}"

        try:
            self._loop.run_until_complete(go())
        except Exception as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self):
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def serve(listen="127.0.0.1", port=8188, models_dir=None, input_dir=None, output_dir=None, temp_dir=None,
          user_dir="user", max_upload_mb=MAX_UPLOAD_MB):
    configure(models_dir, input_dir, output_dir, temp_dir)
    server = PromptServer(user_dir=user_dir, max_upload_mb=max_upload_mb)
    n_ours = len(server.mappings)
    shown = f"[{listen}]" if ":" in listen else listen
    print(f"qwenimage serve: {n_ours} node types; models from {host.models_dir().resolve()}; "
          f"outputs to {Path(host.output_dir()).resolve()}", flush=True)
    print(host.models_overview(), flush=True)
    print(f"To see the GUI go to: http://{shown}:{port}", flush=True)
    web.run_app(server.app, host=listen, port=port, access_log=None, print=None)


def cmd_serve(a) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    serve(a.listen, a.port, a.models_dir, a.input_dir, a.output_dir, a.temp_dir, a.user_dir, a.max_upload_size)
    return 0


def register_cli(sub) -> None:
    """Add `qwenimage serve` to the command line's sub-parsers."""
    p = sub.add_parser("serve", help="the graph editor: serve the ComfyUI frontend over this node pack",
                       description="Serve the official ComfyUI web frontend and the ComfyUI API over the Qwen-Image "
                                   "nodes. Models are read from --models-dir, laid out as in ComfyUI: "
                                   "diffusion_models/, text_encoders/, vae/, loras/ (and diffusers/ for model "
                                   "folders).")
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--models-dir", default=None,
                   help="ComfyUI-style models folder (default: $QWENIMAGE_MODELS_DIR or ./models)")
    p.add_argument("--input-dir", default=None, help="uploads and LoadImage files (default ./input)")
    p.add_argument("--output-dir", default=None, help="saved images (default ./output)")
    p.add_argument("--temp-dir", default=None, help="previews (default ./temp)")
    p.add_argument("--user-dir", default="user", help="settings and saved workflows (default ./user)")
    p.add_argument("--max-upload-size", type=float, default=MAX_UPLOAD_MB, help="in MB (default 100)")
    p.set_defaults(fn=cmd_serve)
