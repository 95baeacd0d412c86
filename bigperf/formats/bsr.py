"""Weight format "bsr": block-sparse rows, canonical (bigperf.sparsity).

What a layer holds (SparseLinear with pattern "block", and what every such layer saves):
values [nnz, bn, bk] (float32/float16/bfloat16), col_indices [nnz] int32 (each block's
column), row_ptr [N/bn + 1] int32 (each block row's first block). K is not recorded: the
layer knows it. The pruning and packing math is bigperf.sparsity; the op (schema,
validation, reference) is bigperf/ops/sparse_linear.py. Here: the format's name, version
and buffers, the candidate paths that compute with it and its ONNX lowering.
"""

from __future__ import annotations

import torch

from bigperf import _ext
from bigperf.formats._shard import bias_once, row_slice, shard_range
from bigperf.formats._nonfinite import poison_nonfinite_rows
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.common import bind_cpu_rows, cpu_why_not, fp32_bias, triton_why_not
from bigperf.ops.onnx_lowering import onnx_linear, onnx_lowering
from bigperf.ops.torch_paths import copy_linear, register_float_copy_path, register_torch_paths, torch_linear
from bigperf.ops.validation import DTYPE_CODES
from bigperf.sparsity import pack_bsr, unpack_bsr, unpack_bsr_into

NAME = "bsr"
VERSION = 1
BUFFERS = ("values", "col_indices", "row_ptr")


def pack(weight: torch.Tensor, block: tuple[int, int], values_dtype: torch.dtype) -> tuple:
    """(values, col_indices, row_ptr) of a float [N, K] weight's non-zero (bn, bk) blocks."""
    packed = pack_bsr(weight.to(values_dtype), block)
    return packed.values, packed.col_indices, packed.row_ptr


# ----------------------------------------------------------------------------- candidate paths

def bind_cpu_bsr(entry: str, values, col_indices, row_ptr, bias, activation, bn: int, bk: int):
    """A bigperf._C BSR kernel bound to everything but x (ops/common.bind_cpu_rows; K is x's
    last dimension): `entry` "block_sparse_linear" on the canonical values, or
    "block_sparse_lanes_linear" on the CPU lane layout (the same arguments)."""
    if not (values.is_contiguous() and col_indices.is_contiguous() and row_ptr.is_contiguous()):
        # (bound contiguous copies would be second copies of the weight, kept)
        return lambda x: run_cpu_bsr(entry, x, values, col_indices, row_ptr, bias, activation, bn, bk)
    b = fp32_bias(bias)
    return bind_cpu_rows(entry, (_ext.cpu_isa(),),
                         (values.data_ptr(), DTYPE_CODES[values.dtype], bn, bk, col_indices.data_ptr(),
                          row_ptr.data_ptr(), values.shape[0], b.data_ptr() if b is not None else 0),
                         (ACTIVATIONS.index(activation), torch.get_num_threads()), (row_ptr.shape[0] - 1) * bn, None,
                         keep=(values, col_indices, row_ptr, b))


def run_cpu_bsr(entry: str, x, values, col_indices, row_ptr, bias, activation, bn: int, bk: int):
    """One call of a bigperf._C BSR kernel (see bind_cpu_bsr)."""
    return bind_cpu_bsr(entry, values.contiguous(), col_indices.contiguous(), row_ptr.contiguous(), bias, activation,
                        bn, bk)(x)


def _cpu_bsr_run(x, values, col_indices, row_ptr, bias, activation):
    return run_cpu_bsr("block_sparse_linear", x, values, col_indices, row_ptr, bias, activation, values.shape[1],
                       values.shape[2])


def _cpu_bsr_bind(values, col_indices, row_ptr, bias, activation):
    return bind_cpu_bsr("block_sparse_linear", values, col_indices, row_ptr, bias, activation, values.shape[1],
                        values.shape[2])


def _triton_bsr_run(x, values, col_indices, row_ptr, bias, activation):
    from bigperf.kernels.sparse_matmul import (
        block_sparse_linear as triton_block_sparse_linear,
    )
    k, n = x.shape[-1], (row_ptr.shape[0] - 1) * values.shape[1]
    out = triton_block_sparse_linear(x.reshape(-1, k), values, col_indices, row_ptr, fp32_bias(bias), activation)
    return poison_nonfinite_rows(x, out).reshape(*x.shape[:-1], n)  # the kernel skips blocks not stored


def _torch_bsr_run(dtype):
    def run(x, values, col_indices, row_ptr, bias, activation):
        bn = values.shape[1]
        n, k = bn * (row_ptr.numel() - 1), x.shape[-1]
        # Block-row boundaries once per call (a host copy of N / bn + 1 ints), not per chunk.
        offsets = row_ptr.tolist()

        def rows(out, r0, r1):
            b0, b1 = r0 // bn, -(-r1 // bn)
            lo, hi = offsets[b0], offsets[b1]
            unpack_bsr_into(out, values[lo:hi], col_indices[lo:hi], row_ptr[b0:b1 + 1] - lo)
        return torch_linear(x, n, k, dtype, rows=rows, bias=bias, activation=activation, align=bn)
    return run


def float_weight(values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor, k: int) -> torch.Tensor:
    """The dense weight in fp32, for a layer that keeps a float copy (torch:copy)."""
    return unpack_bsr(values.to(torch.float32), col_indices, row_ptr, k)


def dense_weight(x, values, col_indices, row_ptr, bias, activation) -> torch.Tensor:
    """The dense weight of block_sparse_linear's arguments, in fp32 (its backward; K is x's)."""
    return float_weight(values, col_indices, row_ptr, x.shape[-1])


def _copy_run(x, values, col_indices, row_ptr, bias, activation):
    return copy_linear(x, values, bias=bias, activation=activation)


