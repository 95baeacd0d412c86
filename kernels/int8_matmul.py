"""int8 linear layers in Triton: weight-only (W8A16) and dynamic (W8A8) GEMMs.

Layers (see docs/ARCHITECTURE.md): private ``@triton.jit`` kernels, the launchers
:func:`int8_weight_linear` and :func:`int8_dynamic_linear`, and the op registration in
``bigperf/ops/int8_linear.py`` that calls them. The oracle is ``bigperf/quant.py``.

Numerics
--------
W8A16, ``y = act(x @ ((q - z) * s)^T + bias)``:

* ``q - z`` is an integer in [-255, 255], exact in fp16, bf16 and fp32 (TF32 too), so the
  int8 tile is widened to x's dtype in registers without rounding and ``tl.dot`` multiplies
  x by the codes themselves. The scale multiplies the fp32 partial sum of its group (per
  channel: of the whole K range) rather than the tile: no ``(q - z) * s`` is ever rounded
  to fp16/bf16, so the only roundings are the fp32 accumulation and the final cast.
* fp32 x uses IEEE products unless ``torch.get_float32_matmul_precision()`` allows TF32,
  as ``torch.matmul`` does.
* M <= 16 and too few N tiles to fill the device: split-K. Each split writes its fp32
  partial into a [splits, M, N] workspace and a second kernel sums the splits in a fixed
  order, then adds bias and activation: deterministic, no atomics.

W8A8, ``y = act((quant(x) @ q^T) * row_scale * col_scale + bias)``:

* Per-token quantisation as ``bigperf.quant.quantize_activation_per_token``: scale =
  absmax / QMAX (1 for an all-zero row), codes = round_half_even(x / scale) clamped to
  [-QMAX, QMAX], QMAX = 127 for ``act_bits=8`` and 63 for ``act_bits=7`` (a constexpr:
  one compiled variant each). Both divisions use ``tl.div_rn``: Triton's ``/`` lowers to the approximate
  ``div.full.f32`` on NVIDIA GPUs, which would move codes that sit near a .5 boundary.
  Triton (3.6) has no portable round-to-integer (libdevice's ``rint`` is CUDA-only), so
  the kernel adds and subtracts 1.5 * 2**23: for |v| < 2**22 the sum has no fraction bits
  left and fp32 addition rounds to nearest even, which is exactly ``torch.round``.
* int8 x int8 -> int32 ``tl.dot`` (exact), then the fp32 rescale, bias and activation.
* M <= 16 and too few N tiles to fill the device: split-K as for W8A16, but the splits
  write int32 partials, which the reduce kernel adds exactly before the rescale: the
  same result as one pass over K.

Ahead-of-time variants of these kernels are listed in ``int8_matmul_aot.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _config
from ._config import QUIRKS
from ._epilogue import epilogue_store
# The fp32 precision rule is the fused matmul's (torch.matmul's).
from .fused_matmul import _fp32_input_precision

__all__ = ["int8_weight_linear", "int8_dynamic_linear", "ACTIVATIONS", "GROUP_SIZES"]

ACTIVATIONS = _config.FUSED_MATMUL_ACTIVATIONS
GROUP_SIZES = _config.INT8_GROUP_SIZES
_WEIGHT_NAME = "bigperf.kernels.int8_matmul.int8_weight_linear"
_DYNAMIC_NAME = "bigperf.kernels.int8_matmul.int8_dynamic_linear"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# 1.5 * 2**23: see "Numerics" above. constexpr because compiled kernels may only read
# constexpr globals; kernel code keeps the tensor on the left of the operator.
_RNE_MAGIC = tl.constexpr(12582912.0)
_FLT_MAX = tl.constexpr(3.4028234663852886e38)  # |v| above it: Inf or NaN (NaN fails every compare)
# act_bits -> the largest |code| (bigperf.quant.activation_qmax), as the kernel's constexpr.
_QMAX = {8: 127.0, 7: 63.0}
# Rows of one split-K reduce tile: the split path only runs for M <= 16.
_REDUCE_BLOCK_M = 16
_REDUCE_BLOCK_N = 128
_INT32_EXACT_MAX_K = (2**31 - 1) // (127 * 127)


@triton.jit
def _grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  GROUP_M: tl.constexpr):
    # GROUP_M row blocks sweep the N blocks together, so each W column block is read from
    # DRAM once per group and then served from L2.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _split_tile(x_ptr, w_ptr, M, N, K, K_PER_SPLIT, stride_xm, stride_xk, stride_wn, stride_wk,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's output tile and K range (program axis 1 is the split of split-K, 0
    without a split), with the x [M, K] and W^T [K, N] tile pointers at the range's start."""
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(K, k_lo + K_PER_SPLIT)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # int64 offsets: row * stride passes 2**31 for large operands and transposed views.
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    offs_k64 = (k_lo + offs_k).to(tl.int64)
    x_ptrs = x_ptr + offs_m64[:, None] * stride_xm + offs_k64[None, :] * stride_xk
    # W is [N, K]; reading it through its strides as a [K, N] tile gives W^T for free.
    w_ptrs = w_ptr + offs_k64[:, None] * stride_wk + offs_n64[None, :] * stride_wn
    step_x = tl.cast(stride_xk, tl.int64) * BLOCK_K
    step_w = tl.cast(stride_wk, tl.int64) * BLOCK_K
    return pid_k, k_lo, k_hi, offs_k, mask_m, mask_n, offs_m64, offs_n64, x_ptrs, w_ptrs, step_x, step_w


