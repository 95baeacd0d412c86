"""Weight format "w8a16-cpu": the CPU W8A16 kernels' panel order of int8_rowmajor.

A weight-only Int8Linear (per channel or per group, symmetric or not) on a CPU whose kernels
run the AVX2 or the AVX-512 path holds only this form (buffers BUFFERS, not persistent: its
state_dict stays int8_rowmajor). Why: at M = 1 the row-major kernel reads 4 weight rows at a time, and each
row (4 KB at K = 4096) ends at a page, where the hardware prefetchers stop; here four
16-column panels stream at once, each 16 x K contiguous bytes (4096 x 14336, 1 thread: 1.4x
the row-major kernel on Zen 3 with AVX2, 1.28x on Zen 4 with AVX-512; benchmarks/NOTES.md).
Same bytes as row-major (plus padding to whole panels); pure PyTorch packing, exact round trips; change the layout and VERSION
together, here and in csrc/cpu/int8_weight_panels.h.

Layout (from int8_rowmajor's qweight [N, K] int8, scale [N, G] fp32, zero_point [N, G] int8
or None), version 2:
  weight [Np/16, K*16] int8, Np = N rounded up to 16, zero padded: row p is the panel of
      output columns 16p .. 16p+15, [K][16] (formats/_panels.py with u = 1).
  scale [G, Np] fp32 and zero [G, Np] int8 (or None): group-major, zero past N, so that a
      group's 16 scales of a panel are one vector (version 1 held per-channel [N, 1] scales).

Paths (torch.ops.bigperf.int8_weight_linear_w8a16_cpu): "cpu" (the dot form, the weight
streamed per call: small M) and "cpu:panel" (the panel GEMM, whose strips are these panels:
large M), both of the ISA path in use (AVX2 or AVX-512) on the layout, and "cpu:panel-bf16"
(the panel GEMM in bf16 arithmetic: AVX-512 with AVX512-BF16, the codes exact in bf16); PyTorch's paths
("torch:fp32", "torch:bf16") read its rows a chunk at a time (_panels.panel_rows); every
other path is int8_weight_linear's path of the same name on the weight unpacked for the
call, so the path a layer reports is the one that runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from bigperf import _ext
from bigperf.formats import int8_rowmajor
from bigperf.formats._checks import check_arg, check_layout_version, round_up
from bigperf.formats._panels import (PANEL_N, from_panels, kernels_isa_why_not, panel_rows, to_panels,
                                     why_not_hold_panels)
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.common import (BF16_PANEL_VARIANT, PANEL_MIN_ROWS, bf16_panel_why_not, bind_cpu_rows, cpu_why_not,
                                fp32_bias)
from bigperf.ops.layout_paths import register_unpacked_paths
from bigperf.ops.onnx_lowering import onnx_lowering
from bigperf.ops.torch_paths import copy_linear, register_float_copy_path, register_torch_paths

NAME = "w8a16-cpu"
VERSION = 2
BUFFERS = ("w8a16_cpu_weight", "w8a16_cpu_scale", "w8a16_cpu_zero")
KERNEL = "int8_weight_linear_panels"


def why_not_hold(device: torch.device, weight_only: bool) -> str | None:
    """Why a layer on `device` should not hold its int8 weight in this format, or None."""
    if not weight_only:
        return "holds W8A16 weights; W8A8 layers hold w8a8-cpu"
    return why_not_hold_panels(device)


@dataclass(frozen=True)
class W8A16CpuLayout:
    weight: torch.Tensor  # [Np/16, K*16] int8
    scale: torch.Tensor  # [G, Np] float32
    zero: torch.Tensor | None  # [G, Np] int8, or None (symmetric)
    n: int
    k: int
    group_size: int | None  # None: per channel
    version: int = VERSION


def pack_w8a16_cpu(qweight: torch.Tensor, scale: torch.Tensor,
                   zero_point: torch.Tensor | None = None) -> W8A16CpuLayout:
    """bigperf.quant's int8 weight (per channel or per group) in the CPU W8A16 kernels' panel order."""
    function = "bigperf.formats.w8a16_cpu.pack_w8a16_cpu"
    check_arg(function, "qweight", qweight, (torch.int8,), 2)
    check_arg(function, "scale", scale, (torch.float32,), 2)
    n, k = qweight.shape
    groups = scale.shape[1]
    if scale.shape[0] != n or groups < 1 or k % groups or scale.device != qweight.device:
        raise ValueError(f"{function}: argument 'scale' must be [{n}, G] with G dividing K = {k}, on "
                         f"{qweight.device}; got {tuple(scale.shape)} on {scale.device}")
    if zero_point is not None:
        check_arg(function, "zero_point", zero_point, (torch.int8,), 2)
        if zero_point.shape != scale.shape or zero_point.device != qweight.device:
            raise ValueError(f"{function}: argument 'zero_point' must have the shape of 'scale' {tuple(scale.shape)} "
                             f"on {qweight.device}, got {tuple(zero_point.shape)} on {zero_point.device}")
    np_ = round_up(n, PANEL_N)
    zero = int8_rowmajor.group_major(zero_point, np_) if zero_point is not None else None
    return W8A16CpuLayout(to_panels(qweight, k, 1), int8_rowmajor.group_major(scale, np_), zero, n, k,
                          None if groups == 1 else k // groups)


def unpack_w8a16_cpu(layout: W8A16CpuLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The (qweight [N, K] int8, scale [N, G] fp32, zero_point [N, G] int8 or None) packed."""
    check_layout_version("bigperf.formats.w8a16_cpu.unpack_w8a16_cpu", layout, W8A16CpuLayout, VERSION)
    n = layout.n
    zero = int8_rowmajor.from_group_major(layout.zero, n) if layout.zero is not None else None
    return from_panels(layout.weight, n, layout.k, layout.k, 1), int8_rowmajor.from_group_major(layout.scale, n), zero


