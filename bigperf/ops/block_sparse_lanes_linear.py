"""The block-sparse (BSR) linear from a layer-owned CPU lane layout.

torch.ops.bigperf.block_sparse_lanes_linear(x, values, col_indices, row_ptr, bk, bias, activation)
    The same result as block_sparse_linear on the BSR weight that
    bigperf.formats.bsr_lanes.pack_bsr_lanes laid out (values [nnz, bn/16, 16 bk] float,
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

from bigperf.formats import bsr_lanes
from bigperf.formats.bsr_lanes import BsrLanes, check_bsr_lanes, check_version
from bigperf.ops.define import define_op
from bigperf.ops.frozen_weight_grad import register_frozen_weight_autograd
from bigperf.ops.sparse_linear import BSR_BACKENDS, check_bsr_call

LANES_OP = "bigperf.block_sparse_lanes_linear"


def validate_lanes_call(x, values, col_indices, row_ptr, bk, bias, activation):
    nnz, bn = check_bsr_lanes(LANES_OP, values, bk)
    check_bsr_call(LANES_OP, x, values, col_indices, row_ptr, nnz, bn, bk, bias, activation)


def _signature(x: torch.Tensor, values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor, bk: int,
               bias: torch.Tensor | None, activation: str) -> torch.Tensor: ...


BSR_LANES = define_op(LANES_OP, _signature, validate_lanes_call,
                      lambda x, values, col_indices, row_ptr, *rest: (*x.shape[:-1],
                                                                       (row_ptr.shape[0] - 1) * 16 * values.shape[1]))
LANES_BACKENDS = BSR_LANES.backends
register_frozen_weight_autograd(BSR_LANES, bsr_lanes.dense_weight, bias_at=5, activation_at=6)
block_sparse_lanes_linear_op = BSR_LANES.torch_op
bsr_lanes.register_paths(LANES_BACKENDS, BSR_BACKENDS)


def _check_layout(x, layout) -> None:
    # What the op cannot see: the layout's own sizes must agree with its tensors and x.
    check_version(LANES_OP, layout)
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
    """act(x @ W^T + bias) for a BSR W held in the CPU lane layout (bigperf.formats.bsr_lanes)."""
    _check_layout(x, layout)
    return BSR_LANES(x, layout.values, layout.col_indices, layout.row_ptr, layout.bk, bias, activation)
