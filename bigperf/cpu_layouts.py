"""Re-layouts of bigperf's packed weights into the orders the CPU kernels stream.

Pure PyTorch (any device), exact round trips, versioned like bigperf.cuda_layouts: a layout
carries the version it was written in; change a layout and its version together, here and
in csrc/cpu.

2:4 sparse "cpu-lanes16" (from bigperf.sparsity's values [N, K/2] float32/float16/bfloat16
or int8, meta [N, K/8] uint8, scale [N, 1] fp32 for int8 values), version 1:
  Why: the canonical rows make a 1-row GEMV compute-bound on AVX2 (one horizontal sum per
  output, several shuffles per group to gather x). Here 16 output rows are interleaved, one
  per vector lane, so each lane accumulates its own output (no horizontal sums) and x needs
  one in-lane permute per 8 kept values: the kernel streams the weight at memory speed.
  N16 = N rounded up to 16, NB = N16 / 16 row blocks; padding rows hold values 0, meta
  byte 0x44 (positions (0, 1) in both groups: valid metadata) and scale 0.
  meta  [NB, 2K] uint8: meta[b, 16 j + l] = canonical meta[16 b + l, j], j < K/8 (for each
        meta byte column, the 16 rows' bytes side by side; the bytes themselves unchanged).
  values [NB, 8K]: with v[b, l, g, s] = canonical values[16 b + l, 2 g + s] (lane l, group
        g < K/4, slot s < 2),
          bfloat16:        [NB, K/4, 16, 2]  (per group, one 32-bit word per lane: the group's
                                              two values, widened by a shift and a mask)
          int8:            [NB, K/8, 16, 2, 2]  (per pair of groups 2j, 2j+1 - one meta byte -
                                              one 32-bit word per lane: the four values in
                                              (group, slot) order; the kernel moves each byte
                                              to the top of its word with an offset load)
          float32/float16: [NB, K/4, 2, 16]  (per group and slot, 16 lanes in a row)
        flattened to [NB, 8K].
  scale [N16] fp32 for int8 values, else None.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The same argument checks (and messages) as the CUDA layouts.
from bigperf.cuda_layouts import _check, _round_up

S24_LANES_VERSION = 1
BSR_LANES_VERSION = 1

_LANES = 16
_PAD_META_BYTE = 0x44  # two groups with kept positions (0, 1)
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INTS = (int, torch.SymInt)  # sizes may be symbolic while torch.compile / torch.export trace
_VALUE_DTYPES = _FLOAT_DTYPES + (torch.int8,)


@dataclass(frozen=True)
class Sparse24Lanes:
    values: torch.Tensor  # [NB, 8K], the canonical values' dtype
    meta: torch.Tensor  # [NB, 2K] uint8
    scale: torch.Tensor | None  # [16 NB] float32, int8 values only
    n: int
    k: int
    version: int = S24_LANES_VERSION


@dataclass(frozen=True)
class BsrLanes:
    values: torch.Tensor  # [nnz, bn/16, 16 bk], the canonical values' dtype
    col_indices: torch.Tensor  # [nnz] int32, the canonical tensor
    row_ptr: torch.Tensor  # [N/bn + 1] int32, the canonical tensor
    bn: int
    bk: int
    k: int  # in_features
    version: int = BSR_LANES_VERSION


_VERSIONS = {Sparse24Lanes: S24_LANES_VERSION, BsrLanes: BSR_LANES_VERSION}


def check_version(function: str, layout, kind: type = Sparse24Lanes) -> None:
    """A `kind` layout (Sparse24Lanes or BsrLanes) of the version this bigperf reads, else
    TypeError / ValueError."""
    if not isinstance(layout, kind):
        raise TypeError(f"{function}: argument 'layout' must be a bigperf.cpu_layouts.{kind.__name__}, "
                        f"got {type(layout).__name__}")
    if layout.version != _VERSIONS[kind]:
        raise ValueError(f"{function}: layout version {layout.version} is not the version {_VERSIONS[kind]} this "
                         f"bigperf reads; re-pack the weight")


def check_lanes(function: str, values, meta, scale, n: int, k: int | None = None) -> int:
    """Check the lane-layout tensors of an n-row weight (dtypes, ranks, shapes; not devices
    nor the meta's content) and return K (from meta when k is None)."""
    _check(function, "values", values, _VALUE_DTYPES, 2)
    _check(function, "meta", meta, (torch.uint8,), 2)
    nb = values.shape[0]
    if k is None:
        k = meta.shape[1] // 2
    if k <= 0 or k % 8:
        raise ValueError(f"{function}: K must be a positive multiple of 8 ('meta' is [NB, 2K]), got K = {k} "
                         f"from 'meta' {tuple(meta.shape)}")
    if not isinstance(n, int) or not max(0, _LANES * (nb - 1)) < n <= _LANES * nb:
        raise ValueError(f"{function}: argument 'n' must be in ({max(0, _LANES * (nb - 1))}, {_LANES * nb}] for "
                         f"'values' with NB = {nb} blocks of 16 rows, got {n!r}")
    for name, t, shape in (("values", values, (nb, 8 * k)), ("meta", meta, (nb, 2 * k))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{function}: argument '{name}' must have shape {shape} for NB = {nb}, K = {k}, "
                             f"got {tuple(t.shape)}")
    if (values.dtype == torch.int8) != (scale is not None):
        raise ValueError(f"{function}: argument 'scale' is required exactly when 'values' is int8")
    if scale is not None:
        _check(function, "scale", scale, (torch.float32,), 1)
        if scale.shape[0] != _LANES * nb:
            raise ValueError(f"{function}: argument 'scale' must have shape ({_LANES * nb},), got {tuple(scale.shape)}")
    return k


def _check_devices(function: str, named, device: torch.device) -> None:
    for name, t in named:
        if t is not None and t.device != device:
            raise ValueError(f"{function}: argument '{name}' is on {t.device} but 'values' is on {device}")


def _first_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    # A copy when rows are dropped: a view would keep the padding's storage alive.
    return t if t.shape[0] == n else t[:n].clone()


def pack_24_lanes(values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor | None = None) -> Sparse24Lanes:
    """bigperf.sparsity's 2:4 compressed weight in the CPU lane layout ("cpu-lanes16")."""
    function = "bigperf.cpu_layouts.pack_24_lanes"
    _check(function, "values", values, _VALUE_DTYPES, 2)
    _check(function, "meta", meta, (torch.uint8,), 2)
    n, half = values.shape
    k = 2 * half
    if n == 0 or k == 0 or k % 8 or tuple(meta.shape) != (n, k // 8):
        raise ValueError(f"{function}: argument 'meta' must be [N, K/8] = [{n}, {k // 8}] with N > 0 and K a positive "
                         f"multiple of 8, got {tuple(meta.shape)} for values {tuple(values.shape)}")
    if (values.dtype == torch.int8) != (scale is not None):
        raise ValueError(f"{function}: argument 'scale' is required exactly when 'values' is int8")
    if scale is not None:
        _check(function, "scale", scale, (torch.float32,), 2)
        if tuple(scale.shape) != (n, 1):
            raise ValueError(f"{function}: argument 'scale' must have shape ({n}, 1), got {tuple(scale.shape)}")
    _check_devices(function, (("meta", meta), ("scale", scale)), values.device)
    n16 = _round_up(n, _LANES)
    nb, device = n16 // _LANES, values.device
    if n16 != n:
        padded = torch.zeros((n16, half), dtype=values.dtype, device=device)
        padded[:n] = values
        padded_meta = torch.full((n16, k // 8), _PAD_META_BYTE, dtype=torch.uint8, device=device)
        padded_meta[:n] = meta
        values, meta = padded, padded_meta
    if values.dtype == torch.int8:  # (block, lane, step of 2 groups, 2 groups x 2 slots)
        v = values.reshape(nb, _LANES, k // 8, 4).permute(0, 2, 1, 3)
    else:
        v = values.reshape(nb, _LANES, k // 4, 2)  # (block, lane, group, slot)
        v = v.permute(0, 2, 3, 1) if _slot_major(values.dtype) else v.permute(0, 2, 1, 3)
    lanes_values = v.reshape(nb, 8 * k).contiguous()
    lanes_meta = meta.reshape(nb, _LANES, k // 8).transpose(1, 2).reshape(nb, 2 * k).contiguous()
    lanes_scale = None
    if scale is not None:
        lanes_scale = torch.zeros(n16, dtype=torch.float32, device=device)
        lanes_scale[:n] = scale[:, 0]
    return Sparse24Lanes(lanes_values, lanes_meta, lanes_scale, n, k)


def _slot_major(dtype: torch.dtype) -> bool:
    # Float values, in both layouts: bf16 lane-major pairs [.., 16, 2], f32/f16 [.., 2, 16]
    # (2:4: a group's two slots; BSR: two neighbouring columns). int8 has its own order and
    # never changes dtype with the module.
    return dtype != torch.bfloat16


def reorder_lanes_values(values: torch.Tensor, laid_out_for: torch.dtype) -> torch.Tensor:
    """Lane-layout values (2:4 or BSR) converted element-wise from `laid_out_for` (e.g. by
    Module.half()) back in the order of their own dtype; the tensor itself when the orders
    agree. (BSR values need an even bk for this, as bf16 ones always have.)"""
    if _slot_major(values.dtype) == _slot_major(laid_out_for):
        return values
    pairs = (2, _LANES) if _slot_major(laid_out_for) else (_LANES, 2)
    return values.reshape(-1, *pairs).transpose(1, 2).reshape(values.shape).contiguous()


def unpack_24_lanes(layout: Sparse24Lanes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The canonical (values [N, K/2], meta [N, K/8] uint8, scale [N, 1] fp32 or None) packed."""
    function = "bigperf.cpu_layouts.unpack_24_lanes"
    check_version(function, layout)
    n, k = layout.n, layout.k
    check_lanes(function, layout.values, layout.meta, layout.scale, n, k)
    _check_devices(function, (("meta", layout.meta), ("scale", layout.scale)), layout.values.device)
    nb = layout.values.shape[0]
    n16 = nb * _LANES
    if layout.values.dtype == torch.int8:
        v = layout.values.reshape(nb, k // 8, _LANES, 4).permute(0, 2, 1, 3)
    elif _slot_major(layout.values.dtype):
        v = layout.values.reshape(nb, k // 4, 2, _LANES).permute(0, 3, 1, 2)
    else:
        v = layout.values.reshape(nb, k // 4, _LANES, 2).permute(0, 2, 1, 3)
    values = _first_rows(v.reshape(n16, k // 2), n)
    meta = _first_rows(layout.meta.reshape(nb, k // 8, _LANES).transpose(1, 2).reshape(n16, k // 8), n)
    scale = _first_rows(layout.scale.reshape(n16, 1), n) if layout.scale is not None else None
    return values, meta, scale


# ----------------------------------------------------------------------------- BSR

def bsr_lanes_eligible(bn: int, bk: int, dtype: torch.dtype) -> str | None:
    """Why (bn, bk) blocks of `dtype` values cannot be held in the BSR lane layout, or None."""
    if dtype not in _FLOAT_DTYPES:
        return f"values must be float32, float16 or bfloat16, got {str(dtype).replace('torch.', '')}"
    if not (isinstance(bn, _INTS) and isinstance(bk, _INTS) and bn > 0 and bk > 0):
        return f"the block shape must be positive ints (bn, bk), got ({bn!r}, {bk!r})"
    if bn % _LANES:
        return f"the block height bn = {bn} is not a multiple of {_LANES}"
    if dtype == torch.bfloat16 and bk % 2:
        return f"bfloat16 values need an even block width (two columns per 32-bit word), got bk = {bk}"
    return None


def check_bsr_lanes(function: str, values, bk: int) -> tuple[int, int]:
    """Check the BSR lane layout's values (dtype, rank, shape for block width bk, eligibility;
    not their device) and return (nnz, bn)."""
    _check(function, "values", values, _FLOAT_DTYPES, 3)
    if not isinstance(bk, _INTS) or bk <= 0:
        raise ValueError(f"{function}: argument 'bk' must be a positive int, got {bk!r}")
    nnz, groups, width = values.shape
    if width != _LANES * bk:
        raise ValueError(f"{function}: argument 'values' must have shape [nnz, bn/16, 16 bk] = [{nnz}, {groups}, "
                         f"{_LANES * bk}] for bk = {bk}, got {tuple(values.shape)}")
    bn = _LANES * groups
    _check_eligible(function, bn, bk, values.dtype)
    return nnz, bn


def _check_eligible(function: str, bn: int, bk: int, dtype: torch.dtype) -> None:
    reason = bsr_lanes_eligible(bn, bk, dtype)
    if reason:
        raise ValueError(f"{function}: argument 'values' ({bn}x{bk} blocks, {str(dtype).replace('torch.', '')}) "
                         f"cannot be held in the BSR lane layout: {reason}")


def _check_bsr_indices(function: str, col_indices, row_ptr, nnz: int, bk: int, k: int, device) -> None:
    # Shapes and devices only: the index content is the op's to check (cached per tensor version).
    _check(function, "col_indices", col_indices, (torch.int32,), 1)
    _check(function, "row_ptr", row_ptr, (torch.int32,), 1)
    if col_indices.shape[0] != nnz:
        raise ValueError(f"{function}: argument 'col_indices' has {col_indices.shape[0]} entries for {nnz} blocks")
    if row_ptr.shape[0] < 2:
        raise ValueError(f"{function}: argument 'row_ptr' needs N/bn + 1 >= 2 entries, got {row_ptr.shape[0]}")
    if not isinstance(k, _INTS) or k <= 0 or k % bk:
        raise ValueError(f"{function}: argument 'k' must be a positive multiple of the block width {bk}, got {k!r}")
    _check_devices(function, (("col_indices", col_indices), ("row_ptr", row_ptr)), device)


def pack_bsr_lanes(values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor, k: int) -> BsrLanes:
    """bigperf.sparsity's BSR weight (k = in_features) in the CPU lane layout ("cpu-lanes16");
    col_indices and row_ptr are shared with the result, not copied."""
    function = "bigperf.cpu_layouts.pack_bsr_lanes"
    _check(function, "values", values, _FLOAT_DTYPES, 3)
    nnz, bn, bk = values.shape
    _check_eligible(function, bn, bk, values.dtype)
    _check_bsr_indices(function, col_indices, row_ptr, nnz, bk, k, values.device)
    groups = bn // _LANES
    if values.dtype == torch.bfloat16:  # (block, group, lane, column pair, column in pair)
        v = values.reshape(nnz, groups, _LANES, bk // 2, 2).permute(0, 1, 3, 2, 4)
    else:  # (block, group, lane, column)
        v = values.reshape(nnz, groups, _LANES, bk).permute(0, 1, 3, 2)
    return BsrLanes(v.reshape(nnz, groups, _LANES * bk).contiguous(), col_indices, row_ptr, bn, bk, k)


def unpack_bsr_lanes(layout: BsrLanes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The canonical (values [nnz, bn, bk], col_indices, row_ptr) packed; the index tensors
    are the layout's own."""
    function = "bigperf.cpu_layouts.unpack_bsr_lanes"
    check_version(function, layout, BsrLanes)
    nnz, bn = check_bsr_lanes(function, layout.values, layout.bk)
    if layout.bn != bn:
        raise ValueError(f"{function}: argument 'bn' must be {bn} for 'values' {tuple(layout.values.shape)}, "
                         f"got {layout.bn!r}")
    bk = layout.bk
    _check_bsr_indices(function, layout.col_indices, layout.row_ptr, nnz, bk, layout.k, layout.values.device)
    groups = bn // _LANES
    if layout.values.dtype == torch.bfloat16:
        v = layout.values.reshape(nnz, groups, bk // 2, _LANES, 2).permute(0, 1, 3, 2, 4)
    else:
        v = layout.values.reshape(nnz, groups, bk, _LANES).permute(0, 1, 3, 2)
    return v.reshape(nnz, bn, bk).contiguous(), layout.col_indices, layout.row_ptr
