"""Routes of the prompt queue: the websocket, /prompt, /queue, /interrupt, /free, /history and /jobs."""
from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

from aiohttp import WSMsgType, web

from .. import host
from ..execution import SENSITIVE_EXTRA_DATA_KEYS, validate_prompt
from .previews import PER_PROMPT_METHODS
from .queue import job_from_history, job_from_queue, public_item
from .replies import BadRequest, id_list, json_body, json_reply, parse_json, read_json, server_of, to_int

log = logging.getLogger("qwenimage.server")
routes = web.RouteTableDef()


@routes.get("/ws")
async def websocket(request):
    s = server_of(request)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
    old = s.sockets.pop(sid, None)
    if old is not None and not old.closed:
        await old.close()
    s.sockets[sid] = ws
    try:
        await s.send("status", {"status": s.queue_info(), "sid": sid}, sid)
        if s.client_id == sid and s.last_node_id is not None:
            await s.send("executing", {"node": s.last_node_id}, sid)
        first = True
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    data = parse_json(msg.data)  # 100,000 levels of nesting: a RecursionError would end the socket
                except BadRequest as e:
                    log.info("websocket %s: message ignored: %s", sid[:40], e)
                    continue
                if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                    flags = data.get("data")
                    s.client_flags[sid] = flags if isinstance(flags, dict) else {}
                    await s.send("feature_flags", s.feature_flags(), sid)
                first = False
            elif msg.type == WSMsgType.ERROR:
                log.warning("websocket closed with exception %s", ws.exception())
    finally:
        if s.sockets.get(sid) is ws:
            s.sockets.pop(sid, None)
            s.client_flags.pop(sid, None)
    return ws


@routes.get("/prompt")
async def get_prompt(request):
    return web.json_response(server_of(request).queue_info())


def _prompt_error(type_, message, status=400):
    err = {"type": type_, "message": message, "details": message, "extra_info": {}}
    return web.json_response({"error": err, "node_errors": {}}, status=status)


MAX_PROMPT_ID = 200


def _priority(s, data: dict) -> float:
    """The queue position: the client's `number`, else the next one (negated for `front`)."""
    if "number" in data:
        n = data["number"]
        try:
            if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n):
                raise OverflowError
            return float(n)
        except OverflowError:
            raise BadRequest(f"'number' must be a finite number, not {str(n)[:50]}") from None
    number = s.number
    s.number += 1
    return -number if data.get("front") else number


def _prompt_id(s, data: dict) -> str:
    """The client's `prompt_id` (a new id if none); one that is queued, running or in the history is refused, so
    a second prompt never silently replaces the first one's history entry."""
    pid = data.get("prompt_id")
    if pid is not None and not isinstance(pid, str):
        raise BadRequest("'prompt_id' must be a string")
    if pid is None or pid == "":
        return str(uuid.uuid4())
    if not isinstance(pid, (str, int)) or isinstance(pid, bool) or len(str(pid)) > MAX_PROMPT_ID:
        raise BadRequest(f"'prompt_id' must be a string of at most {MAX_PROMPT_ID} characters")
    pid = str(pid)
    running, pending = s.queue.current()
    if pid in s.queue.history or any(x[1] == pid for x in running + pending):
        raise BadRequest(f"prompt_id {pid!r} is already used (queued, running or in the history): "
                         "give a new one, or none")
    return pid


def _extra_data(s, data: dict) -> dict:
    extra = data.get("extra_data") or {}
    if not isinstance(extra, dict):
        raise BadRequest(f"'extra_data' must be an object, not {type(extra).__name__}")
    extra = dict(extra)
    if "client_id" in data:
        extra["client_id"] = data["client_id"]
    if extra.get("client_id") is not None and not isinstance(extra["client_id"], str):
        raise BadRequest("'client_id' must be a string")
    method = extra.get("preview_method")
    if method is not None and method not in PER_PROMPT_METHODS:
        raise BadRequest(f"extra_data.preview_method {method!r}: one of {', '.join(PER_PROMPT_METHODS)}")
    return extra


def _targets(data: dict):
    targets = data.get("partial_execution_targets")
    if targets is not None and (not isinstance(targets, list)
                                or not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in targets)):
        raise BadRequest("'partial_execution_targets' must be a list of node ids")
    return targets


@routes.post("/prompt")
async def post_prompt(request):
    s = server_of(request)
    try:
        data = await read_json(request)
    except BadRequest as e:
        return _prompt_error("invalid_json", str(e))
    if not isinstance(data, dict):
        return _prompt_error("invalid_json", f"expected a JSON object, got {type(data).__name__}")
    if "prompt" not in data:
        return _prompt_error("no_prompt", "No prompt provided")
    prompt, targets, extra = data["prompt"], _targets(data), _extra_data(s, data)
    _prompt_id(s, data)  # refuse a bad or used id before validating
    v = await asyncio.get_running_loop().run_in_executor(None, validate_prompt, prompt, s.mappings, targets)
    if not v.ok:
        log.warning("invalid prompt: %s", v.error)
        return web.json_response({"error": v.error, "node_errors": v.node_errors}, status=400)
    prompt_id, number = _prompt_id(s, data), _priority(s, data)  # again: another request may have taken it since
    sensitive = {k: extra.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra}
    extra["create_time"] = int(time.time() * 1000)
    s.queue.put((number, prompt_id, {str(k): v_ for k, v_ in prompt.items()}, extra, v.outputs, sensitive))
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": v.node_errors})


