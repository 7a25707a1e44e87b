"""Routes of the user folder (`--user-dir`, files under default/): /users, /settings and /userdata."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from aiohttp import web

from .replies import (INERT_HEADERS, BadRequest, ascii_name, atomic_write, json_body, read_json, server_of,
                      write_refused)
from .routes_files import MAX_NAME_BYTES, safe_join

log = logging.getLogger("qwenimage.server")
routes = web.RouteTableDef()

# Settings the server answers until the user saves their own: this is not ComfyUI, so the frontend should not
# ask api.comfy.org whether a newer ComfyUI exists, nor open its template browser on first start.
DEFAULT_SETTINGS = {"Comfy.Notification.ShowVersionUpdates": False, "Comfy.TutorialCompleted": True,
                    # no node packs can be installed here: first_screen.js names the missing types instead
                    "Comfy.Workflow.ShowMissingNodesWarning": False}
SETTINGS_FILE = "comfy.settings.json"
USER_TYPES = {".json": "application/json", ".css": "text/css", ".txt": "text/plain; charset=utf-8"}


def user_dir(s) -> Path:
    return s.user_root / "default"


def user_path(s, rel: str) -> Optional[Path]:
    """user_dir/rel, or None when rel leaves the folder or a name in it is too long for a file system."""
    if any(len(part.encode()) > MAX_NAME_BYTES for part in rel.replace("\\", "/").split("/")):
        return None
    try:
        return safe_join(user_dir(s), rel)
    except PermissionError:
        return None


def file_path(s, rel: str) -> Path:
    """user_dir/rel for a file to write: BadRequest when rel leaves the folder or names a folder."""
    if rel.replace("\\", "/").rsplit("/", 1)[-1] in ("", ".", ".."):  # "folder/" would write a file "folder"
        raise BadRequest(f"invalid path {rel[:100]!r}: it names a folder, not a file")
    path = user_path(s, rel)
    if path is None:
        raise BadRequest(f"invalid path {rel[:100]!r}: it leaves the user folder or a name is longer than "
                         f"{MAX_NAME_BYTES} bytes")
    if same_path(path, user_dir(s)) or path.is_dir():
        raise BadRequest(f"invalid path {rel!r}: a folder, not a file name")
    return path


def write_file(path: Path, data: bytes, what: str):
    """Write a user file atomically; a path the file system refuses (a file where a folder should be) or a full
    disk is a BadRequest naming it."""
    try:
        atomic_write(path, data)
    except OSError as e:
        raise write_refused(e, what) from None


def rel_name(s, path: Path) -> str:
    return path.resolve().relative_to(user_dir(s).resolve()).as_posix()


def file_info(path: Path, base: Path) -> dict:
    st = path.stat()
    return {"path": path.resolve().relative_to(base.resolve()).as_posix(), "size": st.st_size,
            "modified": int(st.st_mtime * 1000), "created": int(st.st_ctime * 1000)}


def same_path(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


# ---- users

@routes.get("/users")
async def users(request):
    return web.json_response({"storage": "server", "migrated": True})


@routes.post("/users")
async def create_user(request):
    return web.json_response({"error": "multi-user mode is not supported"}, status=400)


# ---- settings

def load_settings(s, defaults: bool = True) -> dict:
    """The saved settings (an object; a file holding anything else, or broken, counts as none saved)."""
    path = user_dir(s) / SETTINGS_FILE
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, ValueError, OSError):
        saved = {}
    if not isinstance(saved, dict):
        log.warning("%s holds %s, not an object of settings: ignored", path, type(saved).__name__)
        saved = {}
    return {**DEFAULT_SETTINGS, **saved} if defaults else saved


def save_settings(s, settings: dict):
    write_file(user_dir(s) / SETTINGS_FILE, json.dumps(settings, indent=4).encode(), "the settings")


@routes.get("/settings")
async def settings(request):
    return web.json_response(load_settings(server_of(request)))


@routes.post("/settings")
async def post_settings(request):
    s = server_of(request)
    data = await json_body(request)
    cur = load_settings(s, defaults=False)
    cur.update(data)
    save_settings(s, cur)
    return web.Response(status=200)


@routes.get("/settings/{id}")
async def setting(request):
    return web.json_response(load_settings(server_of(request)).get(request.match_info["id"]))


@routes.post("/settings/{id}")
async def post_setting(request):
    s = server_of(request)
    value = await read_json(request)
    cur = load_settings(s, defaults=False)
    cur[request.match_info["id"]] = value
    save_settings(s, cur)
    return web.Response(status=200)


# ---- user data

def _list_userdata(request, v2: bool):
    s = server_of(request)
    q = request.rel_url.query
    directory = q.get("dir", q.get("path", ""))
    if not directory and not v2:
        return web.Response(status=400, text="Directory not provided")
    base = user_path(s, directory)
    if base is None:
        return web.Response(status=403, text="Invalid directory")
    if not base.is_dir():  # ComfyUI answers 404; an empty listing is as valid and logs no failed request
        return web.json_response([])
    if v2:
        out = []
        for p in sorted(base.iterdir()):
            st = p.stat()
            out.append({"name": p.name, "path": rel_name(s, p), "type": "directory" if p.is_dir() else "file",
                        "size": st.st_size if p.is_file() else None, "modified": st.st_mtime})
        return web.json_response(out)
    recurse = q.get("recurse", "").lower() == "true"
    full = q.get("full_info", "").lower() == "true"
    split = q.get("split", "").lower() == "true"
    files = sorted(p for p in (base.rglob("*") if recurse else base.glob("*")) if p.is_file())
    out = []
    for p in files:
        if full:
            out.append(file_info(p, base))
            continue
        rel = p.relative_to(base).as_posix()
        out.append([rel] + rel.split("/") if split else rel)
    return web.json_response(out)


@routes.get("/userdata")
async def list_userdata(request):
    return _list_userdata(request, v2=False)


@routes.get("/v2/userdata")
async def list_userdata_v2(request):
    return _list_userdata(request, v2=True)


@routes.get("/userdata/{file}")
async def get_userdata(request):
    s = server_of(request)
    path = user_path(s, request.match_info["file"])
    if path is None:
        return web.Response(status=400, text="invalid path")
    if not path.is_file():
        # files the frontend reads at start: answer their empty content rather than 404
        if path.name == "user.css":
            return web.Response(text="", content_type="text/css")
        if same_path(path, user_dir(s) / "comfy.templates.json"):
            return web.json_response([])
        return web.Response(status=404)
    # a user file is the frontend's data, never a page: an .html or .svg saved here must not run on this origin
    ctype = USER_TYPES.get(path.suffix.lower())
    headers = {**INERT_HEADERS, "Content-Type": ctype or "application/octet-stream"}
    if ctype is None:
        headers["Content-Disposition"] = f'attachment; filename="{ascii_name(path.name)}"'
    return web.FileResponse(path, headers=headers)


@routes.post("/userdata/{file}")
async def post_userdata(request):
    s = server_of(request)
    path = file_path(s, request.match_info["file"])
    q = request.rel_url.query
    overwrite = q.get("overwrite", "true") != "false"
    if path.exists() and not overwrite:
        return web.Response(status=409, text="File already exists")
    body = await request.read()
    write_file(path, body, repr(request.match_info["file"][:100]))
    return web.json_response(file_info(path, user_dir(s)) if q.get("full_info", "false").lower() == "true"
                             else rel_name(s, path))


@routes.delete("/userdata/{file}")
async def delete_userdata(request):
    path = user_path(server_of(request), request.match_info["file"])
    if path is None:
        return web.Response(status=400, text="invalid path")
    if not path.is_file():
        return web.Response(status=404)
    path.unlink()
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}")
async def move_userdata(request):
    s = server_of(request)
    src = user_path(s, request.match_info["file"])
    dst = file_path(s, request.match_info["dest"])
    if src is None:
        return web.Response(status=400, text="invalid path")
    if not src.is_file():
        return web.Response(status=404)
    overwrite = request.rel_url.query.get("overwrite", "true") != "false"
    if dst.exists() and not overwrite:
        return web.Response(status=409, text="File already exists")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    except OSError as e:
        raise write_refused(e, repr(request.match_info["dest"][:100])) from None
    return web.json_response(file_info(dst, user_dir(s)) if request.rel_url.query.get("full_info", "false") == "true"
                             else rel_name(s, dst))
