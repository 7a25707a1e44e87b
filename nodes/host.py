"""The host layer: the only place that knows whether the nodes run inside ComfyUI or in our own server.

Inside ComfyUI it defers to `folder_paths` (model folders, input/output dirs), `comfy.utils.ProgressBar` (progress
and previews) and `comfy.model_management` (interrupt, device). Elsewhere it keeps the same state itself: a models
directory with ComfyUI's sub-folder names, a progress hook the server installs, and an interrupt flag.
It also owns the cache of loaded models, so a graph run again with the same loader settings reuses them.
"""
from __future__ import annotations

import gc
import os
import threading
from pathlib import Path
from typing import Callable, Optional

import torch

from ..qwenimage_core.sampling import Interrupted as _CoreInterrupted

try:  # ComfyUI's own modules exist only inside ComfyUI
    import comfy.model_management as _mm
    import comfy.utils as _cutils
    import folder_paths as _fp
    IN_COMFYUI = True
except ImportError:
    _mm = _cutils = _fp = None
    IN_COMFYUI = False
try:  # ComfyUI's preview settings: --preview-method (or the prompt's own, which ComfyUI sets there for the run)
    from comfy.cli_args import LatentPreviewMethod as _PreviewMethod, args as _comfy_args
except ImportError:
    _PreviewMethod = _comfy_args = None

MODEL_KINDS = ("diffusion_models", "text_encoders", "vae", "loras", "diffusers")
WEIGHT_EXTS = (".safetensors", ".sft")
_ALIASES = {"diffusion_models": ("diffusion_models", "unet"), "text_encoders": ("text_encoders", "clip")}


class Interrupted(_CoreInterrupted):
    """The user pressed Cancel: the run stops between sampler steps."""


# ------------------------------------------------------------------------------------------------ folders

_state = {
    "models": Path(os.environ.get("QWENIMAGE_MODELS_DIR", "models")),
    "input": Path("input"), "output": Path("output"), "temp": Path("temp"),
}
# Searched after the models folder (outside ComfyUI): the demo model shipped in the repository, listed as it is.
EXTRA_MODEL_ROOTS: list[Path] = [Path(__file__).resolve().parent.parent / "demo" / "models"]


def set_models_dir(path) -> None:
    _state["models"] = Path(path)


def models_dir() -> Path:
    return Path(_fp.models_dir) if IN_COMFYUI else _state["models"]


def set_dirs(input=None, output=None, temp=None) -> None:
    for key, value in (("input", input), ("output", output), ("temp", temp)):
        if value is not None:
            _state[key] = Path(value)


def input_dir() -> Path:
    return Path(_fp.get_input_directory()) if IN_COMFYUI else _state["input"]


def output_dir() -> Path:
    return Path(_fp.get_output_directory()) if IN_COMFYUI else _state["output"]


def temp_dir() -> Path:
    return Path(_fp.get_temp_directory()) if IN_COMFYUI else _state["temp"]


def _folders(kind: str, extra: bool = True) -> list[Path]:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; one of {', '.join(MODEL_KINDS)}")
    if IN_COMFYUI:
        if kind == "diffusers" and "diffusers" not in _fp.folder_names_and_paths:
            return [Path(_fp.models_dir) / "diffusers"]
        return [Path(p) for p in _fp.get_folder_paths(kind)]
    roots = (models_dir(), *EXTRA_MODEL_ROOTS) if extra else (models_dir(),)
    return [root / k for root in roots for k in _ALIASES.get(kind, (kind,))]


def list_models(kind: str, extra: bool = True) -> list[str]:
    """Names (relative paths, '/'-separated) of the weight files — or, for "diffusers", model folders with a
    model_index.json — under the kind's folders (`extra`: and under EXTRA_MODEL_ROOTS)."""
    names = set()
    if IN_COMFYUI and kind != "diffusers":
        return sorted(n for n in _fp.get_filename_list(kind) if n.lower().endswith(WEIGHT_EXTS))
    for root in _folders(kind, extra):
        if not root.is_dir():
            continue
        if kind == "diffusers":
            names.update(p.parent.relative_to(root).as_posix() for p in root.rglob("model_index.json"))
        else:
            names.update(p.relative_to(root).as_posix() for p in root.rglob("*")
                         if p.is_file() and p.suffix.lower() in WEIGHT_EXTS)
    return sorted(names)


def model_path(kind: str, name: str) -> str:
    """The full path of a model by its listed name; FileNotFoundError names the folders searched."""
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise FileNotFoundError(f"invalid {kind} name {name!r}: give a name listed in the {kind} folder")
    folders = _folders(kind)
    for root in folders:
        cand = root / name
        if cand.exists() and (cand.is_dir() if kind == "diffusers" else cand.is_file()):
            return str(cand)
    where = ", ".join(str(f) for f in folders)
    raise FileNotFoundError(f"{kind} model {name!r} not found; searched {where}. Put the file there "
                            f"(or choose one of: {', '.join(list_models(kind)) or 'none found'})")


