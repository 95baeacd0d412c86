"""Hands CUDA tensors to bigperf._C_cuda: alignment fix-ups, current stream, device guard."""

from __future__ import annotations

import torch

from bigperf import _ext
from bigperf.ops.validation import DTYPE_CODES

# The tensor-core kernels load 16 bytes at a time (cp.async): base pointers 16-byte
# aligned and row strides a multiple of 8 elements (fp16/bf16).
_ALIGN_BYTES = 16
_STRIDE_MULTIPLE = 8


def aligned_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """[..., width] as [rows, width] meeting the kernels' alignment rules (copies if not)."""
    t = t.reshape(-1, width)
    ok = (t.stride(-1) == 1 and t.data_ptr() % _ALIGN_BYTES == 0
          and (t.shape[0] == 1 or t.stride(0) % _STRIDE_MULTIPLE == 0))
    return t if ok else t.contiguous()


def launch_fused_linear(x, weight, bias, residual, act_code: int) -> torch.Tensor:
    k, n = weight.shape[1], weight.shape[0]
    x2 = aligned_rows(x, k)
    w = aligned_rows(weight, k)
    m = x2.shape[0]
    # Pad the output's row stride so every row starts 16-byte aligned; the view hides it.
    out_stride = -(-n // _STRIDE_MULTIPLE) * _STRIDE_MULTIPLE
    out = torch.empty((m, out_stride), dtype=x.dtype, device=x.device)[:, :n]
    r = aligned_rows(residual, n) if residual is not None else None
    if r is not None and r.shape[0] > 1 and r.stride(0) % _STRIDE_MULTIPLE:
        padded = torch.empty((m, out_stride), dtype=r.dtype, device=r.device)[:, :n]
        r = padded.copy_(r)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        _ext.cuda_module().fused_linear(
            x2.data_ptr(), x2.stride(0), w.data_ptr(), w.stride(0),
            bias.data_ptr() if bias is not None else 0,
            r.data_ptr() if r is not None else 0, r.stride(0) if r is not None else 0,
            out.data_ptr(), out.stride(0), m, n, k, DTYPE_CODES[x.dtype], act_code, stream)
    return out.reshape(*x.shape[:-1], n) if out.is_contiguous() else out.contiguous().reshape(*x.shape[:-1], n)
