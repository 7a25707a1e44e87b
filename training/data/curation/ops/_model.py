"""What the model-based ops share: options (model, device, dtype, batch_size, offline), loading once per process,
and errors that name the model.

Ops are built in the parent process and handed to pool workers (forked, or pickled for Ray), so a model is loaded
lazily on the first batch a process computes, never in `__init__`, and a pickled op leaves its loaded model behind.
A model that cannot be found is a config error (OpError naming the op, the model and how to get it), not a bad
sample: `run_op` lets OpError through, so the run stops at once instead of dropping every image."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..op import Item, Op, OpError


class ModelOp(Op):
    """An op whose statistics come from a model. Subclasses set `default_model` and implement `load()` (returns
    whatever `compute_batch` needs, kept as `self.loaded`) and `compute_batch(items)`."""

    default_model = ""

    def __init__(self, keep: Mapping | None = None, drop_if: Mapping | None = None, *, model: str | None = None,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 16, offline: bool = False,
                 **options):
        super().__init__(keep, drop_if, **options)
        self.model = model if model is not None else self.default_model
        self.device, self.dtype, self.offline = str(device), str(dtype), bool(offline)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise OpError(f"op {self.name!r}: batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self._loaded = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_loaded"] = None   # a worker loads its own copy; a model is not shipped through a pipe
        return state

    @property
    def loaded(self) -> Any:
        if self._loaded is None:
            self._loaded = self.load()
        return self._loaded

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

        try:
            return load_pretrained(cls, name, f"op {self.name!r}: {what}", self.offline, **kwargs)
        except ModelMissing as e:
            raise OpError(f"{e} (or set `model = ...` in the op's table)") from None

    def torch_dtype(self):
        from ....rewards.clip import torch_dtype

        try:
            return torch_dtype(self.dtype)
        except ValueError as e:
            raise OpError(f"op {self.name!r}: {e}") from None


def inputs_to(inputs: Mapping, device: str, dtype) -> dict:
    """A processor's tensors onto the model's device; floating ones (pixel values) in the model's dtype."""
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
