"""Pruning masks and packed sparse formats, in plain PyTorch (the oracle for the kernels).

Masks (True = keep), for a weight W [N, K] in nn.Linear orientation:
- unstructured magnitude: the largest |w| up to a density, per layer (or global in prune());
- N:M semi-structured along K (2:4 by default): in every group of M keep the N largest |w|;
- block: rectangular (bn, bk) blocks ranked by their L2 norm, kept up to a density.

Packed formats:
- 2:4 compressed: values [N, K/2] (the kept values of each group of 4, in K order) and
  meta [N, K/8] uint8: byte j describes groups 2j and 2j+1 with four 2-bit positions,
  (bits 0-1, 2-3) the two kept positions of group 2j, (4-5, 6-7) those of group 2j+1,
  the first position always below the second. K must be a multiple of 8.
  The int8 variant stores int8 values with a per-row fp32 scale [N, 1].
- BSR: values [nnz, bn, bk], col_indices [nnz] int32 (block column), row_ptr [N/bn + 1]
  int32; N and K must be multiples of bn and bk.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass

import torch
from torch import nn

# ----------------------------------------------------------------------------- masks


def _check_weight(weight, function: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise TypeError(f"{function}: argument 'weight' must be a 2-D floating-point tensor, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}")


def _check_density(density, function: str) -> float:
    if not isinstance(density, (int, float)) or not 0 < density <= 1:
        raise ValueError(f"{function}: argument 'density' must be in (0, 1], got {density!r}")
    return float(density)


def kept_count(density: float, total: int) -> int:
    """How many of `total` weights (or blocks) a mask of `density` keeps: the one rounding
    rule of pruning, so that a layer pruned to a density is accepted at that density."""
    return max(1, round(density * total))


def magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round(density · numel) largest |w| (ties broken by position)."""
    _check_weight(weight, "bigperf.sparsity.magnitude_mask")
    density = _check_density(density, "bigperf.sparsity.magnitude_mask")
    keep = kept_count(density, weight.numel())
    flat = weight.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.reshape(weight.shape)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """In every group of m consecutive K elements keep the n largest |w|."""
    function = "bigperf.sparsity.nm_mask"
    _check_weight(weight, function)
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(f"{function}: arguments 'n' and 'm' must satisfy 0 < n < m, got {n}:{m}")
    rows, k = weight.shape
    if k % m:
        raise ValueError(f"{function}: K = {k} is not a multiple of m = {m}; pad the layer or use another pattern")
    groups = weight.detach().abs().reshape(rows, k // m, m)
    kept = torch.topk(groups, n, dim=2, sorted=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, kept, True)
    return mask.reshape(rows, k)


def _check_block(weight: torch.Tensor, block, function: str) -> tuple[int, int]:
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ValueError(f"{function}: argument 'block' must be a pair of positive ints (bn, bk), got {block!r}")
    bn, bk = block
    n, k = weight.shape
    if n % bn or k % bk:
        raise ValueError(f"{function}: weight {n}x{k} is not divisible into {bn}x{bk} blocks")
    return bn, bk


def block_mask(weight: torch.Tensor, block=(16, 16), density: float = 0.5) -> torch.Tensor:
    """Keep the blocks with the largest L2 norms, round(density · blocks) of them."""
    function = "bigperf.sparsity.block_mask"
    _check_weight(weight, function)
    density = _check_density(density, function)
    bn, bk = _check_block(weight, block, function)
    n, k = weight.shape
    norms = weight.detach().float().reshape(n // bn, bn, k // bk, bk).pow(2).sum(dim=(1, 3))
    keep = kept_count(density, norms.numel())
    chosen = torch.zeros(norms.numel(), dtype=torch.bool, device=weight.device)
    chosen[torch.topk(norms.flatten(), keep, sorted=False).indices] = True
    return chosen.reshape(n // bn, k // bk).repeat_interleave(bn, 0).repeat_interleave(bk, 1)


def satisfies_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    rows, k = weight.shape
    return k % m == 0 and bool(((weight != 0).reshape(rows, k // m, m).sum(dim=2) <= n).all())


# ----------------------------------------------------------------------------- 2:4 packing

@dataclass
class Packed24:
    values: torch.Tensor  # [N, K/2] float, or int8 with `scale`
    meta: torch.Tensor  # [N, K/8] uint8
    scale: torch.Tensor | None = None  # [N, 1] fp32 for int8 values


def pack_24(weight: torch.Tensor) -> Packed24:
    """Compress a weight that satisfies 2:4 along K (at most 2 non-zeros per group of 4)."""
    function = "bigperf.sparsity.pack_24"
    _check_weight(weight, function)
    n, k = weight.shape
    if k % 8:
        raise ValueError(f"{function}: K = {k} must be a multiple of 8 for the 2:4 format; pad the layer")
    if not satisfies_nm(weight):
        raise ValueError(f"{function}: weight does not satisfy 2:4 (a group of 4 along K holds more than 2 "
                         f"non-zeros); prune it first, e.g. bigperf.sparsity.nm_mask")
    groups = weight.reshape(n, k // 4, 4)
    nonzero = groups != 0
    # Choose exactly two positions per group: the non-zeros first, then the lowest zero slots.
    order = torch.argsort((~nonzero).to(torch.int8) * 4 + torch.arange(4, device=weight.device), dim=2, stable=True)
    positions = torch.sort(order[..., :2], dim=2).values  # ascending within the group
    values = torch.gather(groups, 2, positions).reshape(n, k // 2)
    codes = positions.to(torch.uint8)  # [N, K/4, 2], each 0..3
    per_group = codes[..., 0] | (codes[..., 1] << 2)  # 4 bits per group
    pairs = per_group.reshape(n, k // 8, 2)
    meta = pairs[..., 0] | (pairs[..., 1] << 4)
    return Packed24(values.contiguous(), meta.contiguous())


def meta_positions(meta: torch.Tensor) -> torch.Tensor:
    """[N, K/8] uint8 → [N, K/4, 2] int64 kept positions within each group."""
    n = meta.shape[0]
    m = meta.to(torch.int64)
    # (K/4 spelled out: reshape(0, -1) is ambiguous, and N = 0 is a valid weight)
    nibbles = torch.stack((m & 0xF, m >> 4), dim=2).reshape(n, 2 * meta.shape[1])  # [N, K/4]
    return torch.stack((nibbles & 3, nibbles >> 2), dim=2)


def meta_is_valid(meta: torch.Tensor) -> bool:
    """Every group's first kept position is below its second (what pack_24 writes)."""
    positions = meta_positions(meta)
    return bool((positions[..., 0] < positions[..., 1]).all())


def unpack_24(values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor | None = None,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense [N, K] weight (int8 values are dequantised with `scale`)."""
    n, half = values.shape
    dtype = dtype or (torch.float32 if scale is not None else values.dtype)
    work = torch.float32 if scale is not None else dtype  # dequantise in fp32, round once
    dense = torch.empty(n, 2 * half, dtype=work, device=values.device)
    return unpack_24_into(dense, values, meta, scale).to(dtype)


def unpack_24_into(out: torch.Tensor, values: torch.Tensor, meta: torch.Tensor,
                   scale: torch.Tensor | None = None) -> torch.Tensor:
    """unpack_24 written into `out` ([N, K], float): no temporaries of the weight's size, for
    the chunked GEMM paths. int8 values are exact in any float dtype; with `scale` the
    product is formed in fp32 and rounded once to out's dtype."""
    n, half = values.shape
    dense = out.view(n, half // 2, 4)
    dense.zero_()
    dense.scatter_(2, meta_positions(meta), values.reshape(n, half // 2, 2).to(out.dtype))
    if scale is not None:
        out.mul_(scale.float())
    return out


def pack_24_int8(weight: torch.Tensor) -> Packed24:
    """2:4 compression with int8 values, symmetric per output row."""
    packed = pack_24(weight)
    values = packed.values.float()
    # (K = 0: an empty row's absmax is 0, which amax refuses to reduce)
    absmax = values.abs().amax(dim=1, keepdim=True) if values.shape[1] else values.new_zeros(values.shape[0], 1)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    q = torch.clamp(torch.round(packed.values.float() / scale), -127, 127).to(torch.int8)
    return Packed24(q.contiguous(), packed.meta, scale.contiguous())


# ----------------------------------------------------------------------------- BSR

@dataclass
class PackedBSR:
    values: torch.Tensor  # [nnz, bn, bk]
    col_indices: torch.Tensor  # [nnz] int32
    row_ptr: torch.Tensor  # [N/bn + 1] int32


def pack_bsr(weight: torch.Tensor, block=(16, 16)) -> PackedBSR:
    """Block-compressed sparse rows of the non-zero (bn, bk) blocks of `weight`."""
    function = "bigperf.sparsity.pack_bsr"
    _check_weight(weight, function)
    bn, bk = _check_block(weight, block, function)
    n, k = weight.shape
    blocks = weight.reshape(n // bn, bn, k // bk, bk).transpose(1, 2)  # [N/bn, K/bk, bn, bk]
    present = (blocks != 0).flatten(2).any(dim=2)
    rows, cols = present.nonzero(as_tuple=True)  # row-major order
    counts = present.sum(dim=1)
    row_ptr = torch.zeros(n // bn + 1, dtype=torch.int32, device=weight.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    return PackedBSR(blocks[rows, cols].contiguous(), cols.to(torch.int32).contiguous(), row_ptr)


def bsr_is_valid(col_indices: torch.Tensor, row_ptr: torch.Tensor, nnz: int, block_cols: int) -> str | None:
    """None if the indices are consistent and in range, else what is wrong."""
    if row_ptr.numel() < 1 or int(row_ptr[0]) != 0 or int(row_ptr[-1]) != nnz:
        return f"row_ptr must start at 0 and end at nnz = {nnz}"
    if bool((row_ptr[1:] < row_ptr[:-1]).any()):
        return "row_ptr must be non-decreasing"
    if col_indices.numel() != nnz:
        return f"col_indices holds {col_indices.numel()} entries for {nnz} blocks"
    if nnz and (int(col_indices.min()) < 0 or int(col_indices.max()) >= block_cols):
        return f"col_indices must lie in [0, {block_cols})"
    return None


def unpack_bsr(values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor, k: int) -> torch.Tensor:
    nnz, bn, bk = values.shape
    dense = torch.empty((row_ptr.numel() - 1) * bn, k, dtype=values.dtype, device=values.device)
    return unpack_bsr_into(dense, values, col_indices, row_ptr)


def unpack_bsr_into(out: torch.Tensor, values: torch.Tensor, col_indices: torch.Tensor,
                    row_ptr: torch.Tensor) -> torch.Tensor:
    """unpack_bsr written into `out` ([block rows * bn, K], float), for the chunked GEMM paths."""
    nnz, bn, bk = values.shape
    block_rows = row_ptr.numel() - 1
    counts = (row_ptr[1:] - row_ptr[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(block_rows, device=values.device), counts)
    out.zero_()
    blocks = out.view(block_rows, bn, out.shape[1] // bk, bk).permute(0, 2, 1, 3)  # [rows, cols, bn, bk]
    blocks[rows, col_indices.long()] = values.to(out.dtype)
    return out


# ----------------------------------------------------------------------------- masks on models

class _Masked(nn.Module):
    """Parametrisation that keeps pruned weights at zero through further training."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def apply_mask_(linear: nn.Module, mask: torch.Tensor, keep: bool = False) -> None:
    """Zero the pruned weights in place; with keep=True they stay zero through training.
    A weight made under torch.inference_mode() (a model loaded there) is written inside
    that mode, the only place torch lets an inference tensor change in place."""
    inside = torch.inference_mode() if linear.weight.is_inference() else contextlib.nullcontext()
    with inside, torch.no_grad():
        linear.weight.mul_(mask.to(linear.weight.dtype))
    if keep:
        nn.utils.parametrize.register_parametrization(linear, "weight", _Masked(mask))
