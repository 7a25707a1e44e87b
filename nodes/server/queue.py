"""The prompt queue (ComfyUI's priority heap, the running prompt, the history) and the API views of its items.

A queue item is ``(number, prompt_id, prompt, extra_data, outputs, sensitive)``; the API shows the first five."""
from __future__ import annotations

import heapq
import itertools
import logging
import threading

MAX_HISTORY = 10000
log = logging.getLogger("qwenimage.server")


class PromptQueue:
    """Pending prompts by priority number (ComfyUI's heap), the running one, and the history."""

    def __init__(self, on_change):
        self._cond = threading.Condition()
        self._heap: list = []
        self._counter = itertools.count()
        self.running: dict = {}  # prompt_id -> item
        self.history: dict = {}
        self._on_change = on_change
        self.flags: dict = {}

    def put(self, item):
        with self._cond:
            heapq.heappush(self._heap, (item[0], next(self._counter), item))
            waiting = len(self._heap) + len(self.running)
            self._cond.notify_all()
        log.info("got prompt %s (%d in the queue)", item[1], waiting)
        self._on_change()

    def get(self, timeout=None):
        """The next prompt, or None on timeout or when /free flags wait (they apply before the next prompt)."""
        with self._cond:
            while not self._heap or self.flags:
                if self.flags or not self._cond.wait(timeout):
                    return None
            _, _, item = heapq.heappop(self._heap)
            self.running[item[1]] = item
        self._on_change()
        return item

    def task_done(self, item, entry: dict):
        with self._cond:
            self.running.pop(item[1], None)
            self.history[item[1]] = entry
            while len(self.history) > MAX_HISTORY:
                self.history.pop(next(iter(self.history)))
        self._on_change()

    def pending(self) -> list:
        with self._cond:
            return [x[2] for x in sorted(self._heap)]

    def current(self):
        with self._cond:
            return list(self.running.values()), [x[2] for x in sorted(self._heap)]

    def remaining(self) -> int:
        with self._cond:
            return len(self._heap) + len(self.running)

    def wipe(self):
        with self._cond:
            self._heap.clear()
        self._on_change()

    def delete(self, prompt_id) -> bool:
        with self._cond:
            n = len(self._heap)
            self._heap = [x for x in self._heap if x[2][1] != prompt_id]
            heapq.heapify(self._heap)
            removed = len(self._heap) != n
        if removed:
            self._on_change()
        return removed

    def set_flag(self, name, value):
        with self._cond:
            self.flags[name] = value
            self._cond.notify_all()

    def take_flags(self) -> dict:
        with self._cond:
            f, self.flags = self.flags, {}
            return f

    def wake(self):
        with self._cond:
            self._cond.notify_all()


def public_item(item):
    """A queue item as the API shows it: (number, prompt_id, prompt, extra_data, outputs), secrets dropped."""
    return list(item[:5])


def progress_entry(node, prompt_id, value, max_, state):
    return {"value": value, "max": max_, "state": state, "node_id": node, "prompt_id": prompt_id,
            "display_node_id": node, "parent_node_id": None, "real_node_id": node}


def job_from_queue(item, status):
    extra = item[3] or {}
    wf = ((extra.get("extra_pnginfo") or {}).get("workflow") or {})
    job = {"id": item[1], "status": status, "priority": item[0], "create_time": extra.get("create_time", 0),
           "outputs_count": 0, "previewable_outputs_count": 0}
    if isinstance(wf, dict) and wf.get("id"):
        job["workflow_id"] = wf["id"]
    return job


def job_from_history(pid, h, full=False):
    number, _, prompt, extra, _ = h["prompt"][:5]
    st = h.get("status") or {}
    status = "completed" if st.get("status_str", "success") == "success" else "failed"
    start = end = err = None
    for ev, data in st.get("messages", []):
        if not isinstance(data, dict):
            continue
        if ev == "execution_start":
            start = data.get("timestamp")
        elif ev in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if ev == "execution_error":
                err = data
            if ev == "execution_interrupted":
                status = "cancelled"
    count, preview = 0, None
    for nid, out in (h.get("outputs") or {}).items():
        for media, items in (out or {}).items():
            if media == "animated" or not isinstance(items, list):
                continue
            for it in items:
                if not isinstance(it, dict):
                    continue
                count += 1
                if media in ("images", "video", "audio") and (preview is None or
                                                              (it.get("type") == "output" and
                                                               preview.get("type") != "output")):
                    preview = {**it, "nodeId": nid, "mediaType": media}
    job = {"id": pid, "status": status, "priority": number, "create_time": (extra or {}).get("create_time", 0),
           "execution_start_time": start, "execution_end_time": end, "outputs_count": count,
           "previewable_outputs_count": count, "preview_output": preview}
    if err is not None:
        job["execution_error"] = {k: err.get(k) for k in ("prompt_id", "timestamp", "node_id", "node_type",
                                                          "executed", "exception_message", "exception_type",
                                                          "traceback", "current_inputs", "current_outputs")
                                  if err.get(k) is not None}
        for k, default in (("node_id", ""), ("node_type", ""), ("exception_message", ""),
                           ("exception_type", ""), ("traceback", [])):
            job["execution_error"].setdefault(k, default)
    wf = ((extra or {}).get("extra_pnginfo") or {}).get("workflow")
    if isinstance(wf, dict) and wf.get("id"):
        job["workflow_id"] = wf["id"]
    if full:
        job["outputs"] = h.get("outputs") or {}
        job["execution_status"] = st
        job["workflow"] = {"prompt": prompt, "extra_data": extra}
    return job
