"""Middlewares every request passes: cache headers, and the refusal of cross-site requests."""
from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web


@web.middleware
async def cache_control(request, handler):
    response = await handler(request)
    if request.path.endswith((".js", ".css", ".json")) or request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


@web.middleware
async def origin_only(request, handler):
    """Refuse cross-site requests to a loopback server (a web page POSTing to 127.0.0.1), as ComfyUI does."""
    origin, hostname = request.headers.get("Origin"), request.headers.get("Host")
    if origin and hostname and origin != "null":
        o, h = urlsplit(origin), urlsplit("//" + hostname)
        loop_host = (h.hostname or "") in ("localhost", "127.0.0.1", "::1") or (h.hostname or "").startswith("127.")
        if loop_host and (o.hostname, o.port or h.port) != (h.hostname, h.port or o.port):
            return web.Response(status=403)
    return await handler(request)
