"""Pieces every op's backends share: row views, bias in fp32, the epilogue after a
PyTorch GEMM, and the availability checks of the cpu, cuda and triton backends."""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import math
import os
from typing import Callable

import torch

from bigperf import _ext
from bigperf.ops.activations import apply_activation
from bigperf.ops.cuda_launch import device_why_not
from bigperf.ops.validation import DTYPE_CODES, last_dim_contiguous


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


def bind_cpu_rows(kernel: str, head: tuple, middle: tuple, tail: tuple, n: int, k: int | None,
                  keep: tuple = ()) -> Callable[[torch.Tensor], torch.Tensor]:
    """run_x(x): bigperf._C's `kernel` on x's rows, the arguments of every CPU row kernel in
    their common order: kernel(*head, x, x row stride, x dtype code, *middle, out,
    out row stride, M, N, K, *tail), the output [..., n] in x's dtype (K = None: x's last
    dimension, for formats that do not record it). With no rows or columns nothing is called.

    The weight side (head, middle, tail: pointers, codes, sizes) is worked out once by the
    caller: a path's `run` binds and runs, a prepared call (ops/prepared.py) keeps the
    binding while the layer's tensors stay as they were. `keep`: tensors the pointers point
    into, alive while run_x is."""
    call = getattr(_ext.cpu_module(), kernel)

    def run_x(x: torch.Tensor, _keep=keep) -> torch.Tensor:
        width = x.shape[-1] if k is None else k
        # Per call, so the cheap forms (Zen 4, 2026-12-07: ~1 us of a 64 x 64 layer's ~5): a
        # contiguous 2-D x is its own rows (as_rows' checks ~0.5 us); torch.empty with the
        # sizes as arguments, not a tuple (~0.6 us less).
        two_d = x.dim() == 2
        x2 = x if two_d and x.is_contiguous() else as_rows(x, width)
        m = x2.shape[0]
        dtype = x.dtype
        out = torch.empty(m, n, dtype=dtype)
        if m and n:
            call(*head, x2.data_ptr(), x2.stride(0), DTYPE_CODES[dtype], *middle, out.data_ptr(), n, m, n, width,
                 *tail)
        return out if two_d else out.reshape(*x.shape[:-1], n)
    return run_x


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


_fp32_compute: contextvars.ContextVar[bool] = contextvars.ContextVar("bigperf_fp32_compute", default=False)


@contextlib.contextmanager
def fp32_compute():
    """Inside the block (this thread or task), an fp32 x is computed in fp32 by every path.

    Outside it, a path may compute in bf16 where the layer's weight already has bf16's
    precision (a bf16 weight, int8 codes: half_why_not), when that is the fastest; inside it
    the fp32 paths serve, for comparisons that need fp32 numerics (an exported graph against
    the PyTorch model, sharded against unsharded)."""
    token = _fp32_compute.set(True)
    try:
        yield
    finally:
        _fp32_compute.reset(token)


def fp32_compute_active() -> bool:
    """Whether fp32_compute() is active here (cheap: the selection memo of every op call reads it)."""
    return _fp32_compute.get()


def half_why_not(x: torch.Tensor, dtype: torch.dtype, weight_dtype: torch.dtype | None = None) -> str | None:
    """Why a GEMM in `dtype` would lose precision or range the layer's inputs do not already
    lose: fp32 always serves; a half dtype where x already has it; bf16 also where the (float)
    weight is bf16 (it keeps fp32's range, so only precision goes, which the weight lost
    already). An fp16 weight does not make fp16 compute safe for fp32 x: x (and the output)
    may exceed fp16's range (65504) and would become Inf."""
    if dtype == torch.float32 or x.dtype == dtype:
        return None
    if _fp32_compute.get():
        return f"bigperf.fp32_compute() is active: {str(x.dtype)[6:]} x is computed in fp32"
    if weight_dtype == dtype == torch.bfloat16:
        return None
    if dtype == torch.float16 and weight_dtype == dtype:
        return (f"computing {str(x.dtype)[6:]} x in float16 could overflow (float16 ends at 65504); "
                f"x must be float16")
    return (f"computing in {str(dtype)[6:]} would round {str(x.dtype)[6:]} x beyond the layer's "
            f"tolerance (x or the weight must be {str(dtype)[6:]})")


# The variant name of a CPU path that computes in bf16 (panel_gemm_bf16.h): x and the weight
# rounded to bf16, fp32 sums. Tests hold such paths to bf16's tolerance, like torch:bf16.
BF16_PANEL_VARIANT = "panel-bf16"


def bf16_panel_why_not(x: torch.Tensor, k: int, kernel: str, weight_precision: torch.dtype | None) -> str | None:
    """Why the bf16-arithmetic panel form `kernel` should not serve x (K = k) on a weight of
    `weight_precision` (torch_paths.precision_of), or None: as panel_why_not, and it needs the
    AVX-512 path (its ISA includes AVX512-BF16), an even K, and a call whose precision admits
    bf16 compute (x already bf16, or a bf16 or int8 weight: torch_paths.half_why_not)."""
    reason = panel_why_not(x, k, kernel)
    if reason is not None:
        return reason
    if _ext.cpu_isa() != "avx512":
        return f"bf16 arithmetic (vdpbf16ps) is in the AVX-512 path only; the CPU path in use is {_ext.cpu_isa()}"
    if k % 2:
        return f"K = {k} is odd: the bf16 panel form multiplies pairs of k"
    return half_why_not(x, torch.bfloat16, weight_precision)


def bf16_values_panel_why_not(x: torch.Tensor, values: torch.Tensor, kernel: str,
                              readable: tuple[torch.dtype, ...] = (torch.bfloat16,)) -> str | None:
    """bf16_panel_why_not for a lane layout's kernel, which reads values of the `readable`
    dtypes as they are (bf16; int8 codes convert exactly)."""
    if values.dtype not in readable:
        names = " or ".join(str(d)[6:] for d in readable)
        return f"the bf16 panel form reads {names} values; the layout holds {str(values.dtype)[6:]}"
    return bf16_panel_why_not(x, x.shape[-1], kernel, torch.bfloat16)


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
