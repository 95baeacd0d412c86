"""Weight format "sparse24": 2:4 semi-structured sparsity, canonical (bigperf.sparsity).

What a layer holds (SparseLinear with pattern "2:4", and what every such layer saves):
values [N, K/2] (float32/float16/bfloat16, or int8 codes), meta [N, K/8] uint8 (per group
of 4 along K the two kept positions, two groups per byte), scale [N, 1] fp32 for int8 values
(else None). The pruning and packing math is bigperf.sparsity; the op (schema, validation,
reference) is bigperf/ops/sparse_linear.py. Here: the format's name, version and buffers,
the candidate paths that compute with it, its CUDA metadata layout and its ONNX lowering.

CUDA layout (pack_s24; read by csrc/cuda/sparse24_linear.cu, which reports the version it
reads as ``sparse24_requirements()["layout_version"]``; change both together), version 1:
  values [N, Kp/2], Kp = K rounded up to 32, zero padded (their order is already the
      compressed-operand order of mma.sp); when K % 32 == 0 the source tensor itself
      (contiguous, 16-byte aligned), not a copy.
  meta [ceil(N/16), Kp/32 * 16] int32 (uint32 bit patterns): per 16-row block and
      32-wide k block, 16 words; word 2g + p is the metadata register of lane 4g + p of
      mma.sp.m16n8k32 (sparsity selector 0): low 16 bits row g, high 16 bits row g + 8,
      each the 2-bit positions of logical k 16p .. 16p+15 (bigperf's two meta bytes for
      that range, little-endian). Padding groups hold positions (0, 1) (nibble 0x4): an
      all-zero nibble is invalid metadata for the tensor cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bigperf import _ext
from bigperf.formats import int8_rowmajor
from bigperf.formats._checks import check_arg, check_layout_version, round_up
from bigperf.formats._nonfinite import poison_nonfinite_rows
from bigperf.formats._shard import bias_once, cat_rows, check_k, row_slice, shard_range
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.common import bind_cpu_rows, cpu_why_not, cuda_why_not, fp32_bias, triton_why_not
from bigperf.ops.onnx_lowering import onnx_linear, onnx_lowering
from bigperf.ops.torch_paths import copy_linear, register_float_copy_path, register_torch_paths, torch_linear
from bigperf.ops.validation import DTYPE_CODES
from bigperf.sparsity import pack_24, pack_24_int8, unpack_24, unpack_24_into

NAME = "sparse24"
VERSION = 1  # of the canonical tensors; load refuses others
CUDA_LAYOUT_VERSION = 1
BUFFERS = ("values", "meta", "scale")


def pack(weight: torch.Tensor, values_dtype: torch.dtype, int8: bool) -> tuple:
    """(values, meta, scale) of a 2:4-sparse float [N, K] weight (scale None unless int8)."""
    if int8:
        packed = pack_24_int8(weight)
        return packed.values, packed.meta, packed.scale
    packed = pack_24(weight.to(values_dtype))
    return packed.values, packed.meta, None


# ----------------------------------------------------------------------------- candidate paths

INT8_CODE = 3  # values dtype code for int8 2:4 values in bigperf._C


def bind_cpu_24(entry: str, values, meta, scale, bias, activation, n: int, k: int):
    """A bigperf._C 2:4 kernel bound to everything but x (ops/common.bind_cpu_rows): `entry`
    "sparse24_linear" on the canonical tensors, or "sparse24_lanes_linear" on the CPU lane
    layout (no row strides)."""
    if not (values.is_contiguous() and meta.is_contiguous() and (scale is None or scale.is_contiguous())):
        # (bound contiguous copies would be second copies of the weight, kept)
        return lambda x: run_cpu_24(entry, x, values, meta, scale, bias, activation, n, k)
    b = fp32_bias(bias)
    code = INT8_CODE if values.dtype == torch.int8 else DTYPE_CODES[values.dtype]
    weight = ((values.data_ptr(), values.stride(0), code, meta.data_ptr(), meta.stride(0))
              if entry == "sparse24_linear" else (values.data_ptr(), code, meta.data_ptr()))
    return bind_cpu_rows(entry, (_ext.cpu_isa(),), (*weight, scale.data_ptr() if scale is not None else 0,
                                                    b.data_ptr() if b is not None else 0),
                         (ACTIVATIONS.index(activation), torch.get_num_threads()), n, k,
                         keep=(values, meta, scale, b))


def run_cpu_24(entry: str, x, values, meta, scale, bias, activation, n: int, k: int):
    """One call of a bigperf._C 2:4 kernel (see bind_cpu_24)."""
    return bind_cpu_24(entry, values.contiguous(), meta.contiguous(),
                       scale.contiguous() if scale is not None else None, bias, activation, n, k)(x)


def _cpu_24_run(x, values, meta, scale, bias, activation):
    return run_cpu_24("sparse24_linear", x, values, meta, scale, bias, activation, values.shape[0],
                      2 * values.shape[1])


def _cpu_24_bind(values, meta, scale, bias, activation):
    return bind_cpu_24("sparse24_linear", values, meta, scale, bias, activation, values.shape[0], 2 * values.shape[1])


def _triton_24_run(x, values, meta, scale, bias, activation):
    from bigperf.kernels.sparse_matmul import sparse24_linear as triton_sparse24_linear
    n, k = values.shape[0], values.shape[1] * 2
    return triton_sparse24_linear(x.reshape(-1, k), values, meta, scale, fp32_bias(bias), activation).reshape(
        *x.shape[:-1], n)


# CUDA 2:4 (csrc/cuda/sparse24_linear.cu): mma.sp on the sparse tensor cores, weight
# re-laid out once per tensor version (pack_s24 below). Float values only.
def _cuda_24_why_not(x, values, meta, scale, bias, activation):
    reason = cuda_why_not(x, "sparse24_linear")
    if reason:
        return reason
    if x.dtype not in (torch.float16, torch.bfloat16) or values.dtype != x.dtype:
        return (f"needs fp16 or bf16 x and values of x's dtype (int8 2:4 values are not served), "
                f"got {x.dtype} x, {values.dtype} values")
    return None


def _cuda_24_run(x, values, meta, scale, bias, activation):
    from bigperf.ops.cuda_launch import launch_sparse24
    out = launch_sparse24(x, values, meta, fp32_bias(bias), ACTIVATIONS.index(activation))
    return poison_nonfinite_rows(x, out)  # mma.sp never reads x at pruned slots


# PyTorch's GEMM on the weight unpacked to dense a chunk of rows at a time (int8 values
# dequantised with their scale), in fp32 or in a half dtype x or float values already have.
def _torch_24_run(dtype):
    def run(x, values, meta, scale, bias, activation):
        n, k = values.shape[0], 2 * values.shape[1]

        def rows(out, r0, r1):
            unpack_24_into(out, values[r0:r1], meta[r0:r1], scale[r0:r1] if scale is not None else None)
        return torch_linear(x, n, k, dtype, rows=rows, bias=bias, activation=activation)
    return run


def float_weight(values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The dense weight in fp32 (int8 values dequantised), for a layer that keeps a float copy."""
    return unpack_24(values, meta, scale, torch.float32)


