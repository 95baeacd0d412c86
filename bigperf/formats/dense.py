"""Weight format "dense": a float weight [N, K] (fp32, fp16 or bf16), as FusedLinear holds it.

The op (schema, validation, autograd, reference) is bigperf/ops/fused_linear.py. Here: the
candidate paths that compute with this format on each device (our CPU, CUDA and Triton
kernels; PyTorch's GEMM in fp32 or in a half dtype the call already has) and its ONNX
lowering. The weight is its own packed form: no version, nothing to unpack.
"""

from __future__ import annotations

import functools

import torch

from bigperf import _ext
from bigperf.formats._shard import bias_once, cat_rows, check_k, row_slice, shard_range
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.common import (BF16_PANEL_VARIANT, as_rows, bf16_panel_why_not, bind_cpu_rows, cpu_why_not,
                                cuda_why_not, fp32_bias, panel_why_not, triton_why_not)
from bigperf.ops.onnx_lowering import onnx_linear, onnx_lowering
from bigperf.ops.torch_paths import (
    copy_linear,
    copy_rows,
    linear_as_held,
    register_float_copy_path,
    register_torch_paths,
    torch_linear,
)
from bigperf.ops.validation import DTYPE_CODES, FLOAT_DTYPES, last_dim_contiguous

NAME = "dense"
BUFFERS = ("weight",)


def why_not_hold(dtype: torch.dtype) -> str | None:
    """Why a weight of `dtype` cannot be held in this format, or None."""
    if dtype not in FLOAT_DTYPES:
        return f"needs a float32, float16 or bfloat16 weight, got {str(dtype).replace('torch.', '')}"
    return None


# ----------------------------------------------------------------------------- candidate paths

def _cpu_why_not(x, weight, bias, residual, activation):
    return cpu_why_not(x, "fused_linear")


def _cpu_panel_why_not(x, weight, bias, residual, activation):
    return panel_why_not(x, weight.shape[1], "fused_linear_panel")


def _cpu_bf16_why_not(x, weight, bias, residual, activation):
    return bf16_panel_why_not(x, weight.shape[1], "fused_linear_panel_bf16", weight.dtype)


def _cpu_bind(weight, bias, residual, activation, kernel="fused_linear"):
    """Our CPU kernels, at any M: the dot-product form (`fused_linear`, for the weight stream
    of decode) or the panel form (`fused_linear_panel`, for arithmetic-bound M). The
    dispatcher times both against the torch paths on this machine. Bound to everything but x
    (a residual is per call: bound only when it is None, which prepared calls pass)."""
    if residual is not None or not last_dim_contiguous(weight):
        # (a bound contiguous copy of the weight would be a second full-size copy, kept)
        return lambda x: _cpu_run(x, weight, bias, residual, activation, kernel)
    n, k = weight.shape
    b = fp32_bias(bias)
    return bind_cpu_rows(kernel, (_ext.cpu_isa(),), (weight.data_ptr(), weight.stride(0), DTYPE_CODES[weight.dtype],
                         b.data_ptr() if b is not None else 0, 0, 0),
                         (ACTIVATIONS.index(activation), torch.get_num_threads()), n, k, keep=(weight, b))


def _cpu_run(x, weight, bias, residual, activation, kernel="fused_linear"):
    if residual is None and last_dim_contiguous(weight):
        return _cpu_bind(weight, bias, None, activation, kernel)(x)
    n, k = weight.shape
    x2 = as_rows(x, k)
    m = x2.shape[0]
    w = weight if last_dim_contiguous(weight) else weight.contiguous()
    b = fp32_bias(bias)
    r = as_rows(residual, n) if residual is not None else None
    out = torch.empty((m, n), dtype=x.dtype)
    getattr(_ext.cpu_module(), kernel)(
        _ext.cpu_isa(), x2.data_ptr(), x2.stride(0), DTYPE_CODES[x.dtype],
        w.data_ptr(), w.stride(0), DTYPE_CODES[w.dtype], b.data_ptr() if b is not None else 0,
        r.data_ptr() if r is not None else 0, r.stride(0) if r is not None else 0,
        out.data_ptr(), n, m, n, k, ACTIVATIONS.index(activation), torch.get_num_threads())
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)


# PyTorch's GEMM in fp32 or in a half dtype the layer already has (x or the weight).
def _torch_run(dtype):
    def run(x, weight, bias, residual, activation):
        if weight.dtype == dtype:
            return linear_as_held(x, weight, bias, activation, residual)
        n, k = weight.shape
        return torch_linear(x, n, k, dtype, rows=copy_rows(weight), bias=bias,
                            activation=activation, residual=residual)
    return run


