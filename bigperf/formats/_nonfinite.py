"""NaN and Inf through kernels that skip pruned weights (issue #14, class 9).

F.linear multiplies every x[m, k] by every W[n, k], so an x row that holds NaN or Inf has
no finite output (0 x Inf is NaN; a NaN reaches every sum). A sparse kernel that never reads
the pruned positions (the Triton BSR kernel skips blocks that are not stored; CUDA's mma.sp
skips pruned 2:4 slots) would give finite values there. The CPU bindings patch this
exactly in C++ (csrc/bindings/sparse_nonfinite.h); on the GPU paths these rows are made
NaN: exact for NaN rows, non-finite wherever F.linear is for Inf rows (where F.linear
has some +-Inf among its NaNs).
"""

from __future__ import annotations

import torch

from bigperf.ops.common import as_rows


def poison_nonfinite_rows(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out ([..., N], rows as x's) with NaN in every row whose x row holds NaN or Inf.
    Element-wise and a row sum, on the device: no host synchronisation per call."""
    n = out.shape[-1]
    rows = as_rows(x, x.shape[-1])
    # x * 0 is 0 where x is finite and NaN where it is not: summed per row, NaN exactly for
    # the rows that hold a non-finite value.
    poison = (rows * 0).sum(dim=1, keepdim=True, dtype=torch.float32)
    return out.reshape(-1, n).add_(poison.to(out.dtype)).reshape(out.shape)