@routes.get("/queue")
async def get_queue(request):
    running, pending = server_of(request).queue.current()
    return json_reply({"queue_running": [public_item(x) for x in running],
                       "queue_pending": [public_item(x) for x in pending]})


@routes.post("/queue")
async def post_queue(request):
    s = server_of(request)
    data = await json_body(request)
    if data.get("clear"):
        s.queue.wipe()
    for pid in id_list(data, "delete"):
        s.queue.delete(pid)
    return web.Response(status=200)


@routes.post("/interrupt")
async def interrupt(request):
    s = server_of(request)
    data = await json_body(request)
    pid = data.get("prompt_id")
    if pid is not None and not isinstance(pid, str):
        raise BadRequest("'prompt_id' must be a string")
    if pid is None or pid == s.running_prompt_id:
        if s.running_prompt_id is not None:
            host.request_interrupt()
    return web.Response(status=200)


@routes.post("/free")
async def free(request):
    s = server_of(request)
    data = await json_body(request)
    if data.get("unload_models"):
        s.queue.set_flag("unload_models", True)
    if data.get("free_memory"):
        s.queue.set_flag("free_memory", True)
    return web.Response(status=200)


@routes.get("/history")
async def get_history(request):
    q = request.rel_url.query
    items = list(server_of(request).queue.history.items())
    offset = to_int(q.get("offset"), 0)
    max_items = q.get("max_items")
    if offset:
        items = items[: max(0, len(items) - offset)] if offset > 0 else items
    if max_items is not None:
        items = items[-to_int(max_items, len(items)):] if to_int(max_items, 0) > 0 else []
    return json_reply(dict(items))


@routes.get("/history/{prompt_id}")
async def get_history_one(request):
    pid = request.match_info["prompt_id"]
    entry = server_of(request).queue.history.get(pid)
    return json_reply({pid: entry} if entry is not None else {})


@routes.post("/history")
async def post_history(request):
    s = server_of(request)
    data = await json_body(request)
    if data.get("clear"):
        s.queue.history.clear()
    for pid in id_list(data, "delete"):
        s.queue.history.pop(pid, None)
    return web.Response(status=200)


# ---- jobs (the frontend's queue and history panels)

@routes.get("/jobs")
async def jobs(request):
    s = server_of(request)
    q = request.rel_url.query
    wanted = [x for x in q.get("status", "").split(",") if x] or None
    running, pending = s.queue.current()
    out = []
    if wanted is None or "in_progress" in wanted:
        out += [job_from_queue(x, "in_progress") for x in running]
    if wanted is None or "pending" in wanted:
        out += [job_from_queue(x, "pending") for x in pending]
    for pid, h in list(s.queue.history.items()):
        j = job_from_history(pid, h)
        if wanted is None or j["status"] in wanted:
            out.append(j)
    wid = q.get("workflow_id")
    if wid:
        out = [j for j in out if j.get("workflow_id") == wid]
    out.sort(key=lambda j: j.get("create_time") or 0, reverse=q.get("sort_order", "desc") == "desc")
    total = len(out)
    offset, limit = max(0, to_int(q.get("offset"), 0)), to_int(q.get("limit"), None)
    page = out[offset:] if limit is None else out[offset: offset + max(0, limit)]
    return json_reply({"jobs": page, "pagination": {"offset": offset, "limit": limit if limit is not None else total,
                                                    "total": total, "has_more": offset + len(page) < total}})


@routes.get("/jobs/{job_id}")
async def job(request):
    s = server_of(request)
    pid = request.match_info["job_id"]
    if pid in s.queue.history:
        return json_reply(job_from_history(pid, s.queue.history[pid], full=True))
    running, pending = s.queue.current()
    for items, st in ((running, "in_progress"), (pending, "pending")):
        for x in items:
            if x[1] == pid:
                return json_reply(job_from_queue(x, st))
    return web.json_response({"error": "Job not found"}, status=404)


@routes.post("/jobs/{job_id}/cancel")
async def job_cancel(request):
    pid = request.match_info["job_id"]
    return web.json_response({"cancelled": [pid] if server_of(request).cancel(pid) else []})


@routes.post("/jobs/cancel")
async def jobs_cancel(request):
    s = server_of(request)
    data = await json_body(request)
    ids = id_list(data, "job_ids", "ids")
    return web.json_response({"cancelled": [pid for pid in ids if s.cancel(pid)]})
