"""`qwenimage serve`: our own small ComfyUI-compatible server.

It serves the official ComfyUI web frontend (the `comfyui-frontend-package` wheel's static files) and speaks the
ComfyUI HTTP and websocket API over this node pack plus stand-ins for the few ComfyUI built-in nodes our workflows
use (nodes/builtins.py), so the same frontend, workflow files and API clients work against ComfyUI or us.

Every route is served both at `/route` and at `/api/route`, as ComfyUI does. Prompts are validated on arrival
(ComfyUI's error format, nothing queued on error) and run one at a time by a worker thread (nodes/execution.py),
so the event loop stays responsive: interrupts, queue views and websocket progress work during a run.

Where things are:
  app.py            PromptServer: state, websocket messages, the worker thread, the app from the route modules,
                    the start-up sweep of temporaries an interrupted save left
  routes_prompt.py  /ws, /prompt, /queue, /interrupt, /free, /history, /jobs
  routes_files.py   /upload/image, /upload/mask, /view, /internal/files (names sanitised, paths confined)
  routes_user.py    /users, /settings, /userdata (the user folder, `--user-dir`, files under default/)
  routes_system.py  the page, /extensions, templates, /object_info, models, /features, /system_stats, /internal
  guards.py         middlewares: cache headers, refusal of cross-site and DNS-rebinding requests
  replies.py        strict JSON bodies (BadRequest -> its 4xx/507 and reason), JSON replies, atomic writes
  queue.py          the prompt queue and the API views of its items (queue, history, jobs)
  previews.py       live previews as binary websocket frames, only when --preview-method or the prompt asks
  run.py            configure(), ServerThread (tests, notebooks), serve() and the `serve` command line
The pixel and cache limits (--max-image-pixels, --max-latent-pixels, --max-cache-mb) are nodes/limits.py: the
nodes and the validator check them too.
"""
from .app import MAX_UPLOAD_MB, PromptServer, default_mappings
from .previews import PREVIEW_MAX, BinaryEventTypes
from .queue import MAX_HISTORY, PromptQueue
from .routes_files import dir_by_type, safe_join, sanitize_filename, split_annotated
from .routes_system import TEMPLATES_MODULE, WORKFLOWS_DIR, example_workflows, frontend_root, node_info
from .routes_user import DEFAULT_SETTINGS
from .run import ServerThread, cmd_serve, configure, register_cli, serve

__all__ = ["PromptServer", "ServerThread", "configure", "serve", "cmd_serve", "register_cli", "default_mappings",
           "node_info", "frontend_root", "example_workflows", "sanitize_filename", "safe_join", "dir_by_type",
           "split_annotated", "PromptQueue", "BinaryEventTypes", "DEFAULT_SETTINGS", "MAX_UPLOAD_MB",
           "MAX_HISTORY", "PREVIEW_MAX", "TEMPLATES_MODULE", "WORKFLOWS_DIR"]
