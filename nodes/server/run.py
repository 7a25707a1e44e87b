"""Starting the server: folders, a background-thread server for tests and notebooks, and `qwenimage serve`."""
from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from pathlib import Path

from aiohttp import web

from .. import host
from ..limits import Limits
from .app import MAX_UPLOAD_MB, WARM_IMPORTS, PromptServer
from .previews import SERVER_METHODS


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
          user_dir="user", max_upload_mb=MAX_UPLOAD_MB, preview_method="none", limits: Limits | None = None,
          allowed_origins=(), allowed_hosts=()):
    configure(models_dir, input_dir, output_dir, temp_dir)
    limits = limits or Limits()
    from PIL import Image

    # Pillow refuses (as a "decompression bomb") images over twice its own limit: ours is checked first
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limits.max_image_pixels)
    server = PromptServer(user_dir=user_dir, max_upload_mb=max_upload_mb, preview_method=preview_method,
                          limits=limits, allowed_origins=allowed_origins, allowed_hosts=allowed_hosts)
    server.warm_modules = WARM_IMPORTS  # imported while the user opens the page, not on the first Run
    shown = f"[{listen}]" if ":" in listen else listen
    print(f"qwenimage serve: {len(server.mappings)} node types; models from {host.models_dir().resolve()}; "
          f"outputs to {Path(host.output_dir()).resolve()}", flush=True)
    print(host.models_overview(), flush=True)
    print(f"To see the GUI go to: http://{shown}:{port}", flush=True)
    web.run_app(server.app, host=listen, port=port, access_log=None, print=None)


def cmd_serve(a) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    limits = Limits(max_image_pixels=a.max_image_pixels, max_latent_pixels=a.max_latent_pixels,
                    max_cache_mb=a.max_cache_mb)
    serve(a.listen, a.port, a.models_dir, a.input_dir, a.output_dir, a.temp_dir, a.user_dir, a.max_upload_size,
          a.preview_method, limits, a.allow_origin, a.allow_host)
    return 0


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive finite number")
        return value
    parse.__name__ = kind.__name__
    return parse


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:  # the bind would fail with an OverflowError traceback
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def register_cli(sub) -> None:
    """Add `qwenimage serve` to the command line's sub-parsers."""
    p = sub.add_parser("serve", help="the graph editor: serve the ComfyUI frontend over this node pack",
                       description="Serve the official ComfyUI web frontend and the ComfyUI API over the Qwen-Image "
                                   "nodes. Models are read from --models-dir, laid out as in ComfyUI: "
                                   "diffusion_models/, text_encoders/, vae/, loras/ (and diffusers/ for model "
                                   "folders).")
    p.add_argument("--listen", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=_port, default=8188, help="TCP port, 1-65535 (default 8188)")
    p.add_argument("--models-dir", default=None,
                   help="ComfyUI-style models folder (default: $QWENIMAGE_MODELS_DIR or ./models)")
    p.add_argument("--input-dir", default=None, help="uploads and LoadImage files (default ./input)")
    p.add_argument("--output-dir", default=None, help="saved images (default ./output)")
    p.add_argument("--temp-dir", default=None, help="previews (default ./temp)")
    p.add_argument("--user-dir", default="user", help="settings and saved workflows (default ./user)")
    p.add_argument("--max-upload-size", type=_positive(float), default=MAX_UPLOAD_MB, help="in MB (default 100)")
    p.add_argument("--preview-method", choices=SERVER_METHODS, default="none",
                   help="live sampler previews sent to the editor: none (default, as ComfyUI), auto or latent2rgb "
                        "(both: the latent preview); a prompt's extra_data.preview_method (the frontend's "
                        "'Live preview method' setting) overrides it")
    d = Limits()
    p.add_argument("--max-image-pixels", type=_positive(int), default=d.max_image_pixels,
                   help=f"largest image (width x height; a file's frames together) uploaded, loaded or made "
                        f"(default {d.max_image_pixels} = 8192 x 4096)")
    p.add_argument("--max-latent-pixels", type=_positive(int), default=d.max_latent_pixels,
                   help=f"largest latent batch, in image pixels: width x height x batch "
                        f"(default {d.max_latent_pixels} = 4 x 2048 x 2048)")
    p.add_argument("--max-cache-mb", type=_positive(float), default=d.max_cache_mb,
                   help=f"tensors the output cache keeps between runs, largest dropped first "
                        f"(default {d.max_cache_mb:g}; loaded models are not counted)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="also accept browser requests from this origin (e.g. a reverse proxy's https://host); "
                        "repeatable. Others than the server's own are refused")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also accept this Host name when listening on loopback (others are refused against "
                        "DNS rebinding); repeatable")
    p.set_defaults(fn=cmd_serve)