WHAT_GOES_WHERE = {
    "diffusion_models": "qwen_image_fp8_e4m3fn.safetensors or qwen_image_bf16.safetensors (edits: "
                        "qwen_image_edit_2509_fp8_e4m3fn.safetensors), from Comfy-Org/Qwen-Image_ComfyUI",
    "text_encoders": "qwen_2.5_vl_7b_fp8_scaled.safetensors (or qwen_2.5_vl_7b.safetensors)",
    "vae": "qwen_image_vae.safetensors",
    "loras": "Qwen-Image LoRAs (kohya, diffusers/PEFT, ComfyUI, LyCORIS, Lightning)",
    "diffusers": "whole diffusers model folders, e.g. diffusers/Qwen-Image/ (qwenimage download qwen-image "
                 "puts it there)",
}


def models_overview(create: bool = True) -> str:
    """What each model folder holds and, for an empty one, what to put there (printed when the server starts).
    `create` makes the missing folders, so a new user sees where files go."""
    lines = [f"models folder: {models_dir().resolve()}"]
    for kind, hint in WHAT_GOES_WHERE.items():
        folder = _folders(kind)[0]
        if create and not IN_COMFYUI:
            folder.mkdir(parents=True, exist_ok=True)
        found = list_models(kind, extra=False)
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        lines.append(f"  {kind + '/':18s} " + (shown if found else f"(empty) put {hint} here"))
    for root in EXTRA_MODEL_ROOTS:
        if root.is_dir():
            lines.append(f"also listed, from {root}: " + ", ".join(
                n for kind in MODEL_KINDS for n in list_models(kind) if (root / kind / n).exists()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- progress and interrupt

_progress_hook: Optional[Callable] = None
_previews = True
_interrupt = threading.Event()


def set_progress_hook(fn: Optional[Callable], previews: bool = True) -> None:
    """fn(value, total, preview) — preview a PIL image or None. Set by our server; ComfyUI has its own.
    previews=False: the run sends none, so the sampler need not make them."""
    global _progress_hook, _previews
    _progress_hook, _previews = fn, previews


class Progress:
    """Per-step progress (and live previews) for the running node."""

    def __init__(self, total: int):
        self.total = total
        self._bar = _cutils.ProgressBar(total) if IN_COMFYUI else None

    @property
    def wants_preview(self) -> bool:
        """Whether a preview passed to update() goes anywhere. ComfyUI's progress hook sends whatever it is
        given, so inside ComfyUI we follow the rule its own samplers follow: previews unless the method is none."""
        if self._bar is not None:
            return _comfy_args is None or _comfy_args.preview_method != _PreviewMethod.NoPreviews
        return _progress_hook is not None and _previews

    def update(self, value: int, preview=None) -> None:
        if self._bar is not None:
            size = getattr(_comfy_args, "preview_size", 512)
            preview = ("JPEG", preview, size) if preview is not None and self.wants_preview else None
            self._bar.update_absolute(value, self.total, preview)
        elif _progress_hook is not None:
            _progress_hook(value, self.total, preview)


def progress(total: int) -> Progress:
    return Progress(total)


def request_interrupt() -> None:
    if IN_COMFYUI:
        _mm.interrupt_current_processing(True)
    _interrupt.set()


def clear_interrupt() -> None:
    if IN_COMFYUI:
        _mm.interrupt_current_processing(False)
    _interrupt.clear()


def interrupt_requested() -> bool:
    return _interrupt.is_set() or (IN_COMFYUI and _mm.processing_interrupted())


def check_interrupt() -> None:
    """Stop the run if the user cancelled. Inside ComfyUI this raises ComfyUI's own exception, which its
    executor reports as an interrupt rather than an error."""
    if IN_COMFYUI:
        _mm.throw_exception_if_processing_interrupted()
    if _interrupt.is_set():
        raise Interrupted("interrupted by the user")


# ------------------------------------------------------------------------------------------ devices, memory

def device() -> torch.device:
    if IN_COMFYUI:
        return _mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def vram_stats() -> dict:
    """Device name, type and total/free bytes, as ComfyUI's /system_stats reports them."""
    dev = device()
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        return {"name": torch.cuda.get_device_name(dev), "type": "cuda", "index": dev.index or 0,
                "vram_total": total, "vram_free": free,
                "torch_vram_total": torch.cuda.memory_reserved(dev),
                "torch_vram_free": torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)}
    return {"name": "cpu", "type": "cpu", "index": None, "vram_total": 0, "vram_free": 0,
            "torch_vram_total": 0, "torch_vram_free": 0}


class ModelCache:
    """Loaded models by loader slot (one per loader node). A run that asks a slot for the same settings (file,
    its size and mtime, options) gets the same object back; asking for different settings releases what the slot
    held first, so switching checkpoints never keeps two 20B models in memory."""

    def __init__(self):
        self._items: dict = {}
        self._lock = threading.Lock()

    @staticmethod
    def stamp(path: str):
        st = os.stat(path)
        return (os.path.abspath(path), st.st_size, st.st_mtime_ns)

    def get(self, slot: str, key: tuple, load: Callable, room: tuple | None = None):
        """`room` = (bytes, device): inside ComfyUI, ask its memory manager for that much on the device before
        loading, so it unloads its own models first (ours are not its ModelPatchers: it cannot see them)."""
        with self._lock:
            held = self._items.get(slot)
            if held is not None and held[0] == key:
                return held[1]
        if held is not None:
            self.release(slot)
        if room is not None:
            make_room(*room)
        model = load()
        with self._lock:
            self._items[slot] = (key, model)
        return model

    def release(self, slot: str | None = None) -> None:
        with self._lock:
            for k in [k for k in self._items if slot is None or k == slot]:
                del self._items[k]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def offload(self, dev: torch.device) -> int:
        """Move the cached models computing on `dev` (an accelerator) to CPU memory, to give the room to someone
        else; each goes back on its next use (`on_device`). Models placing themselves (block swap) stay."""
        dev, moved = torch.device(dev), 0
        if dev.type == "cpu":
            return 0
        with self._lock:
            models = [m for _, m in self._items.values()]
        for m in models:
            here = getattr(m, "device", None)
            if getattr(m, "_block_swap", None) is None and here is not None and _same_device(torch.device(here), dev):
                m.to("cpu")
                m._qwenimage_home = torch.device(here)
                moved += 1
        if moved and dev.type == "cuda":
            torch.cuda.empty_cache()
        return moved

    def stats(self) -> dict:
        with self._lock:
            return {slot: str(key[0][0]) for slot, (key, _) in self._items.items()}  # the file's path


MODELS = ModelCache()


def free_memory(unload_models: bool = True) -> None:
    if unload_models:
        MODELS.release()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cache_stats() -> dict:
    return MODELS.stats()


# ------------------------------------------------------------------------- sharing memory with ComfyUI
# Inside ComfyUI our models are not ModelPatchers, so its memory manager cannot see them. Two hooks make them good
# neighbours: before a loader loads, ComfyUI is asked for the file's size on our device (it unloads its own models);
# when ComfyUI frees memory on that device (Unload Models, /free, or room for one of its own models) ours move to
# CPU memory if the room is still short, and all of them on "unload all"; they come back on their next use.

UNLOAD_ALL = 1e29   # ComfyUI's unload_all_models() asks free_memory for 1e30 bytes


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _free_bytes(dev: torch.device) -> float:
    if dev.type == "cuda":
        return float(torch.cuda.mem_get_info(dev)[0])
    return float("inf")


def weights_bytes(path: str) -> int:
    """Bytes of a weights file, or of the .safetensors files under a folder (what loading it will take)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if f.endswith(WEIGHT_EXTS))


def make_room(nbytes: float, dev) -> None:
    """Ask ComfyUI to free `nbytes` on `dev` before we load there (outside ComfyUI, or on the CPU: nothing)."""
    dev = torch.device(dev)
    if IN_COMFYUI and dev.type != "cpu" and nbytes > 0:
        _mm.free_memory(float(nbytes), dev)


def on_device(model):
    """A cached model offloaded for ComfyUI is moved back to its device before it computes (a no-op otherwise)."""
    home = getattr(model, "_qwenimage_home", None)
    if home is not None:
        make_room(_model_bytes(model), home)
        model.to(home)
        model._qwenimage_home = None
    return model


def _model_bytes(model) -> int:
    module = getattr(model, "model", model)  # the text encoder wraps its transformers model
    params = getattr(module, "parameters", None)
    return sum(p.numel() * p.element_size() for p in params()) if params else 0


def _hooked_free_memory(original):
    def free_memory(memory_required, device, *args, **kwargs):
        out = original(memory_required, device, *args, **kwargs)
        dev = torch.device(device)
        if memory_required >= UNLOAD_ALL:
            MODELS.offload(dev)
            MODELS.release()
        elif _free_bytes(dev) < memory_required:
            MODELS.offload(dev)
        return out
    free_memory.__wrapped__, free_memory._qwenimage_hook = original, True
    free_memory.__doc__ = original.__doc__
    return free_memory


def install_comfy_hooks() -> bool:
    """Wrap comfy.model_management.free_memory (which its unload_all_models calls too) once; True if installed."""
    original = getattr(_mm, "free_memory", None) if IN_COMFYUI else None
    if original is None or getattr(original, "_qwenimage_hook", False):
        return False
    _mm.free_memory = _hooked_free_memory(original)
    return True


install_comfy_hooks()
