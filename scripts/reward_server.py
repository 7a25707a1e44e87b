"""A reference reward server for the `http` reward (training/rewards/http.py): serves any scorer of the registry,
or any `module:function`, over HTTP with the standard library.

    python scripts/reward_server.py --scorer ocr --port 18085
    python scripts/reward_server.py --scorer mypackage.rewards:aesthetic --options '{"device": "cuda"}'

POST / with JSON {"prompts": [...], "images": [base64 PNG], "metadata": [...]} -> {"scores": [...]};
a bad request -> 400 {"error": ...}; a failing scorer -> 500 {"error": ...}. With --port 0 a free port is
chosen; the first line printed is "listening on http://HOST:PORT"."""
from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from qwenimage.training.rewards import build, score
from qwenimage.training.rewards.http import decode_png


def make_handler(name, fn, lock):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompts, images = request["prompts"], [decode_png(x) for x in request["images"]]
                metadata = request.get("metadata") or [{} for _ in images]
            except Exception as e:  # anything malformed is the client's error, named
                return self._answer(400, {"error": f"bad request: {type(e).__name__}: {e}"})
            try:
                with lock:  # one batch at a time: scorers hold one model
                    values = score(name, fn, images, prompts, metadata)
            except Exception as e:
                return self._answer(500, {"error": str(e)})
            self._answer(200, {"scores": values})

        def log_message(self, format, *args):  # quiet; errors go back to the client
            pass

    return Handler


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scorer", required=True, help="a registered scorer name or module:function")
    p.add_argument("--options", default="{}", help="the scorer's options as a JSON object")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18085, help="0 picks a free port")
    args = p.parse_args(argv)
    name, fn = build({"name": args.scorer, **json.loads(args.options)})
    server = ThreadingHTTPServer((args.host, args.port), make_handler(name, fn, threading.Lock()))
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv[1:])
