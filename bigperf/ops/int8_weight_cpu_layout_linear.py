"""The int8 weight-only linear (W8A16) from a layer-owned CPU kernel layout.

torch.ops.bigperf.int8_weight_linear_w8a16_cpu(x, weight, scale, zero, n, k, group_size, bias,
                                               activation)
    The same result as int8_weight_linear on the weight that
    bigperf.formats.w8a16_cpu.pack_w8a16_cpu laid out (weight [Np/16, K*16] int8, scale
    [G, Np] fp32, zero [G, Np] int8 or None, group_size 0 per channel). A weight-only
    Int8Linear on an AVX2 or AVX-512 CPU keeps only this form, so its kernels read the
    panels at every M and no second copy of the weight exists; PyTorch's paths read its
    rows a chunk at a time and the other candidates unpack it for the call, so the backend
    this op reports is the one that runs.
"""

from __future__ import annotations

import torch

from bigperf.formats import w8a16_cpu
from bigperf.formats._checks import round_up
from bigperf.formats.w8a16_cpu import PANEL_N, W8A16CpuLayout
from bigperf.ops.activations import activation_code
from bigperf.quant import GROUP_SIZES
from bigperf.ops.define import define_op
from bigperf.ops.frozen_weight_grad import register_frozen_weight_autograd
from bigperf.ops.int8_linear import WEIGHT_ONLY_BACKENDS
from bigperf.ops.validation import (
    check_bias,
    check_finite_once,
    check_float_tensor,
    check_layout_tensors,
    check_tensor,
    plain_layout_call,
)

LAYOUT_OP = "bigperf.int8_weight_linear_w8a16_cpu"


def _sizes_ok(n, k, group_size) -> bool:
    return (type(n) is int and type(k) is int and type(group_size) is int and n > 0 and k > 0
            and (group_size == 0 or (group_size in GROUP_SIZES and k % group_size == 0)))


def _layout_tensors(weight, scale, zero, n, k, group_size) -> dict:
    """{name: (tensor, dtype, shape)} of the layout for these sizes (valid ones: _sizes_ok)."""
    groups, np_ = k // group_size if group_size else 1, round_up(n, PANEL_N)
    expected = {"weight": (weight, torch.int8, (np_ // PANEL_N, k * PANEL_N)),
                "scale": (scale, torch.float32, (groups, np_))}
    if zero is not None:
        expected["zero"] = (zero, torch.int8, (groups, np_))
    return expected


def validate_layout_call(x, weight, scale, zero, n, k, group_size, bias, activation):
    op = LAYOUT_OP
    if _sizes_ok(n, k, group_size) and plain_layout_call(
            x, k, n, bias, activation, tuple(_layout_tensors(weight, scale, zero, n, k, group_size).values())):
        check_finite_once(op, "scale", scale)
        return
    check_float_tensor(op, "x", x, min_dim=1)
    check_tensor(op, "weight", weight, dtypes=(torch.int8,), dims=2)
    check_tensor(op, "scale", scale, dtypes=(torch.float32,), dims=2)
    activation_code(activation, op)
    if not _sizes_ok(n, k, group_size):
        raise ValueError(f"{op}: arguments 'n', 'k', 'group_size' must be positive sizes with group_size in "
                         f"{GROUP_SIZES} dividing k (0: per channel), got n={n}, k={k}, group_size={group_size}")
    if x.shape[-1] != k:
        raise ValueError(f"{op}: argument 'x' has {x.shape[-1]} features in its last dimension, the weight has k={k}")
    if zero is not None:
        check_tensor(op, "zero", zero, dtypes=(torch.int8,), dims=2)
    expected = _layout_tensors(weight, scale, zero, n, k, group_size)
    check_layout_tensors(op, x, {name: (t, shape) for name, (t, _, shape) in expected.items()},
                         f"n={n}, k={k}, group_size={group_size}", contiguous=True)
    check_bias(op, x, bias, n)
    check_finite_once(op, "scale", scale)


def _signature(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, n: int,
               k: int, group_size: int, bias: torch.Tensor | None, activation: str) -> torch.Tensor: ...


W8A16_CPU_LAYOUT = define_op(LAYOUT_OP, _signature, validate_layout_call,
                             lambda x, weight, scale, zero, n, *rest: (*x.shape[:-1], n))
LAYOUT_BACKENDS = W8A16_CPU_LAYOUT.backends
register_frozen_weight_autograd(W8A16_CPU_LAYOUT, w8a16_cpu.dense_weight, bias_at=7, activation_at=8)
int8_weight_linear_w8a16_cpu_op = W8A16_CPU_LAYOUT.torch_op
w8a16_cpu.register_paths(LAYOUT_BACKENDS, WEIGHT_ONLY_BACKENDS)


def int8_weight_linear_w8a16_cpu(x, layout: W8A16CpuLayout, bias=None, activation="none"):
    """act(x @ dequant(W)^T + bias) for W held in the w8a16-cpu layout."""
    return W8A16_CPU_LAYOUT(x, layout.weight, layout.scale, layout.zero, layout.n, layout.k, layout.group_size or 0,
                            bias, activation)
