"""The torch baselines and the fused_linear family."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bigperf.bench.cases import BASELINE, FLOAT_BASELINE, HALF_BASELINE, CaseContext, Variant, family
from bigperf.bench.harness import rotating
from bigperf.ops.activations import apply_activation


def _torch_linear(activation: str):
    def call(x, w, b):
        return apply_activation(F.linear(x, w, b), activation)
    return call


@family("torch")
def torch_baselines(ctx: CaseContext):
    """F.linear + the layer's activation, unfused: what the layer runs without bigperf, in x's
    dtype, in fp32 and (for fp32 x) in bf16: every PyTorch path a user could take for the
    same layer. Which is fastest depends on the CPU (bf16 is ~8x slower than fp32 on Zen 3,
    faster on AMX): "auto" variants are judged against the fastest (bigperf/bench/floor.py)."""
    call = _torch_linear(ctx.activation)
    w = ctx.weights(ctx.dtype)
    b = ctx.bias()
    yield Variant(BASELINE, "baseline", "torch", rotating(call, [(ctx.x, wi, b) for wi in w]),
                  w[0].numel() * w[0].element_size())
    if ctx.dtype != torch.float32:
        w32 = ctx.weights(torch.float32)

        def float_call(x, w, b):  # the same layer (x and y in x's dtype) computed in fp32: casts included
            return call(x.float(), w, b).to(x.dtype)

        yield Variant(FLOAT_BASELINE, "baseline", "torch",
                      rotating(float_call, [(ctx.x, wi, ctx.bias_fp32) for wi in w32]), w32[0].numel() * 4)
    else:
        w16 = ctx.weights(torch.bfloat16)
        b16 = ctx.bias(torch.bfloat16)

        def half_call(x, w, b):  # the cast of x and of the output belong to this path's cost
            return call(x.to(torch.bfloat16), w, b).to(x.dtype)

        yield Variant(HALF_BASELINE, "baseline", "torch", rotating(half_call, [(ctx.x, wi, b16) for wi in w16]),
                      w16[0].numel() * 2)


@family("fused_linear")
def fused_linear_variants(ctx: CaseContext):
    from bigperf.ops.fused_linear import BACKENDS, fused_linear

    def op(x, w, b):
        return fused_linear(x, w, b, None, ctx.activation)

    b = ctx.bias(torch.float32)  # fp32 bias: the kernels' native form, no per-call conversion
    weight_dtypes = [ctx.dtype]
    if ctx.dtype == torch.float32:
        # Mixed precision: the user keeps fp32 activations and halves the weight bytes.
        weight_dtypes.append(torch.bfloat16)
    for wdt in weight_dtypes:
        w = ctx.weights(wdt)
        label = "" if wdt == ctx.dtype else f"w={_short(wdt)}"
        states = [(ctx.x, wi, b) for wi in w]
        nbytes = w[0].numel() * w[0].element_size()
        yield from ctx.backend_variants(
            BACKENDS, "fused_linear", op, (ctx.x, w[0], b, None, ctx.activation), states, nbytes, label)
        yield from ctx.auto_variant("fused_linear", op, states, nbytes, label, weight_dtype=wdt)


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
