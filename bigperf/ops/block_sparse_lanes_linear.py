"""The block-sparse (BSR) linear from a layer-owned CPU lane layout.

torch.ops.bigperf.block_sparse_lanes_linear(x, values, col_indices, row_ptr, bk, bias, activation)
    The same result as block_sparse_linear on the BSR weight that
    bigperf.cpu_layouts.pack_bsr_lanes laid out (values [nnz, bn/16, 16 bk] float,
    col_indices [nnz] int32, row_ptr [N/bn + 1] int32; bn = 16 * values.shape[1],
    N = (row_ptr.numel() - 1) * bn, K = x.shape[-1] a multiple of bk). A SparseLinear on the
    CPU keeps only this form where bigperf._C has the kernel that reads it (and its block
    shape and dtype are eligible), so the CPU never holds the weight twice. Each other
    backend is block_sparse_linear's backend of that name, on the weight unpacked for the
    call, so every backend computes the same thing and the backend this op reports is the
    one that runs.
"""

from __future__ import annotations

import torch

from bigperf.cpu_layouts import (
    BsrLanes,
    check_bsr_lanes,
    check_version,
    unpack_bsr_lanes,
)
from bigperf.ops.common import cpu_why_not
from bigperf.ops.layout_paths import register_unpacked_paths
from bigperf.ops.define import define_op
from bigperf.ops.sparse_linear import (
    BSR_BACKENDS,
    check_bsr_call,
    run_cpu_bsr,
)

LANES_OP = "bigperf.block_sparse_lanes_linear"
CPU_KERNEL = "block_sparse_lanes_linear"  # bigperf._C's entry point (csrc/cpu)


def validate_lanes_call(x, values, col_indices, row_ptr, bk, bias, activation):
    nnz, bn = check_bsr_lanes(LANES_OP, values, bk)
    check_bsr_call(LANES_OP, x, values, col_indices, row_ptr, nnz, bn, bk, bias, activation)


def cpu_kernel_why_not(x, *rest) -> str | None:
    """Why bigperf._C cannot run the lane-layout kernel on x's device, or None."""
    return cpu_why_not(x, CPU_KERNEL)


def _as_layout(x, values, col_indices, row_ptr, bk) -> BsrLanes:
    return BsrLanes(values, col_indices, row_ptr, 16 * values.shape[1], bk, x.shape[-1])


def _cpu_run(x, values, col_indices, row_ptr, bk, bias, activation):
    return run_cpu_bsr(CPU_KERNEL, x, values, col_indices, row_ptr, bias, activation, 16 * values.shape[1], bk)


def _canonical_args(x, values, col_indices, row_ptr, bk, bias, activation):
    canonical = unpack_bsr_lanes(_as_layout(x, values, col_indices, row_ptr, bk))
    return (x, *canonical, bias, activation)


def _canonical_stand_ins(x, values, col_indices, row_ptr, bk, bias, activation):
    # The lane layout shares the canonical index tensors: only the values change shape.
    canonical_values = torch.empty(values.shape[0], 16 * values.shape[1], bk, dtype=values.dtype, device="meta")
    return (x, canonical_values, col_indices, row_ptr, bias, activation)


def _signature(x: torch.Tensor, values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor, bk: int,
               bias: torch.Tensor | None, activation: str) -> torch.Tensor: ...


BSR_LANES = define_op(LANES_OP, _signature, validate_lanes_call,
                      lambda x, values, col_indices, row_ptr, *rest: (*x.shape[:-1],
                                                                       (row_ptr.shape[0] - 1) * 16 * values.shape[1]))
LANES_BACKENDS = BSR_LANES.backends
block_sparse_lanes_linear_op = BSR_LANES.custom_op
LANES_BACKENDS.register("cpu", cpu_kernel_why_not, _cpu_run)
# Every other backend is block_sparse_linear's own, on the weight unpacked for this call.
register_unpacked_paths(LANES_BACKENDS, BSR_BACKENDS, ("cpu",), _canonical_stand_ins, _canonical_args)


def _check_layout(x, layout) -> None:
    # What the op cannot see: the layout's own sizes must agree with its tensors and x.
    check_version(LANES_OP, layout, BsrLanes)
    try:
        k, bn = x.shape[-1], 16 * layout.values.shape[1]
    except (AttributeError, IndexError):
        return  # not tensors of a usable rank: the op's validation names the argument
    if k != layout.k:
        raise ValueError(f"{LANES_OP}: argument 'x' has {k} features in its last dimension, the weight has "
                         f"K = {layout.k}")
    if bn != layout.bn and layout.values.dim() == 3:
        raise ValueError(f"{LANES_OP}: the layout's bn = {layout.bn} does not match 'values' "
                         f"{tuple(layout.values.shape)} (bn = 16 * values.shape[1])")


def block_sparse_lanes_linear(x, layout: BsrLanes, bias=None, activation="none"):
    """act(x @ W^T + bias) for a BSR W held in the CPU lane layout (bigperf.cpu_layouts)."""
    _check_layout(x, layout)
    return BSR_LANES(x, layout.values, layout.col_indices, layout.row_ptr, layout.bk, bias, activation)
