"""The W8A8 linear from a layer-owned CPU kernel layout.

torch.ops.bigperf.int8_dynamic_linear_w8a8_cpu(x, weight, colsum, scale, n, k, bias, activation,
                                               act_bits, act_absmax)
    The same result as int8_dynamic_linear on the weight that
    bigperf.formats.w8a8_cpu.pack_w8a8_cpu laid out (weight [Np/16, Kp*16] int8, colsum [Np]
    int32, scale [N, 1] fp32, for act_bits). A W8A8 Int8Linear on an AVX2 or AVX-512 CPU
    keeps only this form, so its kernel reads the panels at every M without packing per call
    and no second copy of the weight exists; PyTorch's paths read its rows a chunk at a time
    and the other candidates unpack it for the call, so the backend this op reports is the
    one that runs.
"""

from __future__ import annotations

import torch

from bigperf.formats import w8a8_cpu
from bigperf.formats._checks import round_up
from bigperf.formats.w8a8_cpu import W8A8CpuLayout
from bigperf.ops.activations import activation_code
from bigperf.ops.define import define_op
from bigperf.ops.frozen_weight_grad import register_frozen_weight_autograd
from bigperf.ops.int8_linear import DYNAMIC_BACKENDS, check_act_absmax
from bigperf.ops.validation import (
    check_bias,
    check_finite_once,
    check_float_tensor,
    check_layout_tensors,
    check_tensor,
    plain_layout_call,
)
from bigperf.quant import activation_qmax

LAYOUT_OP = "bigperf.int8_dynamic_linear_w8a8_cpu"


def _layout_tensors(weight, colsum, scale, n, k) -> dict:
    """{name: (tensor, dtype, shape)} of the layout for these sizes."""
    np_, kp = round_up(n, w8a8_cpu.PANEL_N), round_up(k, w8a8_cpu.PANEL_K)
    return {"weight": (weight, torch.int8, (np_ // w8a8_cpu.PANEL_N, kp * w8a8_cpu.PANEL_N)),
            "colsum": (colsum, torch.int32, (np_,)), "scale": (scale, torch.float32, (n, 1))}


def validate_layout_call(x, weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax):
    op = LAYOUT_OP
    if (act_absmax is None and type(act_bits) is int and act_bits in (7, 8) and type(n) is int and type(k) is int
            and n > 0 and k > 0
            and plain_layout_call(x, k, n, bias, activation,
                                  tuple(_layout_tensors(weight, colsum, scale, n, k).values()))):
        check_finite_once(op, "scale", scale)
        return
    check_float_tensor(op, "x", x, min_dim=1)
    check_tensor(op, "weight", weight, dtypes=(torch.int8,), dims=2)
    check_tensor(op, "colsum", colsum, dtypes=(torch.int32,), dims=1)
    check_tensor(op, "scale", scale, dtypes=(torch.float32,), dims=2)
    activation_code(activation, op)
    activation_qmax(act_bits, op, "act_bits")
    if n <= 0 or k <= 0:
        raise ValueError(f"{op}: arguments 'n' and 'k' must be positive sizes, got n={n}, k={k}")
    if x.shape[-1] != k:
        raise ValueError(f"{op}: argument 'x' has {x.shape[-1]} features in its last dimension, the weight has k={k}")
    expected = {name: (t, shape) for name, (t, _, shape) in _layout_tensors(weight, colsum, scale, n, k).items()}
    check_layout_tensors(op, x, expected, f"n={n}, k={k}", contiguous=True)
    check_bias(op, x, bias, n)
    check_act_absmax(op, x, act_absmax)
    check_finite_once(op, "scale", scale)


def _signature(x: torch.Tensor, weight: torch.Tensor, colsum: torch.Tensor, scale: torch.Tensor, n: int, k: int,
               bias: torch.Tensor | None, activation: str, act_bits: int,
               act_absmax: torch.Tensor | None) -> torch.Tensor: ...


W8A8_CPU_LAYOUT = define_op(LAYOUT_OP, _signature, validate_layout_call,
                            lambda x, weight, colsum, scale, n, *rest: (*x.shape[:-1], n))
LAYOUT_BACKENDS = W8A8_CPU_LAYOUT.backends
register_frozen_weight_autograd(W8A8_CPU_LAYOUT, w8a8_cpu.dense_weight, bias_at=6, activation_at=7)
int8_dynamic_linear_w8a8_cpu_op = W8A8_CPU_LAYOUT.torch_op
w8a8_cpu.register_paths(LAYOUT_BACKENDS, DYNAMIC_BACKENDS)


def int8_dynamic_linear_w8a8_cpu(x, layout: W8A8CpuLayout, bias=None, activation="none", act_absmax=None):
    """act((quant(x) @ W^T) * row_scale * col_scale + bias) for W held in the w8a8-cpu layout,
    x quantised per token to layout.act_bits (against act_absmax when given)."""
    return W8A8_CPU_LAYOUT(x, layout.weight, layout.colsum, layout.scale, layout.n, layout.k, bias, activation,
                           layout.act_bits, act_absmax)
