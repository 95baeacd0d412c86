"""Weight format "w8a8-cpu": the CPU W8A8 kernels' panel order of int8_rowmajor.

An Int8Linear with dynamic int8 activations (W8A8) on a CPU whose kernels run the AVX2 or
the AVX-512 (VNNI) path holds only this form (buffers BUFFERS, not persistent: its
state_dict stays int8_rowmajor), so the kernel reads the weight as its GEMM tiles want it
at every M. Before this layout the AVX2 kernel widened and transposed every weight column block on every call from 8 rows up, which
at M = 16 cost a quarter of its time, and fbgemm (which packs once) ran 1.8x faster. Same
bytes as row-major (plus padding to whole panels); pure PyTorch packing, exact round trips;
change the layout and VERSION together, here and in csrc/cpu/int8_linear.h (kW8A8Panel*).

Layout (from int8_rowmajor's qweight [N, K] int8 and scale [N, 1] fp32), version 1:
  weight [Np/16, Kp*16] int8, Np = N rounded up to 16, Kp = K rounded up to 32, zero padded.
      Row p is the panel of output columns 16p .. 16p+15: Kp/u units, each 16 columns x u
      consecutive k (u = 2 for act_bits 8: int16 pairs once widened, for vpmaddwd; u = 4 for
      act_bits 7: the quads vpmaddubsw multiplies), column-major within the unit row.
  colsum [Np] int32: each column's sum of codes (act_bits 7 takes the x offset back with it).
  scale [N, 1] fp32, as in int8_rowmajor.

The AVX-512 VNNI kernel reads the same bytes: with 7-bit x the units are vpdpbusd's quads,
with 8-bit x it interleaves two pair rows into quads in registers (one vpermw per 64 bytes),
so the layout does not depend on the ISA path that packed it.

Paths (torch.ops.bigperf.int8_dynamic_linear_w8a8_cpu): "cpu", the kernel of the ISA path
in use (AVX2 or AVX-512) on the layout at any M; PyTorch's paths read its rows a chunk at a
time (_panels.panel_rows); every other path is int8_dynamic_linear's path of the same name
on the weight unpacked for the call, so the path a layer reports is the one that runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bigperf import _ext
from bigperf.formats import int8_rowmajor
from bigperf.formats._checks import check_arg, check_layout_version, round_up
from bigperf.formats._panels import (PANEL_N, from_panels, kernels_isa_why_not, panel_rows, to_panels,
                                     why_not_hold_panels)
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.common import bind_cpu_rows, fp32_bias
from bigperf.ops.layout_paths import register_unpacked_paths
from bigperf.ops.onnx_lowering import onnx_lowering
from bigperf.ops.torch_paths import register_float_copy_path, register_torch_paths
from bigperf.quant import absmax_rows, activation_qmax

NAME = "w8a8-cpu"
VERSION = 1
BUFFERS = ("w8a8_weight", "w8a8_colsum", "w8a8_scale")
PANEL_K = 32  # csrc/cpu/int8_linear.h: kW8A8PanelK (PANEL_N = kW8A8PanelN = 16: formats/_panels.py)
KERNEL = "int8_dynamic_linear_panels"


def unit_of(act_bits: int) -> int:
    """Consecutive k per column in a unit row: 2 (8-bit x, vpmaddwd) or 4 (7-bit, vpmaddubsw)."""
    return 2 if act_bits == 8 else 4


def why_not_hold(device: torch.device, weight_only: bool) -> str | None:
    """Why a layer on `device` should not hold its int8 weight in this format, or None."""
    if weight_only:
        return "holds W8A8 weights; W8A16 layers hold w8a16-cpu"
    return why_not_hold_panels(device)


@dataclass(frozen=True)
class W8A8CpuLayout:
    weight: torch.Tensor  # [Np/16, Kp*16] int8
    colsum: torch.Tensor  # [Np] int32
    scale: torch.Tensor  # [N, 1] float32
    n: int
    k: int
    act_bits: int
    version: int = VERSION


def pack_w8a8_cpu(qweight: torch.Tensor, scale: torch.Tensor, act_bits: int = 8) -> W8A8CpuLayout:
    """bigperf.quant's symmetric per-channel int8 weight in the AVX2 W8A8 kernel's panel order."""
    function = "bigperf.formats.w8a8_cpu.pack_w8a8_cpu"
    check_arg(function, "qweight", qweight, (torch.int8,), 2)
    check_arg(function, "scale", scale, (torch.float32,), 2)
    activation_qmax(act_bits, function, "act_bits")
    n, k = qweight.shape
    if tuple(scale.shape) != (n, 1) or scale.device != qweight.device:
        raise ValueError(f"{function}: argument 'scale' must be per channel, [{n}, 1] on {qweight.device}, "
                         f"got {tuple(scale.shape)} on {scale.device}")
    np_ = round_up(n, PANEL_N)
    weight = to_panels(qweight, round_up(k, PANEL_K), unit_of(act_bits))
    colsum = torch.zeros(np_, dtype=torch.int32, device=qweight.device)
    colsum[:n] = qweight.sum(dim=1, dtype=torch.int32)
    return W8A8CpuLayout(weight, colsum, scale.contiguous(), n, k, act_bits)


def unpack_w8a8_cpu(layout: W8A8CpuLayout) -> tuple[torch.Tensor, torch.Tensor, None]:
    """The (qweight [N, K] int8, scale [N, 1] fp32, zero_point None) packed."""
    check_layout_version("bigperf.formats.w8a8_cpu.unpack_w8a8_cpu", layout, W8A8CpuLayout, VERSION)
    qweight = from_panels(layout.weight, layout.n, layout.k, round_up(layout.k, PANEL_K), unit_of(layout.act_bits))
    return qweight, layout.scale, None


def float_weight(layout: W8A8CpuLayout) -> torch.Tensor:
    """What torch:copy multiplies by (the codes in fp32, as int8_rowmajor.float_weight)."""
    return int8_rowmajor.float_weight(*unpack_w8a8_cpu(layout), weight_only=False)


# ----------------------------------------------------------------------------- candidate paths
# Arguments of every path: (x, weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax).

def as_layout(weight, colsum, scale, n: int, k: int, act_bits: int) -> W8A8CpuLayout:
    return W8A8CpuLayout(weight, colsum, scale, n, k, act_bits)


def _canonical_args(x, weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax):
    qweight, q_scale, _ = unpack_w8a8_cpu(as_layout(weight, colsum, scale, n, k, act_bits))
    return (x, qweight, q_scale, bias, activation, act_bits, act_absmax)


def dense_weight(*args) -> torch.Tensor:
    """The dequantised weight of a path's arguments, in fp32 (the op's backward)."""
    return int8_rowmajor.dynamic_dense(*_canonical_args(*args))


def _canonical_stand_ins(x, weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax):
    return (x, torch.empty(n, k, dtype=torch.int8, device="meta"), scale, bias, activation, act_bits, act_absmax)


def _cpu_why_not(x, weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax):
    reason = int8_rowmajor.dynamic_cpu_why_not(x, k, KERNEL)
    return reason if reason is not None else kernels_isa_why_not()


def _cpu_bind(weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax):
    """The kernel on the panels, bound to everything but x (ops/common.bind_cpu_rows)."""
    b = fp32_bias(bias)
    absmax = absmax_rows(act_absmax)
    return bind_cpu_rows("int8_dynamic_linear_panels", (_ext.cpu_isa(),),
                         (weight.data_ptr(), colsum.data_ptr(), scale.data_ptr(), b.data_ptr() if b is not None else 0),
                         (ACTIVATIONS.index(activation), torch.get_num_threads(), act_bits,
                          absmax.data_ptr() if absmax is not None else 0), n, k,
                         keep=(weight, colsum, scale, b, absmax))


def _cpu_run(x, *args):
    return _cpu_bind(*args)(x)


# PyTorch's GEMM on the codes, the weight's rows read from the panels a chunk at a time.
def _torch_run(dtype):
    def run(x, weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax):
        codes_into = panel_rows(weight, k, round_up(k, PANEL_K), unit_of(act_bits))
        return int8_rowmajor.dynamic_torch_linear(x, n, k, dtype, codes_into, scale, bias, activation, act_bits,
                                                  act_absmax)
    return run


def _copy_run(x, weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax):
    return int8_rowmajor.dynamic_copy_linear(x, weight, k, scale, bias, activation, act_bits, act_absmax)


def register_paths(table, canonical_table) -> None:
    """The CPU kernel on the layout, PyTorch's paths reading its rows a chunk at a time, then
    every other path of int8_dynamic_linear's table on the unpacked weight (its own cpu and
    torch paths excluded: they would unpack the whole weight per call)."""
    table.register("cpu", _cpu_why_not, _cpu_run, bind=_cpu_bind)
    register_torch_paths(table, _torch_run, exact_int8=True)
    register_unpacked_paths(table, canonical_table, ("cpu", "torch"), _canonical_stand_ins, _canonical_args)
    register_float_copy_path(table, _copy_run)  # on the layout itself, not unpacked


# ----------------------------------------------------------------------------- ONNX

@onnx_lowering("bigperf.int8_dynamic_linear_w8a8_cpu")
def _int8_dynamic_linear_w8a8_cpu(x, weight, colsum, scale, n, k, bias, activation, act_bits, act_absmax):
    # The CPU layout of a W8A8 Int8Linear, back in row-major order (constant folded).
    return int8_rowmajor.lower_dynamic(*_canonical_args(x, weight, colsum, scale, n, k, bias, activation, act_bits,
                                                        act_absmax))