def float_weight(layout: W8A16CpuLayout) -> torch.Tensor:
    """The dequantised weight in fp32, for a layer that keeps a float copy (torch:copy)."""
    return int8_rowmajor.float_weight(*unpack_w8a16_cpu(layout), weight_only=True)


# ----------------------------------------------------------------------------- candidate paths
# Arguments of every path: (x, weight, scale, zero, n, k, group_size, bias, activation),
# group_size 0 per channel.

def as_layout(weight, scale, zero, n: int, k: int, group_size: int) -> W8A16CpuLayout:
    return W8A16CpuLayout(weight, scale, zero, n, k, group_size or None)


def _canonical_args(x, weight, scale, zero, n, k, group_size, bias, activation):
    qweight, q_scale, zero_point = unpack_w8a16_cpu(as_layout(weight, scale, zero, n, k, group_size))
    return (x, qweight, q_scale, zero_point, bias, activation)


def dense_weight(*args) -> torch.Tensor:
    """The dequantised weight of a path's arguments, in fp32 (the op's backward)."""
    return int8_rowmajor.weight_only_dense(*_canonical_args(*args))


def _cpu_why_not(x, weight, scale, zero, n, k, group_size, bias, activation):
    reason = cpu_why_not(x, KERNEL)
    return reason if reason is not None else kernels_isa_why_not()


def _cpu_panel_why_not(x, weight, scale, zero, n, k, group_size, bias, activation):
    rows = x.numel() // k
    if rows < PANEL_MIN_ROWS:
        return f"{rows} rows of x: the panel GEMM is for {PANEL_MIN_ROWS} rows or more"
    return _cpu_why_not(x, weight, scale, zero, n, k, group_size, bias, activation)


def _cpu_bf16_why_not(x, weight, scale, zero, n, k, group_size, bias, activation):
    return bf16_panel_why_not(x, k, KERNEL, torch.bfloat16)  # int8 codes: bf16's precision class


def _cpu_bind(weight, scale, zero, n, k, group_size, bias, activation, form="dot"):
    """The kernel form `form` on the panels, bound to everything but x (ops/common.bind_cpu_rows)."""
    b = fp32_bias(bias)
    return bind_cpu_rows("int8_weight_linear_panels", (_ext.cpu_isa(), form),
                         (weight.data_ptr(), scale.data_ptr(), zero.data_ptr() if zero is not None else 0,
                          scale.shape[0], b.data_ptr() if b is not None else 0),
                         (ACTIVATIONS.index(activation), torch.get_num_threads()), n, k, keep=(weight, scale, zero, b))


def _cpu_run(x, *args, form="dot"):
    return _cpu_bind(*args, form=form)(x)


# PyTorch's GEMM with the weight's rows read from the panels a chunk at a time.
def _torch_run(dtype):
    def run(x, weight, scale, zero, n, k, group_size, bias, activation):
        codes_into = panel_rows(weight, k, k, 1)

        def codes_of(r0, r1):
            q = torch.empty((r1 - r0, k), dtype=torch.int8, device=weight.device)
            codes_into(q, r0, r1)
            return q
        per_channel = scale.shape[0] == 1 and zero is None
        return int8_rowmajor.weight_only_torch_linear(
            x, n, k, dtype, codes_into, codes_of, lambda r0, r1: scale[:, r0:r1].t(),
            lambda r0, r1: zero[:, r0:r1].t() if zero is not None else None,
            scale[0, :n] if per_channel else None, bias, activation)
    return run


def _copy_run(x, weight, scale, zero, n, k, group_size, bias, activation):
    return copy_linear(x, weight, bias=bias, activation=activation)


def register_paths(table, canonical_table) -> None:
    """Both kernel forms on the layout, PyTorch's paths reading its rows a chunk at a time,
    then every other path of int8_weight_linear's table on the unpacked weight (its own cpu
    and torch paths excluded: they would unpack the whole weight per call)."""
    for form, variant, why_not in (("dot", "", _cpu_why_not), ("gemm", "panel", _cpu_panel_why_not),
                                   ("gemm-bf16", BF16_PANEL_VARIANT, _cpu_bf16_why_not)):
        table.register("cpu", why_not, functools.partial(_cpu_run, form=form), variant=variant,
                       bind=functools.partial(_cpu_bind, form=form))
    register_torch_paths(table, _torch_run)
    register_unpacked_paths(table, canonical_table, ("cpu", "torch"), int8_rowmajor.weight_only_layout_stand_ins,
                            _canonical_args)
    register_float_copy_path(table, _copy_run)  # on the layout itself, not unpacked


# ----------------------------------------------------------------------------- ONNX

@onnx_lowering("bigperf.int8_weight_linear_w8a16_cpu")
def _int8_weight_linear_w8a16_cpu(x, weight, scale, zero, n, k, group_size, bias, activation):
    # The CPU layout of a W8A16 Int8Linear, back in row-major order (constant folded).
    return int8_rowmajor.lower_weight_only(*_canonical_args(x, weight, scale, zero, n, k, group_size, bias,
                                                            activation))

