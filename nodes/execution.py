"""Validate and run ComfyUI API-format prompts over a node-class mapping, with no web server attached.

An API prompt is ``{node_id: {"class_type": name, "inputs": {input: value or [source_id, output_index]}}}``; a
two-element list is a link to another node's output. This module follows ComfyUI's semantics (its
`execution.py` is the spec):

- `validate_prompt(prompt, mappings)` checks node types, required inputs, link shapes and types, value types,
  min/max, combo lists and each class's `VALIDATE_INPUTS`, and answers in ComfyUI's error format
  (``error`` plus ``node_errors`` per node). Only nodes reachable from valid output nodes are checked.
- `Executor(mappings).execute(prompt, prompt_id, extra_data, on_event)` runs, in dependency order, only what the
  output nodes (``OUTPUT_NODE = True``, or the ``outputs`` given) need. Node outputs are cached by their input
  signature (class, widget values, `IS_CHANGED` value and the signatures of everything upstream), so a second run
  that changes only the seed re-runs the sampler and what follows it, nothing before. The tensors kept are bounded
  by the server's --max-cache-mb (nodes/limits.py; the largest dropped first), and widget sizes by its pixel
  limits at validation. Events are reported through
  ``on_event(name, data)`` with ComfyUI's websocket message names and payloads (``execution_start``,
  ``execution_cached``, ``executing``, ``progress``, ``executed``, ``execution_success``, ``execution_error``,
  ``execution_interrupted``) plus ``("preview", {"image": PIL.Image, "node": id, "prompt_id": id})`` for live
  sampler previews. Interrupts (`host.request_interrupt()`) are honoured between nodes and, inside the sampler,
  between steps.

Used by the standalone server (nodes/server/, one worker thread) and, directly, by tests as "a plain executor
that follows the links"::

    from qwenimage.nodes.execution import Executor, validate_prompt
    v = validate_prompt(prompt, mappings)          # v.ok, v.error, v.node_errors, v.outputs
    ex = Executor(mappings)
    result = ex.execute(prompt, "run-1")           # result.status ("success" | "error" | "interrupted"),
    result.ui                                      # {node_id: ui dict}, result.executed, result.cached,
    ex.outputs(node_id)                            # the node's output tuple from the cache
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

from . import host, limits

try:  # the core's Interrupted is the base of host.Interrupted; ComfyUI's own, when inside it
    from ..qwenimage_core.sampling import Interrupted as _CoreInterrupted
except ImportError:  # pragma: no cover
    _CoreInterrupted = host.Interrupted

log = logging.getLogger("qwenimage.server")  # the server's log (`qwenimage serve` prints INFO on stderr)

HIDDEN_EXTRA_KEYS = {"AUTH_TOKEN_COMFY_ORG": "auth_token_comfy_org", "API_KEY_COMFY_ORG": "api_key_comfy_org"}
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def _now_ms() -> int:
    return int(time.time() * 1000)


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int) and not isinstance(value[1], bool)


def input_types(cls) -> dict:
    """INPUT_TYPES() with missing sections as empty dicts."""
    it = cls.INPUT_TYPES()
    return {"required": dict(it.get("required") or {}), "optional": dict(it.get("optional") or {}),
            "hidden": dict(it.get("hidden") or {})}


def input_info(cls, name: str):
    """(input_type, section, extra options dict) of one input, or (None, None, None)."""
    it = input_types(cls)
    for section in ("required", "optional", "hidden"):
        if name in it[section]:
            spec = it[section][name]
            if section == "hidden":
                return spec, section, {}
            if not isinstance(spec, (tuple, list)):
                spec = (spec,)
            typ = spec[0]
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            return typ, section, extra
    return None, None, None


def types_match(received, expected) -> bool:
    """ComfyUI's validate_node_input: '*' matches anything; comma-separated unions; COMBO outputs feed lists."""
    if isinstance(expected, (list, tuple)):  # a combo input fed by a link
        return received == "COMBO" or isinstance(received, (list, tuple)) or received == "*"
    if received == "*" or expected == "*":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return received == expected
    if received == expected:
        return True
    r, e = {t.strip() for t in received.split(",")}, {t.strip() for t in expected.split(",")}
    return bool(r & e) if (len(r) > 1 or len(e) > 1) else False