def dense_weight(x, values, meta, scale, bias, activation) -> torch.Tensor:
    """The dense weight of sparse24_linear's arguments, in fp32 (its backward)."""
    return float_weight(values, meta, scale)


def _copy_run(x, values, meta, scale, bias, activation):
    return copy_linear(x, values, bias=bias, activation=activation)


def register_paths(table) -> None:
    """The paths of sparse24_linear (besides the reference) on this format."""
    table.register("cpu", lambda x, *rest: cpu_why_not(x, "sparse24_linear"), _cpu_24_run, bind=_cpu_24_bind)
    table.register("cuda", _cuda_24_why_not, _cuda_24_run)
    table.register("triton", lambda x, *rest: triton_why_not(x, "sparse_matmul"), _triton_24_run)
    register_torch_paths(table, _torch_24_run)
    register_float_copy_path(table, _copy_run)


# ----------------------------------------------------------------------------- CUDA layout

_S24_PACK_K, _S24_ROW_BLOCK = 32, 16


_S24_PAD_META_BYTE = 0x44  # two groups with kept positions (0, 1)


@dataclass(frozen=True)
class S24Layout:
    values: torch.Tensor  # [N, Kp/2]
    meta: torch.Tensor  # [ceil(N/16), Kp/32 * 16] int32
    n: int
    k: int
    version: int = CUDA_LAYOUT_VERSION


