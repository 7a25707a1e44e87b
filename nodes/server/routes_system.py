"""Routes of the frontend and of what the server offers: the page and its static files' lists (extensions,
templates, i18n), node definitions (/object_info), models, features and system stats, and the /internal routes
the frontend's panels read.

Two lists other parts extend: `PromptServer.extension_dirs` (pack name -> folder of JS extensions, served at
/extensions/<pack>/... and listed by /extensions, as ComfyUI serves a node pack's WEB_DIRECTORY) and
`PromptServer.template_dirs` (module -> folder of UI-format workflows for the template browser; the
TEMPLATES_MODULE folder, the shipped workflows, is served as ComfyUI's core template index, the others as packs')."""
from __future__ import annotations

import json
import logging
import os
import re
import struct
import sys
import traceback
from pathlib import Path

from aiohttp import web

from .. import host
from .replies import json_reply, server_of
from .routes_files import safe_join

log = logging.getLogger("qwenimage.server")
routes = web.RouteTableDef()

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent.parent / "workflows"
TEMPLATES_MODULE = "Qwen-Image"
FIRST_TEMPLATES: tuple = ("demo",)  # template names shown first in the browser, in this order; the rest by name


def example_workflows(folder: Path = WORKFLOWS_DIR) -> list[str]:
    """The UI-format workflows of a folder (*.json; the API-format twins live in api/), by name, FIRST_TEMPLATES
    first."""
    if not folder.is_dir():
        return []
    names = sorted(p.stem for p in folder.glob("*.json"))
    first = [n for n in FIRST_TEMPLATES if n in names]
    return first + [n for n in names if n not in first]


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
    for flag in ("deprecated", "experimental", "api_node"):
        if getattr(cls, flag.upper(), False):
            info[flag] = True
    return info


# ---- the page

