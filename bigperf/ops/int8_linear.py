"""The int8 linear ops.

torch.ops.bigperf.int8_weight_linear(x, qweight, scale, zero_point, bias, activation)
    W8A16: y = act(x @ dequant(qweight)^T + bias), the dequantisation inside the GEMM's
    inner loop; x fp32/fp16/bf16, output in x's dtype.
torch.ops.bigperf.int8_dynamic_linear(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None)
    W8A8: x quantised per token (row absmax) at run time, int8×int8 → int32, rescaled by
    the row and column scales, then bias + act. act_bits=8: x codes in [-127, 127];
    act_bits=7: [-63, 63] (fbgemm's reduce_range accuracy class, ~7 dB less SQNR; faster
    on AVX2 CPUs, whose kernel then multiplies u8 × s8 with vpmaddubsw). act_absmax: an
    fp32 tensor of x's leading shape, the absmax each token is quantised against in place
    of its own (a row-wise shard's slice quantised as the whole row is: bigperf/distributed).

Layouts (bigperf/quant.py): qweight [N, K] int8, scale [N, G] fp32 (G = 1 per channel,
else K / group_size), zero_point [N, G] int8 or None. W8A8 takes symmetric per-channel
weights only.
"""

from __future__ import annotations

import torch

from bigperf.formats import int8_rowmajor
from bigperf.ops.activations import activation_code, reference_activation
from bigperf.ops.common import as_rows
from bigperf.ops.define import define_op
from bigperf.ops.frozen_weight_grad import register_frozen_weight_autograd
from bigperf.ops.validation import check_finite_once, check_float_tensor, check_tensor
from bigperf.quant import (
    GROUP_SIZES,
    absmax_rows,
    activation_qmax,
    dequantize_weight,
    quantize_activation_per_token,
)

WEIGHT_OP = "bigperf.int8_weight_linear"
DYNAMIC_OP = "bigperf.int8_dynamic_linear"


