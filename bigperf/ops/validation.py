"""Argument checks shared by the op wrappers: every tensor is checked here before a
pointer is handed to C++ or CUDA, and errors name the op and the argument."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor

from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.tensor_keys import OncePerTensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Codes shared with csrc/cpu/fused_linear.h (DType) and csrc/cuda.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# For the one-expression checks of common calls (set lookups and exact types: no subclasses,
# whose fake or meta tensors take the full checks).
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)


def check_tensor(op: str, name: str, t, *, dtypes=None, dims: int | None = None, min_dim: int | None = None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: argument '{name}' must have dtype {allowed}, got {str(t.dtype).replace('torch.', '')}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{op}: argument '{name}' must be {dims}-D, got shape {tuple(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        raise ValueError(f"{op}: argument '{name}' must have at least {min_dim} dimension(s), got shape {tuple(t.shape)}")


def check_float_tensor(op: str, name: str, t, **kwargs):
    check_tensor(op, name, t, dtypes=FLOAT_DTYPES, **kwargs)


def check_layout_tensors(op: str, x: torch.Tensor, expected: dict, sizes: str, contiguous: bool = False) -> None:
    """A kernel layout's tensors, {name: (tensor, shape)}: each has its shape for the layer's
    `sizes` (named in the message, e.g. "n=96, k=64"), sits on x's device and, with
    `contiguous`, is contiguous (a layout read as laid out)."""
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: argument '{name}' must have shape {shape} for {sizes}, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{op}: argument '{name}' is on {t.device} but 'x' is on {x.device}")
        if contiguous and not t.is_contiguous():
            raise ValueError(f"{op}: argument '{name}' must be contiguous (a kernel layout is read as laid out)")


def check_bias(op: str, x: torch.Tensor, bias, n: int) -> None:
    """None, or a float [n] bias on x's device."""
    if bias is not None:
        check_float_tensor(op, "bias", bias, dims=1)
        if bias.shape[0] != n or bias.device != x.device:
            raise ValueError(f"{op}: argument 'bias' must have shape [{n}] on {x.device}, "
                             f"got {tuple(bias.shape)} on {bias.device}")


def plain_layout_call(x, k: int, n: int, bias, activation: str, layout: tuple) -> bool:
    """The common call of a layout op in one pass, before its full checks (each of which is
    paid on every call): x a plain float tensor of K = k features; `layout` a tuple of
    (tensor, dtype, shape): plain, contiguous, of that dtype and shape; bias None or a plain
    float [n]; a known activation; everything on x's device. True means the full checks
    would pass (content checks such as finite scales apart); False, run them for the message."""
    if not (type(x) in PLAIN_TENSORS and x.dtype in FLOAT_DTYPE_SET and x.dim() >= 1 and x.shape[-1] == k
            and activation in ACTIVATIONS):
        return False
    device = x.device
    for t, dtype, shape in layout:
        if not (type(t) in PLAIN_TENSORS and t.dtype == dtype and t.shape == shape and t.is_contiguous()
                and t.device == device):
            return False
    return bias is None or (type(bias) in PLAIN_TENSORS and bias.dtype in FLOAT_DTYPE_SET and bias.shape == (n,)
                            and bias.device == device)


def last_dim_contiguous(t: torch.Tensor) -> bool:
    return t.dim() == 0 or t.stride(-1) == 1 or t.shape[-1] == 1



def has_no_data(t: torch.Tensor) -> bool:
    """A meta or fake tensor (torch.compile / torch.export tracing): shapes, no values."""
    if t.is_meta:
        return True
    return type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter and isinstance(t, FakeTensor)


def _all_finite(t: torch.Tensor, _key) -> bool:
    return bool(torch.isfinite(t).all())


_FINITE_CHECKED = OncePerTensor(_all_finite)


def check_finite_once(op: str, name: str, t: torch.Tensor) -> None:
    """Refuse NaN or Inf in `t` (quantisation scales: the kernels apply a channel's scale after
    its sum, so a corrupt one would give other non-finite results than the dequantised math),
    checking each tensor's data once (bigperf/ops/tensor_keys.py)."""
    if has_no_data(t):
        return
    if not _FINITE_CHECKED(t):
        raise ValueError(f"{op}: argument '{name}' holds NaN or Inf values; the weight it scales cannot be "
                         f"dequantised (was it written by bigperf.quant or bigperf.sparsity?)")
