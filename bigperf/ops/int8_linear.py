"""The int8 linear ops.

torch.ops.bigperf.int8_weight_linear(x, qweight, scale, zero_point, bias, activation)
    W8A16: y = act(x @ dequant(qweight)^T + bias), the dequantisation inside the GEMM's
    inner loop; x fp32/fp16/bf16, output in x's dtype.
torch.ops.bigperf.int8_dynamic_linear(x, qweight, scale, bias, activation, act_bits=8)
    W8A8: x quantised per token (row absmax) at run time, int8×int8 → int32, rescaled by
    the row and column scales, then bias + act. act_bits=8: x codes in [-127, 127];
    act_bits=7: [-63, 63] (fbgemm's reduce_range accuracy class, ~7 dB less SQNR; faster
    on AVX2 CPUs, whose kernel then multiplies u8 × s8 with vpmaddubsw).

Layouts (bigperf/quant.py): qweight [N, K] int8, scale [N, G] fp32 (G = 1 per channel,
else K / group_size), zero_point [N, G] int8 or None. W8A8 takes symmetric per-channel
weights only.
"""

from __future__ import annotations

import math

import torch

from bigperf import _ext
from bigperf.ops.activations import ACTIVATIONS, activation_code, apply_activation
from bigperf.ops.common import as_rows, cpu_why_not, cuda_why_not, fp32_bias, triton_why_not
from bigperf.ops.define import define_op
from bigperf.ops.torch_paths import copy_rows, register_torch_paths, torch_linear
from bigperf.ops.validation import DTYPE_CODES, check_float_tensor, check_tensor
from bigperf.quant import (
    GROUP_SIZES,
    activation_qmax,
    dequantize_weight,
    dequantize_weight_into,
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


def validate_weight_only(x, qweight, scale, zero_point, bias, activation):
    _validate_common(WEIGHT_OP, x, qweight, scale, bias, activation)
    if zero_point is not None:
        check_tensor(WEIGHT_OP, "zero_point", zero_point, dtypes=(torch.int8,), dims=2)
        if zero_point.shape != scale.shape or zero_point.device != x.device:
            raise ValueError(f"{WEIGHT_OP}: argument 'zero_point' must have the shape of 'scale' "
                             f"{tuple(scale.shape)} on {x.device}, got {tuple(zero_point.shape)} on {zero_point.device}")


def validate_dynamic(x, qweight, scale, bias, activation, act_bits=8):
    _validate_common(DYNAMIC_OP, x, qweight, scale, bias, activation)
    activation_qmax(act_bits, DYNAMIC_OP, "act_bits")
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
int8_weight_linear_op = WEIGHT_ONLY.custom_op


def int8_weight_linear(x, qweight, scale, zero_point=None, bias=None, activation="none"):
    """act(x @ dequant(qweight)^T + bias) on the best backend for x's device."""
    return WEIGHT_ONLY(x, qweight, scale, zero_point, bias, activation)


def weight_only_reference(x, qweight, scale, zero_point, bias, activation):
    w = dequantize_weight(qweight, scale, zero_point)
    y = x.float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return apply_activation(y, activation).to(x.dtype)


def _weight_only_cpu_why_not(x, qweight, scale, zero_point, bias, activation):
    return cpu_why_not(x, "int8_weight_linear")


def _weight_only_cpu_run(x, qweight, scale, zero_point, bias, activation):
    """Our kernel at any M (large M goes to the torch paths where those are faster here)."""
    n, k = qweight.shape
    x2 = as_rows(x, k)
    m = x2.shape[0]
    qw = qweight.contiguous()
    s = scale.contiguous()
    z = zero_point.contiguous() if zero_point is not None else None
    b = fp32_bias(bias)
    out = torch.empty((m, n), dtype=x.dtype)
    _ext.cpu_module().int8_weight_linear(
        _ext.cpu_isa(), x2.data_ptr(), x2.stride(0), DTYPE_CODES[x.dtype],
        qw.data_ptr(), qw.stride(0), s.data_ptr(), z.data_ptr() if z is not None else 0, s.shape[1],
        b.data_ptr() if b is not None else 0, out.data_ptr(), n, m, n, k,
        ACTIVATIONS.index(activation), torch.get_num_threads())
    return out if x.dim() == 2 else out.reshape(_out_shape(x, n))


def _weight_only_triton_why_not(x, qweight, scale, zero_point, bias, activation):
    return triton_why_not(x, "int8_matmul")


def _weight_only_triton_run(x, qweight, scale, zero_point, bias, activation):
    from bigperf.kernels.int8_matmul import (
        int8_weight_linear as triton_int8_weight_linear,
    )
    n, k = qweight.shape
    out = triton_int8_weight_linear(x.reshape(-1, k), qweight, scale, zero_point, fp32_bias(bias), activation)
    return out.reshape(_out_shape(x, n))


# CUDA W8A16 (csrc/cuda/w8a16_linear.cu): tensor cores, weight re-laid out once per tensor
# version (bigperf/cuda_layouts.py; an Int8Linear on a GPU owns that layout instead:
# bigperf/ops/int8_layout_linear.py). Its tiles are built for decode-sized M: beyond this
# many rows it would re-read the weight once per 32-row block, where the Triton kernel's
# large tiles serve better.
CUDA_WEIGHT_ONLY_MAX_M = 64


def weight_only_cuda_why_not(x, k: int) -> str | None:
    """Why the CUDA W8A16 kernel cannot take x (K = k), or None."""
    reason = cuda_why_not(x, "w8a16_linear")
    if reason:
        return reason
    if x.dtype not in (torch.float16, torch.bfloat16):
        return f"needs fp16 or bf16 x, got {x.dtype}"
    if k % 8:
        return f"needs K % 8 == 0 for 16-byte loads of x, got K = {k}"
    m = math.prod(x.shape[:-1])
    if m > CUDA_WEIGHT_ONLY_MAX_M:
        return f"built for M <= {CUDA_WEIGHT_ONLY_MAX_M} rows (decode), got M = {m}"
    return None


def _weight_only_cuda_why_not(x, qweight, scale, zero_point, bias, activation):
    return weight_only_cuda_why_not(x, qweight.shape[1])


def _weight_only_cuda_run(x, qweight, scale, zero_point, bias, activation):
    from bigperf.ops.cuda_launch import launch_w8a16
    return launch_w8a16(x, qweight, scale, zero_point, fp32_bias(bias), ACTIVATIONS.index(activation))


WEIGHT_ONLY_BACKENDS.register("cpu", _weight_only_cpu_why_not, _weight_only_cpu_run)
WEIGHT_ONLY_BACKENDS.register("cuda", _weight_only_cuda_why_not, _weight_only_cuda_run)
WEIGHT_ONLY_BACKENDS.register("triton", _weight_only_triton_why_not, _weight_only_triton_run)


# PyTorch's GEMM on the weight dequantised a chunk of rows at a time, in fp32 or in x's half dtype.
def _weight_only_torch_run(dtype):
    def run(x, qweight, scale, zero_point, bias, activation):
        n, k = qweight.shape
        if scale.shape[1] == 1 and zero_point is None:
            # Symmetric per channel: the scale is a per-column factor of the output, applied
            # there (M x N multiplies, not N x K): the weight's codes are only converted.
            return torch_linear(x, n, k, dtype, rows=copy_rows(qweight), bias=bias,
                                activation=activation, col_scale=scale)

        def rows(out, r0, r1):
            dequantize_weight_into(out, qweight[r0:r1], scale[r0:r1],
                                   zero_point[r0:r1] if zero_point is not None else None)
        return torch_linear(x, n, k, dtype, rows=rows, bias=bias, activation=activation)
    return run


register_torch_paths(WEIGHT_ONLY_BACKENDS, _weight_only_torch_run)
WEIGHT_ONLY_BACKENDS.register("reference", lambda *args: None, weight_only_reference)


# ----------------------------------------------------------------------------- dynamic (W8A8)

def _dynamic_signature(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                       activation: str, act_bits: int = 8) -> torch.Tensor: ...


DYNAMIC = define_op(DYNAMIC_OP, _dynamic_signature, validate_dynamic, _out_shape_of)
DYNAMIC_BACKENDS = DYNAMIC.backends
int8_dynamic_linear_op = DYNAMIC.custom_op


def int8_dynamic_linear(x, qweight, scale, bias=None, activation="none", act_bits=8):
    """act((quant(x) @ qweight^T) * row_scale * col_scale + bias) on the best backend;
    x quantised per token to act_bits (8: [-127, 127], 7: [-63, 63])."""
    return DYNAMIC(x, qweight, scale, bias, activation, act_bits)


def dynamic_reference(x, qweight, scale, bias, activation, act_bits=8):
    """Exact integer products (fp64 holds int8·int8 sums exactly), then the rescale."""
    k = qweight.shape[1]
    xq, x_scale = quantize_activation_per_token(x.reshape(-1, k), act_bits)
    acc = xq.double() @ qweight.double().t()
    y = acc * x_scale.double()[:, None] * scale.double().reshape(1, -1)
    if bias is not None:
        y = y + bias.double()
    y = apply_activation(y.float(), activation)
    return y.to(x.dtype).reshape(_out_shape(x, qweight.shape[0]))


def _dynamic_cpu_why_not(x, qweight, scale, bias, activation, act_bits=8):
    return cpu_why_not(x, "int8_dynamic_linear")


def _dynamic_cpu_run(x, qweight, scale, bias, activation, act_bits=8):
    n, k = qweight.shape
    x2 = as_rows(x, k)
    m = x2.shape[0]
    qw = qweight.contiguous()
    s = scale.contiguous()
    b = fp32_bias(bias)
    out = torch.empty((m, n), dtype=x.dtype)
    _ext.cpu_module().int8_dynamic_linear(
        _ext.cpu_isa(), x2.data_ptr(), x2.stride(0), DTYPE_CODES[x.dtype],
        qw.data_ptr(), qw.stride(0), s.data_ptr(), b.data_ptr() if b is not None else 0,
        out.data_ptr(), n, m, n, k, ACTIVATIONS.index(activation), torch.get_num_threads(), act_bits)
    return out if x.dim() == 2 else out.reshape(_out_shape(x, n))


def _dynamic_triton_why_not(x, qweight, scale, bias, activation, act_bits=8):
    return triton_why_not(x, "int8_matmul")


def _dynamic_triton_run(x, qweight, scale, bias, activation, act_bits=8):
    from bigperf.kernels.int8_matmul import (
        int8_dynamic_linear as triton_int8_dynamic_linear,
    )
    n, k = qweight.shape
    out = triton_int8_dynamic_linear(x.reshape(-1, k), qweight, scale, fp32_bias(bias), activation, act_bits)
    return out.reshape(_out_shape(x, n))


DYNAMIC_BACKENDS.register("cpu", _dynamic_cpu_why_not, _dynamic_cpu_run)
DYNAMIC_BACKENDS.register("triton", _dynamic_triton_why_not, _dynamic_triton_run)


# W8A8 with PyTorch's GEMM: x quantised per token as the kernel does, then the integer codes
# of x and of the weight multiplied in fp32 or bf16 (both hold int8 codes exactly; the GEMM
# accumulates in fp32), then the row and column scales: the kernel's math, not a float GEMM.
def _dynamic_torch_run(dtype):
    def run(x, qweight, scale, bias, activation, act_bits=8):
        n, k = qweight.shape
        xq, x_scale = quantize_activation_per_token(as_rows(x, k), act_bits)
        return torch_linear(x, n, k, dtype, rows=copy_rows(qweight), bias=bias,
                            activation=activation, x_rows=xq, row_scale=x_scale, col_scale=scale)
    return run


register_torch_paths(DYNAMIC_BACKENDS, _dynamic_torch_run)
DYNAMIC_BACKENDS.register("reference", lambda *args: None, dynamic_reference)
