"""Small helpers the route modules share: JSON replies and bodies, query integers, header-safe names, atomic
writes, and the aiohttp key under which the app holds its PromptServer."""
from __future__ import annotations

import errno
import json
import math
from pathlib import Path

from aiohttp import web

from ...qwenimage_core.images import write_atomic
from ...qwenimage_core.weights import json_depth_ok

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


MAX_JSON_DEPTH = 64  # a real workflow nests a few levels; 1000 levels broke every later /history reply


class BadRequest(ValueError):
    """A request the server refuses with this message and `status` (400 unless said)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# what a failed write says to the client: the disk is full (507), or the name it asked for cannot exist (400)
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_BAD_NAME = {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EINVAL, errno.EILSEQ}


def write_refused(e: OSError, what: str) -> BadRequest:
    """The BadRequest for an OSError writing `what`: 507 for a full disk, 400 for a name the file system
    refuses, else 500, each with the reason rather than a bare 500."""
    reason = e.strerror or str(e)
    if e.errno in _FULL:
        return BadRequest(f"cannot write {what}: the server's disk is full ({reason}); nothing was changed", 507)
    if e.errno in _BAD_NAME:
        return BadRequest(f"cannot write {what}: {reason}")
    return BadRequest(f"cannot write {what}: {reason}", 500)


def _refuse_constant(name):
    raise BadRequest(f"{name} is not JSON (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 reads as inf
        raise BadRequest(f"{text[:30]} is not a finite number")
    return value


def parse_json(text: str):
    """Strict JSON: NaN and Infinity, and nesting deeper than MAX_JSON_DEPTH, are BadRequests."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except BadRequest:
        raise
    except ValueError as e:
        raise BadRequest(f"body is not JSON: {e}") from None
    if not json_depth_ok(value, MAX_JSON_DEPTH):
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return value


async def read_json(request, empty=None):
    """The request's body as strict JSON (`empty` for an empty body); BadRequest when it is not."""
    try:
        text = await request.text()
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 text") from None
    return empty if not text.strip() else parse_json(text)


async def json_body(request) -> dict:
    """The request's JSON object ({} for an empty body); BadRequest when it is anything else."""
    data = await read_json(request, empty={})
    if not isinstance(data, dict):
        raise BadRequest(f"expected a JSON object, got {type(data).__name__}")
    return data


def id_list(data: dict, *keys) -> list[str]:
    """The list of string ids under the first of `keys` present ([] if none); BadRequest for another shape."""
    for key in keys:
        if data.get(key) is not None:
            ids = data[key]
            if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
                raise BadRequest(f"{key!r} must be a list of id strings")
            return ids
    return []


@web.middleware
async def bad_requests(request, handler):
    """A BadRequest raised anywhere in a handler is answered with its status and message."""
    try:
        return await handler(request)
    except BadRequest as e:
        return web.json_response({"error": {"type": "bad_request", "message": str(e), "details": str(e),
                                            "extra_info": {}}, "node_errors": {}}, status=e.status)


def to_int(v, default):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


# on files served back (/view, /userdata): the browser guesses no type, and nothing in them may run or load
INERT_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}


def ascii_name(name: str) -> str:
    """A file name safe inside a quoted Content-Disposition header."""
    return name.encode("ascii", "replace").decode().replace('"', "_")


atomic_write = write_atomic   # the usual mode (0666 less the umask), not mkstemp's 0600