@triton.jit
def _store_split(acc, y_ptr, pid_k, offs_m64, offs_n64, mask_m, mask_n, stride_ys, stride_ym, stride_yn):
    """One split's partial sums into slice pid_k of the [splits, M, N] workspace."""
    y_ptrs = (y_ptr + tl.cast(pid_k, tl.int64) * stride_ys
              + offs_m64[:, None] * stride_ym + offs_n64[None, :] * stride_yn)
    tl.store(y_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _dot_operands(a, q, z, HAS_ZERO: tl.constexpr, UPCAST_DOT: tl.constexpr):
    if HAS_ZERO:
        # int16 holds q - z in [-255, 255]; the codes stay integers until the dot.
        q = q.to(tl.int16) - z.to(tl.int16)[None, :]
    if UPCAST_DOT:
        # Interpreter only (QUIRKS.bf16_dot_on_raw_bits): fp32 operands are exact here (a
        # bf16 x and integer codes), and going int -> fp32 also avoids the interpreter's
        # int8 -> bf16 reinterpretation (QUIRKS.int8_to_bf16_reinterprets).
        return a.to(tl.float32), q.to(tl.float32)
    return a, q.to(a.dtype)


@triton.jit
def _int8_weight_linear_kernel(
    x_ptr, w_ptr, scale_ptr, zero_ptr, bias_ptr, y_ptr,
    M, N, K, M_BUCKET, K_PER_SPLIT,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_sn, stride_sg,
    stride_zn, stride_zg,
    stride_bn,
    stride_ys, stride_ym, stride_yn,
    GROUP_SIZE: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, SPLIT_OUT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, ROUND_BF16_OUT: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # GROUP_SIZE == 0 means per channel. SPLIT_OUT: this launch is one split of split-K,
    # program axis 1 picks the K range and y is the fp32 workspace (no epilogue here).
    # M_BUCKET is only an autotune key.
    (pid_k, k_lo, k_hi, offs_k, mask_m, mask_n, offs_m64, offs_n64, x_ptrs, w_ptrs, step_x,
     step_w) = _split_tile(x_ptr, w_ptr, M, N, K, K_PER_SPLIT, stride_xm, stride_xk, stride_wn, stride_wk,
                           BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    z = tl.zeros((BLOCK_N,), dtype=tl.int8)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GROUP_SIZE == 0:
        if HAS_ZERO:
            z = tl.load(zero_ptr + offs_n64 * stride_zn, mask=mask_n, other=0)
        for k in range(k_lo, k_hi, BLOCK_K):
            k_left = K - k
            a = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
            # Padding codes may be nonzero after "- z", but they meet x's zero padding.
            q = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0)
            a, b = _dot_operands(a, q, z, HAS_ZERO, UPCAST_DOT)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
            x_ptrs += step_x
            w_ptrs += step_w
        s = tl.load(scale_ptr + offs_n64 * stride_sn, mask=mask_n, other=0.0)
        acc = acc * s[None, :]
    else:
        # K is a multiple of GROUP_SIZE and BLOCK_K divides it (the launcher and the
        # config pruner guarantee both), so no K mask is needed. The inner loop is
        # unrolled, which leaves the group loop as the one Triton software-pipelines.
        for g0 in range(k_lo, k_hi, GROUP_SIZE):
            g = g0 // GROUP_SIZE
            if HAS_ZERO:
                z = tl.load(zero_ptr + offs_n64 * stride_zn + g * stride_zg, mask=mask_n, other=0)
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for _ in tl.static_range(GROUP_SIZE // BLOCK_K):
                a = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
                q = tl.load(w_ptrs, mask=mask_n[None, :], other=0)
                a, b = _dot_operands(a, q, z, HAS_ZERO, UPCAST_DOT)
                part = tl.dot(a, b, part, input_precision=INPUT_PRECISION)
                x_ptrs += step_x
                w_ptrs += step_w
            s = tl.load(scale_ptr + offs_n64 * stride_sn + g * stride_sg, mask=mask_n, other=0.0)
            acc += part * s[None, :]

    if SPLIT_OUT:
        _store_split(acc, y_ptr, pid_k, offs_m64, offs_n64, mask_m, mask_n, stride_ys, stride_ym, stride_yn)
    else:
        epilogue_store(acc, None, bias_ptr, y_ptr, offs_m64, offs_n64, mask_m, mask_n,
                        0, stride_bn, stride_ym, stride_yn, False, HAS_BIAS, ACTIVATION, ROUND_BF16_OUT)


@triton.jit
def _split_k_reduce_kernel(
    ws_ptr, x_scale_ptr, w_scale_ptr, bias_ptr, y_ptr,
    M, N, SPLITS,
    stride_ws, stride_wm, stride_wn,
    stride_xs, stride_sn,
    stride_bn,
    stride_ym, stride_yn,
    RESCALE: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    ROUND_BF16_OUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # RESCALE (W8A8): the partials are int32 sums, added exactly, then scaled by the row
    # (x_scale) and column (w_scale) scales; otherwise fp32 partials, already scaled.
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    ptrs = ws_ptr + offs_m64[:, None] * stride_wm + offs_n64[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if RESCALE else tl.float32)
    # Splits summed in index order: the same bits on every run, unlike atomic adds.
    for _ in range(SPLITS):
        acc += tl.load(ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0)
        ptrs += stride_ws
    if RESCALE:
        xs = tl.load(x_scale_ptr + offs_m64 * stride_xs, mask=mask_m, other=0.0)
        ws = tl.load(w_scale_ptr + offs_n64 * stride_sn, mask=mask_n, other=0.0)
        y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    else:
        y = acc
    epilogue_store(y, None, bias_ptr, y_ptr, offs_m64, offs_n64, mask_m, mask_n,
                    0, stride_bn, stride_ym, stride_yn, False, HAS_BIAS, ACTIVATION, ROUND_BF16_OUT)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, absmax_ptr,
    K,
    stride_xm, stride_xk,
    stride_qm,
    BLOCK_K: tl.constexpr,
    QMAX: tl.constexpr,
    GIVEN_ABSMAX: tl.constexpr,  # quantise against absmax_ptr[row], not the row's own
):
    # One program per row: the row is read twice (absmax, then codes); for the K of real
    # models (<= 32k) the second read hits L2.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_xm
    amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    bad = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        mask = offs < K - k
        v = tl.load(x_row + (k + offs).to(tl.int64) * stride_xk, mask=mask, other=0.0)
        amax = tl.maximum(amax, tl.abs(v.to(tl.float32)))
        # A row with NaN or Inf gets scale NaN (its outputs NaN, as F.linear on the
        # dequantised math); counted apart, as a float max may drop NaN.
        bad = tl.maximum(bad, tl.where(tl.abs(v.to(tl.float32)) <= _FLT_MAX, 0.0, 1.0))
    row_max = tl.max(amax, axis=0)
    if GIVEN_ABSMAX:
        row_max = tl.load(absmax_ptr + row)
    row_bad = tl.max(bad, axis=0)
    scale = tl.where(row_max > 0, tl.div_rn(row_max, QMAX), 1.0)
    scale = tl.where(row_bad > 0, float("nan"), scale)
    q_row = q_ptr + row * stride_qm
    for k in range(0, K, BLOCK_K):
        mask = offs < K - k
        v = tl.load(x_row + (k + offs).to(tl.int64) * stride_xk, mask=mask, other=0.0)
        r = tl.div_rn(v.to(tl.float32), scale)
        r = (r + _RNE_MAGIC) - _RNE_MAGIC
        r = tl.minimum(tl.maximum(r, -QMAX), QMAX)
        r = tl.where(row_bad > 0, 0.0, r)  # defined codes for a NaN-scale row
        tl.store(q_row + k + offs, r.to(tl.int8), mask=mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _int8_gemm_kernel(
    x_ptr, w_ptr, x_scale_ptr, w_scale_ptr, bias_ptr, y_ptr,
    M, N, K, M_BUCKET, K_PER_SPLIT,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_xs,
    stride_ws,
    stride_bn,
    stride_ys, stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, SPLIT_OUT: tl.constexpr,
    ROUND_BF16_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # x is the int8 per-token quantised activation. Both operands are K-contiguous (for a
    # contiguous qweight), the layout int8 wgmma needs for its shared-memory operands.
    # SPLIT_OUT: this launch is one split of split-K, program axis 1 picks the K range and
    # y is the int32 workspace (the reduce kernel rescales).
    (pid_k, k_lo, k_hi, offs_k, mask_m, mask_n, offs_m64, offs_n64, x_ptrs, w_ptrs, step_x,
     step_w) = _split_tile(x_ptr, w_ptr, M, N, K, K_PER_SPLIT, stride_xm, stride_xk, stride_wn, stride_wk,
                           BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)

    # int32 accumulation is exact: |sum| <= 127 * 127 * K < 2**31 (the launcher caps K).
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k in range(k_lo, k_hi, BLOCK_K):
        k_left = K - k
        a = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0)
        b = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0)
        acc = tl.dot(a, b, acc)
        x_ptrs += step_x
        w_ptrs += step_w

    if SPLIT_OUT:
        _store_split(acc, y_ptr, pid_k, offs_m64, offs_n64, mask_m, mask_n, stride_ys, stride_ym, stride_yn)
    else:
        xs = tl.load(x_scale_ptr + offs_m64 * stride_xs, mask=mask_m, other=0.0)
        ws = tl.load(w_scale_ptr + offs_n64 * stride_ws, mask=mask_n, other=0.0)
        y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
        epilogue_store(y, None, bias_ptr, y_ptr, offs_m64, offs_n64, mask_m, mask_n,
                        0, stride_bn, stride_ym, stride_yn, False, HAS_BIAS, ACTIVATION, ROUND_BF16_OUT)


_weight_prune = None if _config.INTERPRETER else {
    "early_config_prune": _config.prune_int8_weight_configs}
_int8_weight_tuned = triton.autotune(
    configs=_config.int8_weight_configs(), key=_config.INT8_WEIGHT_KEY,
    prune_configs_by=_weight_prune,
)(_int8_weight_linear_kernel)
_int8_weight_split_tuned = triton.autotune(
    configs=_config.int8_split_k_configs(), key=_config.INT8_WEIGHT_KEY,
    prune_configs_by=_weight_prune,
)(_int8_weight_linear_kernel)
_gemm_prune = None if _config.INTERPRETER else {"early_config_prune": _config.prune_fused_matmul_configs}
_int8_gemm_tuned = triton.autotune(
    configs=_config.int8_gemm_configs(), key=_config.INT8_GEMM_KEY, prune_configs_by=_gemm_prune,
)(_int8_gemm_kernel)
# W8A8 split-K: the weight-only path's tiles (BLOCK_N fixed, see _config.int8_split_k).
_int8_gemm_split_tuned = triton.autotune(
    configs=_config.int8_split_k_configs(), key=_config.INT8_GEMM_KEY, prune_configs_by=_gemm_prune,
)(_int8_gemm_kernel)


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------

def _check(name, value, arg, dtypes, dims=None, what=""):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: `{arg}` must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{name}: `{arg}` must be {dims}-D {what}, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: `{arg}` has dtype {value.dtype}; expected one of {names}")
    return value


def _check_common(name, x, qweight, scale, bias, activation):
    """Checks shared by both launchers; returns (M, N, K, groups)."""
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"{name}: `activation` must be one of {ACTIVATIONS}, got {activation!r}")
    _check(name, x, "x", _FLOAT_DTYPES, 2, "[M, K]")
    _check(name, qweight, "qweight", (torch.int8,), 2, "[N, K]")
    M, K = x.shape
    N, Kw = qweight.shape
    if Kw != K:
        raise ValueError(f"{name}: `qweight` has shape {tuple(qweight.shape)} but x is "
                         f"{tuple(x.shape)}; qweight must be [N, {K}]")
    _check(name, scale, "scale", (torch.float32,), 2, "[N, groups]")
    groups = scale.shape[1]
    if (scale.shape[0] != N or groups < 1
            or (groups > 1 and (K % groups or K // groups not in GROUP_SIZES))):
        raise ValueError(f"{name}: `scale` must be [{N}, 1] (per channel) or [{N}, K / group_size] "
                         f"with group_size in {GROUP_SIZES}; got {tuple(scale.shape)} for K = {K}")
    if bias is not None:
        _check(name, bias, "bias", tuple(dict.fromkeys((torch.float32, x.dtype))))
        if bias.shape != (N,):
            raise ValueError(f"{name}: `bias` must have shape ({N},), got {tuple(bias.shape)}")
    if max(M, N, K) >= 2**31:
        # Row/column indices are int32 inside the kernels (only offsets are int64).
        raise ValueError(f"{name}: `x`/`qweight` dimensions must be < 2**31, "
                         f"got M={M}, N={N}, K={K}")
    for arg, t in (("qweight", qweight), ("scale", scale), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: `{arg}` is on {t.device} but `x` is on {x.device}")
    if not (x.device.type == "cuda" or (_config.INTERPRETER and x.device.type == "cpu")):
        raise ValueError(
            f"{name}: `x` is on {x.device}; the Triton kernels need a CUDA device "
            "(or a CPU tensor with TRITON_INTERPRET=1 set before triton is imported)")
    return M, N, K, groups


def _launch(x: torch.Tensor, fn) -> None:
    # Triton launches on the current device; a tensor on another GPU needs it made current
    # (checked first: the context manager costs microseconds per decode step).
    if x.device.type == "cuda" and x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            fn()
    else:
        fn()


def _reduce_splits(ws, x_scale, w_scale, bias, y, activation, round_out):
    """Sums the [splits, M, N] workspace into y with the epilogue; with scales (W8A8), the
    int32 partials are rescaled by x_scale [M] and w_scale [N, 1] after the exact sum."""
    splits, M, N = ws.shape
    rescale = x_scale is not None
    grid = (triton.cdiv(M, _REDUCE_BLOCK_M), triton.cdiv(N, _REDUCE_BLOCK_N))
    _split_k_reduce_kernel[grid](
        ws, x_scale, w_scale, bias, y,
        M, N, splits,
        ws.stride(0), ws.stride(1), ws.stride(2),
        x_scale.stride(0) if rescale else 0, w_scale.stride(0) if rescale else 0,
        bias.stride(0) if bias is not None else 0,
        y.stride(0), y.stride(1),
        RESCALE=rescale, HAS_BIAS=bias is not None, ACTIVATION=activation, ROUND_BF16_OUT=round_out,
        BLOCK_M=_REDUCE_BLOCK_M, BLOCK_N=_REDUCE_BLOCK_N)


def int8_weight_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """Return ``act(x @ ((qweight - zero_point) * scale)^T + bias)`` in x's dtype.

    x: [M, K] fp16/bf16/fp32, any strides; qweight: [N, K] int8; scale: [N, G] fp32 with
    G = 1 (per channel) or K / group_size, group_size in :data:`GROUP_SIZES`; zero_point:
    [N, G] int8 or None (symmetric); bias: [N] fp32 (or x's dtype) or None; activation:
    one of :data:`ACTIVATIONS`. Dequantisation happens in registers inside the K loop;
    accumulation is fp32. M <= 16 may take the split-K path (see the module docstring).
    Raises TypeError/ValueError naming the argument.
    """
    name = _WEIGHT_NAME
    M, N, K, groups = _check_common(name, x, qweight, scale, bias, activation)
    zp = zero_point
    if zp is not None:
        _check(name, zp, "zero_point", (torch.int8,))
        if zp.shape != scale.shape or zp.device != x.device:
            raise ValueError(f"{name}: `zero_point` must have the shape of `scale` "
                             f"{tuple(scale.shape)} on {x.device}, got {tuple(zp.shape)} on "
                             f"{zp.device}")

    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y
    group_size = K // groups if groups > 1 else 0
    round_out = QUIRKS.fp32_to_bf16_truncates and x.dtype == torch.bfloat16
    splits, k_per_split = 1, K
    if M <= _config.INT8_SPLIT_K_MAX_M:
        splits, k_per_split = _config.int8_split_k(M, N, K, group_size, _config.sm_count(x))
    split = splits > 1
    # Split-K: the GEMM writes fp32 partials, the reduce kernel owns bias and activation.
    out = torch.empty((splits, M, N), device=x.device, dtype=torch.float32) if split else y[None]
    tuned = _int8_weight_split_tuned if split else _int8_weight_tuned
    gemm_bias = None if split else bias

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), splits)

    def run():
        tuned[grid](
            x, qweight, scale, zp, gemm_bias, out,
            M, N, K, _config.m_bucket(M), k_per_split,
            x.stride(0), x.stride(1),
            qweight.stride(0), qweight.stride(1),
            scale.stride(0), scale.stride(1),
            zp.stride(0) if zp is not None else 0, zp.stride(1) if zp is not None else 0,
            gemm_bias.stride(0) if gemm_bias is not None else 0,
            out.stride(0) if split else 0, out.stride(1), out.stride(2),
            GROUP_SIZE=group_size, HAS_ZERO=zp is not None, HAS_BIAS=gemm_bias is not None,
            ACTIVATION="none" if split else activation, SPLIT_OUT=split,
            INPUT_PRECISION=_fp32_input_precision() if x.dtype == torch.float32 else "ieee",
            UPCAST_DOT=QUIRKS.bf16_dot_on_raw_bits and x.dtype == torch.bfloat16,
            ROUND_BF16_OUT=round_out and not split)
        if split:
            _reduce_splits(out, None, None, bias, y, activation, round_out)

    _launch(x, run)
    return y


def int8_dynamic_linear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    act_bits: int = 8,
    act_absmax: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return ``act((quant(x) @ qweight^T) * x_scale * scale^T + bias)`` in x's dtype.

    x: [M, K] fp16/bf16/fp32, any strides, quantised per token (row) at run time to
    ``act_bits`` (8: codes in [-127, 127], 7: [-63, 63]), against ``act_absmax`` ([M] fp32,
    contiguous) when given, else each row's own absmax;
    qweight: [N, K] int8, symmetric; scale: [N, 1] fp32 (per channel); bias: [N] fp32 (or
    x's dtype) or None. int8 x int8 products accumulate exactly in int32. Raises
    TypeError/ValueError naming the argument.
    """
    name = _DYNAMIC_NAME
    M, N, K, groups = _check_common(name, x, qweight, scale, bias, activation)
    if isinstance(act_bits, bool) or not isinstance(act_bits, int) or act_bits not in _QMAX:
        raise ValueError(f"{name}: `act_bits` must be 7 or 8 (bits of the per-token activation "
                         f"codes), got {act_bits!r}")
    if groups != 1:
        raise ValueError(f"{name}: `scale` must be per channel, shape [{N}, 1]; got "
                         f"{tuple(scale.shape)} (per-group weights need int8_weight_linear)")
    if act_absmax is not None and (act_absmax.dtype != torch.float32 or act_absmax.shape != (M,)
                                   or not act_absmax.is_contiguous() or act_absmax.device != x.device):
        raise ValueError(f"{name}: `act_absmax` must be a contiguous fp32 [{M}] tensor on {x.device}, got "
                         f"{act_absmax.dtype} {tuple(act_absmax.shape)} on {act_absmax.device}")
    if K > _INT32_EXACT_MAX_K:
        # Beyond this an int32 sum of 127 * 127 products can overflow (sm_80's IMMA would
        # saturate silently).
        raise ValueError(f"{name}: `x` has K = {K} features; int32 accumulation is exact only "
                         f"up to K = {_INT32_EXACT_MAX_K}")
    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y
    # Rows padded to 16 bytes so the GEMM's int8 row loads stay vectorised.
    xq = torch.empty((M, max(16, triton.cdiv(K, 16) * 16)), device=x.device, dtype=torch.int8)
    x_scale = torch.empty((M,), device=x.device, dtype=torch.float32)
    round_out = QUIRKS.fp32_to_bf16_truncates and x.dtype == torch.bfloat16
    # Small M and too few N tiles to fill the device: split K as the weight-only path does,
    # int32 partials in a workspace, summed exactly and rescaled by the reduce kernel.
    splits, k_per_split = 1, K
    if M <= _config.INT8_SPLIT_K_MAX_M:
        splits, k_per_split = _config.int8_split_k(M, N, K, 0, _config.sm_count(x))
    split = splits > 1
    out = torch.empty((splits, M, N), device=x.device, dtype=torch.int32) if split else y[None]
    tuned = _int8_gemm_split_tuned if split else _int8_gemm_tuned
    gemm_bias = None if split else bias

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), splits)

    def run():
        _quantize_rows_kernel[(M,)](
            x, xq, x_scale, x_scale if act_absmax is None else act_absmax, K, x.stride(0), x.stride(1),
            xq.stride(0), BLOCK_K=_config.INT8_QUANT_BLOCK_K, QMAX=_QMAX[act_bits],
            GIVEN_ABSMAX=act_absmax is not None)
        tuned[grid](
            xq, qweight, x_scale, scale, gemm_bias, out,
            M, N, K, _config.m_bucket(M), k_per_split,
            xq.stride(0), xq.stride(1),
            qweight.stride(0), qweight.stride(1),
            x_scale.stride(0), scale.stride(0),
            gemm_bias.stride(0) if gemm_bias is not None else 0,
            out.stride(0) if split else 0, out.stride(1), out.stride(2),
            HAS_BIAS=gemm_bias is not None, ACTIVATION="none" if split else activation, SPLIT_OUT=split,
            ROUND_BF16_OUT=round_out and not split)
        if split:
            _reduce_splits(out, x_scale, scale, bias, y, activation, round_out)

    _launch(x, run)
    return y