@routes.get("/")
async def root(request):
    return web.FileResponse(server_of(request).web_root / "index.html",
                            headers={"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})


@routes.get("/user.css")
async def user_css(request):  # index.html links it; ComfyUI answers 404 when absent, we answer empty
    return web.Response(text="", content_type="text/css")


@routes.get("/extensions")
async def extensions(request):
    """Every extension script the page should load: the frontend's own and each pack's."""
    s = server_of(request)
    own = s.web_root / "extensions"
    out = ["/" + p.relative_to(s.web_root).as_posix() for p in sorted(own.rglob("*.js"))] if own.is_dir() else []
    for pack, folder in s.extension_dirs.items():
        if Path(folder).is_dir():
            scripts = sorted(Path(folder).rglob("*.js"))
            out += [f"/extensions/{pack}/" + p.relative_to(folder).as_posix() for p in scripts]
    return web.json_response(out)


@routes.get("/extensions/{pack}/{path:.+}")
async def extension_file(request):
    """A file of a pack's extension folder, else of the frontend's own extensions/ (its core scripts)."""
    s = server_of(request)
    pack, rel = request.match_info["pack"], request.match_info["path"]
    folder = s.extension_dirs.get(pack)
    try:
        path = safe_join(folder, rel) if folder is not None else safe_join(s.web_root / "extensions", pack, rel)
    except PermissionError:
        return web.Response(status=403)
    return web.FileResponse(path) if path.is_file() else web.Response(status=404)


@routes.get("/i18n")
async def i18n(request):
    return web.json_response({})


def template_entry(folder: Path, name: str) -> dict:
    """A card of the core template index: the title and one-line description the workflow keeps in
    extra.template (scripts/make_workflows.py writes them), else its file name."""
    try:
        with open(Path(folder) / f"{name}.json", encoding="utf-8") as f:
            meta = (json.load(f).get("extra") or {}).get("template") or {}
    except (OSError, ValueError, AttributeError):
        meta = {}
    title = meta.get("title") if isinstance(meta.get("title"), str) else name
    description = meta.get("description") if isinstance(meta.get("description"), str) else title
    return {"name": name, "title": title, "description": description, "mediaType": "image", "mediaSubtype": "jpg"}


def template_index(folder: Path) -> list:
    """/templates/index.json as ComfyUI's comfyui-workflow-templates package writes it: one category of the
    "default" module (whose cards the frontend titles by their `title`; a pack's only by file name)."""
    names = example_workflows(Path(folder))
    return [{"moduleName": "default", "title": TEMPLATES_MODULE, "type": "image", "isEssential": True,
             "templates": [template_entry(folder, n) for n in names]}] if names else []


@routes.get("/templates/{name}")
async def templates(request):
    """What ComfyUI serves from the comfyui-workflow-templates package: the core index (ours: the shipped
    workflows, in every locale), each template's graph <name>.json and its thumbnail <name>-1.jpg."""
    folder = server_of(request).template_dirs.get(TEMPLATES_MODULE)
    name = request.match_info["name"]
    if re.fullmatch(r"index(\.[A-Za-z_-]+)?\.json", name):
        return web.json_response(template_index(folder) if folder is not None else [])
    if name == "index_logo.json":
        return web.json_response({})
    m = re.fullmatch(r"(.+?)(?:\.json|-1\.jpg)", name)
    if folder is None or m is None or m[1] not in example_workflows(Path(folder)):
        return web.Response(status=404)
    path = Path(folder) / (m[1] + (".json" if name.endswith(".json") else ".jpg"))
    return web.FileResponse(path) if path.is_file() else web.Response(status=404)


@routes.get("/workflow_templates")
async def workflow_templates(request):
    # as ComfyUI lists a custom node pack's example workflows; ours are the core index above (titled cards), so
    # they are not listed twice
    out = {m: example_workflows(Path(d)) for m, d in server_of(request).template_dirs.items() if m != TEMPLATES_MODULE}
    return web.json_response({m: names for m, names in out.items() if names})


@routes.get("/workflow_templates/{module}/{name}")
async def workflow_template(request):
    folder = server_of(request).template_dirs.get(request.match_info["module"])
    name = request.match_info["name"]
    stem, dot, ext = name.rpartition(".")
    # a template's graph, or its card's thumbnail (<name>.jpg beside it, as ComfyUI serves a pack's templates)
    if folder is None or ext not in ("json", "jpg") or stem not in example_workflows(Path(folder)) \
            or not (Path(folder) / name).is_file():
        return web.Response(status=404)
    return web.FileResponse(Path(folder) / name)


@routes.get("/global_subgraphs")
async def global_subgraphs(request):
    return web.json_response({})


@routes.get("/global_subgraphs/{id}")
async def global_subgraph(request):
    return web.json_response({"error": "not found"}, status=404)


@routes.get("/node_replacements")
async def node_replacements(request):
    return web.json_response({})


# ---- nodes

@routes.get("/object_info")
async def object_info(request):
    s = server_of(request)
    out = {}
    for name, cls in s.mappings.items():
        try:
            out[name] = node_info(name, cls, s.display_names)
        except Exception:  # noqa: BLE001
            log.error("object_info failed for %s:\n%s", name, traceback.format_exc())
    return json_reply(out)


@routes.get("/object_info/{node_class}")
async def object_info_one(request):
    s = server_of(request)
    name = request.match_info["node_class"]
    cls = s.mappings.get(name)
    return json_reply({name: node_info(name, cls, s.display_names)} if cls else {})


@routes.get("/embeddings")
async def embeddings(request):
    return web.json_response([])


# ---- models

@routes.get("/models")
async def model_types(request):
    return web.json_response(list(host.MODEL_KINDS))


@routes.get("/models/{folder}")
async def models_in(request):
    try:
        return web.json_response(host.list_models(request.match_info["folder"]))
    except ValueError:
        return web.Response(status=404)


def _model_folders(kind) -> list[str]:
    try:
        return [str(p) for p in host._folders(kind)]  # noqa: SLF001
    except Exception:  # noqa: BLE001
        return [str(host.models_dir() / kind)]


@routes.get("/experiment/models")
async def experiment_models(request):
    return web.json_response([{"name": k, "folders": _model_folders(k)} for k in host.MODEL_KINDS])


@routes.get("/experiment/models/{folder}")
async def experiment_models_in(request):
    try:
        names = host.list_models(request.match_info["folder"])
    except ValueError:
        return web.Response(status=404)
    return web.json_response([{"name": n, "pathIndex": 0} for n in names])


@routes.get("/experiment/models/preview/{folder}/{path_index}/{filename:.*}")
async def model_preview(request):
    return web.Response(status=404)


@routes.get("/view_metadata/{folder}")
async def view_metadata(request):
    """The `__metadata__` of a model file's safetensors header."""
    filename = request.rel_url.query.get("filename", "")
    if not filename.endswith(".safetensors"):
        return web.Response(status=404)
    try:
        path = host.model_path(request.match_info["folder"], filename)
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 64 << 20:
                return web.Response(status=404)
            header = json.loads(f.read(n))
    except (FileNotFoundError, ValueError, OSError, struct.error):
        return web.Response(status=404)
    if not isinstance(header, dict) or "__metadata__" not in header:
        return web.Response(status=404)
    return web.json_response(header["__metadata__"])


@routes.get("/internal/folder_paths")
async def internal_folder_paths(request):
    return web.json_response({k: [_model_folders(k), []] for k in host.MODEL_KINDS})


# ---- the system

@routes.get("/features")
async def features(request):
    return web.json_response(server_of(request).feature_flags())


@routes.get("/system_stats")
async def system_stats(request):
    import torch

    ram_total, ram_free = _ram()
    return web.json_response({
        "system": {"os": os.name if os.name != "posix" else sys.platform, "ram_total": ram_total,
                   "ram_free": ram_free, "comfyui_version": _version(),
                   "required_frontend_version": frontend_version(),
                   "installed_templates_version": None, "required_templates_version": None,
                   "python_version": sys.version, "pytorch_version": torch.__version__,
                   "embedded_python": False, "argv": sys.argv},
        "devices": [host.vram_stats()],
    })


@routes.get("/internal/logs")
async def internal_logs(request):
    return web.json_response("")


@routes.get("/internal/logs/raw")
async def internal_logs_raw(request):
    return web.json_response({"entries": [], "size": {"cols": 80, "rows": 24}})


@routes.patch("/internal/logs/subscribe")
async def internal_logs_subscribe(request):
    return web.Response(status=200)


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
