"""The int8 families: weight-only (W8A16) and dynamic (W8A8), with their peers.

Peers: torch.ops.aten._weight_int8pack_mm (per-channel int8 weights, x in its own dtype)
for weight-only; fbgemm's dynamically quantised Linear (torch.ao.quantization.quantize_dynamic,
fp32 activations, CPU) for dynamic.
"""

from __future__ import annotations

import torch

from bigperf.bench.cases import CaseContext, Skip, Variant, family, quiet_deprecations
from bigperf.bench.harness import rotating
from bigperf.ops.activations import apply_activation
from bigperf.quant import quantize_weight


def _quantized(ctx: CaseContext, group_size: int | None):
    """Cold copies of (qweight, scale, zero_point) and the bytes one call reads."""
    def make():
        q = quantize_weight(ctx.weight_fp32, group_size=group_size, symmetric=True)
        return (q.qweight.contiguous(), q.scale.contiguous())
    n, k = ctx.layer.n, ctx.layer.k
    groups = 1 if group_size is None else k // group_size
    nbytes = n * k + n * groups * 4
    return ctx.cached(("int8", group_size), lambda: ctx.copies(make, nbytes)), nbytes


@family("int8_weight_linear")
def weight_only_variants(ctx: CaseContext):
    from bigperf.ops.int8_linear import WEIGHT_ONLY_BACKENDS, int8_weight_linear

    def op(x, qweight, scale, b):
        return int8_weight_linear(x, qweight, scale, None, b, ctx.activation)

    b = ctx.bias(torch.float32)
    group_sizes = [None, 128] if ctx.thorough and ctx.layer.k % 128 == 0 else [None]
    for group_size in group_sizes:
        copies, nbytes = _quantized(ctx, group_size)
        label = f"g{group_size}" if group_size else ""
        states = [(ctx.x, qw, s, b) for qw, s in copies]
        yield from ctx.backend_variants(
            WEIGHT_ONLY_BACKENDS, "int8_weight_linear", op, (ctx.x, *copies[0], None, b, ctx.activation),
            states, nbytes, label)
        yield from ctx.auto_variant("int8_weight_linear", op, states, nbytes, label)
    yield from _w8a16_cpu_layout_variant(ctx, *_quantized(ctx, None), b)
    yield _int8pack_peer(ctx)


def _w8a16_cpu_layout_variant(ctx: CaseContext, copies, nbytes, b):
    """What an Int8WeightOnly() layer runs where it holds the AVX2 kernels' panels (w8a16-cpu)."""
    from bigperf.formats import w8a16_cpu
    from bigperf.ops.int8_weight_cpu_layout_linear import int8_weight_linear_w8a16_cpu

    if w8a16_cpu.why_not_hold(ctx.device, True) is not None:
        return
    layouts = [(w8a16_cpu.pack_w8a16_cpu(qw, s),) for qw, s in copies]

    def op(layout):
        return int8_weight_linear_w8a16_cpu(ctx.x, layout, b, ctx.activation)

    yield from ctx.auto_variant("int8_weight_linear", op, layouts, nbytes, label=w8a16_cpu.NAME)


def _int8pack_peer(ctx: CaseContext) -> Variant | Skip:
    name = "aten._weight_int8pack_mm"
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return Skip(name, f"torch {torch.__version__} has no aten._weight_int8pack_mm")
    if ctx.device.type == "cpu" and ctx.dtype == torch.float32 and ctx.point.m > 16:
        # Measured: 0.06x torch at M=16 and a minute per call at M=2048 (no vectorised fp32 path).
        return Skip(name, "its fp32 CPU path is unvectorised: timed up to M=16 only")
    copies, nbytes = _quantized(ctx, None)
    # This op takes the per-channel scales in x's dtype, as a vector.
    states = [(qw, s.reshape(-1).to(ctx.dtype)) for qw, s in copies]
    b = ctx.bias()
    act = ctx.activation

    def call(qw, s):
        y = torch.ops.aten._weight_int8pack_mm(ctx.x, qw, s)
        return apply_activation(y if b is None else y + b, act)

    return Variant(name, "peer", "int8_weight_linear", rotating(call, states), nbytes)


@family("int8_dynamic_linear")
def dynamic_variants(ctx: CaseContext):
    from bigperf.ops.int8_linear import DYNAMIC_BACKENDS, int8_dynamic_linear

    b = ctx.bias(torch.float32)
    copies, nbytes = _quantized(ctx, None)
    for act_bits in (8, 7):  # 7: fbgemm's reduce_range accuracy class, the peer's own
        def op(x, qweight, scale, b, _bits=act_bits):
            return int8_dynamic_linear(x, qweight, scale, b, ctx.activation, _bits)

        states = [(ctx.x, qw, s, b) for qw, s in copies]
        label = "" if act_bits == 8 else "act_bits=7"
        yield from ctx.backend_variants(
            DYNAMIC_BACKENDS, "int8_dynamic_linear", op, (ctx.x, *copies[0], b, ctx.activation, act_bits),
            states, nbytes, label=label)
        if act_bits == 8:  # Int8Dynamic()'s default: the one users get
            yield from ctx.auto_variant("int8_dynamic_linear", op, states, nbytes, label)
    yield from _w8a8_cpu_layout_variant(ctx, copies, b, nbytes)
    yield _fbgemm_peer(ctx)


def _w8a8_cpu_layout_variant(ctx: CaseContext, copies, b, nbytes):
    """What an Int8Dynamic() layer runs where it holds the AVX2 kernel's panels (w8a8-cpu)."""
    from bigperf.formats import w8a8_cpu
    from bigperf.ops.int8_dynamic_layout_linear import int8_dynamic_linear_w8a8_cpu

    if w8a8_cpu.why_not_hold(ctx.device, weight_only=False) is not None:
        return
    layouts = [(w8a8_cpu.pack_w8a8_cpu(qw, s, 8),) for qw, s in copies]

    def op(layout):
        return int8_dynamic_linear_w8a8_cpu(ctx.x, layout, b, ctx.activation)

    yield from ctx.auto_variant("int8_dynamic_linear", op, layouts, nbytes, label=w8a8_cpu.NAME)


def _fbgemm_peer(ctx: CaseContext) -> Variant | Skip:
    name = "fbgemm.dynamic_int8"
    if ctx.device.type != "cpu":
        return Skip(name, "fbgemm's quantised Linear runs on the CPU only")
    if ctx.dtype != torch.float32:
        return Skip(name, "fbgemm's dynamic quantised Linear takes fp32 activations only")
    if "fbgemm" not in torch.backends.quantized.supported_engines and "x86" not in torch.backends.quantized.supported_engines:
        return Skip(name, f"this torch build has no fbgemm/x86 quantized engine ({torch.backends.quantized.supported_engines})")
    layer = ctx.layer

    def make():
        linear = torch.nn.Linear(layer.k, layer.n, bias=layer.bias)
        with torch.no_grad():
            linear.weight.copy_(ctx.weight_fp32)
            if layer.bias:
                linear.bias.copy_(ctx.bias_fp32)
        with quiet_deprecations():
            return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear},
                                                          dtype=torch.qint8)

    nbytes = layer.n * layer.k + layer.n * 4
    modules = ctx.cached(("fbgemm",), lambda: ctx.copies(make, nbytes))
    act = ctx.activation

    def call(module):
        return apply_activation(module(ctx.x), act)

    return Variant(name, "peer", "int8_dynamic_linear", rotating(call, [(mod,) for mod in modules]), nbytes)
