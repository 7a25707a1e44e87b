"""fp8 weights: linear layers whose weights stay float8 in memory and are up-cast per layer for the matmul.

Checkpoints come in three forms, all read by the loader:
  * plain `float8_e4m3fn` weights (scale 1);
  * ComfyUI's scaled fp8: a `scaled_fp8` marker and a float32 `<layer>.scale_weight` per weight;
  * the newer form: `<layer>.weight_scale` with a `<layer>.comfy_quant` JSON blob naming the format.
A bf16 checkpoint can also be quantised on load, with one absmax scale per weight tensor. The weight is
de-quantised as W = W_fp8 * scale in the compute dtype right before its matmul, so only one layer's weight is
ever held in high precision. Where the GPU has fp8 tensor cores, `use_scaled_mm` runs the matmul in fp8.
"""
from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
QUANT_SUFFIXES = SCALE_SUFFIXES + (".scale_input", ".input_scale", ".comfy_quant")
QUANT_MARKERS = ("scaled_fp8",)


def is_quant_key(name: str) -> bool:
    return name in QUANT_MARKERS or name.endswith(QUANT_SUFFIXES)


def quant_format(blob: torch.Tensor) -> str:
    """The `format` named by a `.comfy_quant` uint8 JSON blob."""
    from .weights import CheckpointError, load_json

    try:
        conf = load_json(bytes(blob.to(torch.uint8).tolist()), None)
    except CheckpointError:  # not JSON, or nested deep enough to overflow the parser
        return "unreadable"
    return conf.get("format", "unknown") if isinstance(conf, dict) else str(conf)


def quantize(weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax scaling: W ~ W_fp8 * scale with |W_fp8| <= the format's max."""
    w = weight.float()
    scale = (w.abs().max() / torch.finfo(dtype).max).clamp(min=1e-12)
    return (w / scale).clamp(-torch.finfo(dtype).max, torch.finfo(dtype).max).to(dtype), scale


class FP8Linear(nn.Linear):
    """nn.Linear with an fp8 weight and a float32 scale; computes in `compute_dtype` (bfloat16 by default).

    It stays an nn.Linear, so run-time LoRA and anything else that wraps Linear layers applies unchanged; weights
    cannot be merged into it (that would re-round them to fp8), which is why LoRA on fp8 runs unmerged."""

    use_scaled_mm = False  # fp8 tensor-core matmul (Ada/Hopper+); off by default: the up-cast path is exact to W*s

    def __init__(self, in_features, out_features, bias=True, device=None, weight_dtype=torch.float8_e4m3fn,
                 compute_dtype=torch.bfloat16):
        super().__init__(in_features, out_features, False, device=device, dtype=weight_dtype)
        self.weight.requires_grad_(False)
        self.compute_dtype = compute_dtype
        self.register_buffer("weight_scale", torch.ones((), device=device), persistent=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=compute_dtype))

    def reset_parameters(self):
        pass  # weights always come from a checkpoint (and fp8 has no random init)

    @classmethod
    def like(cls, linear: nn.Linear, weight_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16) -> "FP8Linear":
        return cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device,
                   weight_dtype=weight_dtype, compute_dtype=compute_dtype)

    def dequantized_weight(self, dtype=None) -> torch.Tensor:
        dtype = dtype or self.compute_dtype
        return self.weight.to(dtype) * self.weight_scale.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_scaled_mm and x.is_cuda and self.weight.dtype == torch.float8_e4m3fn:
            return self._scaled_mm(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if torch.is_grad_enabled():  # training through a frozen fp8 base (LoRA): no up-cast copy kept for backward
            return UpcastLinear.apply(x, self.weight, self.weight_scale, bias)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
        """fp8 x fp8 on tensor cores: the activation is quantised per tensor on the fly."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        x8, xs = quantize(x2)
        out = torch._scaled_mm(x8, self.weight.t(), scale_a=xs.float(), scale_b=self.weight_scale.float(),
                               bias=None if self.bias is None else self.bias.to(x.dtype), out_dtype=x.dtype)
        return out.reshape(*shape[:-1], -1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", weight={self.weight.dtype}, compute={self.compute_dtype}"


class UpcastLinear(torch.autograd.Function):
    """x (W_fp8 * s)^T + b for a frozen fp8 weight, up-cast per layer in the forward AND again in the backward.

    Plain autograd would save the up-cast weight for the input's gradient: a high-precision copy of every layer
    alive until the backward, as much memory as a bf16 base. Saving the fp8 weight itself costs nothing (it is
    the parameter), and the backward up-casts it again just for its matmul. The weight gets no gradient."""

    @staticmethod
    def forward(ctx, x, weight, scale, bias):
        ctx.save_for_backward(weight, scale)
        ctx.bias_grad = bias is not None and bias.requires_grad
        return F.linear(x, weight.to(x.dtype) * scale.to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        gx = grad @ (weight.to(grad.dtype) * scale.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        gb = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.bias_grad else None
        return gx, None, None, gb


def swap_to_fp8(model: nn.Module, names, weight_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16) -> None:
    """Replace the named nn.Linear modules (meta or real) with FP8Linear shells of the same shape."""
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, leaf)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is a {type(linear).__name__}, not a Linear layer")
        setattr(parent, leaf, FP8Linear.like(linear, weight_dtype, compute_dtype))


def quantize_linears(model: nn.Module, names, weight_dtype=torch.float8_e4m3fn, compute_dtype=None) -> None:
    """Quantise the named float nn.Linear layers of a built model in place, as loading with weight_dtype does
    (per-tensor absmax scale); the bias stays in the compute dtype (default: the layer's dtype)."""
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, leaf)
        layer = FP8Linear.like(linear, weight_dtype, compute_dtype or linear.weight.dtype)
        weight, scale = quantize(linear.weight.data, weight_dtype)
        layer.weight.data, layer.weight_scale = weight, scale.to(weight.device)
        if linear.bias is not None:
            layer.bias.data = linear.bias.data.to(layer.compute_dtype)
        setattr(parent, leaf, layer)

