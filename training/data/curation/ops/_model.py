"""What the model-based ops share: options (model, device, dtype, batch_size, offline, threads), loading once per
process, and errors that name the model.

Ops are built in the parent process and handed to pool workers (forked, or pickled for Ray), so a model is loaded
lazily on the first batch a process computes, never in `__init__`, and a pickled op leaves its loaded model behind.
A model that cannot be found is a config error (OpError naming the op, the model and how to get it), not a bad
sample: `run_op` lets OpError through, so the run stops at once instead of dropping every image."""
from __future__ import annotations

import functools
import os
import socket
import threading
from typing import Any, Mapping, Sequence

from ..op import Item, Op, OpError


class ModelOp(Op):
    """An op whose statistics come from a model. Subclasses set `default_model` and implement `load()` (returns
    whatever `compute_batch` needs, kept as `self.loaded`) and `compute_batch(items)`."""

    default_model = ""

    def __init__(self, keep: Mapping | None = None, drop_if: Mapping | None = None, *, model: str | None = None,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 16, offline: bool = False,
                 threads: int | None = None, **options):
        super().__init__(keep, drop_if, **options)
        self.model = model if model is not None else self.default_model
        self.device, self.dtype, self.offline = str(device), str(dtype), bool(offline)
        for key, v in (("batch_size", batch_size), ("threads", threads)):
            if (v is not None or key == "batch_size") and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise OpError(f"op {self.name!r}: {key} must be a positive integer, got {v!r}")
        self.batch_size, self.threads = batch_size, threads
        self._loaded = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_loaded"] = None   # a worker loads its own copy; a model is not shipped through a pipe
        return state

    @property
    def loaded(self) -> Any:
        if self._loaded is None:
            self._check_cached()
            self._set_threads()
            self._loaded = self.load()
        return self._loaded

    def _check_cached(self) -> None:
        """With the hub out of reach, a model named by hub id must be in the local cache: said before load()
        imports transformers and torch (~20 s on a busy machine), not after."""
        name = self.model
        if not isinstance(name, str) or not name or _local(name) or (not self.offline and hub_reachable()):
            return
        from huggingface_hub import hf_hub_download, snapshot_download

        file = getattr(self, "model_file", None)   # a weights file inside the repository (aesthetic's MLP)
        try:
            hf_hub_download(name, file, local_files_only=True) if file else snapshot_download(name,
                                                                                            local_files_only=True)
        except Exception:
            what = f"{name}/{file}" if file else name
            raise OpError(f"op {self.name!r}: model {what!r} is not in the local cache"
                          f"{_unreachable(self.offline, name)}; fetch it once with `huggingface-cli download "
                          f"{name}{' ' + file if file else ''}` where there is network, or set `model = ...` in the "
                          f"op's table to a local path") from None

    def _set_threads(self) -> None:
        """`threads = N` pins torch's threads in this process; by default the engine's share of the cores stands
        (the local pool gives each worker cores / workers; Ray sets OMP_NUM_THREADS per task)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)

    def load(self) -> Any:
        raise NotImplementedError

    def compute(self, item: Item) -> dict:
        return self.compute_batch([item])[0]

    def compute_batch(self, items: Sequence[Item]) -> list[dict]:
        raise NotImplementedError

    # helpers for load() -------------------------------------------------------------------------------------

    def pretrained(self, cls, name: str, what: str, **kwargs):
        """`cls.from_pretrained` from a folder, the cache or the hub (training/rewards/clip.py's rules); a missing
        model becomes an OpError naming this op."""
        from ....rewards.clip import ModelMissing, load_pretrained

        offline = self.offline or not (_local(name) or hub_reachable())
        try:
            return load_pretrained(cls, name, f"op {self.name!r}: {what}", offline, **kwargs)
        except ModelMissing as e:
            raise OpError(f"{e}{_unreachable(self.offline, name)} (or set `model = ...` in the op's table)") from None

    def torch_dtype(self):
        from ....rewards.clip import torch_dtype

        try:
            return torch_dtype(self.dtype)
        except ValueError as e:
            raise OpError(f"op {self.name!r}: {e}") from None


HUB_PROBE_S = 3.0   # a hub that does not answer a TCP connection in this long is taken as unreachable


@functools.lru_cache(maxsize=None)
def hub_reachable() -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) takes a TCP connection within HUB_PROBE_S, asked once per process:
    without network, the hub client's retries took ~115 s before a model op failed. HF_HUB_OFFLINE=1 is a no."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    answered = []

    def probe():   # in a thread: a name lookup has no timeout of its own
        try:
            socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                     timeout=HUB_PROBE_S).close()
            answered.append(True)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(HUB_PROBE_S + 1)
    return bool(answered)


def _local(name: str) -> bool:
    """A path (which never needs the hub), not a hub name."""
    return name.startswith(("/", ".", "~")) or os.path.exists(os.path.expanduser(name))


def _unreachable(offline: bool, name: str) -> str:
    """What the error adds when this process, not the op's `offline`, decided not to ask the hub."""
    return "" if offline or _local(name) else "; the hub cannot be reached from here (HF_HUB_OFFLINE or no network)"


def inputs_to(inputs: Mapping, device: str, dtype) -> dict:
    """A processor's tensors onto the model's device; floating ones (pixel values) in the model's dtype."""
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}


def local_or_hub_file(op: str, what: str, name: str, filename: str, offline: bool) -> str:
    """A weights file: `name` itself, `filename` inside folder `name`, or `filename` of hub repository `name` (from
    the Hugging Face cache first; downloaded unless `offline`). Missing: an OpError naming it and how to get it."""
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        file = os.path.join(path, filename)
        if os.path.isfile(file):
            return file
        raise OpError(f"op {op!r}: {what}: folder {path} has no {filename}")
    if name.startswith(("/", ".", "~")) or name.count("/") != 1:
        raise OpError(f"op {op!r}: {what} {name!r}: no such file or folder (nor a hub name owner/repo)")
    from huggingface_hub import hf_hub_download

    fetch = f"`huggingface-cli download {name} {filename}`"
    try:
        return hf_hub_download(name, filename, local_files_only=True)
    except Exception as e:
        if offline or not hub_reachable():
            raise OpError(f"op {op!r}: {what} {name}/{filename} is not in the local cache ({type(e).__name__})"
                          f"{_unreachable(offline, name)}; fetch it once with {fetch}, or give a local path") from None
    try:
        return hf_hub_download(name, filename)
    except Exception as e:
        raise OpError(f"op {op!r}: {what} {name}/{filename} is not in the local cache and cannot be downloaded "
                      f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); fetch it with {fetch} where there "
                      f"is network, or give a local path") from None
