"""The sparse families: 2:4 (sparse24_linear) and block-sparse (block_sparse_linear).

Speedups are against the dense torch.linear of the same layer: the question a user asks
is what pruning buys. Accuracy is checked against the pruned weight (Variant.reference),
not the dense one. Peer: torch's semi-structured sparse Linear (to_sparse_semi_structured,
CUDA only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bigperf.bench.cases import CaseContext, Skip, Variant, family
from bigperf.bench.harness import rotating
from bigperf.ops.activations import apply_activation

SEMI_STRUCTURED = "torch.semi_structured_2:4"
BLOCK = (16, 16)
BLOCK_DENSITY = 0.5


def _pruned(ctx: CaseContext, kind: str) -> torch.Tensor:
    """The fp32 weight with the pattern's mask applied (made once per point)."""
    from bigperf.sparsity import block_mask, nm_mask

    def make():
        mask = nm_mask(ctx.weight_fp32) if kind == "2:4" else block_mask(ctx.weight_fp32, BLOCK, BLOCK_DENSITY)
        return ctx.weight_fp32 * mask
    return ctx.cached(("pruned", kind), make)


def _reference(ctx: CaseContext, weight: torch.Tensor):
    x, b, act = ctx.x.float(), ctx.bias_fp32, ctx.activation
    return lambda: apply_activation(F.linear(x, weight, b), act)


