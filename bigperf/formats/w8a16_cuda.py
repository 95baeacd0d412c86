"""Weight format "w8a16-cuda": the CUDA W8A16 kernel's tile order of int8_rowmajor.

An Int8Linear (weight-only) on a GPU where bigperf._C_cuda is built holds only this form
(buffers BUFFERS, not persistent: its state_dict stays int8_rowmajor), so the CUDA kernel
reads it directly and the GPU never holds the weight twice. Pure PyTorch packing (CPU or GPU
tensors), exact round trips, versioned: bigperf._C_cuda reports the version its kernels read
(``w8a16_requirements()["layout_version"]``); change the layout and VERSION together, here
and in csrc/cuda/w8a16_tile.h.

Layout (from int8_rowmajor's qweight [N, K] int8, scale [N, G] fp32, zero_point [N, G] int8
or None), version 1:
  weight [Np/32, Kp*32] int8, Np = N rounded up to 32, Kp = K rounded up to 16, zero
      padded. Each row is one block of 32 output columns; it holds Kp/16 blocks of 512
      bytes, one per 16-wide k step. In a block, bytes 16l .. 16l+15 belong to lane
      l = 4g + t of a warp: four groups of 4 bytes, one per 8-column fragment j, each
      holding the codes of column 8j + g at k = 2t, 2t+8, 2t+1, 2t+9 (the k16 step's
      mma.m16n8k16 B fragment registers, even bytes first register, odd bytes second).
  scale [G, Np] fp32 (group-major), zero [G, Np] fp32 or None; padding columns are 0.

Paths (torch.ops.bigperf.int8_weight_linear_w8a16): the CUDA kernel reads the layout; every
other path is int8_weight_linear's path of the same name on the weight unpacked for the call,
so the path a layer reports is the one that runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bigperf import _ext
from bigperf.formats import int8_rowmajor
from bigperf.formats._checks import check_arg, check_layout_version, round_up
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.common import fp32_bias
from bigperf.ops.layout_paths import register_unpacked_paths
from bigperf.ops.onnx_lowering import onnx_lowering
from bigperf.ops.torch_paths import copy_linear, register_float_copy_path

NAME = "w8a16-cuda"
VERSION = 1
BUFFERS = ("w8a16_weight", "w8a16_scale", "w8a16_zero")


def why_not_hold(device: torch.device, weight_only: bool) -> str | None:
    """Why a layer on `device` should not hold its int8 weight in this format, or None."""
    if not weight_only:
        return "holds W8A16 weights; W8A8 layers keep int8_rowmajor"
    if device.type != "cuda":
        return f"a CUDA kernel layout; the weight is on {device}"
    return _ext.cuda_unavailable_reason()


_W8_PACK_N, _W8_PACK_K = 32, 16


@dataclass(frozen=True)
class W8A16Layout:
    weight: torch.Tensor  # [Np/32, Kp*32] int8
    scale: torch.Tensor  # [G, Np] float32
    zero: torch.Tensor | None  # [G, Np] float32
    n: int
    k: int
    group_size: int | None  # None = per output channel
    version: int = VERSION


def pack_w8a16(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> W8A16Layout:
    """bigperf.quant's int8 weight (codes, scales, zero points) in the W8A16 kernel's order."""
    function = "bigperf.formats.w8a16_cuda.pack_w8a16"
    check_arg(function, "qweight", qweight, (torch.int8,), 2)
    check_arg(function, "scale", scale, (torch.float32,), 2)
    n, k = qweight.shape
    groups = scale.shape[1]
    if scale.shape[0] != n or groups < 1 or k % groups or (groups > 1 and (k // groups) % 32):
        raise ValueError(f"{function}: argument 'scale' must be [N, G] = [{n}, G] with G dividing K = {k} into "
                         f"groups of a multiple of 32, got {tuple(scale.shape)}")
    if zero_point is not None:
        check_arg(function, "zero_point", zero_point, (torch.int8,), 2)
        if zero_point.shape != scale.shape:
            raise ValueError(f"{function}: argument 'zero_point' must have the shape of 'scale' "
                             f"{tuple(scale.shape)}, got {tuple(zero_point.shape)}")
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if t is not None and t.device != qweight.device:
            raise ValueError(f"{function}: argument '{name}' is on {t.device} but 'qweight' is on {qweight.device}")
    np_, kp = round_up(n, _W8_PACK_N), round_up(k, _W8_PACK_K)
    q = torch.zeros((np_, kp), dtype=torch.int8, device=qweight.device)
    q[:n, :k] = qweight
    # (nb, j, g, kb, h, t, e): column 32 nb + 8 j + g, k 16 kb + 8 h + 2 t + e
    #   -> (nb, kb, g, t, j, e, h): lane 4g + t, fragment j, byte 2e + h.
    blocks = q.view(np_ // 32, 4, 8, kp // 16, 2, 4, 2).permute(0, 3, 2, 5, 1, 6, 4)
    weight = blocks.contiguous().view(np_ // 32, kp * 32)
    zero = int8_rowmajor.group_major(zero_point, np_, torch.float32) if zero_point is not None else None
    return W8A16Layout(weight, int8_rowmajor.group_major(scale, np_), zero, n, k, None if groups == 1 else k // groups)


def unpack_w8a16(layout: W8A16Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The (qweight [N, K] int8, scale [N, G] fp32, zero_point [N, G] int8 or None) packed."""
    check_layout_version("bigperf.formats.w8a16_cuda.unpack_w8a16", layout, W8A16Layout, VERSION)
    n, k = layout.n, layout.k
    np_, kp = round_up(n, _W8_PACK_N), round_up(k, _W8_PACK_K)
    blocks = layout.weight.view(np_ // 32, kp // 16, 8, 4, 4, 2, 2).permute(0, 4, 2, 1, 6, 3, 5)
    qweight = blocks.reshape(np_, kp)[:n, :k].contiguous()
    scale = int8_rowmajor.from_group_major(layout.scale, n)
    zero = int8_rowmajor.from_group_major(layout.zero, n).round().to(torch.int8) if layout.zero is not None else None
    return qweight, scale, zero


# ----------------------------------------------------------------------------- candidate paths

def as_layout(weight, scale, zero, n: int, k: int, group_size: int) -> W8A16Layout:
    return W8A16Layout(weight, scale, zero, n, k, group_size or None)


def _canonical_args(x, weight, scale, zero, n, k, group_size, bias, activation):
    qweight, q_scale, zero_point = unpack_w8a16(as_layout(weight, scale, zero, n, k, group_size))
    return (x, qweight, q_scale, zero_point, bias, activation)


def dense_weight(*args) -> torch.Tensor:
    """The dequantised weight of a path's arguments, in fp32 (the op's backward)."""
    return int8_rowmajor.weight_only_dense(*_canonical_args(*args))


def _cuda_why_not(x, weight, scale, zero, n, k, group_size, bias, activation):
    return int8_rowmajor.weight_only_cuda_why_not(x, k)


def _cuda_run(x, weight, scale, zero, n, k, group_size, bias, activation):
    from bigperf.ops.cuda_launch import launch_w8a16_layout
    return launch_w8a16_layout(x, as_layout(weight, scale, zero, n, k, group_size), fp32_bias(bias),
                               ACTIVATIONS.index(activation))


def float_weight(layout: W8A16Layout) -> torch.Tensor:
    """The dequantised weight in fp32, for a layer that keeps a float copy (torch:copy)."""
    return int8_rowmajor.float_weight(*unpack_w8a16(layout), weight_only=True)


def _copy_run(x, weight, scale, zero, n, k, group_size, bias, activation):
    return copy_linear(x, weight, bias=bias, activation=activation)


def register_paths(table, canonical_table) -> None:
    """The CUDA kernel on the layout, then every other path of int8_weight_linear's table on
    the unpacked weight."""
    table.register("cuda", _cuda_why_not, _cuda_run)
    register_unpacked_paths(table, canonical_table, ("cuda",), int8_rowmajor.weight_only_layout_stand_ins,
                            _canonical_args)
    register_float_copy_path(table, _copy_run)  # on the layout itself, not unpacked


# ----------------------------------------------------------------------------- ONNX

@onnx_lowering("bigperf.int8_weight_linear_w8a16")
def _int8_weight_linear_w8a16(x, weight, scale, zero, n, k, group_size, bias, activation):
    # The CUDA layout of an Int8Linear on a GPU, back in row-major order (constant folded).
    return int8_rowmajor.lower_weight_only(*_canonical_args(x, weight, scale, zero, n, k, group_size, bias, activation))
