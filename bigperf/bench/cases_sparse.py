"""The 2:4-sparse family. Until bigperf's sparse ops land it holds their peer only:
torch's semi-structured sparse Linear (to_sparse_semi_structured, CUDA), so the suite
already records what 2:4 sparsity buys over the dense baseline on the GPU at hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bigperf.bench.cases import CaseContext, Skip, Variant, family
from bigperf.bench.harness import rotating
from bigperf.ops.activations import apply_activation

PEER = "torch.semi_structured_2:4"


def prune_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Keeps the two largest-magnitude of every four consecutive weights along K."""
    n, k = weight.shape
    groups = weight.reshape(n, k // 4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(n, k)


@family("sparse24")
def sparse_variants(ctx: CaseContext):
    if ctx.device.type != "cuda":
        yield Skip(PEER, "semi-structured sparse kernels run on CUDA only")
        return
    if ctx.dtype not in (torch.float16, torch.bfloat16):
        yield Skip(PEER, f"semi-structured sparse tensors take fp16/bf16, not {ctx.point.dtype}")
        return
    if ctx.layer.k % 64 or ctx.layer.n % 64:
        yield Skip(PEER, f"needs N and K multiples of 64, got {ctx.layer.n}x{ctx.layer.k}")
        return
    try:
        from torch.sparse import to_sparse_semi_structured
        dense = prune_2_4(ctx.weight_fp32).to(ctx.dtype)
        nbytes = dense.numel() * dense.element_size() // 2 + dense.numel() // 8  # values + 2-bit indices
        copies = ctx.copies(lambda: to_sparse_semi_structured(dense.clone()), nbytes, fresh=True)
    except Exception as error:  # no cuSPARSELt/CUTLASS kernels for this GPU or build
        yield Skip(PEER, f"to_sparse_semi_structured failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        return
    b = ctx.bias()
    act = ctx.activation

    def call(w):
        return apply_activation(F.linear(ctx.x, w, b), act)

    yield Variant(PEER, "peer", "sparse24", rotating(call, [(w,) for w in copies]), nbytes)