@family("sparse24_linear")
def sparse24_variants(ctx: CaseContext):
    from bigperf.ops.sparse_linear import S24_BACKENDS, sparse24_linear, validate_24
    from bigperf.sparsity import pack_24, pack_24_int8

    if ctx.layer.k % 8:
        yield Skip("sparse24_linear", f"the 2:4 format needs K % 8 == 0, got K = {ctx.layer.k}")
        return
    pruned = _pruned(ctx, "2:4")
    b = ctx.bias(torch.float32)
    act = ctx.activation

    def op(x, values, meta, scale):
        return sparse24_linear(x, values, meta, scale, b, act)

    n, k = ctx.layer.n, ctx.layer.k
    formats = [("", lambda: pack_24(pruned.to(ctx.dtype)), n * k // 2 * ctx.x.element_size())]
    if ctx.thorough:
        formats.append(("int8", lambda: pack_24_int8(pruned), n * k // 2 + n * 4))
    for label, pack, value_bytes in formats:
        nbytes = value_bytes + n * k // 8
        copies = ctx.cached(("sparse24", label, ctx.dtype),
                            lambda pack=pack, nbytes=nbytes: ctx.copies(lambda: _as_tuple(pack()), nbytes))
        for values, meta, scale in copies:
            # The op checks 2:4 metadata once per tensor and caches the verdict: check every
            # copy now, or the first timed round pays for it.
            validate_24(ctx.x, values, meta, scale, b, act)
        states = [(ctx.x, *c) for c in copies]
        variants = ctx.backend_variants(S24_BACKENDS, "sparse24_linear", op, (ctx.x, *copies[0], b, act),
                                        states, nbytes, label)
        if ctx.device.type == "cpu":
            variants += _lanes_variants(ctx, copies, nbytes, label, b, act)
        else:  # SparseLinear calls the canonical op off the CPU
            variants += ctx.auto_variant("sparse24_linear", op, states, nbytes, label,
                                         weight_dtype=None if label == "int8" else ctx.dtype)
        for v in variants:
            if isinstance(v, Variant):
                v.reference = _reference(ctx, pruned)
        yield from variants
    yield _semi_structured_peer(ctx, pruned)


def _lanes_variants(ctx: CaseContext, copies, nbytes: int, label: str, b, act) -> list:
    """The CPU kernel on the lane layout, which SparseLinear holds on the CPU (the other
    backends would only unpack it for each call)."""
    from bigperf.formats.sparse24_lanes import Sparse24Lanes, pack_24_lanes
    from bigperf.ops.sparse24_lanes_linear import (
        LANES_BACKENDS,
        sparse24_lanes_linear,
        validate_lanes_call,
    )

    n, k = ctx.layer.n, ctx.layer.k
    lanes = [(p.values, p.meta, p.scale) for p in (pack_24_lanes(*c) for c in copies)]
    for values, meta, scale in lanes:  # (the metadata check is cached per tensor: see above)
        validate_lanes_call(ctx.x, values, meta, scale, n, b, act)

    def op(x, values, meta, scale):
        return sparse24_lanes_linear(x, Sparse24Lanes(values, meta, scale, n, k), b, act)

    states = [(ctx.x, *c) for c in lanes]
    label = f"{label} lanes".strip()
    variants = ctx.backend_variants(LANES_BACKENDS, "sparse24_linear", op, (ctx.x, *lanes[0], n, b, act),
                                    states, nbytes, label)
    return ([v for v in variants if getattr(v, "backend", None) == "cpu"]
            + ctx.auto_variant("sparse24_linear", op, states, nbytes, label,
                               weight_dtype=None if label.startswith("int8") else ctx.dtype))


def _as_tuple(packed) -> tuple:
    return (packed.values, packed.meta, packed.scale)


def _semi_structured_peer(ctx: CaseContext, pruned: torch.Tensor) -> Variant | Skip:
    if ctx.device.type != "cuda":
        return Skip(SEMI_STRUCTURED, "semi-structured sparse kernels run on CUDA only")
    if ctx.dtype not in (torch.float16, torch.bfloat16):
        return Skip(SEMI_STRUCTURED, f"semi-structured sparse tensors take fp16/bf16, not {ctx.point.dtype}")
    try:
        from torch.sparse import to_sparse_semi_structured
        dense = pruned.to(ctx.dtype)
        nbytes = dense.numel() * dense.element_size() // 2 + dense.numel() // 8  # values + 2-bit indices
        copies = ctx.cached(("semi_structured", ctx.dtype), lambda: ctx.copies(
            lambda: to_sparse_semi_structured(dense.clone()), nbytes, fresh=True))
    except Exception as error:  # noqa: BLE001  (no cuSPARSELt/CUTLASS kernels for this GPU, shape or build)
        return Skip(SEMI_STRUCTURED, f"to_sparse_semi_structured failed: {type(error).__name__}: "
                                     f"{str(error).splitlines()[0][:200]}")
    b = ctx.bias()
    act = ctx.activation

    def call(w):
        return apply_activation(F.linear(ctx.x, w, b), act)

    return Variant(SEMI_STRUCTURED, "peer", "sparse24_linear", rotating(call, [(w,) for w in copies]), nbytes,
                   reference=_reference(ctx, pruned))


@family("block_sparse_linear")
def block_sparse_variants(ctx: CaseContext):
    from bigperf.ops.sparse_linear import BSR_BACKENDS, block_sparse_linear, validate_bsr
    from bigperf.sparsity import pack_bsr

    label = f"{BLOCK[0]}x{BLOCK[1]}@{BLOCK_DENSITY:.0%}"
    if ctx.layer.n % BLOCK[0] or ctx.layer.k % BLOCK[1]:
        yield Skip(f"block_sparse_linear {label}", f"{ctx.layer.n}x{ctx.layer.k} does not split into {BLOCK} blocks")
        return
    pruned = _pruned(ctx, "block")
    b = ctx.bias(torch.float32)
    act = ctx.activation

    def op(x, values, col_indices, row_ptr):
        return block_sparse_linear(x, values, col_indices, row_ptr, b, act)

    def pack():
        p = pack_bsr(pruned.to(ctx.dtype), BLOCK)
        return (p.values, p.col_indices, p.row_ptr)

    def make_copies():
        first = pack()
        nbytes = first[0].numel() * first[0].element_size() + first[1].numel() * 4 + first[2].numel() * 4
        return ctx.copies(pack, nbytes), nbytes

    copies, nbytes = ctx.cached(("bsr", ctx.dtype), make_copies)
    for values, col_indices, row_ptr in copies:
        validate_bsr(ctx.x, values, col_indices, row_ptr, b, act)  # cache the index checks (see above)
    states = [(ctx.x, *c) for c in copies]
    variants = ctx.backend_variants(BSR_BACKENDS, "block_sparse_linear", op, (ctx.x, *copies[0], b, act),
                                    states, nbytes, label)
    if ctx.device.type == "cpu":
        variants += _bsr_lanes_variants(ctx, copies, nbytes, label, b, act)
    else:  # SparseLinear calls the canonical op off the CPU
        variants += ctx.auto_variant("block_sparse_linear", op, states, nbytes, label, weight_dtype=ctx.dtype)
    for v in variants:
        if isinstance(v, Variant):
            v.reference = _reference(ctx, pruned)
    yield from variants


def _bsr_lanes_variants(ctx: CaseContext, copies, nbytes: int, label: str, b, act) -> list:
    """The CPU kernel on the BSR lane layout, which SparseLinear holds on the CPU for eligible
    blocks (the other backends would only unpack it for each call)."""
    from bigperf.formats.bsr_lanes import BsrLanes, pack_bsr_lanes
    from bigperf.ops.block_sparse_lanes_linear import (
        LANES_BACKENDS,
        block_sparse_lanes_linear,
        validate_lanes_call,
    )

    k = ctx.layer.k  # (BLOCK is eligible for the lane layout in every float dtype)
    # The index tensors are the canonical copies' own: their cached checks carry over.
    lanes = [(p.values, p.col_indices, p.row_ptr) for p in (pack_bsr_lanes(*c, k) for c in copies)]
    for values, col_indices, row_ptr in lanes:
        validate_lanes_call(ctx.x, values, col_indices, row_ptr, BLOCK[1], b, act)

    def op(x, values, col_indices, row_ptr):
        return block_sparse_lanes_linear(x, BsrLanes(values, col_indices, row_ptr, *BLOCK, k), b, act)

    states = [(ctx.x, *c) for c in lanes]
    variants = ctx.backend_variants(LANES_BACKENDS, "block_sparse_linear", op, (ctx.x, *lanes[0], BLOCK[1], b, act),
                                    states, nbytes, f"{label} lanes")
    return ([v for v in variants if getattr(v, "backend", None) == "cpu"]
            + ctx.auto_variant("block_sparse_linear", op, states, nbytes, f"{label} lanes", weight_dtype=ctx.dtype))
