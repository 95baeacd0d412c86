"""Pieces every op's backends share: row views, bias in fp32, the epilogue after a
PyTorch GEMM, and the availability checks of the cpu, cuda and triton backends."""

from __future__ import annotations

import importlib
import math
import os

import torch

from bigperf import _ext
from bigperf.ops.activations import apply_activation
from bigperf.ops.cuda_launch import device_why_not
from bigperf.ops.validation import last_dim_contiguous


def as_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """[..., width] → [rows, width] with unit stride along width (copies only if needed)."""
    if t.dim() != 2:
        # (rows spelled out: reshape(-1, 0) is ambiguous, and K = 0 is a valid call)
        t = t.reshape(math.prod(t.shape[:-1]), width)
    # Broadcast rows (x.expand(...): row stride 0) are accepted, as nn.Linear accepts them,
    # by copying: the kernels read rows that do not overlap.
    if not last_dim_contiguous(t) or (t.shape[0] > 1 and t.stride(0) < width):
        return t.contiguous()
    return t


def fp32_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The kernels add the bias in fp32 from a contiguous buffer."""
    if bias is None:
        return None
    return bias if (bias.dtype == torch.float32 and bias.is_contiguous()) else bias.float().contiguous()


def epilogue_(y: torch.Tensor, activation: str, residual: torch.Tensor | None = None) -> torch.Tensor:
    """act(y) + residual after a PyTorch GEMM, in place where the activation allows."""
    if activation == "relu":
        y.relu_()
    elif activation != "none":
        y = apply_activation(y, activation)
    if residual is not None:
        y.add_(residual.reshape(y.shape))
    return y


def cpu_why_not(x: torch.Tensor, kernel: str) -> str | None:
    """Why bigperf._C cannot run `kernel` on x, or None."""
    if not x.is_cpu:  # (is_cpu is several times cheaper than device.type on this hot path)
        return f"tensors are on {x.device}, not the CPU"
    module = _ext.cpu_module()
    if module is None:
        return _ext.cpu_unavailable_reason()
    if not hasattr(module, kernel):
        return f"bigperf._C was built without {kernel} (rebuild the package)"
    return None


# The CPU panel kernels convert every weight of the layer into fp32 panels once per call
# (csrc/cpu/panel_gemm.h): with fewer rows than this the conversion outweighs the GEMM and
# the dot-product kernels serve, so the dispatcher does not spend time measuring them.
PANEL_MIN_ROWS = 8


def panel_why_not(x: torch.Tensor, k: int, kernel: str) -> str | None:
    """Why bigperf._C's panel-form `kernel` should not serve x (K = k), or None."""
    reason = cpu_why_not(x, kernel)
    if reason is not None:
        return reason
    rows = x.numel() // k if k else 0
    if rows < PANEL_MIN_ROWS:
        return f"{rows} rows of x: the panel form converts the whole weight per call, for {PANEL_MIN_ROWS} rows or more"
    return None


def cuda_why_not(x: torch.Tensor, kernel: str) -> str | None:
    """Why bigperf._C_cuda cannot run `kernel` on x's device (not built, no driver, no SASS
    or PTX for its compute capability, no tile configuration within its shared memory), or
    None; dtypes and shapes are the op's to check. Answered once per device and kernel."""
    if not x.is_cuda:
        return f"tensors are on {x.device}, not a CUDA device"
    return device_why_not(x.device.index, kernel)


def triton_why_not(x: torch.Tensor, kernel_module: str) -> str | None:
    """Why the Triton kernels in bigperf.kernels.<kernel_module> cannot run on x, or None."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not x.is_cuda and not (interpreted and x.is_cpu):
        return f"tensors are on {x.device}; Triton needs a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)"
    try:
        importlib.import_module(f"bigperf.kernels.{kernel_module}")
    except ImportError as error:
        return f"triton is not importable ({error})"
    return None
