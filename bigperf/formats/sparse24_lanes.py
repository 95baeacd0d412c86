"""Weight format "sparse24-lanes" ("cpu-lanes16"): the CPU lane layout of sparse24.

A SparseLinear (2:4) on the CPU holds only this form (buffers BUFFERS, not persistent: its
state_dict stays sparse24) where bigperf._C has the kernel that reads it, so the CPU never
holds the weight twice. Pure PyTorch packing, exact round trips, versioned: change the
layout and VERSION together, here and in csrc/cpu/sparse24_lanes_kernel.h.

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

Paths (torch.ops.bigperf.sparse24_lanes_linear): our CPU kernel reads the layout; every
other path is sparse24_linear's path of the same name on the weight unpacked for the call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from bigperf.formats import sparse24
from bigperf.formats._checks import check_arg, check_layout_version, check_same_device, round_up
from bigperf.formats._lanes import FLOAT_DTYPES, LANES, first_rows, slot_major
from bigperf.ops.common import BF16_PANEL_VARIANT, bf16_values_panel_why_not, cpu_why_not, panel_why_not
from bigperf.ops.layout_paths import register_unpacked_paths
from bigperf.ops.onnx_lowering import onnx_lowering
from bigperf.ops.torch_paths import copy_linear, register_float_copy_path

NAME = "sparse24-lanes"
KERNEL_LAYOUT = "cpu-lanes16"  # the layer's name for it (SparseLinear.kernel_layout)
VERSION = 1
BUFFERS = ("lanes_values", "lanes_meta", "lanes_scale")


def why_not_hold(device: torch.device) -> str | None:
    """Why a 2:4 layer on `device` should not hold this layout, or None."""
    if device.type != "cpu":
        return f"a CPU kernel layout; the weight is on {device}"
    return cpu_kernel_why_not(torch.empty(0, device=device))


def check_version(function: str, layout) -> None:
    check_layout_version(function, layout, Sparse24Lanes, VERSION)


_PAD_META_BYTE = 0x44  # two groups with kept positions (0, 1)
_VALUE_DTYPES = FLOAT_DTYPES + (torch.int8,)


@dataclass(frozen=True)
class Sparse24Lanes:
    values: torch.Tensor  # [NB, 8K], the canonical values' dtype
    meta: torch.Tensor  # [NB, 2K] uint8
    scale: torch.Tensor | None  # [16 NB] float32, int8 values only
    n: int
    k: int
    version: int = VERSION


def check_lanes(function: str, values, meta, scale, n: int, k: int | None = None) -> int:
    """Check the lane-layout tensors of an n-row weight (dtypes, ranks, shapes; not devices
    nor the meta's content) and return K (from meta when k is None)."""
    check_arg(function, "values", values, _VALUE_DTYPES, 2)
    check_arg(function, "meta", meta, (torch.uint8,), 2)
    nb = values.shape[0]
    if k is None:
        k = meta.shape[1] // 2
    if k <= 0 or k % 8:
        raise ValueError(f"{function}: K must be a positive multiple of 8 ('meta' is [NB, 2K]), got K = {k} "
                         f"from 'meta' {tuple(meta.shape)}")
    if not isinstance(n, int) or not max(0, LANES * (nb - 1)) < n <= LANES * nb:
        raise ValueError(f"{function}: argument 'n' must be in ({max(0, LANES * (nb - 1))}, {LANES * nb}] for "
                         f"'values' with NB = {nb} blocks of 16 rows, got {n!r}")
    for name, t, shape in (("values", values, (nb, 8 * k)), ("meta", meta, (nb, 2 * k))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{function}: argument '{name}' must have shape {shape} for NB = {nb}, K = {k}, "
                             f"got {tuple(t.shape)}")
    if (values.dtype == torch.int8) != (scale is not None):
        raise ValueError(f"{function}: argument 'scale' is required exactly when 'values' is int8")
    if scale is not None:
        check_arg(function, "scale", scale, (torch.float32,), 1)
        if scale.shape[0] != LANES * nb:
            raise ValueError(f"{function}: argument 'scale' must have shape ({LANES * nb},), got {tuple(scale.shape)}")
    return k


def pack_24_lanes(values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor | None = None) -> Sparse24Lanes:
    """bigperf.sparsity's 2:4 compressed weight in the CPU lane layout ("cpu-lanes16")."""
    function = "bigperf.formats.sparse24_lanes.pack_24_lanes"
    check_arg(function, "values", values, _VALUE_DTYPES, 2)
    check_arg(function, "meta", meta, (torch.uint8,), 2)
    n, half = values.shape
    k = 2 * half
    if n == 0 or k == 0 or k % 8 or tuple(meta.shape) != (n, k // 8):
        raise ValueError(f"{function}: argument 'meta' must be [N, K/8] = [{n}, {k // 8}] with N > 0 and K a positive "
                         f"multiple of 8, got {tuple(meta.shape)} for values {tuple(values.shape)}")
    if (values.dtype == torch.int8) != (scale is not None):
        raise ValueError(f"{function}: argument 'scale' is required exactly when 'values' is int8")
    if scale is not None:
        check_arg(function, "scale", scale, (torch.float32,), 2)
        if tuple(scale.shape) != (n, 1):
            raise ValueError(f"{function}: argument 'scale' must have shape ({n}, 1), got {tuple(scale.shape)}")
    check_same_device(function, (("meta", meta), ("scale", scale)), values.device)
    n16 = round_up(n, LANES)
    nb, device = n16 // LANES, values.device
    if n16 != n:
        padded = torch.zeros((n16, half), dtype=values.dtype, device=device)
        padded[:n] = values
        padded_meta = torch.full((n16, k // 8), _PAD_META_BYTE, dtype=torch.uint8, device=device)
        padded_meta[:n] = meta
        values, meta = padded, padded_meta
    if values.dtype == torch.int8:  # (block, lane, step of 2 groups, 2 groups x 2 slots)
        v = values.reshape(nb, LANES, k // 8, 4).permute(0, 2, 1, 3)
    else:
        v = values.reshape(nb, LANES, k // 4, 2)  # (block, lane, group, slot)
        v = v.permute(0, 2, 3, 1) if slot_major(values.dtype) else v.permute(0, 2, 1, 3)
    lanes_values = v.reshape(nb, 8 * k).contiguous()
    lanes_meta = meta.reshape(nb, LANES, k // 8).transpose(1, 2).reshape(nb, 2 * k).contiguous()
    lanes_scale = None
    if scale is not None:
        lanes_scale = torch.zeros(n16, dtype=torch.float32, device=device)
        lanes_scale[:n] = scale[:, 0]
    return Sparse24Lanes(lanes_values, lanes_meta, lanes_scale, n, k)


def unpack_24_lanes(layout: Sparse24Lanes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The canonical (values [N, K/2], meta [N, K/8] uint8, scale [N, 1] fp32 or None) packed."""
    function = "bigperf.formats.sparse24_lanes.unpack_24_lanes"
    check_version(function, layout)
    n, k = layout.n, layout.k
    check_lanes(function, layout.values, layout.meta, layout.scale, n, k)
    check_same_device(function, (("meta", layout.meta), ("scale", layout.scale)), layout.values.device)
    nb = layout.values.shape[0]
    n16 = nb * LANES
    if layout.values.dtype == torch.int8:
        v = layout.values.reshape(nb, k // 8, LANES, 4).permute(0, 2, 1, 3)
    elif slot_major(layout.values.dtype):
        v = layout.values.reshape(nb, k // 4, 2, LANES).permute(0, 3, 1, 2)
    else:
        v = layout.values.reshape(nb, k // 4, LANES, 2).permute(0, 2, 1, 3)
    values = first_rows(v.reshape(n16, k // 2), n)
    meta = first_rows(layout.meta.reshape(nb, k // 8, LANES).transpose(1, 2).reshape(n16, k // 8), n)
    scale = first_rows(layout.scale.reshape(n16, 1), n) if layout.scale is not None else None
    return values, meta, scale


# ----------------------------------------------------------------------------- candidate paths

CPU_KERNEL = "sparse24_lanes_linear"  # bigperf._C's entry point (csrc/cpu)
CPU_PANEL_KERNEL = "sparse24_lanes_linear_panel"  # its panel form, for arithmetic-bound M
CPU_BF16_KERNEL = "sparse24_lanes_linear_panel_bf16"  # the panel form in bf16 arithmetic (AVX512-BF16)


def cpu_kernel_why_not(x, *rest) -> str | None:
    """Why bigperf._C cannot run the lane-layout kernel on x's device, or None."""
    return cpu_why_not(x, CPU_KERNEL)


def _cpu_bf16_why_not(x, values, *rest) -> str | None:
    # int8 codes too: exact in bf16, their row scales multiply the sums.
    return bf16_values_panel_why_not(x, values, CPU_BF16_KERNEL, (torch.bfloat16, torch.int8))


def _cpu_panel_why_not(x, *rest) -> str | None:
    return panel_why_not(x, x.shape[-1], CPU_PANEL_KERNEL)


def _cpu_run(x, values, meta, scale, n, bias, activation, kernel=CPU_KERNEL):
    return sparse24.run_cpu_24(kernel, x, values, meta, scale, bias, activation, n, meta.shape[1] // 2)


def _cpu_bind(values, meta, scale, n, bias, activation, kernel=CPU_KERNEL):
    return sparse24.bind_cpu_24(kernel, values, meta, scale, bias, activation, n, meta.shape[1] // 2)


def _canonical_args(x, values, meta, scale, n, bias, activation):
    canonical = unpack_24_lanes(Sparse24Lanes(values, meta, scale, n, meta.shape[1] // 2))
    return (x, *canonical, bias, activation)


def dense_weight(*args) -> torch.Tensor:
    """The dense weight of a path's arguments, in fp32 (the op's backward)."""
    return sparse24.dense_weight(*_canonical_args(*args))


def _canonical_stand_ins(x, values, meta, scale, n, bias, activation):
    k = meta.shape[1] // 2
    return (x, torch.empty(n, k // 2, dtype=values.dtype, device="meta"),
            torch.empty(n, k // 8, dtype=torch.uint8, device="meta"),
            None if scale is None else torch.empty(n, 1, device="meta"), bias, activation)


def float_weight(layout: Sparse24Lanes) -> torch.Tensor:
    """The dense weight in fp32, for a layer that keeps a float copy (torch:copy)."""
    return sparse24.float_weight(*unpack_24_lanes(layout))


def _copy_run(x, values, meta, scale, n, bias, activation):
    return copy_linear(x, values, bias=bias, activation=activation)


def register_paths(table, canonical_table) -> None:
    """Our CPU kernel on the layout, then every other path of sparse24_linear's table on the
    unpacked weight."""
    for kernel, variant, why_not in ((CPU_KERNEL, "", cpu_kernel_why_not),
                                     (CPU_PANEL_KERNEL, "panel", _cpu_panel_why_not),
                                     (CPU_BF16_KERNEL, BF16_PANEL_VARIANT, _cpu_bf16_why_not)):
        table.register("cpu", why_not, functools.partial(_cpu_run, kernel=kernel), variant=variant,
                       bind=functools.partial(_cpu_bind, kernel=kernel))
    register_unpacked_paths(table, canonical_table, ("cpu",), _canonical_stand_ins, _canonical_args)
    register_float_copy_path(table, _copy_run)  # on the layout itself, not unpacked


# ----------------------------------------------------------------------------- ONNX

@onnx_lowering("bigperf.sparse24_lanes_linear")
def lower(x, values, meta, scale, n, bias, activation):
    # The CPU lane layout of a SparseLinear on the CPU, back in canonical order (constant folded).
    return sparse24.lower(*_canonical_args(x, values, meta, scale, n, bias, activation))
