"""The editor's first screen in `qwenimage serve`: which graph a browser with no saved workflow opens on.

The frontend opens its built-in default graph (ComfyUI's own nodes, none of which this server has) for a new
browser and for "Load Default Workflow". Our JS extension (web/first_screen.js, served as the pack "qwenimage" at
/extensions/qwenimage/, listed by /extensions) swaps in the graph GET /qwenimage/first_screen names: the demo
workflow when its model files are present, else text-to-image with a note saying where the model files go. It
also names the node types a loaded workflow uses that this server lacks. Inside ComfyUI none of this is served
(the root __init__ declares no WEB_DIRECTORY), so ComfyUI's own default graph stays there."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

from aiohttp import web

from .. import host
from ..execution import validate_prompt
from .replies import json_reply, server_of
from .routes_system import TEMPLATES_MODULE, WORKFLOWS_DIR

routes = web.RouteTableDef()

PACK = "qwenimage"
WEB_DIR = Path(__file__).resolve().parent / "web"
DEMO, FALLBACK = "demo", "text_to_image"
# loader inputs that name a model file, as ComfyUI's loaders call them, and the folder each file goes in
FILE_INPUTS = {"unet_name": "diffusion_models", "clip_name": "text_encoders", "vae_name": "vae"}


def _read(folder: Path, name: str) -> Optional[dict]:
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def missing_files(api_prompt: dict) -> list[tuple[str, str]]:
    """(folder, file) for each model file an API-format workflow's loaders name that the models folders lack."""
    out = []
    for node in api_prompt.values():
        for name, value in (node.get("inputs") or {}).items():
            kind = FILE_INPUTS.get(name)
            if kind and isinstance(value, str) and value not in host.list_models(kind) \
                    and (kind, value) not in out:
                out.append((kind, value))
    return out


def where_files_go(missing: list[tuple[str, str]]) -> str:
    """The note's text: the folder (this server's, in full) and file for each missing model file."""
    root = host.models_dir().resolve()
    lines = [f"Qwen-Image's model files are not here yet. Put them in {root}:"]
    lines += [f"- {kind}/{name}" for kind, name in missing]
    lines += ["(from the Comfy-Org/Qwen-Image_ComfyUI repository on Hugging Face, split_files/<folder>/). "
              "Then press R to refresh the file lists, and Run.",
              "Official settings: 50 steps, true CFG 4, the dynamic shift."]
    return "\n".join(lines)


def _with_note(workflow: dict, text: str) -> dict:
    """The workflow with `text` in its Note node (one is added above the graph when it has none)."""
    wf = copy.deepcopy(workflow)
    note = next((n for n in wf["nodes"] if n.get("type") == "Note"), None)
    if note is None:
        top = min((n["pos"][1] for n in wf["nodes"]), default=0)
        left = min((n["pos"][0] for n in wf["nodes"]), default=0)
        nid = max((n["id"] for n in wf["nodes"]), default=0) + 1
        note = {"id": nid, "type": "Note", "pos": [left, top - 260], "size": [520, 200], "flags": {},
                "order": len(wf["nodes"]), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "color": "#432", "bgcolor": "#653"}
        wf["nodes"].append(note)
        wf["last_node_id"] = max(wf.get("last_node_id", 0), nid)
    note["widgets_values"] = [text]
    return wf


def first_workflow(mappings: dict, folder: Path) -> tuple[str, Optional[dict]]:
    """(name, UI-format graph) for a new browser: the demo when its API twin validates here (its model files
    are present), else text-to-image, its note naming the files it lacks and where they go. The graph keeps
    its saved view; the extension fits it to the window it opens in."""
    demo, demo_api = _read(folder, DEMO), _read(folder / "api", DEMO)
    if demo is not None and demo_api is not None and validate_prompt(demo_api, mappings).ok:
        return DEMO, demo
    wf, api = _read(folder, FALLBACK), _read(folder / "api", FALLBACK)
    if wf is None:
        return FALLBACK, None
    missing = missing_files(api or {})
    return FALLBACK, _with_note(wf, where_files_go(missing)) if missing else wf


@routes.get("/qwenimage/first_screen")
async def first_screen(request):
    """{"name", "workflow"}: the graph the extension opens instead of the frontend's built-in default."""
    s = server_of(request)
    folder = Path(s.template_dirs.get(TEMPLATES_MODULE, WORKFLOWS_DIR))
    name, wf = first_workflow(s.mappings, folder)
    if wf is None:
        return json_reply({"error": f"no {name}.json in {folder}"}, status=404)
    return json_reply({"name": name, "workflow": wf})