def register_paths(table) -> None:
    """The paths of block_sparse_linear (besides the reference) on this format."""
    table.register("cpu", lambda x, *rest: cpu_why_not(x, "block_sparse_linear"), _cpu_bsr_run, bind=_cpu_bsr_bind)
    table.register("triton", lambda x, *rest: triton_why_not(x, "sparse_matmul"), _triton_bsr_run)
    register_torch_paths(table, _torch_bsr_run)
    register_float_copy_path(table, _copy_run)


# ----------------------------------------------------------------------------- ONNX

@onnx_lowering("bigperf.block_sparse_linear")
def lower(x, values, col_indices, row_ptr, bias, activation):
    nnz, bn, bk = values.shape
    block_rows, k = row_ptr.shape[0] - 1, x.shape[-1]
    # Block i lies in the row whose [row_ptr[r], row_ptr[r + 1]) holds i: a static-shape
    # count instead of repeat_interleave, whose output size would depend on the data.
    rows = (torch.arange(nnz, device=values.device)[:, None] >= row_ptr[None, 1:].long()).sum(dim=1)
    dense = torch.zeros(block_rows, k // bk, bn, bk, dtype=values.dtype, device=values.device)
    dense = dense.index_put((rows, col_indices.long()), values)
    return onnx_linear(x, dense.transpose(1, 2).reshape(block_rows * bn, k), bias, activation)


# ----------------------------------------------------------------------------- shard rules

def shard_columns(tensors: tuple, bias, rank: int, world: int) -> tuple[tuple, torch.Tensor | None]:
    """Rank's column-wise shard (output features) of (values, col_indices, row_ptr) and the
    bias: whole block rows, row_ptr re-based to the shard's first block (bigperf/formats/_shard.py)."""
    values, col_indices, row_ptr = tensors
    bn = values.shape[1]
    n = bn * (row_ptr.shape[0] - 1)
    lo, hi = shard_range("bigperf.formats.bsr.shard_columns", "N (output features)", n, rank, world, unit=bn,
                         unit_name="block row")
    b0, b1 = lo // bn, hi // bn
    first, last = int(row_ptr[b0]), int(row_ptr[b1])
    return ((values[first:last], col_indices[first:last], row_ptr[b0:b1 + 1] - first),
            row_slice(bias, lo, hi))


def shard_rows(tensors: tuple, bias, k: int, rank: int, world: int) -> tuple[tuple, torch.Tensor | None]:
    """Rank's row-wise shard (input features) of (values, col_indices, row_ptr): whole block
    columns, the kept blocks' columns re-indexed from the shard's first and row_ptr rebuilt
    from how many blocks each block row keeps. The bias on rank 0 only."""
    values, col_indices, row_ptr = tensors
    bk = values.shape[2]
    lo, hi = shard_range("bigperf.formats.bsr.shard_rows", "K (input features)", k, rank, world, unit=bk,
                         unit_name="block column")
    c0, c1 = lo // bk, hi // bk
    keep = (col_indices >= c0) & (col_indices < c1)
    # Blocks kept before each position: row_ptr's entries index it directly.
    kept_before = torch.cat((torch.zeros(1, dtype=torch.int64, device=keep.device), keep.cumsum(0)))
    new_row_ptr = kept_before[row_ptr.long()].to(row_ptr.dtype)
    return (values[keep], col_indices[keep] - c0, new_row_ptr), bias_once(bias, rank)


def unshard_columns(shards: list[tuple], biases: list) -> tuple[tuple, torch.Tensor | None]:
    """The unsharded (values, col_indices, row_ptr) and bias of every rank's shard_columns:
    block rows one after another, row_ptr offset by the blocks before each shard."""
    offsets = torch.tensor([0] + [s[0].shape[0] for s in shards]).cumsum(0).tolist()
    row_ptr = torch.cat([shards[0][2][:1]] + [s[2][1:] + offsets[r] for r, s in enumerate(shards)])
    return ((torch.cat([s[0] for s in shards]), torch.cat([s[1] for s in shards]), row_ptr.to(shards[0][2].dtype)),
            None if biases[0] is None else torch.cat(biases))


def unshard_rows(shards: list[tuple], biases: list, k: int) -> tuple[tuple, torch.Tensor | None]:
    """The unsharded (values, col_indices, row_ptr) and bias of every rank's shard_rows: each
    block row's blocks from every rank, in rank order (so columns stay ascending), columns
    offset by the ranks' block columns before them."""
    bk, world = shards[0][0].shape[2], len(shards)
    block_cols = k // world // bk
    rows, ranks, cols, values = [], [], [], []
    for rank, (v, ci, rp) in enumerate(shards):
        counts = rp[1:] - rp[:-1]
        rows.append(torch.repeat_interleave(torch.arange(counts.shape[0]), counts.long()))
        ranks.append(torch.full((v.shape[0],), rank))
        cols.append(ci + rank * block_cols)
        values.append(v)
    row, order_key = torch.cat(rows), torch.cat(rows) * world + torch.cat(ranks)
    order = torch.sort(order_key, stable=True).indices
    row_ptr = torch.zeros(shards[0][2].shape[0], dtype=torch.int64)
    row_ptr[1:] = torch.bincount(row, minlength=row_ptr.shape[0] - 1).cumsum(0)
    return ((torch.cat(values)[order], torch.cat(cols)[order], row_ptr.to(shards[0][2].dtype)), biases[0])


def shard_dims(style: str) -> None:
    """None: no DTensor placement describes a shard's blocks (each rank keeps a different
    number of them, at offsets only the whole layer knows); bigperf/distributed/state.py
    then names each rank's tensors by the rank."""
    return None
