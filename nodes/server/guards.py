"""Middlewares every request passes: cache headers, and the refusal of requests a web page made for another site.

A browser lets any page send requests to 127.0.0.1: a form or fetch() from a foreign site, a sandboxed iframe or
a `file://` page (which say `Origin: null`), or a foreign site whose name the attacker re-points at 127.0.0.1
after the page has loaded (DNS rebinding: the Host header then names the foreign site). So, beyond what ComfyUI
checks:

- a request whose Origin is `null` or another site than the one the Host header names is refused (403), on any
  address the server listens on; `--allow-origin` adds origins (a reverse proxy's public address);
- a request that acts (not GET/HEAD/OPTIONS, or a websocket) is refused the same way when a browser sent no
  Origin but a foreign Referer, or marks it `Sec-Fetch-Site: cross-site` or `same-site` (a link followed from
  another site still opens the page);
- on a loopback address, the Host header must name a loopback host (localhost, 127.x.x.x, ::1) or an
  `--allow-host`: that defeats DNS rebinding, whose requests carry the foreign name;
- a malformed Origin, Referer or Host header is a 400 naming the header.

Clients that are not browsers (scripts, API clients) send no Origin and are not affected. The Content-Type of a
JSON body is not checked: the official frontend itself posts settings as text/plain and ComfyUI's example
scripts post form-encoded JSON, and a foreign page's request is already refused by its Origin."""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from .replies import server_of

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@web.middleware
async def cache_control(request, handler):
    response = await handler(request)
    if request.path.endswith((".js", ".css", ".json")) or request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_port(value: str, header: str, scheme: str = "http"):
    """(hostname, port) of a Host header or an origin URL; ValueError naming the header when malformed."""
    try:
        parts = urlsplit(value if "//" in value else "//" + value)
        host, port = parts.hostname, parts.port  # .port raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"malformed {header} header {value[:100]!r}: {e}") from None
    if not host:
        raise ValueError(f"malformed {header} header {value[:100]!r}: no host name")
    return host.lower(), port or DEFAULT_PORTS.get(parts.scheme or scheme, 80)


def check_request(request, allowed_origins=(), allowed_hosts=()) -> tuple[int, str] | None:
    """(status, reason) when the request must be refused, else None."""
    headers = request.headers
    host_header = headers.get("Host")
    try:
        host = _host_port(host_header, "Host", request.scheme) if host_header else None
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        if host and sock and _is_loopback(str(sock[0])) and not (_is_loopback(host[0]) or host[0] in allowed_hosts):
            return 403, (f"Host {host_header!r} is not this server's address (it listens on loopback); "
                         "a page re-pointing its own name here (DNS rebinding) is refused. "
                         "Start the server with --allow-host NAME to allow a name")
        origin = headers.get("Origin")
        which = "Origin"
        acts = request.method not in ("GET", "HEAD", "OPTIONS") or headers.get("Upgrade", "").lower() == "websocket"
        if origin is None and "Referer" in headers and acts:
            origin, which = headers["Referer"], "Referer"
        if origin is not None and origin.rstrip("/") not in allowed_origins:
            if origin.strip() == "null":
                return 403, "requests from sandboxed or file:// pages (Origin: null) are refused"
            o = _host_port(origin, which)
            if host is not None and o != host:
                return 403, f"cross-site request refused: {which} {origin[:100]!r} is not {host_header!r}"
        site = headers.get("Sec-Fetch-Site")
        allowed = (headers.get("Origin") or "").rstrip("/") in allowed_origins
        if acts and site in ("cross-site", "same-site") and not allowed:
            return 403, f"cross-site request refused (Sec-Fetch-Site: {site})"
    except ValueError as e:
        return 400, str(e)
    return None


@web.middleware
async def same_origin_only(request, handler):
    s = server_of(request)
    refused = check_request(request, s.allowed_origins, s.allowed_hosts)
    if refused is not None:
        return web.Response(status=refused[0], text=refused[1])
    return await handler(request)
