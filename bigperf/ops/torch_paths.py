"""PyTorch's own GEMMs as candidate paths (backend "torch") for bigperf's ops.

Where PyTorch's GEMM is the fastest way to compute a layer (large M; a CPU whose torch
GEMM uses AMX or a GPU's cuBLAS), the measuring dispatcher (bigperf/tune.py) picks one of
these. They compute the same math as our kernels, from the same packed weights: a weight
that is not already in the compute dtype is materialised a chunk of output rows at a time
(dequantised, unpacked, converted), so no second full-size copy of it is ever held.

Compute dtypes a path may use (what keeps each within the layer's tolerance): fp32
always; a half dtype only where the layer's inputs already carry that precision (x in
half precision, or a half-precision dense weight).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from bigperf.ops.common import as_rows, epilogue_

HALF_DTYPES = (torch.bfloat16, torch.float16)
# A chunk of materialised weight rows of about this many bytes: large enough that each
# GEMM call runs at full speed, small enough to stay in the last-level cache.
CHUNK_BYTES = 4 << 20
MIN_CHUNK_ROWS = 128

RowsFn = Callable[[int, int, torch.dtype], torch.Tensor]  # (first row, end row, dtype) -> [rows, K]


def chunk_rows(k: int, dtype: torch.dtype, align: int = 16) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES // max(1, k * itemsize))
    return -(-rows // align) * align


def torch_linear(x: torch.Tensor, n: int, k: int, compute_dtype: torch.dtype, *,
                 rows: RowsFn | None = None, whole: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, activation: str = "none",
                 residual: torch.Tensor | None = None, align: int = 16,
                 x_rows: torch.Tensor | None = None, row_scale: torch.Tensor | None = None,
                 col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """act((x @ W^T) * row_scale * col_scale + bias) (+ residual) by F.linear in compute_dtype,
    output in x's dtype and shape [..., n].

    W is `whole` (already [n, k] in compute_dtype) or `rows(r0, r1, dtype)`, called for
    chunks of rows that are multiples of `align`. `x_rows` replaces x's values as the GEMM's
    left operand (W8A8: the int8 codes of x) while x still gives the output's dtype and shape.
    """
    left = (x_rows if x_rows is not None else as_rows(x, k)).to(compute_dtype)
    scaled = row_scale is not None or col_scale is not None
    b = None if (bias is None or scaled) else bias.to(compute_dtype)
    if whole is not None:
        y = F.linear(left, whole, b)
    else:
        step = chunk_rows(k, compute_dtype, align)
        if step >= n:
            y = F.linear(left, rows(0, n, compute_dtype), b)
        else:
            y = left.new_empty((left.shape[0], n))
            for r0 in range(0, n, step):
                r1 = min(n, r0 + step)
                y[:, r0:r1] = F.linear(left, rows(r0, r1, compute_dtype), b[r0:r1] if b is not None else None)
    if scaled:  # W8A8: integer products, then the scales, then the bias, in fp32
        y = y.float()
        if row_scale is not None:
            y.mul_(row_scale.reshape(-1, 1))
        if col_scale is not None:
            y.mul_(col_scale.reshape(1, -1))
        if bias is not None:
            y.add_(bias.float())
    r = residual.reshape(-1, n).to(y.dtype) if residual is not None else None
    y = epilogue_(y, activation, r)
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def half_why_not(x: torch.Tensor, dtype: torch.dtype, weight_dtype: torch.dtype | None = None) -> str | None:
    """Why a GEMM in half `dtype` would lose precision the layer's inputs do not already lose."""
    if x.dtype == dtype or weight_dtype == dtype:
        return None
    return (f"computing in {str(dtype)[6:]} would round {str(x.dtype)[6:]} x beyond the layer's "
            f"tolerance (x or the weight must be {str(dtype)[6:]})")


def register_torch_paths(table, why_not_for: Callable[[torch.dtype], Callable[..., str | None]],
                         run_for: Callable[[torch.dtype], Callable[..., torch.Tensor]]) -> None:
    """One "torch" path per compute dtype: fp32, bf16, fp16 (each with its own why_not)."""
    for dtype, variant in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        table.register("torch", why_not_for(dtype), run_for(dtype), variant=variant)
