"""Small helpers the route modules share: JSON replies and bodies, query integers, header-safe names, atomic
writes, and the aiohttp key under which the app holds its PromptServer."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from aiohttp import web

SERVER = web.AppKey("qwenimage_server", object)


def server_of(request):
    """The PromptServer whose app answers `request`."""
    return request.app[SERVER]


def json_default(o):
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def json_reply(obj, status=200):
    return web.Response(text=json.dumps(obj, default=json_default), status=status, content_type="application/json")


async def json_body(request) -> dict:
    """The request's JSON object, or {} when the body is not a JSON object."""
    try:
        data = await request.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def to_int(v, default):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def ascii_name(name: str) -> str:
    """A file name safe inside a quoted Content-Disposition header."""
    return name.encode("ascii", "replace").decode().replace('"', "_")


def atomic_write(path: Path, data: bytes):
    """Write `data` to `path` through a temporary file in the same folder: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