def _cuda_why_not(x, weight, bias, residual, activation):
    reason = cuda_why_not(x, "fused_linear")
    if reason:
        return reason
    if x.dtype not in (torch.float16, torch.bfloat16) or weight.dtype != x.dtype:
        return f"needs fp16 or bf16 x and weight of the same dtype, got {x.dtype} and {weight.dtype}"
    if weight.shape[1] % 8:
        return f"needs K % 8 == 0 for 16-byte loads, got K = {weight.shape[1]}"
    return None


def _cuda_run(x, weight, bias, residual, activation):
    from bigperf.ops.cuda_launch import (
        launch_fused_linear,  # only imported on GPU machines
    )
    return launch_fused_linear(x, weight, fp32_bias(bias), residual, ACTIVATIONS.index(activation))


def _triton_why_not(x, weight, bias, residual, activation):
    if weight.dtype != x.dtype and x.dtype != torch.float32:
        return f"needs weight in x's dtype, or fp32 x with a lower-precision weight; got {x.dtype} x, {weight.dtype} weight"
    return triton_why_not(x, "fused_matmul")


def _triton_run(x, weight, bias, residual, activation):
    from bigperf.kernels.fused_matmul import fused_linear as triton_fused_linear
    k, n = weight.shape[1], weight.shape[0]
    r = residual.reshape(-1, n) if residual is not None else None
    out = triton_fused_linear(x.reshape(-1, k), weight, fp32_bias(bias), r, activation)
    return out.reshape(*x.shape[:-1], n)


def float_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight in fp32, for a layer that keeps a float copy (torch:copy)."""
    return weight.detach().to(torch.float32, copy=True).contiguous()


def _copy_run(x, weight, bias, residual, activation):
    return copy_linear(x, weight, bias=bias, activation=activation, residual=residual)


def register_paths(table) -> None:
    """The paths of fused_linear (besides the reference) on this format."""
    for kernel, variant, why_not in (("fused_linear", "", _cpu_why_not),
                                     ("fused_linear_panel", "panel", _cpu_panel_why_not),
                                     ("fused_linear_panel_bf16", BF16_PANEL_VARIANT, _cpu_bf16_why_not)):
        table.register("cpu", why_not, functools.partial(_cpu_run, kernel=kernel), variant=variant,
                       bind=functools.partial(_cpu_bind, kernel=kernel))
    table.register("cuda", _cuda_why_not, _cuda_run)
    table.register("triton", _triton_why_not, _triton_run)
    register_torch_paths(table, _torch_run, float_weight=True)
    register_float_copy_path(table, _copy_run)


# ----------------------------------------------------------------------------- ONNX

@onnx_lowering("bigperf.fused_linear")
def lower(x, weight, bias, residual, activation):
    y = onnx_linear(x, weight, bias, activation)
    return y if residual is None else y + residual


# ----------------------------------------------------------------------------- shard rules

def shard_columns(tensors: tuple, bias, rank: int, world: int) -> tuple[tuple, torch.Tensor | None]:
    """Rank's column-wise shard (output features) of (weight,) and the bias (bigperf/formats/_shard.py)."""
    (weight,) = tensors
    lo, hi = shard_range("bigperf.formats.dense.shard_columns", "N (output features)", weight.shape[0], rank, world)
    return (weight[lo:hi],), row_slice(bias, lo, hi)


def shard_rows(tensors: tuple, bias, k: int, rank: int, world: int) -> tuple[tuple, torch.Tensor | None]:
    """Rank's row-wise shard (input features) of (weight,); the bias on rank 0 only."""
    (weight,) = tensors
    where = "bigperf.formats.dense.shard_rows"
    check_k(where, k, weight.shape[1])
    lo, hi = shard_range(where, "K (input features)", k, rank, world)
    return (weight[:, lo:hi],), bias_once(bias, rank)


def unshard_columns(shards: list[tuple], biases: list) -> tuple[tuple, torch.Tensor | None]:
    """The unsharded (weight,) and bias of every rank's shard_columns, in rank order."""
    return (torch.cat([s[0] for s in shards]),), cat_rows(biases)


def unshard_rows(shards: list[tuple], biases: list, k: int) -> tuple[tuple, torch.Tensor | None]:
    """The unsharded (weight,) and bias of every rank's shard_rows, in rank order."""
    return (torch.cat([s[0] for s in shards], dim=1),), biases[0]


def shard_dims(style: str) -> tuple[int | None, ...]:
    """The dim of each of (weight,) that a `style` shard splits (bigperf/formats/_shard.py)."""
    return (0,) if style == "colwise" else (1,)