def pack_s24(values: torch.Tensor, meta: torch.Tensor) -> S24Layout:
    """bigperf.sparsity's 2:4 compressed weight in the mma.sp kernel's order."""
    function = "bigperf.formats.sparse24.pack_s24"
    check_arg(function, "values", values, (torch.float32, torch.float16, torch.bfloat16, torch.int8), 2)
    check_arg(function, "meta", meta, (torch.uint8,), 2)
    n, half = values.shape
    k = 2 * half
    if k % 8 or tuple(meta.shape) != (n, k // 8):
        raise ValueError(f"{function}: argument 'meta' must be [N, K/8] = [{n}, {k // 8}] with K % 8 == 0, "
                         f"got {tuple(meta.shape)} for values {tuple(values.shape)}")
    if meta.device != values.device:
        raise ValueError(f"{function}: argument 'meta' is on {meta.device} but 'values' is on {values.device}")
    kp = round_up(k, _S24_PACK_K)
    nb = -(-n // _S24_ROW_BLOCK)
    if kp == k and values.is_contiguous() and values.data_ptr() % 16 == 0:
        # Already the kernel's order with nothing to pad: share the layer's tensor rather
        # than keep a second copy of the largest part of the weight on the GPU.
        v = values
    else:
        v = torch.zeros((n, kp // 2), dtype=values.dtype, device=values.device)
        v[:, :half] = values
    b = torch.full((nb * _S24_ROW_BLOCK, kp // 8), _S24_PAD_META_BYTE, dtype=torch.int64, device=meta.device)
    b[:n, :k // 8] = meta.to(torch.int64)
    u16 = b[:, 0::2] | (b[:, 1::2] << 8)  # [Np16*16, Kp/16]: logical k 16w .. 16w+15
    # row 16 rb + 8 half + g, u16 column 2 kb + p -> word (rb, kb, g, p) = lo | hi << 16
    parts = u16.view(nb, 2, 8, kp // 32, 2)
    words = (parts[:, 0] | (parts[:, 1] << 16)).permute(0, 2, 1, 3)  # [nb, Kp/32, 8, 2]
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return S24Layout(v, words.reshape(nb, kp // 32 * 16).contiguous(), n, k)


def unpack_s24(layout: S24Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """The (values [N, K/2], meta [N, K/8] uint8) packed by pack_s24."""
    check_layout_version("bigperf.formats.sparse24.unpack_s24", layout, S24Layout, CUDA_LAYOUT_VERSION)
    n, k = layout.n, layout.k
    kp = round_up(k, _S24_PACK_K)
    nb = -(-n // _S24_ROW_BLOCK)
    words = layout.meta.to(torch.int64).view(nb, kp // 32, 8, 2) & 0xFFFFFFFF
    parts = torch.stack((words & 0xFFFF, words >> 16), dim=1).permute(0, 1, 3, 2, 4)  # [nb, 2, 8, Kp/32, 2]
    u16 = parts.reshape(nb * _S24_ROW_BLOCK, kp // 16)
    b = torch.stack((u16 & 0xFF, u16 >> 8), dim=2).reshape(nb * _S24_ROW_BLOCK, kp // 8)
    return layout.values[:, :k // 2].contiguous(), b[:n, :k // 8].to(torch.uint8).contiguous()


# ----------------------------------------------------------------------------- ONNX

def dense_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense [N, K] weight of 2:4 values/meta, in the values' dtype (int8 codes stay int8)."""
    n, half = values.shape
    k = 2 * half
    m = meta.to(torch.int64)
    nibbles = torch.stack((torch.remainder(m, 16), torch.div(m, 16, rounding_mode="floor")), dim=2).reshape(n, -1)
    # Arithmetic rather than bit operations: ONNX BitShift has no int64 form.
    positions = torch.stack((torch.remainder(nibbles, 4), torch.div(nibbles, 4, rounding_mode="floor")), dim=2)
    dense = torch.zeros(n, k // 4, 4, dtype=values.dtype, device=values.device)
    return dense.scatter(2, positions, values.reshape(n, k // 4, 2)).reshape(n, k)


@onnx_lowering("bigperf.sparse24_linear")
def lower(x, values, meta, scale, bias, activation):
    dense = dense_24(values, meta)
    if scale is not None:
        dense = int8_rowmajor.dequantize_linear(dense, scale, None)
    return onnx_linear(x, dense, bias, activation)


# ----------------------------------------------------------------------------- shard rules

def shard_columns(tensors: tuple, bias, rank: int, world: int) -> tuple[tuple, torch.Tensor | None]:
    """Rank's column-wise shard (output features) of (values, meta, scale) and the bias:
    whole rows (bigperf/formats/_shard.py)."""
    values, meta, scale = tensors
    lo, hi = shard_range("bigperf.formats.sparse24.shard_columns", "N (output features)", values.shape[0], rank,
                         world)
    return (values[lo:hi], meta[lo:hi], row_slice(scale, lo, hi)), row_slice(bias, lo, hi)


def shard_rows(tensors: tuple, bias, k: int, rank: int, world: int) -> tuple[tuple, torch.Tensor | None]:
    """Rank's row-wise shard (input features) of (values, meta, scale): whole groups of 4
    along K with their metadata, in whole meta bytes (one byte holds two groups, so a shard
    is a multiple of 8 wide); the per-row int8 scale applies to every column and stays
    whole. The bias on rank 0 only."""
    where = "bigperf.formats.sparse24.shard_rows"
    values, meta, scale = tensors
    check_k(where, k, 2 * values.shape[1])
    lo, hi = shard_range(where, "K (input features)", k, rank, world, unit=8,
                         unit_name="metadata byte's two 2:4 groups")
    return (values[:, lo // 2:hi // 2], meta[:, lo // 8:hi // 8], scale), bias_once(bias, rank)


def unshard_columns(shards: list[tuple], biases: list) -> tuple[tuple, torch.Tensor | None]:
    """The unsharded (values, meta, scale) and bias of every rank's shard_columns."""
    return tuple(cat_rows([s[i] for s in shards]) for i in range(3)), cat_rows(biases)


def unshard_rows(shards: list[tuple], biases: list, k: int) -> tuple[tuple, torch.Tensor | None]:
    """The unsharded (values, meta, scale) and bias of every rank's shard_rows: values and
    meta bytes side by side along K; the per-row scale is every rank's (rank 0's)."""
    return ((torch.cat([s[0] for s in shards], dim=1), torch.cat([s[1] for s in shards], dim=1), shards[0][2]),
            biases[0])


def shard_dims(style: str) -> tuple[int | None, ...]:
    """The dim of each of (values, meta, scale) that a `style` shard splits, None where
    every rank holds it whole (the per-row int8 scale, row-wise)."""
    return (0, 0, 0) if style == "colwise" else (1, 1, None)
