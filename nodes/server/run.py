"""Starting the server: folders, a background-thread server for tests and notebooks, and `qwenimage serve`."""
from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from aiohttp import web

from .. import host
from .app import MAX_UPLOAD_MB, PromptServer


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
    shown = f"[{listen}]" if ":" in listen else listen
    print(f"qwenimage serve: {len(server.mappings)} node types; models from {host.models_dir().resolve()}; "
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
