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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The same argument checks (and messages) as the CUDA layouts.
from bigperf.cuda_layouts import _check, _round_up

S24_LANES_VERSION = 1

_LANES = 16
_PAD_META_BYTE = 0x44  # two groups with kept positions (0, 1)
_VALUE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8)


@dataclass(frozen=True)
class Sparse24Lanes:
    values: torch.Tensor  # [NB, 8K], the canonical values' dtype
    meta: torch.Tensor  # [NB, 2K] uint8
    scale: torch.Tensor | None  # [16 NB] float32, int8 values only
    n: int
    k: int
    version: int = S24_LANES_VERSION


def check_version(function: str, layout) -> None:
    """A Sparse24Lanes of the version this bigperf reads, else TypeError / ValueError."""
    if not isinstance(layout, Sparse24Lanes):
        raise TypeError(f"{function}: argument 'layout' must be a bigperf.cpu_layouts.Sparse24Lanes, "
                        f"got {type(layout).__name__}")
    if layout.version != S24_LANES_VERSION:
        raise ValueError(f"{function}: layout version {layout.version} is not the version {S24_LANES_VERSION} this "
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
    # Float values: bf16 lane-major pairs [.., 16, 2], f32/f16 [.., 2, 16]. (int8 has its own
    # order and never changes dtype with the module.)
    return dtype != torch.bfloat16


def reorder_lanes_values(values: torch.Tensor, laid_out_for: torch.dtype) -> torch.Tensor:
    """Lane-layout values converted element-wise from `laid_out_for` (e.g. by Module.half())
    back in the order of their own dtype; the tensor itself when the orders agree."""
    if _slot_major(values.dtype) == _slot_major(laid_out_for):
        return values
    nb, width = values.shape
    pairs = (2, _LANES) if _slot_major(laid_out_for) else (_LANES, 2)
    return values.reshape(nb, width // (2 * _LANES), *pairs).transpose(2, 3).reshape(nb, width).contiguous()


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
