"""Weight format "int8-rowmajor": int8 codes per output channel or per group (bigperf.quant).

What a layer holds (Int8Linear, and what every Int8Linear saves): qweight [N, K] int8,
scale [N, G] fp32 (G = 1 per channel, else K / group_size), zero_point [N, G] int8 or None
(symmetric). W8A8 (int8_dynamic_linear) takes symmetric per-channel weights only.

This module is the format's one home: its name, version and buffers, packing, the candidate
paths that compute with it (for int8_weight_linear and int8_dynamic_linear, on each device),
and its ONNX lowerings. The ops themselves (schema, validation, reference) are in
bigperf/ops/int8_linear.py; the quantisation math is bigperf.quant.
"""

from __future__ import annotations

import functools
import math

import torch

from bigperf import _ext
from bigperf.formats._shard import bias_once, cat_rows, check_k, row_slice, shard_range
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.common import (BF16_PANEL_VARIANT, as_rows, bf16_panel_why_not, cpu_why_not, cuda_why_not, fp32_bias,
                                panel_why_not, triton_why_not)
from bigperf.ops.onnx_lowering import BLOCKED_QUANT_OPSET, current_opset, onnx_linear, onnx_lowering, symbolic
from bigperf.ops.torch_paths import copy_linear, copy_rows, register_float_copy_path, register_torch_paths, torch_linear
from bigperf.ops.validation import DTYPE_CODES
from bigperf.quant import (
    absmax_rows,
    activation_qmax,
    dequantize_weight,
    dequantize_weight_into,
    quantize_activation_per_token,
    quantize_weight,
)

NAME = "int8-rowmajor"
VERSION = 1  # bumped whenever the packed form changes; load refuses others
BUFFERS = ("qweight", "scale", "zero_point")


def pack(weight: torch.Tensor, group_size: int | None = None, symmetric: bool = True) -> tuple:
    """(qweight, scale, zero_point) of a float [N, K] weight (bigperf.quant.quantize_weight)."""
    packed = quantize_weight(weight, group_size=group_size, symmetric=symmetric)
    return packed.qweight, packed.scale, packed.zero_point


def _out_shape(x, n):
    return (*x.shape[:-1], n)


# ----------------------------------------------------------------------------- candidate paths

def _weight_only_cpu_why_not(x, qweight, scale, zero_point, bias, activation):
    return cpu_why_not(x, "int8_weight_linear")


def _weight_only_cpu_panel_why_not(x, qweight, scale, zero_point, bias, activation):
    return panel_why_not(x, qweight.shape[1], "int8_weight_linear_panel")


def _weight_only_cpu_bf16_why_not(x, qweight, scale, zero_point, bias, activation):
    return bf16_panel_why_not(x, qweight.shape[1], "int8_weight_linear_panel_bf16", torch.bfloat16)