# ------------------------------------------------------------------------------------------------ validation

class Validation(NamedTuple):
    ok: bool
    error: Optional[dict]
    node_errors: dict
    outputs: list


def _err(type_, message, details="", **extra):
    return {"type": type_, "message": message, "details": details, "extra_info": extra}


def _validate_function_args(cls) -> list[str]:
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    if fn is None:
        return []
    params = inspect.signature(fn).parameters
    return [p for p in params if p not in ("self", "cls", "s")]


def _convert(val, typ):
    if typ == "INT":
        if isinstance(val, float) and not val.is_integer():
            raise ValueError(f"{val} is not an integer")
        return int(val)
    if typ == "FLOAT":
        f = float(val)
        if not math.isfinite(f):
            raise ValueError(f"{f} is not a finite number")
        return f
    if typ == "STRING":
        return str(val)
    if typ == "BOOLEAN":
        if isinstance(val, str):
            if val.lower() in ("true", "1"):
                return True
            if val.lower() in ("false", "0", ""):
                return False
            raise ValueError(f"{val!r} is not a boolean")
        return bool(val)
    return val


def _validate_node(prompt, node_id, mappings, validated) -> tuple[bool, list]:
    """Validate one node and (recursively) what it links to; memoised in `validated`."""
    if node_id in validated:
        return validated[node_id][0], validated[node_id][1]
    validated[node_id] = (True, [])  # provisional: a cycle is caught by the executor's ordering check
    node = prompt[node_id]
    cls = mappings[node["class_type"]]
    inputs = node.get("inputs") or {}
    errors = []
    valid = True
    it = input_types(cls)
    vf_args = _validate_function_args(cls)
    received_types = {}
    to_check = list(it["required"].items()) + [(k, v) for k, v in it["optional"].items() if k in inputs]
    for name, spec in to_check:
        typ, _, extra = input_info(cls, name)
        config = list(spec) if isinstance(spec, (tuple, list)) else [spec]
        if name not in inputs:  # ComfyUI requires every required input in the API format (no defaults)
            errors.append(_err("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        val = inputs[name]
        if isinstance(val, list):
            if not is_link(val):
                errors.append(_err("bad_linked_input",
                                   "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                                   input_name=name, input_config=config, received_value=val))
                continue
            src_id, slot = str(val[0]), val[1]
            if src_id not in prompt:
                errors.append(_err("bad_linked_input", "Linked node does not exist in the prompt",
                                   f"{name}: node '{src_id}'", input_name=name, linked_node=val))
                continue
            src_cls = mappings.get(prompt[src_id].get("class_type"))
            if src_cls is None:  # reported on the source node itself by validate_prompt
                valid = False
                continue
            ret = list(getattr(src_cls, "RETURN_TYPES", ()))
            if not 0 <= slot < len(ret):
                errors.append(_err("bad_linked_input", "Linked output index out of range",
                                   f"{name}: node '{src_id}' has {len(ret)} output(s), not slot {slot}",
                                   input_name=name, linked_node=val))
                continue
            received = ret[slot]
            received_types[name] = received
            if "input_types" not in vf_args and not types_match(received, typ):
                errors.append(_err("return_type_mismatch", "Return type mismatch between linked nodes",
                                   f"{name}, received_type({received}) mismatch input_type({typ})",
                                   input_name=name, input_config=config, received_type=received, linked_node=val))
                continue
            try:
                ok, _ = _validate_node(prompt, src_id, mappings, validated)
            except Exception as ex:  # noqa: BLE001
                ok = False
                errors.append(_err("exception_during_inner_validation", "Exception when validating inner node",
                                   str(ex), input_name=name, input_config=config,
                                   exception_message=str(ex), exception_type=type(ex).__name__,
                                   traceback=traceback.format_tb(sys.exc_info()[2]), linked_node=val))
            if not ok:
                valid = False
            continue
        if isinstance(val, dict) and "__value__" in val:
            val = val["__value__"]
        try:
            if isinstance(typ, str):
                val = _convert(val, typ)
        except Exception as ex:  # noqa: BLE001
            errors.append(_err("invalid_input_type", f"Failed to convert an input value to a {typ} value",
                               f"{name}, {val}, {ex}", input_name=name, input_config=config, received_value=val,
                               exception_message=str(ex)))
            continue
        if name in vf_args:
            continue
        if typ in ("INT", "FLOAT"):
            if "min" in extra and val < extra["min"]:
                errors.append(_err("value_smaller_than_min", f"Value {val} smaller than min of {extra['min']}",
                                   name, input_name=name, input_config=config, received_value=val))
                continue
            if "max" in extra and val > extra["max"]:
                errors.append(_err("value_bigger_than_max", f"Value {val} bigger than max of {extra['max']}",
                                   name, input_name=name, input_config=config, received_value=val))
                continue
        options = typ if isinstance(typ, (list, tuple)) else (extra.get("options") if typ == "COMBO" else None)
        if options is not None and val not in list(options):
            listing = f"(list of length {len(options)})" if len(options) > 20 else str(list(options))
            errors.append(_err("value_not_in_list", "Value not in list", f"{name}: '{val}' not in {listing}",
                               input_name=name, input_config=None if len(options) > 20 else config,
                               received_value=val))
            continue
    if vf_args and not errors:
        kwargs = {}
        for a in vf_args:
            if a == "input_types":
                kwargs[a] = received_types
            elif a in inputs and not isinstance(inputs[a], list):
                v = inputs[a]
                typ, _, _ = input_info(cls, a)
                try:
                    kwargs[a] = _convert(v["__value__"] if isinstance(v, dict) and "__value__" in v else v, typ) \
                        if isinstance(typ, str) else v
                except Exception:  # noqa: BLE001
                    kwargs[a] = v
        try:
            ret = cls.VALIDATE_INPUTS(**kwargs)
        except Exception as ex:  # noqa: BLE001
            ret = f"{type(ex).__name__}: {ex}"
        if ret is not True:
            for a in [a for a in vf_args if a in kwargs and a != "input_types"] or ["(node)"]:
                errors.append(_err("custom_validation_failed", "Custom validation failed for node",
                                   f"{a} - {ret}", input_name=a))
    if not errors:
        errors = _size_errors(cls, inputs)
    if errors:
        valid = False
    validated[node_id] = (valid, errors)
    return valid, errors


def _size_errors(cls, inputs: dict) -> list:
    """A node making an image or latent from width/height (x batch_size) widgets must stay within the server's
    pixel limits (nodes/limits.py): refused here, before anything of that size is allocated."""
    def literal_int(name, default=None):
        v = inputs.get(name, default)
        try:
            return None if isinstance(v, (list, bool)) or v is None else _convert(v, "INT")
        except (TypeError, ValueError):
            return None

    w, h, batch = literal_int("width"), literal_int("height"), literal_int("batch_size", 1)
    aspect = inputs.get("aspect")
    if w is None or h is None or (isinstance(aspect, str) and aspect != "custom"):  # a preset ignores w/h
        return []
    returns = list(getattr(cls, "RETURN_TYPES", ()))
    try:
        if "LATENT" in returns:
            limits.check_latent_size(w, h, batch or 1)
        elif "IMAGE" in returns:
            limits.check_image_size(w, h)
    except limits.PixelLimitError as e:
        return [_err("pixel_limit_exceeded", "Size beyond this server's limit", str(e), input_name="width")]
    return []


def validate_prompt(prompt: dict, mappings: dict, outputs: Optional[list] = None) -> Validation:
    """Check an API prompt against `mappings` (class name -> node class) as ComfyUI does.

    Returns ``Validation(ok, error, node_errors, outputs)``: on failure ``error`` is ComfyUI's top-level error dict
    (type, message, details, extra_info) and ``node_errors`` maps node ids to ``{"errors": [...],
    "dependent_outputs": [...], "class_type": name}``; ``outputs`` lists the output node ids that validated (all
    output nodes, or those of `outputs` when given, as ComfyUI's partial execution)."""
    if not isinstance(prompt, dict) or not prompt:
        return Validation(False, _err("invalid_prompt", "Prompt is not a non-empty object of nodes",
                                      type(prompt).__name__), {}, [])
    out_nodes = []
    for nid, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return Validation(False, _err("invalid_prompt",
                                          "Cannot execute because a node is missing the class_type property.",
                                          f"Node ID '#{nid}'"), {}, [])
        if not isinstance(node["class_type"], str):
            return Validation(False, _err("invalid_prompt", "A node's class_type must be a string",
                                          f"Node ID '#{nid}': {type(node['class_type']).__name__}"), {}, [])
        cls = mappings.get(node["class_type"])
        if cls is None:
            ct = node["class_type"]
            return Validation(False, _err("missing_node_type",
                                          f"Node '{ct}' not found. The custom node may not be installed.",
                                          f"Node ID '#{nid}'", node_id=nid, class_type=ct,
                                          node_title=(node.get("_meta") or {}).get("title", ct)), {}, [])
        if not isinstance(node.get("inputs", {}), dict):
            return Validation(False, _err("invalid_prompt", "Node inputs must be an object",
                                          f"Node ID '#{nid}'"), {}, [])
        if getattr(cls, "OUTPUT_NODE", False) is True and (outputs is None or nid in [str(o) for o in outputs]):
            out_nodes.append(nid)
    if not out_nodes:
        return Validation(False, _err("prompt_no_outputs", "Prompt has no outputs"), {}, [])
    good, failed, node_errors, validated = [], [], {}, {}
    for o in sorted(out_nodes, key=_id_key):
        try:
            ok, reasons = _validate_node(prompt, o, mappings, validated)
        except Exception as ex:  # noqa: BLE001
            ok, reasons = False, [_err("exception_during_validation", "Exception when validating node", str(ex),
                                       exception_type=type(ex).__name__,
                                       traceback=traceback.format_tb(sys.exc_info()[2]))]
            validated[o] = (False, reasons)
        if ok:
            good.append(o)
            continue
        failed.append((o, reasons))
        for nid, (v, rs) in validated.items():
            if v is not True and rs:
                entry = node_errors.setdefault(nid, {"errors": rs, "dependent_outputs": [],
                                                     "class_type": prompt[nid]["class_type"]})
                if o not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(o)
    if not good:
        lines = [f"{e['message']}: {e['details']}" for _, rs in failed for e in rs]
        return Validation(False, _err("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                      "\n".join(lines)), node_errors, [])
    return Validation(True, None, node_errors, good)


def _id_key(nid):
    s = str(nid)
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


# ------------------------------------------------------------------------------------------------ execution

class ExecutionError(Exception):
    """A node raised; carries ComfyUI's execution_error payload."""

    def __init__(self, payload: dict):
        super().__init__(payload.get("exception_message", ""))
        self.payload = payload


@dataclass
class RunResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    ui: dict = field(default_factory=dict)  # node_id -> ui output of the output nodes (cached ones too)
    executed: list = field(default_factory=list)  # node ids run (or taken from the cache) in order
    cached: list = field(default_factory=list)  # node ids taken from the cache
    ran: list = field(default_factory=list)  # node ids whose function actually ran
    messages: list = field(default_factory=list)  # [(event, data)] as ComfyUI keeps in history
    error: Optional[dict] = None


class _Unhashable:
    """Marks a value that cannot be part of a cache key: the node never hits the cache."""

    def __eq__(self, other):
        return False

    def __hash__(self):
        return id(self)


def _freeze(v):
    try:
        return json.dumps(v, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return _Unhashable()


def _changed_key(v):
    """An IS_CHANGED result as part of a key: NaN (ComfyUI's 'always run') never equals itself."""
    if isinstance(v, float) and math.isnan(v):
        return _Unhashable()
    return _freeze(v)


class _JobLog:
    """What the server prints for a job, as ComfyUI does ("got prompt", "Prompt executed in N seconds"): its
    start, its end with the time or the reason it failed, and a text progress bar for each node that reports
    steps (the sampler). Quiet unless the server's log shows INFO."""

    def __init__(self, prompt_id: str):
        self.prompt_id, self.t0, self.bar = prompt_id, time.perf_counter(), None
        self.on = log.isEnabledFor(logging.INFO)
        if self.on:
            log.info("Prompt %s started", prompt_id)

    def progress(self, node, value: int, total: int) -> None:
        if not self.on:
            return
        if self.bar is None or self.bar.total != total or value < self.bar.n:
            self.close_bar()
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"node {node}", unit="step", leave=True)
        self.bar.update(value - self.bar.n)
        if value >= total:
            self.close_bar()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end(self, result: "RunResult") -> None:
        self.close_bar()
        secs = time.perf_counter() - self.t0
        if result.status == "success":
            log.info("Prompt executed in %.2f seconds", secs)
        elif result.status == "interrupted":
            log.info("Prompt %s interrupted after %.2f seconds", self.prompt_id, secs)
        else:
            e = result.error or {}
            where = f" in node {e['node_id']} ({e.get('node_type')})" if e.get("node_id") else ""
            log.error("Prompt %s failed after %.2f seconds%s: %s", self.prompt_id, secs, where,
                      e.get("exception_message") or e.get("message") or e.get("type") or "error")


class Executor:
    """Runs prompts one at a time and keeps node outputs between runs (ComfyUI's classic cache: entries for the
    nodes of the latest prompt survive until a later prompt no longer uses them)."""

    def __init__(self, mappings: dict):
        self.mappings = mappings
        self._cache: dict = {}  # signature -> (outputs as list-per-slot of lists, ui or None)
        self._last: dict = {}  # node_id -> signature in the last run
        self.current_node: Optional[str] = None

    # ---- cache
    def reset(self) -> None:
        """Forget every cached output (ComfyUI's /free with free_memory)."""
        self._cache.clear()
        self._last.clear()

    def cache_bytes(self) -> int:
        """Bytes of the tensors the cached outputs hold (models are counted by their own cache, not here)."""
        return sum(_tensor_bytes(entry) for entry in self._cache.values())

    def trim_cache(self, max_bytes: float) -> None:
        """Drop the largest cached outputs until their tensors fit `max_bytes` (--max-cache-mb); a dropped node
        simply runs again when a later prompt needs it."""
        sizes = sorted(((_tensor_bytes(e), sig) for sig, e in self._cache.items()), key=lambda x: -x[0])
        total = sum(n for n, _ in sizes)
        for n, sig in sizes:
            if total <= max_bytes or n == 0:
                break
            del self._cache[sig]
            total -= n

    def outputs(self, node_id):
        """The output tuple of a node from the last run (first item of each output list)."""
        sig = self._last.get(str(node_id))
        if sig is None or sig not in self._cache:
            raise KeyError(f"no cached outputs for node {node_id}")
        return tuple(o[0] if len(o) == 1 else o for o in self._cache[sig][0])

    # ---- graph helpers
    def _needed(self, prompt, outputs) -> list:
        """Node ids needed by `outputs`, in dependency order (each after everything it links to)."""
        order, state = [], {}

        def visit(nid, path):
            st = state.get(nid)
            if st == 2:
                return
            if st == 1:
                raise ExecutionError({"exception_message": f"dependency cycle through node {nid}",
                                      "exception_type": "DependencyCycleError", "node_id": nid,
                                      "node_type": prompt[nid]["class_type"], "traceback": []})
            state[nid] = 1
            for name, v in sorted((prompt[nid].get("inputs") or {}).items()):
                if is_link(v):
                    visit(str(v[0]), path + [nid])
            state[nid] = 2
            order.append(nid)

        for o in sorted((str(o) for o in outputs), key=_id_key):
            visit(o, [])
        return order

    def _live(self, prompt, order, outputs, sigs) -> list:
        """The nodes of `order` a run must visit: the outputs and what uncached nodes link to (a node whose output
        is cached needs nothing upstream, even if an upstream output was dropped from the cache)."""
        live, stack = set(), [str(o) for o in outputs]
        while stack:
            nid = stack.pop()
            if nid in live:
                continue
            live.add(nid)
            if sigs[nid] not in self._cache:
                stack += [str(v[0]) for v in (prompt[nid].get("inputs") or {}).values() if is_link(v)]
        return [nid for nid in order if nid in live]

    def _signatures(self, prompt, order, changed) -> dict:
        sigs = {}
        for nid in order:
            node = prompt[nid]
            cls = self.mappings[node["class_type"]]
            parts = []
            for name, v in sorted((node.get("inputs") or {}).items()):
                if is_link(v):
                    parts.append((name, "link", sigs[str(v[0])], v[1]))
                else:
                    parts.append((name, _freeze(v)))
            hidden = input_types(cls)["hidden"]
            uid = nid if ("UNIQUE_ID" in hidden.values() or getattr(cls, "NOT_IDEMPOTENT", False)) else None
            sigs[nid] = (node["class_type"], uid, changed.get(nid), tuple(parts))
        return sigs

    def _is_changed(self, prompt, nid, extra_data):
        node = prompt[nid]
        cls = self.mappings[node["class_type"]]
        fn = getattr(cls, "IS_CHANGED", None)
        if fn is None:
            return None
        inputs = self._widget_inputs(prompt, nid, extra_data)
        params = inspect.signature(fn).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            inputs = {k: v for k, v in inputs.items() if k in params}
        try:
            return _changed_key(fn(**inputs))
        except Exception as ex:  # noqa: BLE001 - ComfyUI treats a failing IS_CHANGED as "changed"
            return _changed_key(float("nan")) if not isinstance(ex, KeyboardInterrupt) else None

    def _widget_inputs(self, prompt, nid, extra_data):
        """Non-link inputs (converted to their declared types) plus hidden ones."""
        node = prompt[nid]
        cls = self.mappings[node["class_type"]]
        out = {}
        for name, v in (node.get("inputs") or {}).items():
            if is_link(v):
                continue
            if isinstance(v, dict) and "__value__" in v:
                v = v["__value__"]
            typ, section, _ = input_info(cls, name)
            if section is None:
                continue
            if isinstance(typ, str) and section != "hidden":
                try:
                    v = _convert(v, typ)
                except Exception:  # noqa: BLE001 - validation reported it already
                    pass
            out[name] = v
        for name, kind in input_types(cls)["hidden"].items():
            if kind == "PROMPT":
                out[name] = prompt
            elif kind == "EXTRA_PNGINFO":
                out[name] = (extra_data or {}).get("extra_pnginfo")
            elif kind == "UNIQUE_ID":
                out[name] = nid
            elif kind in HIDDEN_EXTRA_KEYS:
                out[name] = (extra_data or {}).get(HIDDEN_EXTRA_KEYS[kind])
        return out

    # ---- running one node
    def _call(self, cls, obj, inputs: dict):
        """Map the node function over list inputs (ComfyUI's INPUT_IS_LIST / OUTPUT_IS_LIST semantics).
        `inputs` maps names to lists of values; returns (outputs as list per slot, ui or None)."""
        fn = getattr(obj, getattr(cls, "FUNCTION"))
        input_is_list = getattr(cls, "INPUT_IS_LIST", False)
        if input_is_list:
            calls = [inputs]
        else:
            n = max((len(v) for v in inputs.values()), default=1)
            n = 0 if any(len(v) == 0 for v in inputs.values()) else n
            calls = [{k: v[i if i < len(v) else -1] for k, v in inputs.items()} for i in range(n)]
        results = []
        for kw in calls:
            host.check_interrupt()
            results.append(fn(**kw))
        n_out = len(getattr(cls, "RETURN_TYPES", ()))
        outs = [[] for _ in range(n_out)]
        ui = None
        is_list = getattr(cls, "OUTPUT_IS_LIST", None) or [False] * n_out
        for r in results:
            if isinstance(r, dict):
                if r.get("ui") is not None:
                    ui = r["ui"] if ui is None else {k: (ui.get(k) or []) + list(v) for k, v in r["ui"].items()}
                if "expand" in r:
                    raise RuntimeError("node expansion is not supported by this executor")
                r = r.get("result", ())
            if r is None:
                r = ()
            if not isinstance(r, (tuple, list)):
                raise TypeError(f"{cls.__name__}.{cls.FUNCTION} returned {type(r).__name__}, expected a tuple")
            for i in range(min(n_out, len(r))):
                if i < len(is_list) and is_list[i]:
                    outs[i].extend(r[i])
                else:
                    outs[i].append(r[i])
        return outs, ui

    # ---- the run
    def execute(self, prompt: dict, prompt_id: str = "", extra_data: Optional[dict] = None,
                on_event: Optional[Callable[[str, dict], Any]] = None, outputs: Optional[list] = None,
                previews: bool = True) -> RunResult:
        """Run a (validated) prompt. `outputs`: output node ids to run (default: every OUTPUT_NODE in it);
        previews=False: the sampler makes no live previews (none would be sent)."""
        extra_data = extra_data or {}
        prompt = {str(k): v for k, v in prompt.items()}
        result = RunResult(prompt_id, "success")

        def emit(event, data, keep=True):
            if keep and event not in ("progress", "preview", "executing", "executed"):
                result.messages.append((event, data))
            if on_event is not None:
                try:
                    on_event(event, data)
                except Exception:  # noqa: BLE001 - a broken listener never stops the run
                    traceback.print_exc()

        if outputs is None:
            outputs = [nid for nid, n in prompt.items()
                       if getattr(self.mappings.get(n.get("class_type")), "OUTPUT_NODE", False) is True]
        host.clear_interrupt()
        job = _JobLog(prompt_id)
        emit("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()})
        current = {"node": None}

        def hook(value, total, preview=None):
            job.progress(current["node"], int(value), int(total))
            emit("progress", {"value": int(value), "max": int(total), "prompt_id": prompt_id,
                              "node": current["node"]})
            if preview is not None:
                emit("preview", {"image": preview, "node": current["node"], "prompt_id": prompt_id})

        prev_hook, prev_previews = getattr(host, "_progress_hook", None), getattr(host, "_previews", True)
        host.set_progress_hook(hook, previews)
        try:
            try:
                order = self._needed(prompt, outputs)
                changed = {nid: self._is_changed(prompt, nid, extra_data) for nid in order}
                sigs = self._signatures(prompt, order, changed)
            except ExecutionError as e:
                payload = {"prompt_id": prompt_id, **e.payload, "executed": [], "current_inputs": {},
                           "current_outputs": [], "timestamp": _now_ms()}
                emit("execution_error", payload)
                result.status, result.error = "error", payload
                return result
            # classic cache: keep only what this prompt can use
            wanted = set(sigs.values())
            for k in [k for k in self._cache if k not in wanted]:
                del self._cache[k]
            cached = [nid for nid in order if sigs[nid] in self._cache]
            result.cached = list(cached)
            emit("execution_cached", {"nodes": cached, "prompt_id": prompt_id, "timestamp": _now_ms()})
            values: dict = {}
            for nid in self._live(prompt, order, outputs, sigs):
                node = prompt[nid]
                sig = sigs[nid]
                cls = self.mappings[node["class_type"]]
                if sig in self._cache:
                    outs, ui = self._cache[sig]
                    values[nid] = outs
                    result.executed.append(nid)
                    if ui is not None:
                        result.ui[nid] = ui
                        emit("executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": prompt_id})
                    continue
                current["node"] = nid
                self.current_node = nid
                emit("executing", {"node": nid, "display_node": nid, "prompt_id": prompt_id})
                inputs = {}
                try:
                    host.check_interrupt()
                    widgets = self._widget_inputs(prompt, nid, extra_data)
                    for name, v in (node.get("inputs") or {}).items():
                        if is_link(v):
                            typ, section, _ = input_info(cls, name)
                            if section is not None:
                                inputs[name] = values[str(v[0])][v[1]]
                    for name, v in widgets.items():
                        inputs[name] = [v]
                    obj = cls()
                    outs, ui = self._call(cls, obj, inputs)
                except (host.Interrupted, _CoreInterrupted, KeyboardInterrupt) as ex:
                    payload = {"prompt_id": prompt_id, "node_id": nid, "node_type": node["class_type"],
                               "executed": list(result.executed), "timestamp": _now_ms()}
                    emit("execution_interrupted", payload)
                    result.status, result.error = "interrupted", payload
                    if isinstance(ex, KeyboardInterrupt):
                        raise
                    return result
                except Exception as ex:  # noqa: BLE001
                    tb = traceback.format_tb(sys.exc_info()[2])
                    payload = {"prompt_id": prompt_id, "node_id": nid, "node_type": node["class_type"],
                               "executed": list(result.executed), "exception_message": str(ex),
                               "exception_type": f"{type(ex).__module__}.{type(ex).__qualname__}"
                               if type(ex).__module__ != "builtins" else type(ex).__name__,
                               "traceback": tb, "current_inputs": _describe_inputs(inputs),
                               "current_outputs": list(values), "timestamp": _now_ms()}
                    emit("execution_error", payload)
                    result.status, result.error = "error", payload
                    return result
                values[nid] = outs
                self._cache[sig] = (outs, ui)
                result.executed.append(nid)
                result.ran.append(nid)
                if ui is not None:
                    result.ui[nid] = ui
                    emit("executed", {"node": nid, "display_node": nid, "output": ui, "prompt_id": prompt_id})
            self._last = {nid: sigs[nid] for nid in order}
            current["node"] = None
            emit("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()})
            return result
        finally:
            job.end(result)
            self.current_node = None
            host.set_progress_hook(prev_hook, prev_previews)
            self.trim_cache(limits.LIMITS.max_cache_mb * 2 ** 20)
            emit("executing", {"node": None, "prompt_id": prompt_id}, keep=False)


def _tensor_bytes(value, seen=None) -> int:
    """Bytes of the tensors inside a node output (lists, tuples, dicts and dataclasses walked; each storage
    counted once; modules skipped: loaded models live in the model cache)."""
    import dataclasses

    import torch

    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(value, torch.nn.Module):
        return 0
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_tensor_bytes(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    return 0


def _describe_inputs(inputs: dict) -> dict:
    """Inputs for an error report: short reprs, never tensors in full."""
    out = {}
    for k, vs in inputs.items():
        items = []
        for v in vs:
            shape = getattr(v, "shape", None)
            items.append(f"{type(v).__name__}{tuple(shape)}" if shape is not None else repr(v)[:200])
        out[k] = items
    return out


def run_prompt(prompt: dict, mappings: dict, extra_data: Optional[dict] = None, executor: Optional[Executor] = None,
               on_event=None) -> RunResult:
    """Validate then execute (a convenience for tests): raises ValueError with ComfyUI's error on a bad prompt and
    RuntimeError when a node fails."""
    v = validate_prompt(prompt, mappings)
    if not v.ok:
        raise ValueError(json.dumps({"error": v.error, "node_errors": v.node_errors}, indent=1, default=str))
    ex = executor or Executor(mappings)
    r = ex.execute(prompt, "run", extra_data, on_event, outputs=v.outputs)
    if r.status == "error":
        raise RuntimeError(f"node {r.error['node_id']} ({r.error['node_type']}) failed: "
                           f"{r.error['exception_message']}\n{''.join(r.error['traceback'])}")
    return r
