"""The int8 weight-only linear from a layer-owned W8A16 kernel layout.

torch.ops.bigperf.int8_weight_linear_w8a16(x, weight, scale, zero, n, k, group_size, bias,
                                           activation)
    The same result as int8_weight_linear on the weight that bigperf.formats.w8a16_cuda.pack_w8a16
    laid out (weight [Np/32, Kp*32] int8, scale [G, Np] fp32, zero [G, Np] fp32 or None,
    group_size 0 per channel). An Int8Linear on a GPU keeps only this form, so the CUDA
    kernel reads it directly and no second copy of the weight is cached; calls the kernel
    is not built for (fp32 x, more than CUDA_WEIGHT_ONLY_MAX_M rows, no bigperf._C_cuda)
    unpack it for that call and run on int8_weight_linear's backend of the same name, so the
    backend this op reports is the one that runs.
"""

from __future__ import annotations

import torch

from bigperf.formats import w8a16_cuda
from bigperf.formats._checks import round_up
from bigperf.formats.w8a16_cuda import W8A16Layout
from bigperf.ops.activations import activation_code
from bigperf.ops.define import define_op
from bigperf.ops.frozen_weight_grad import register_frozen_weight_autograd
from bigperf.ops.int8_linear import WEIGHT_ONLY_BACKENDS
from bigperf.ops.validation import check_bias, check_float_tensor, check_layout_tensors, check_tensor

LAYOUT_OP = "bigperf.int8_weight_linear_w8a16"


def validate_layout_call(x, weight, scale, zero, n, k, group_size, bias, activation):
    op = LAYOUT_OP
    check_float_tensor(op, "x", x, min_dim=1)
    check_tensor(op, "weight", weight, dtypes=(torch.int8,), dims=2)
    check_tensor(op, "scale", scale, dtypes=(torch.float32,), dims=2)
    activation_code(activation, op)
    if n <= 0 or k <= 0 or group_size < 0 or (group_size and k % group_size):
        raise ValueError(f"{op}: arguments 'n', 'k', 'group_size' must be positive sizes with group_size dividing k "
                         f"(0: per channel), got n={n}, k={k}, group_size={group_size}")
    if x.shape[-1] != k:
        raise ValueError(f"{op}: argument 'x' has {x.shape[-1]} features in its last dimension, the weight has k={k}")
    np_, kp, groups = round_up(n, 32), round_up(k, 16), k // group_size if group_size else 1
    expected = {"weight": (weight, (np_ // 32, kp * 32)), "scale": (scale, (groups, np_))}
    if zero is not None:
        check_tensor(op, "zero", zero, dtypes=(torch.float32,), dims=2)
        expected["zero"] = (zero, (groups, np_))
    check_layout_tensors(op, x, expected, f"n={n}, k={k}, group_size={group_size}")
    check_bias(op, x, bias, n)


def _signature(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, n: int, k: int,
               group_size: int, bias: torch.Tensor | None, activation: str) -> torch.Tensor: ...


W8A16_LAYOUT = define_op(LAYOUT_OP, _signature, validate_layout_call,
                         lambda x, weight, scale, zero, n, *rest: (*x.shape[:-1], n))
LAYOUT_BACKENDS = W8A16_LAYOUT.backends
register_frozen_weight_autograd(W8A16_LAYOUT, w8a16_cuda.dense_weight, bias_at=7, activation_at=8)
int8_weight_linear_w8a16_op = W8A16_LAYOUT.torch_op
w8a16_cuda.register_paths(LAYOUT_BACKENDS, WEIGHT_ONLY_BACKENDS)


def int8_weight_linear_w8a16(x, layout: W8A16Layout, bias=None, activation="none"):
    """act(x @ dequant(W)^T + bias) for W held in the CUDA W8A16 kernel's layout."""
    return W8A16_LAYOUT(x, layout.weight, layout.scale, layout.zero, layout.n, layout.k, layout.group_size or 0,
                        bias, activation)
