"""The epilogue every Triton kernel of bigperf ends with: optional per-column scale, bias,
activation, the interpreter's bf16 rounding fix-up and the masked store. One copy, so that
every op's activations and roundings are bit-identical across kernels."""
from __future__ import annotations

import triton
import triton.language as tl

# -2*sqrt(2/pi): gelu_tanh(x) = x * sigmoid(2 * sqrt(2/pi) * (x + 0.044715 x^3)).
# tl.constexpr because compiled kernels may only read constexpr globals (the interpreter
# would accept a plain float and hide the error until a GPU compile). Kernel code keeps the
# tensor on the left of `*`: constexpr * tensor fails under the interpreter.
_NEG_GELU_TANH_2C = tl.constexpr(-1.5957691216057308)
_INV_SQRT2 = tl.constexpr(0.7071067811865476)


@triton.jit
def apply_activation(v, ACTIVATION: tl.constexpr):
    # tanh-GELU and SiLU are written with one exp each: 0.5*(1+tanh(u)) == sigmoid(2u), so
    # no target-specific tanh (libdevice) is needed and the same code runs on sm_80, sm_90
    # and in the interpreter; x/(1+exp(-t)) saturates to 0 or x, never inf/inf.
    if ACTIVATION == "relu":
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    elif ACTIVATION == "gelu":
        v = 0.5 * v * (1.0 + tl.math.erf(v * _INV_SQRT2))
    elif ACTIVATION == "gelu_tanh":
        v = v / (1.0 + tl.exp((v + 0.044715 * v * v * v) * _NEG_GELU_TANH_2C))
    elif ACTIVATION == "silu":
        v = v / (1.0 + tl.exp(-v))
    return v


@triton.jit
def round_bf16_bits(acc):
    # Interpreter only (QUIRKS.fp32_to_bf16_truncates): round to nearest even on the bit
    # pattern so that the truncating cast that follows becomes exact.
    bits = acc.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def epilogue_store(acc, scale_ptr, bias_ptr, y_ptr, offs_m64, offs_n64, mask_m, mask_n,
                   stride_sn, stride_bn, stride_ym, stride_yn,
                   HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                   ACTIVATION: tl.constexpr, ROUND_BF16_OUT: tl.constexpr):
    """y[m, n] = act(acc * scale[n] + bias[n]) in y's dtype, for the masked tile."""
    if HAS_SCALE:
        scale = tl.load(scale_ptr + offs_n64 * stride_sn, mask=mask_n, other=0.0)
        acc = acc * scale[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n64 * stride_bn, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    if ROUND_BF16_OUT:
        acc = round_bf16_bits(acc)
    y_ptrs = y_ptr + offs_m64[:, None] * stride_ym + offs_n64[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