def _weight_only_cpu_run(x, qweight, scale, zero_point, bias, activation, kernel="int8_weight_linear"):
    """Our CPU kernels at any M: the dot-product form (`int8_weight_linear`, for the weight
    stream of decode) or the panel form (`int8_weight_linear_panel`, for arithmetic-bound M;
    `int8_weight_linear_panel_bf16` in bf16 arithmetic where the CPU has AVX512-BF16).
    The dispatcher times both against the torch paths on this machine."""
    n, k = qweight.shape
    x2 = as_rows(x, k)
    m = x2.shape[0]
    qw = qweight.contiguous()
    s = scale.contiguous()
    z = zero_point.contiguous() if zero_point is not None else None
    b = fp32_bias(bias)
    out = torch.empty((m, n), dtype=x.dtype)
    getattr(_ext.cpu_module(), kernel)(
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


def weight_only_torch_linear(x, n: int, k: int, dtype: torch.dtype, codes_into, codes_of, scale_rows, zero_rows,
                             col_scale, bias, activation) -> torch.Tensor:
    """PyTorch's GEMM in `dtype` on a W8A16 weight dequantised a chunk of rows at a time, from
    any held order: codes_into(out, r0, r1) converts rows' codes into out, codes_of(r0, r1)
    gives them as int8 [rows, K], scale_rows / zero_rows(r0, r1) their [rows, G] scales and
    zero points (or None); col_scale: the [N] scales of a symmetric per-channel weight, else None."""
    if col_scale is not None and dtype != torch.float16:
        # Symmetric per channel: the scale is a per-column factor of the output, applied
        # there (M x N multiplies, not N x K): the weight's codes are only converted.
        # Not in fp16: sums of x times raw codes (up to 127) overflow its range (65504)
        # where the scaled weight's do not.
        return torch_linear(x, n, k, dtype, rows=codes_into, bias=bias, activation=activation, col_scale=col_scale)

    def rows(out, r0, r1):
        dequantize_weight_into(out, codes_of(r0, r1), scale_rows(r0, r1), zero_rows(r0, r1))
    return torch_linear(x, n, k, dtype, rows=rows, bias=bias, activation=activation)


# PyTorch's GEMM on the weight dequantised a chunk of rows at a time, in fp32 or in x's half dtype.
def _weight_only_torch_run(dtype):
    def run(x, qweight, scale, zero_point, bias, activation):
        n, k = qweight.shape
        per_channel = scale.shape[1] == 1 and zero_point is None
        return weight_only_torch_linear(
            x, n, k, dtype, copy_rows(qweight), lambda r0, r1: qweight[r0:r1], lambda r0, r1: scale[r0:r1],
            lambda r0, r1: zero_point[r0:r1] if zero_point is not None else None,
            scale if per_channel else None, bias, activation)
    return run


# The CPU W8A8 kernel sums int8 x int8 products in int32 (kInt8DynamicMaxK, csrc/cpu/int8_linear.h):
# exact up to this K, refused beyond it.
CPU_DYNAMIC_MAX_K = (1 << 31) // (128 * 128) - 1


def dynamic_cpu_why_not(x, k: int, kernel: str) -> str | None:
    """Why bigperf._C's W8A8 `kernel` cannot take x against K = k, or None."""
    if k > CPU_DYNAMIC_MAX_K:
        return f"K = {k} exceeds {CPU_DYNAMIC_MAX_K}, past which the kernel's int32 sums of int8 products may overflow"
    return cpu_why_not(x, kernel)


def _dynamic_cpu_why_not(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
    return dynamic_cpu_why_not(x, qweight.shape[1], "int8_dynamic_linear")


# From this many rows the AVX2 W8A8 kernel runs its GEMM (kGemmMinM in int8_dynamic_avx2.cpp);
# its dot form in row blocks is the other candidate there (cpu:dot).
AVX2_DYNAMIC_GEMM_MIN_ROWS = 8


def _dynamic_cpu_dot_why_not(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
    reason = _dynamic_cpu_why_not(x, qweight, scale, bias, activation, act_bits, act_absmax)
    if reason is not None:
        return reason
    if _ext.cpu_isa() != "avx2":
        return f"the dot form at any M is the AVX2 kernel's; this CPU runs the {_ext.cpu_isa()} path's one form"
    rows = x.numel() // qweight.shape[1] if qweight.shape[1] else 0
    if rows < AVX2_DYNAMIC_GEMM_MIN_ROWS:
        return f"{rows} rows of x: below {AVX2_DYNAMIC_GEMM_MIN_ROWS} the cpu path runs the dot form already"
    return None


def _dynamic_cpu_run(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None,
                     kernel="int8_dynamic_linear"):
    """Our CPU kernel: its own choice of form (`int8_dynamic_linear`), or on AVX2 the dot
    form in row blocks at any M (`int8_dynamic_linear_dot`); the dispatcher times both."""
    n, k = qweight.shape
    x2 = as_rows(x, k)
    m = x2.shape[0]
    qw = qweight.contiguous()
    s = scale.contiguous()
    b = fp32_bias(bias)
    absmax = absmax_rows(act_absmax)
    out = torch.empty((m, n), dtype=x.dtype)
    getattr(_ext.cpu_module(), kernel)(
        _ext.cpu_isa(), x2.data_ptr(), x2.stride(0), DTYPE_CODES[x.dtype],
        qw.data_ptr(), qw.stride(0), s.data_ptr(), b.data_ptr() if b is not None else 0,
        out.data_ptr(), n, m, n, k, ACTIVATIONS.index(activation), torch.get_num_threads(), act_bits,
        absmax.data_ptr() if absmax is not None else 0)
    return out if x.dim() == 2 else out.reshape(_out_shape(x, n))


def _dynamic_triton_why_not(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
    return triton_why_not(x, "int8_matmul")


def _dynamic_triton_run(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
    from bigperf.kernels.int8_matmul import (
        int8_dynamic_linear as triton_int8_dynamic_linear,
    )
    n, k = qweight.shape
    out = triton_int8_dynamic_linear(x.reshape(-1, k), qweight, scale, fp32_bias(bias), activation, act_bits,
                                     absmax_rows(act_absmax))
    return out.reshape(_out_shape(x, n))


# W8A8 with PyTorch's GEMM: x quantised per token as the kernel does, then the integer codes
# of x and of the weight multiplied in fp32 or bf16 (both hold int8 codes exactly; the GEMM
# accumulates in fp32), then the row and column scales: the kernel's math, not a float GEMM.
def dynamic_torch_linear(x, n: int, k: int, dtype: torch.dtype, codes_into, scale, bias, activation, act_bits,
                         act_absmax) -> torch.Tensor:
    """That GEMM from any held order: codes_into(out, r0, r1) converts weight rows' codes into out."""
    xq, x_scale = quantize_activation_per_token(as_rows(x, k), act_bits, absmax_rows(act_absmax))
    return torch_linear(x, n, k, dtype, rows=codes_into, bias=bias, activation=activation, x_rows=xq,
                        row_scale=x_scale, col_scale=scale)


def _dynamic_torch_run(dtype):
    def run(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
        n, k = qweight.shape
        return dynamic_torch_linear(x, n, k, dtype, copy_rows(qweight), scale, bias, activation, act_bits, act_absmax)
    return run


def float_weight(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 weight_only: bool) -> torch.Tensor:
    """What torch:copy multiplies by, in fp32: W8A16 the dequantised weight; W8A8 the int8
    codes themselves (its math multiplies x's codes by the weight's, then scales)."""
    if weight_only:
        return dequantize_weight(qweight, scale, zero_point).to(torch.float32).contiguous()
    return qweight.to(torch.float32)


# ----------------------------------------------------------------------------- for the W8A16 layouts
# w8a16_cuda and w8a16_cpu hold the per-group tensors (scale [N, G], zero_point [N, G])
# group-major, and their ops take (x, weight, scale, zero, n, k, group_size, bias, activation).

def group_major(t: torch.Tensor, np_: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[N, G] -> [G, Np] (in `dtype`, default t's), zero past N: a group's columns contiguous."""
    out = torch.zeros((t.shape[1], np_), dtype=dtype or t.dtype, device=t.device)
    out[:, :t.shape[0]] = t.t()
    return out


def from_group_major(t: torch.Tensor, n: int) -> torch.Tensor:
    """The [N, G] tensor group_major laid out (a new contiguous tensor, t's dtype)."""
    return t[:, :n].t().contiguous()


def weight_only_layout_stand_ins(x, weight, scale, zero, n, k, group_size, bias, activation) -> tuple:
    """int8_weight_linear's arguments for a W8A16 layout op's call, with meta tensors of the
    canonical shapes and dtypes for the weight (a why_not never unpacks anything)."""
    groups = k // group_size if group_size else 1
    return (x, torch.empty(n, k, dtype=torch.int8, device="meta"), torch.empty(n, groups, device="meta"),
            None if zero is None else torch.empty(n, groups, dtype=torch.int8, device="meta"), bias, activation)


def weight_only_dense(x, qweight, scale, zero_point, bias, activation) -> torch.Tensor:
    """The weight int8_weight_linear multiplies by, in fp32, from its arguments (its backward)."""
    return float_weight(qweight, scale, zero_point, weight_only=True)


def dynamic_dense(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None) -> torch.Tensor:
    """The dequantised weight of int8_dynamic_linear's arguments, in fp32: its backward's
    (the gradient passes straight through x's quantisation)."""
    return float_weight(qweight, scale, None, weight_only=True)


def _weight_only_copy_run(x, qweight, scale, zero_point, bias, activation):
    return copy_linear(x, qweight, bias=bias, activation=activation)


def dynamic_copy_linear(x, key: torch.Tensor, k: int, scale, bias, activation, act_bits=8, act_absmax=None):
    """W8A8 on the float copy attached to `key` (the tensor the op received as its weight:
    qweight here, a layout's weight elsewhere): x's codes times the weight's, then the scales."""
    xq, x_scale = quantize_activation_per_token(as_rows(x, k), act_bits, absmax_rows(act_absmax))
    return copy_linear(x, key, bias=bias, activation=activation, x_rows=xq, row_scale=x_scale, col_scale=scale)


def _dynamic_copy_run(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
    return dynamic_copy_linear(x, qweight, qweight.shape[1], scale, bias, activation, act_bits, act_absmax)


def register_weight_only_paths(table) -> None:
    """The paths of int8_weight_linear (besides the reference) on this format."""
    table.register("cpu", _weight_only_cpu_why_not, _weight_only_cpu_run)
    table.register("cpu", _weight_only_cpu_panel_why_not,
                   functools.partial(_weight_only_cpu_run, kernel="int8_weight_linear_panel"), variant="panel")
    table.register("cpu", _weight_only_cpu_bf16_why_not,
                   functools.partial(_weight_only_cpu_run, kernel="int8_weight_linear_panel_bf16"),
                   variant=BF16_PANEL_VARIANT)
    table.register("cuda", _weight_only_cuda_why_not, _weight_only_cuda_run)
    table.register("triton", _weight_only_triton_why_not, _weight_only_triton_run)
    register_torch_paths(table, _weight_only_torch_run)
    register_float_copy_path(table, _weight_only_copy_run)


def register_dynamic_paths(table) -> None:
    """The paths of int8_dynamic_linear (besides the reference) on this format."""
    table.register("cpu", _dynamic_cpu_why_not, _dynamic_cpu_run)
    table.register("cpu", _dynamic_cpu_dot_why_not,
                   functools.partial(_dynamic_cpu_run, kernel="int8_dynamic_linear_dot"), variant="dot")
    table.register("triton", _dynamic_triton_why_not, _dynamic_triton_run)
    register_torch_paths(table, _dynamic_torch_run, exact_int8=True)
    register_float_copy_path(table, _dynamic_copy_run)


# ----------------------------------------------------------------------------- ONNX

def dequantize_linear(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
    """DequantizeLinear of [N, K] int8 codes with [N, G] scales: an fp32 [N, K] weight."""
    n, k = qweight.shape
    groups = scale.shape[1]
    if groups == 1:
        inputs = [qweight, scale.reshape(n)] + ([zero_point.reshape(n)] if zero_point is not None else [])
        return symbolic("DequantizeLinear", inputs, {"axis": 0}, torch.float32, (n, k))
    group = k // groups
    if current_opset() >= BLOCKED_QUANT_OPSET:
        inputs = [qweight, scale] + ([zero_point] if zero_point is not None else [])
        return symbolic("DequantizeLinear", inputs, {"axis": 1, "block_size": group}, torch.float32, (n, k))
    rows = n * groups
    inputs = [qweight.reshape(rows, group), scale.reshape(rows)]
    if zero_point is not None:
        inputs.append(zero_point.reshape(rows))
    return symbolic("DequantizeLinear", inputs, {"axis": 0}, torch.float32, (rows, group)).reshape(n, k)


@onnx_lowering("bigperf.int8_weight_linear")
def lower_weight_only(x, qweight, scale, zero_point, bias, activation):
    return onnx_linear(x, dequantize_linear(qweight, scale, zero_point), bias, activation)


@onnx_lowering("bigperf.int8_dynamic_linear")
def lower_dynamic(x, qweight, scale, bias, activation, act_bits=8, act_absmax=None):
    n, k = qweight.shape
    qmax = float(activation_qmax(act_bits, "bigperf.int8_dynamic_linear", "act_bits"))
    rows = x.reshape(-1, k).float()
    absmax = rows.abs().amax(dim=1) if act_absmax is None else act_absmax.reshape(-1).float()
    # Same expression as bigperf.quant.quantize_activation_per_token: the codes must match.
    x_scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    # An explicit int8 zero point: without one QuantizeLinear produces uint8 (before opset 21).
    zero = torch.zeros_like(x_scale, dtype=torch.int8)
    codes = symbolic("QuantizeLinear", [rows, x_scale, zero], {"axis": 0}, torch.int8, rows.shape)
    x_dq = symbolic("DequantizeLinear", [codes, x_scale, zero], {"axis": 0}, torch.float32, rows.shape)
    y = onnx_linear(x_dq, dequantize_linear(qweight, scale, None), bias, activation)
    return y.reshape(*x.shape[:-1], n).to(x.dtype)


# ----------------------------------------------------------------------------- shard rules

def shard_columns(tensors: tuple, bias, rank: int, world: int) -> tuple[tuple, torch.Tensor | None]:
    """Rank's column-wise shard (output features) of (qweight, scale, zero_point) and the
    bias: whole rows of codes with their own scales and zero points (bigperf/formats/_shard.py)."""
    qweight, scale, zero_point = tensors
    lo, hi = shard_range("bigperf.formats.int8_rowmajor.shard_columns", "N (output features)", qweight.shape[0],
                         rank, world)
    return (qweight[lo:hi], scale[lo:hi], row_slice(zero_point, lo, hi)), row_slice(bias, lo, hi)


def shard_rows(tensors: tuple, bias, k: int, rank: int, world: int) -> tuple[tuple, torch.Tensor | None]:
    """Rank's row-wise shard (input features) of (qweight, scale, zero_point): whole
    quantisation groups with their scales; per-channel scales and zero points apply to every
    column, so each rank keeps them whole. The bias on rank 0 only."""
    where = "bigperf.formats.int8_rowmajor.shard_rows"
    qweight, scale, zero_point = tensors
    check_k(where, k, qweight.shape[1])
    groups = scale.shape[1]
    group = k // groups
    lo, hi = shard_range(where, "K (input features)", k, rank, world, unit=1 if groups == 1 else group,
                         unit_name="quantisation group")
    if groups > 1:
        scale, zero_point = scale[:, lo // group:hi // group], None if zero_point is None else \
            zero_point[:, lo // group:hi // group]
    return (qweight[:, lo:hi], scale, zero_point), bias_once(bias, rank)


def unshard_columns(shards: list[tuple], biases: list) -> tuple[tuple, torch.Tensor | None]:
    """The unsharded (qweight, scale, zero_point) and bias of every rank's shard_columns."""
    return tuple(cat_rows([s[i] for s in shards]) for i in range(3)), cat_rows(biases)


def unshard_rows(shards: list[tuple], biases: list, k: int,
                 group_size: int | None) -> tuple[tuple, torch.Tensor | None]:
    """The unsharded (qweight, scale, zero_point) and bias of every rank's shard_rows: codes
    side by side along K, group scales too; per-channel scales (group_size None: one [N, 1]
    per rank can also be one group per rank, so the layer says) are every rank's, rank 0's."""
    qweight = torch.cat([s[0] for s in shards], dim=1)
    if group_size is None:
        return (qweight, shards[0][1], shards[0][2]), biases[0]
    zero_point = None if shards[0][2] is None else torch.cat([s[2] for s in shards], dim=1)
    return (qweight, torch.cat([s[1] for s in shards], dim=1), zero_point), biases[0]


def shard_dims(style: str, per_channel: bool) -> tuple[int | None, ...]:
    """The dim of each of (qweight, scale, zero_point) that a `style` shard splits, None
    where every rank holds it whole (per-channel scales and zero points, row-wise)."""
    if style == "colwise":
        return 0, 0, 0
    return (1, None, None) if per_channel else (1, 1, 1)