def _validate_common(op, x, qweight, scale, bias, activation):
    check_float_tensor(op, "x", x, min_dim=1)
    check_tensor(op, "qweight", qweight, dtypes=(torch.int8,), dims=2)
    check_tensor(op, "scale", scale, dtypes=(torch.float32,), dims=2)
    activation_code(activation, op)
    n, k = qweight.shape
    for name, t in (("qweight", qweight), ("scale", scale), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: argument '{name}' is on {t.device} but 'x' is on {x.device}")
    if x.shape[-1] != k:
        raise ValueError(f"{op}: argument 'x' has {x.shape[-1]} features in its last dimension but "
                         f"'qweight' has shape {tuple(qweight.shape)} (expected [N, {x.shape[-1]}])")
    groups = scale.shape[1]
    if scale.shape[0] != n or groups < 1 or k % groups or (groups > 1 and k // groups not in GROUP_SIZES):
        raise ValueError(f"{op}: argument 'scale' must have shape [{n}, 1] (per channel) or [{n}, K / group_size] "
                         f"with group_size in {GROUP_SIZES}, got {tuple(scale.shape)} for K = {k}")
    if bias is not None:
        check_float_tensor(op, "bias", bias, dims=1)
        if bias.shape[0] != n:
            raise ValueError(f"{op}: argument 'bias' must have shape [{n}], got {tuple(bias.shape)}")
    check_finite_once(op, "scale", scale)


def validate_weight_only(x, qweight, scale, zero_point, bias, activation):
    _validate_common(WEIGHT_OP, x, qweight, scale, bias, activation)
    if zero_point is not None:
        check_tensor(WEIGHT_OP, "zero_point", zero_point, dtypes=(torch.int8,), dims=2)
        if zero_point.shape != scale.shape or zero_point.device != x.device:
            raise ValueError(f"{WEIGHT_OP}: argument 'zero_point' must have the shape of 'scale' "
                             f"{tuple(scale.shape)} on {x.device}, got {tuple(zero_point.shape)} on {zero_point.device}")


def check_act_absmax(op, x, act_absmax):
    """act_absmax (W8A8): None, or fp32 of x's leading shape on x's device."""
    if act_absmax is not None:
        check_tensor(op, "act_absmax", act_absmax, dtypes=(torch.float32,))
        if act_absmax.shape != x.shape[:-1] or act_absmax.device != x.device:
            raise ValueError(f"{op}: argument 'act_absmax' must have x's leading shape "
                             f"{tuple(x.shape[:-1])} on {x.device}, got {tuple(act_absmax.shape)} on "
                             f"{act_absmax.device}")


def validate_dynamic(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
    _validate_common(DYNAMIC_OP, x, qweight, scale, bias, activation)
    activation_qmax(act_bits, DYNAMIC_OP, "act_bits")
    check_act_absmax(DYNAMIC_OP, x, act_absmax)
    if scale.shape[1] != 1:
        raise ValueError(f"{DYNAMIC_OP}: argument 'scale' must be per channel, shape [{qweight.shape[0]}, 1]; "
                         f"got {tuple(scale.shape)} (per-group weights need int8_weight_linear)")


def _out_shape(x, n):
    return (*x.shape[:-1], n)


# ----------------------------------------------------------------------------- weight-only

def _weight_only_signature(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                           zero_point: torch.Tensor | None, bias: torch.Tensor | None,
                           activation: str) -> torch.Tensor: ...


def _out_shape_of(x, qweight, *rest):
    return _out_shape(x, qweight.shape[0])


WEIGHT_ONLY = define_op(WEIGHT_OP, _weight_only_signature, validate_weight_only, _out_shape_of)
WEIGHT_ONLY_BACKENDS = WEIGHT_ONLY.backends
register_frozen_weight_autograd(WEIGHT_ONLY, int8_rowmajor.weight_only_dense, bias_at=4, activation_at=5)
int8_weight_linear_op = WEIGHT_ONLY.torch_op


def int8_weight_linear(x, qweight, scale, zero_point=None, bias=None, activation="none"):
    """act(x @ dequant(qweight)^T + bias) on the best backend for x's device."""
    return WEIGHT_ONLY(x, qweight, scale, zero_point, bias, activation)


def weight_only_reference(x, qweight, scale, zero_point, bias, activation):
    w = dequantize_weight(qweight, scale, zero_point)
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return reference_activation(y, activation).to(x.dtype)


int8_rowmajor.register_weight_only_paths(WEIGHT_ONLY_BACKENDS)
WEIGHT_ONLY_BACKENDS.register("reference", lambda *args: None, weight_only_reference)


# ----------------------------------------------------------------------------- dynamic (W8A8)

def _dynamic_signature(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                       activation: str, act_bits: int = 8, act_absmax: torch.Tensor | None = None) -> torch.Tensor: ...


DYNAMIC = define_op(DYNAMIC_OP, _dynamic_signature, validate_dynamic, _out_shape_of)
DYNAMIC_BACKENDS = DYNAMIC.backends
register_frozen_weight_autograd(DYNAMIC, int8_rowmajor.dynamic_dense, bias_at=3, activation_at=4)
int8_dynamic_linear_op = DYNAMIC.torch_op


def int8_dynamic_linear(x, qweight, scale, bias=None, activation="none", act_bits=8, act_absmax=None):
    """act((quant(x) @ qweight^T) * row_scale * col_scale + bias) on the best backend;
    x quantised per token to act_bits (8: [-127, 127], 7: [-63, 63]), against act_absmax
    (x's leading shape, fp32) when given, else each token's own absmax."""
    return DYNAMIC(x, qweight, scale, bias, activation, act_bits, act_absmax)


def dynamic_reference(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
    """Exact integer products (fp64 holds int8·int8 sums exactly), then the rescale."""
    k = qweight.shape[1]
    xq, x_scale = quantize_activation_per_token(as_rows(x, k), act_bits, absmax_rows(act_absmax))
    acc = xq.double() @ qweight.double().t()
    y = acc * x_scale.double()[:, None] * scale.double().reshape(1, -1)
    if bias is not None:
        y = y + bias.double()
    y = reference_activation(y, activation).float()  # via fp32, as the kernels round
    return y.to(x.dtype).reshape(_out_shape(x, qweight.shape[0]))


int8_rowmajor.register_dynamic_paths(DYNAMIC_BACKENDS)
DYNAMIC_BACKENDS.register("reference", lambda *args: None, dynamic_reference)
