"""Weight format "bsr-lanes" ("cpu-lanes16"): the CPU lane layout of bsr.

A SparseLinear (block) on the CPU holds only this form where bigperf._C has the kernel that
reads it and the block shape and dtype are eligible (bsr_lanes_eligible): lanes_values, and
the canonical col_indices / row_ptr (shared, not copied). Pure PyTorch packing, exact round
trips, versioned: change the layout and VERSION together, here and in
csrc/cpu/bsr_lanes_kernel.h.

Block-sparse (BSR) "cpu-lanes16" (from bigperf.sparsity's values [nnz, bn, bk] float32/
float16/bfloat16, col_indices [nnz] int32, row_ptr [N/bn + 1] int32), version 1:
  Why: the same one-output-per-lane idea for blocks: each block's bn rows are cut into bn/16
  groups of 16 rows, one row per vector lane, so a block column times one broadcast x value
  updates 16 outputs at once (the canonical rows need horizontal sums).
  Eligible only when bn % 16 == 0 and, for bfloat16 values, bk % 2 == 0 (bsr_lanes_eligible).
  values [nnz, bn/16, 16 bk], the values' dtype; per block b and row group q:
          bfloat16:        [bk/2, 16, 2]  element (c, l, s) = values[b, 16 q + l, 2 c + s]
                                          (one 32-bit word per row: two neighbouring columns)
          float32/float16: [bk, 16]       element (c, l) = values[b, 16 q + l, c]
  col_indices, row_ptr: the canonical tensors themselves (shared, not copied).

Paths (torch.ops.bigperf.block_sparse_lanes_linear): our CPU kernel reads the layout; every
other path is block_sparse_linear's path of the same name on the weight unpacked for the call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from bigperf.formats import bsr
from bigperf.formats._checks import INTS, check_arg, check_layout_version, check_same_device
from bigperf.formats._lanes import FLOAT_DTYPES, LANES
from bigperf.ops.common import BF16_PANEL_VARIANT, bf16_values_panel_why_not, cpu_why_not, panel_why_not
from bigperf.ops.layout_paths import register_unpacked_paths
from bigperf.ops.onnx_lowering import onnx_lowering
from bigperf.ops.torch_paths import copy_linear, register_float_copy_path

NAME = "bsr-lanes"
KERNEL_LAYOUT = "cpu-lanes16"  # the layer's name for it (SparseLinear.kernel_layout)
VERSION = 1
BUFFERS = ("lanes_values", "col_indices", "row_ptr")


def why_not_hold(device: torch.device, block: tuple[int, int], dtype: torch.dtype) -> str | None:
    """Why a block-sparse layer on `device` with (bn, bk) blocks of `dtype` values should not
    hold this layout, or None."""
    if device.type != "cpu":
        return f"a CPU kernel layout; the weight is on {device}"
    return bsr_lanes_eligible(*block, dtype) or cpu_kernel_why_not(torch.empty(0, device=device))


def check_version(function: str, layout) -> None:
    check_layout_version(function, layout, BsrLanes, VERSION)


@dataclass(frozen=True)
class BsrLanes:
    values: torch.Tensor  # [nnz, bn/16, 16 bk], the canonical values' dtype
    col_indices: torch.Tensor  # [nnz] int32, the canonical tensor
    row_ptr: torch.Tensor  # [N/bn + 1] int32, the canonical tensor
    bn: int
    bk: int
    k: int  # in_features
    version: int = VERSION


def bsr_lanes_eligible(bn: int, bk: int, dtype: torch.dtype) -> str | None:
    """Why (bn, bk) blocks of `dtype` values cannot be held in the BSR lane layout, or None."""
    if dtype not in FLOAT_DTYPES:
        return f"values must be float32, float16 or bfloat16, got {str(dtype).replace('torch.', '')}"
    if not (isinstance(bn, INTS) and isinstance(bk, INTS) and bn > 0 and bk > 0):
        return f"the block shape must be positive ints (bn, bk), got ({bn!r}, {bk!r})"
    if bn % LANES:
        return f"the block height bn = {bn} is not a multiple of {LANES}"
    if dtype == torch.bfloat16 and bk % 2:
        return f"bfloat16 values need an even block width (two columns per 32-bit word), got bk = {bk}"
    return None


def check_bsr_lanes(function: str, values, bk: int) -> tuple[int, int]:
    """Check the BSR lane layout's values (dtype, rank, shape for block width bk, eligibility;
    not their device) and return (nnz, bn)."""
    check_arg(function, "values", values, FLOAT_DTYPES, 3)
    if not isinstance(bk, INTS) or bk <= 0:
        raise ValueError(f"{function}: argument 'bk' must be a positive int, got {bk!r}")
    nnz, groups, width = values.shape
    if width != LANES * bk:
        raise ValueError(f"{function}: argument 'values' must have shape [nnz, bn/16, 16 bk] = [{nnz}, {groups}, "
                         f"{LANES * bk}] for bk = {bk}, got {tuple(values.shape)}")
    bn = LANES * groups
    _check_eligible(function, bn, bk, values.dtype)
    return nnz, bn


def _check_eligible(function: str, bn: int, bk: int, dtype: torch.dtype) -> None:
    reason = bsr_lanes_eligible(bn, bk, dtype)
    if reason:
        raise ValueError(f"{function}: argument 'values' ({bn}x{bk} blocks, {str(dtype).replace('torch.', '')}) "
                         f"cannot be held in the BSR lane layout: {reason}")


def _check_bsr_indices(function: str, col_indices, row_ptr, nnz: int, bk: int, k: int, device) -> None:
    # Shapes and devices only: the index content is the op's to check (cached per tensor version).
    check_arg(function, "col_indices", col_indices, (torch.int32,), 1)
    check_arg(function, "row_ptr", row_ptr, (torch.int32,), 1)
    if col_indices.shape[0] != nnz:
        raise ValueError(f"{function}: argument 'col_indices' has {col_indices.shape[0]} entries for {nnz} blocks")
    if row_ptr.shape[0] < 2:
        raise ValueError(f"{function}: argument 'row_ptr' needs N/bn + 1 >= 2 entries, got {row_ptr.shape[0]}")
    if not isinstance(k, INTS) or k <= 0 or k % bk:
        raise ValueError(f"{function}: argument 'k' must be a positive multiple of the block width {bk}, got {k!r}")
    check_same_device(function, (("col_indices", col_indices), ("row_ptr", row_ptr)), device)


def pack_bsr_lanes(values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor, k: int) -> BsrLanes:
    """bigperf.sparsity's BSR weight (k = in_features) in the CPU lane layout ("cpu-lanes16");
    col_indices and row_ptr are shared with the result, not copied."""
    function = "bigperf.formats.bsr_lanes.pack_bsr_lanes"
    check_arg(function, "values", values, FLOAT_DTYPES, 3)
    nnz, bn, bk = values.shape
    _check_eligible(function, bn, bk, values.dtype)
    _check_bsr_indices(function, col_indices, row_ptr, nnz, bk, k, values.device)
    groups = bn // LANES
    if values.dtype == torch.bfloat16:  # (block, group, lane, column pair, column in pair)
        v = values.reshape(nnz, groups, LANES, bk // 2, 2).permute(0, 1, 3, 2, 4)
    else:  # (block, group, lane, column)
        v = values.reshape(nnz, groups, LANES, bk).permute(0, 1, 3, 2)
    return BsrLanes(v.reshape(nnz, groups, LANES * bk).contiguous(), col_indices, row_ptr, bn, bk, k)


def unpack_bsr_lanes(layout: BsrLanes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The canonical (values [nnz, bn, bk], col_indices, row_ptr) packed; the index tensors
    are the layout's own."""
    function = "bigperf.formats.bsr_lanes.unpack_bsr_lanes"
    check_version(function, layout)
    nnz, bn = check_bsr_lanes(function, layout.values, layout.bk)
    if layout.bn != bn:
        raise ValueError(f"{function}: argument 'bn' must be {bn} for 'values' {tuple(layout.values.shape)}, "
                         f"got {layout.bn!r}")
    bk = layout.bk
    _check_bsr_indices(function, layout.col_indices, layout.row_ptr, nnz, bk, layout.k, layout.values.device)
    groups = bn // LANES
    if layout.values.dtype == torch.bfloat16:
        v = layout.values.reshape(nnz, groups, bk // 2, LANES, 2).permute(0, 1, 3, 2, 4)
    else:
        v = layout.values.reshape(nnz, groups, bk, LANES).permute(0, 1, 3, 2)
    return v.reshape(nnz, bn, bk).contiguous(), layout.col_indices, layout.row_ptr


# ----------------------------------------------------------------------------- candidate paths

CPU_KERNEL = "block_sparse_lanes_linear"  # bigperf._C's entry point (csrc/cpu)
CPU_PANEL_KERNEL = "block_sparse_lanes_linear_panel"  # its panel form, for arithmetic-bound M
CPU_BF16_KERNEL = "block_sparse_lanes_linear_panel_bf16"  # the panel form in bf16 arithmetic (AVX512-BF16)


def cpu_kernel_why_not(x, *rest) -> str | None:
    """Why bigperf._C cannot run the lane-layout kernel on x's device, or None."""
    return cpu_why_not(x, CPU_KERNEL)


def _as_layout(x, values, col_indices, row_ptr, bk) -> BsrLanes:
    return BsrLanes(values, col_indices, row_ptr, 16 * values.shape[1], bk, x.shape[-1])


def _cpu_bf16_why_not(x, values, *rest) -> str | None:
    return bf16_values_panel_why_not(x, values, CPU_BF16_KERNEL)


def _cpu_panel_why_not(x, *rest) -> str | None:
    return panel_why_not(x, x.shape[-1], CPU_PANEL_KERNEL)


def _cpu_run(x, values, col_indices, row_ptr, bk, bias, activation, kernel=CPU_KERNEL):
    return bsr.run_cpu_bsr(kernel, x, values, col_indices, row_ptr, bias, activation, 16 * values.shape[1], bk)


def _cpu_bind(values, col_indices, row_ptr, bk, bias, activation, kernel=CPU_KERNEL):
    return bsr.bind_cpu_bsr(kernel, values, col_indices, row_ptr, bias, activation, 16 * values.shape[1], bk)


def _canonical_args(x, values, col_indices, row_ptr, bk, bias, activation):
    canonical = unpack_bsr_lanes(_as_layout(x, values, col_indices, row_ptr, bk))
    return (x, *canonical, bias, activation)


def dense_weight(*args) -> torch.Tensor:
    """The dense weight of a path's arguments, in fp32 (the op's backward)."""
    return bsr.dense_weight(*_canonical_args(*args))


def _canonical_stand_ins(x, values, col_indices, row_ptr, bk, bias, activation):
    # The lane layout shares the canonical index tensors: only the values change shape.
    canonical_values = torch.empty(values.shape[0], 16 * values.shape[1], bk, dtype=values.dtype, device="meta")
    return (x, canonical_values, col_indices, row_ptr, bias, activation)


def float_weight(layout: BsrLanes) -> torch.Tensor:
    """The dense weight in fp32, for a layer that keeps a float copy (torch:copy)."""
    return bsr.float_weight(*unpack_bsr_lanes(layout), layout.k)


def _copy_run(x, values, col_indices, row_ptr, bk, bias, activation):
    return copy_linear(x, values, bias=bias, activation=activation)


def register_paths(table, canonical_table) -> None:
    """Our CPU kernel on the layout, then every other path of block_sparse_linear's table on the
    unpacked weight."""
    for kernel, variant, why_not in ((CPU_KERNEL, "", cpu_kernel_why_not),
                                     (CPU_PANEL_KERNEL, "panel", _cpu_panel_why_not),
                                     (CPU_BF16_KERNEL, BF16_PANEL_VARIANT, _cpu_bf16_why_not)):
        table.register("cpu", why_not, functools.partial(_cpu_run, kernel=kernel), variant=variant,
                       bind=functools.partial(_cpu_bind, kernel=kernel))
    register_unpacked_paths(table, canonical_table, ("cpu",), _canonical_stand_ins, _canonical_args)
    register_float_copy_path(table, _copy_run)  # on the layout itself, not unpacked


# ----------------------------------------------------------------------------- ONNX

@onnx_lowering("bigperf.block_sparse_lanes_linear")
def lower(x, values, col_indices, row_ptr, bk, bias, activation):
    # The CPU lane layout of a block-sparse SparseLinear on the CPU, back in canonical order.
    return bsr.lower(*_canonical_args(x, values, col_indices, row_ptr, bk, bias, activation))
