"""Weight format "w8a16-cpu": the AVX2 W8A16 kernels' panel order of int8_rowmajor.

A weight-only Int8Linear with symmetric per-channel weights on a CPU whose kernels run the
AVX2 path holds only this form (buffers BUFFERS, not persistent: its state_dict stays
int8_rowmajor). Why: at M = 1 the row-major kernel reads 4 weight rows at a time, and each
row (4 KB at K = 4096) ends at a page, where the hardware prefetchers stop; here four
16-column panels stream at once, each 16 x K contiguous bytes (4096 x 14336, 1 thread, Zen 3:
1.4x the row-major kernel; benchmarks/NOTES.md). Same bytes as row-major (plus padding to
whole panels); pure PyTorch packing, exact round trips; change the layout and VERSION
together, here and in csrc/cpu/int8_weight_panels.h.

Layout (from int8_rowmajor's qweight [N, K] int8 and scale [N, 1] fp32), version 1:
  weight [Np/16, K*16] int8, Np = N rounded up to 16, zero padded: row p is the panel of
      output columns 16p .. 16p+15, [K][16] (formats/_panels.py with u = 1).
  scale [N, 1] fp32, as in int8_rowmajor.
Grouped or asymmetric weights keep int8_rowmajor (the kernels take one scale per column).

Paths (torch.ops.bigperf.int8_weight_linear_w8a16_cpu): "cpu" (the dot form, the weight
streamed per call: small M) and "cpu:panel" (the panel GEMM, whose strips are these panels:
large M), both AVX2 on the layout; every other path is int8_weight_linear's path of the same
name on the weight unpacked for the call, so the path a layer reports is the one that runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bigperf import _ext
from bigperf.formats import int8_rowmajor
from bigperf.formats._checks import check_arg, check_layout_version
from bigperf.formats._panels import PANEL_N, from_panels, to_panels
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.common import PANEL_MIN_ROWS, as_rows, cpu_why_not, fp32_bias
from bigperf.ops.layout_paths import register_unpacked_paths
from bigperf.ops.onnx_lowering import onnx_lowering
from bigperf.ops.torch_paths import copy_linear, register_float_copy_path
from bigperf.ops.validation import DTYPE_CODES

NAME = "w8a16-cpu"
VERSION = 1
BUFFERS = ("w8a16_cpu_weight", "w8a16_cpu_scale")
KERNEL = "int8_weight_linear_panels"


def why_not_hold(device: torch.device, weight_only: bool, group_size: int | None, symmetric: bool) -> str | None:
    """Why a layer on `device` should not hold its int8 weight in this format, or None."""
    if not weight_only:
        return "holds W8A16 weights; W8A8 layers hold w8a8-cpu on AVX2 CPUs"
    if group_size is not None or not symmetric:
        return "the kernels take one scale per output column (symmetric, per channel)"
    if device.type != "cpu":
        return f"a CPU kernel layout; the weight is on {device}"
    if _ext.cpu_module() is None:
        return _ext.cpu_unavailable_reason()
    if _ext.cpu_isa() != "avx2":
        # Measured on AVX2 (Zen 3) only; the AVX-512 path reads row-major weights with its own tiles.
        return f"the AVX2 kernels' layout; this CPU runs the {_ext.cpu_isa()} path"
    return None


@dataclass(frozen=True)
class W8A16CpuLayout:
    weight: torch.Tensor  # [Np/16, K*16] int8
    scale: torch.Tensor  # [N, 1] float32
    n: int
    k: int
    version: int = VERSION


def pack_w8a16_cpu(qweight: torch.Tensor, scale: torch.Tensor) -> W8A16CpuLayout:
    """bigperf.quant's symmetric per-channel int8 weight in the AVX2 W8A16 kernels' panel order."""
    function = "bigperf.formats.w8a16_cpu.pack_w8a16_cpu"
    check_arg(function, "qweight", qweight, (torch.int8,), 2)
    check_arg(function, "scale", scale, (torch.float32,), 2)
    n, k = qweight.shape
    if tuple(scale.shape) != (n, 1) or scale.device != qweight.device:
        raise ValueError(f"{function}: argument 'scale' must be per channel, [{n}, 1] on {qweight.device}, "
                         f"got {tuple(scale.shape)} on {scale.device}")
    return W8A16CpuLayout(to_panels(qweight, k, 1), scale.contiguous(), n, k)


def unpack_w8a16_cpu(layout: W8A16CpuLayout) -> tuple[torch.Tensor, torch.Tensor, None]:
    """The (qweight [N, K] int8, scale [N, 1] fp32, zero_point None) packed."""
    check_layout_version("bigperf.formats.w8a16_cpu.unpack_w8a16_cpu", layout, W8A16CpuLayout, VERSION)
    return from_panels(layout.weight, layout.n, layout.k, layout.k, 1), layout.scale, None


def float_weight(layout: W8A16CpuLayout) -> torch.Tensor:
    """The dequantised weight in fp32, for a layer that keeps a float copy (torch:copy)."""
    return int8_rowmajor.float_weight(*unpack_w8a16_cpu(layout), weight_only=True)


# ----------------------------------------------------------------------------- candidate paths
# Arguments of every path: (x, weight, scale, n, k, bias, activation).

def _canonical_args(x, weight, scale, n, k, bias, activation):
    qweight, q_scale, _ = unpack_w8a16_cpu(W8A16CpuLayout(weight, scale, n, k))
    return (x, qweight, q_scale, None, bias, activation)


def dense_weight(*args) -> torch.Tensor:
    """The dequantised weight of a path's arguments, in fp32 (the op's backward)."""
    return int8_rowmajor.weight_only_dense(*_canonical_args(*args))


def _canonical_stand_ins(x, weight, scale, n, k, bias, activation):
    return (x, torch.empty(n, k, dtype=torch.int8, device="meta"), scale, None, bias, activation)


def _cpu_why_not(x, weight, scale, n, k, bias, activation):
    reason = cpu_why_not(x, KERNEL)
    if reason is None and _ext.cpu_isa() not in ("avx2", "avx512"):
        reason = f"the layout's kernels are AVX2 code; the CPU path in use is {_ext.cpu_isa()}"
    return reason


def _cpu_panel_why_not(x, weight, scale, n, k, bias, activation):
    rows = x.numel() // k
    if rows < PANEL_MIN_ROWS:
        return f"{rows} rows of x: the panel GEMM is for {PANEL_MIN_ROWS} rows or more"
    return _cpu_why_not(x, weight, scale, n, k, bias, activation)


def _cpu_run(x, weight, scale, n, k, bias, activation, form="dot"):
    x2 = as_rows(x, k)
    m = x2.shape[0]
    b = fp32_bias(bias)
    out = torch.empty((m, n), dtype=x.dtype)
    _ext.cpu_module().int8_weight_linear_panels(
        form, x2.data_ptr(), x2.stride(0), DTYPE_CODES[x.dtype], weight.data_ptr(), scale.data_ptr(),
        b.data_ptr() if b is not None else 0, out.data_ptr(), n, m, n, k, ACTIVATIONS.index(activation),
        torch.get_num_threads())
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)


def _cpu_panel_run(x, weight, scale, n, k, bias, activation):
    return _cpu_run(x, weight, scale, n, k, bias, activation, form="gemm")


def _copy_run(x, weight, scale, n, k, bias, activation):
    return copy_linear(x, weight, bias=bias, activation=activation)


def register_paths(table, canonical_table) -> None:
    """Both AVX2 forms on the layout, then every other path of int8_weight_linear's table on
    the unpacked weight (its own cpu paths excluded: they would unpack the whole weight per
    call to do what these do on the layout)."""
    table.register("cpu", _cpu_why_not, _cpu_run)
    table.register("cpu", _cpu_panel_why_not, _cpu_panel_run, variant="panel")
    register_unpacked_paths(table, canonical_table, ("cpu",), _canonical_stand_ins, _canonical_args)
    register_float_copy_path(table, _copy_run)  # on the layout itself, not unpacked


# ----------------------------------------------------------------------------- ONNX

@onnx_lowering("bigperf.int8_weight_linear_w8a16_cpu")
def _int8_weight_linear_w8a16_cpu(x, weight, scale, n, k, bias, activation):
    # The CPU layout of a W8A16 Int8Linear, back in row-major order (constant folded).
    return int8_rowmajor.lower_weight_only(*_canonical_args(x, weight, scale, n, k, bias, activation))

