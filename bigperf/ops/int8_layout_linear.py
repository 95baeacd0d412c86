"""The int8 weight-only linear from a layer-owned W8A16 kernel layout.

torch.ops.bigperf.int8_weight_linear_w8a16(x, weight, scale, zero, n, k, group_size, bias,
                                           activation)
    The same result as int8_weight_linear on the weight that bigperf.cuda_layouts.pack_w8a16
    laid out (weight [Np/32, Kp*32] int8, scale [G, Np] fp32, zero [G, Np] fp32 or None,
    group_size 0 per channel). An Int8Linear on a GPU keeps only this form, so the CUDA
    kernel reads it directly and no second copy of the weight is cached; calls the kernel
    is not built for (fp32 x, more than CUDA_WEIGHT_ONLY_MAX_M rows, no bigperf._C_cuda)
    unpack it for that call and run on int8_weight_linear's backend of the same name, so the
    backend this op reports is the one that runs.
"""

from __future__ import annotations

import torch

from bigperf.cuda_layouts import W8A16Layout, unpack_w8a16
from bigperf.ops.activations import ACTIVATIONS, activation_code
from bigperf.ops.common import fp32_bias
from bigperf.ops.int8_linear import WEIGHT_ONLY_BACKENDS, weight_only_cuda_why_not
from bigperf.ops.layout_paths import register_unpacked_paths
from bigperf.ops.define import define_op
from bigperf.ops.validation import check_float_tensor, check_tensor

LAYOUT_OP = "bigperf.int8_weight_linear_w8a16"


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def as_layout(weight, scale, zero, n: int, k: int, group_size: int) -> W8A16Layout:
    return W8A16Layout(weight, scale, zero, n, k, group_size or None)


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
    np_, kp, groups = _round_up(n, 32), _round_up(k, 16), k // group_size if group_size else 1
    expected = {"weight": (weight, (np_ // 32, kp * 32)), "scale": (scale, (groups, np_))}
    if zero is not None:
        check_tensor(op, "zero", zero, dtypes=(torch.float32,), dims=2)
        expected["zero"] = (zero, (groups, np_))
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: argument '{name}' must have shape {shape} for n={n}, k={k}, "
                             f"group_size={group_size}, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{op}: argument '{name}' is on {t.device} but 'x' is on {x.device}")
    if bias is not None:
        check_float_tensor(op, "bias", bias, dims=1)
        if bias.shape[0] != n or bias.device != x.device:
            raise ValueError(f"{op}: argument 'bias' must have shape [{n}] on {x.device}, "
                             f"got {tuple(bias.shape)} on {bias.device}")


def _canonical_args(x, weight, scale, zero, n, k, group_size, bias, activation):
    qweight, q_scale, zero_point = unpack_w8a16(as_layout(weight, scale, zero, n, k, group_size))
    return (x, qweight, q_scale, zero_point, bias, activation)


def _canonical_stand_ins(x, weight, scale, zero, n, k, group_size, bias, activation):
    groups = k // group_size if group_size else 1
    return (x, torch.empty(n, k, dtype=torch.int8, device="meta"), torch.empty(n, groups, device="meta"),
            None if zero is None else torch.empty(n, groups, dtype=torch.int8, device="meta"), bias, activation)


def _cuda_why_not(x, weight, scale, zero, n, k, group_size, bias, activation):
    return weight_only_cuda_why_not(x, k)


def _cuda_run(x, weight, scale, zero, n, k, group_size, bias, activation):
    from bigperf.ops.cuda_launch import launch_w8a16_layout
    return launch_w8a16_layout(x, as_layout(weight, scale, zero, n, k, group_size), fp32_bias(bias),
                               ACTIVATIONS.index(activation))


def _signature(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, n: int, k: int,
               group_size: int, bias: torch.Tensor | None, activation: str) -> torch.Tensor: ...


W8A16_LAYOUT = define_op(LAYOUT_OP, _signature, validate_layout_call,
                         lambda x, weight, scale, zero, n, *rest: (*x.shape[:-1], n))
LAYOUT_BACKENDS = W8A16_LAYOUT.backends
int8_weight_linear_w8a16_op = W8A16_LAYOUT.custom_op
LAYOUT_BACKENDS.register("cuda", _cuda_why_not, _cuda_run)
# Every other backend is int8_weight_linear's own, on the weight unpacked for this call.
register_unpacked_paths(LAYOUT_BACKENDS, WEIGHT_ONLY_BACKENDS, ("cuda",), _canonical_stand_ins, _canonical_args)


def int8_weight_linear_w8a16(x, layout: W8A16Layout, bias=None, activation="none"):
    """act(x @ dequant(W)^T + bias) for W held in the CUDA W8A16 kernel's layout."""
    return W8A16_LAYOUT(x, layout.weight, layout.scale, layout.zero, layout.n, layout.k, layout.group_size or 0,
                        bias, activation)
