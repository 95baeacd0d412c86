"""Sparse linear layers in Triton: 2:4 semi-structured and block-sparse (BSR) weights.

Layers (see docs/ARCHITECTURE.md): private ``@triton.jit`` kernels, the launchers
:func:`sparse24_linear` and :func:`block_sparse_linear`, and the op registration in
``bigperf/ops/sparse_linear.py`` that calls them. Formats and oracle: ``bigperf/sparsity.py``.

2:4 (``y = act((x @ W^T) * scale + bias)``, W given as values [N, K/2] + meta [N, K/8])
---------------------------------------------------------------------------------------
* The kernel walks K in *octets* of 8 dense positions: octet j of row n is exactly meta
  byte j and values 4j..4j+3, so one aligned word load brings an octet's four values
  (int32 for int8, int64 for fp16/bf16, two int64 for fp32) and one byte its positions;
  no value is loaded twice and the loads stay contiguous along K. Only compressed bytes
  travel from memory: at small M that halves the weight traffic of a dense GEMM.
* The dense W tile is rebuilt in registers as 8 *phase* slices: slice q holds the dense
  elements 8j + q of every octet j in the tile (a value or zero, chosen by comparing its
  2-bit position with q). ``x @ W^T`` over the tile is then the sum of 8 dots of
  x[:, 8j + q] with slice q, a permutation of K that needs no shuffle of the weight.
* int8 values are integers in [-127, 127], exact in fp16/bf16, so the dot multiplies the
  codes and the per-row scale multiplies the fp32 accumulator once per output column.
* M <= 16 with too few N tiles to fill the GPU: split-K into a [splits, M, N] fp32
  workspace, summed in a fixed order by a second kernel that owns scale, bias and
  activation (deterministic, no atomics).

Block-sparse (BSR: values [nnz, bn, bk], col_indices [nnz], row_ptr [N/bn + 1])
--------------------------------------------------------------------------------
* One program per (BLOCK_M rows, block row[, 128-wide slice of it]); it iterates only the
  stored blocks of its block row, loads x[:, col*bk : (col+1)*bk] and the block, and
  accumulates with ``tl.dot`` when bn and bk are >= 16 (tensor cores need 16 along each
  dot dimension). Smaller blocks (4x4, 8x32) take a broadcast-multiply-reduce path in fp32
  instead of padding each block to 16x16.
* Index data is validated by the op (bigperf/ops/sparse_linear.py); the kernel still
  clamps row_ptr and col_indices into range, so corrupt indices give a wrong result,
  never an out-of-bounds read.

Precision (both kernels)
------------------------
Values may have x's dtype or another float dtype. The dot runs in x's dtype when the
weight (or its int8 codes) is exact there; otherwise both operands go to fp32: with
fp16/bf16 operands on both sides as TF32, which represents every fp16 and bf16 value
exactly (10 mantissa bits, fp32's exponent range), so the products stay exact; with fp32
on either side as IEEE fp32 unless ``torch.get_float32_matmul_precision()`` allows TF32,
as ``torch.matmul`` does. Accumulation, scale, bias and activation are fp32; the result is
rounded once to x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _config
from ._config import QUIRKS

# Shared with the other Triton ops so that every op's activations are bit-identical.
from ._epilogue import epilogue_store as _epilogue_store
from .fused_matmul import _fp32_input_precision

__all__ = ["ACTIVATIONS", "block_sparse_linear", "sparse24_linear"]

ACTIVATIONS = _config.FUSED_MATMUL_ACTIVATIONS
_S24_NAME = "bigperf.kernels.sparse_matmul.sparse24_linear"
_BSR_NAME = "bigperf.kernels.sparse_matmul.block_sparse_linear"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_VALUE_KIND = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
               torch.int8: "int8"}
# Word a 2:4 octet's values are loaded as (fp32: two words per octet).
_OCTET_WORD = {1: torch.int32, 2: torch.int64, 4: torch.int64}
_REDUCE_BLOCK_M = 16
_REDUCE_BLOCK_N = 128


# ---------------------------------------------------------------------------------------
# Shared device helpers
# ---------------------------------------------------------------------------------------

# Helpers below assign in both constexpr branches and return once: the compiler checks
# every `return` of a function for one type, even in a branch it drops.
@triton.jit
def _to_dot(v, x_ptr, DOT_FP32: tl.constexpr):
    if DOT_FP32:
        out = v.to(tl.float32)
    else:
        out = v.to(x_ptr.dtype.element_ty)
    return out


# ---------------------------------------------------------------------------------------
# 2:4
# ---------------------------------------------------------------------------------------

@triton.jit
def _half_bits(word, SHIFT: tl.constexpr, VALUES: tl.constexpr):
    bits = (word >> SHIFT).to(tl.int16)
    if VALUES == "fp16":
        out = bits.to(tl.float16, bitcast=True)
    else:
        out = bits.to(tl.bfloat16, bitcast=True)
    return out


@triton.jit
def _load_octet(v_ptrs, mask, x_ptr, VALUES: tl.constexpr, DOT_FP32: tl.constexpr):
    """The four stored values of each octet (little-endian word: lowest address first),
    converted for the dot: (a0, a1) of the octet's first group, (b0, b1) of its second."""
    if VALUES == "int8":
        w = tl.load(v_ptrs, mask=mask, other=0)
        # int8 -> fp32 -> dot type: exact, and it avoids the interpreter's int8 -> bf16
        # reinterpretation (QUIRKS.int8_to_bf16_reinterprets).
        a0 = _to_dot(w.to(tl.int8).to(tl.float32), x_ptr, DOT_FP32)
        a1 = _to_dot((w >> 8).to(tl.int8).to(tl.float32), x_ptr, DOT_FP32)
        b0 = _to_dot((w >> 16).to(tl.int8).to(tl.float32), x_ptr, DOT_FP32)
        b1 = _to_dot((w >> 24).to(tl.int8).to(tl.float32), x_ptr, DOT_FP32)
    elif VALUES == "fp32":
        w0 = tl.load(v_ptrs, mask=mask, other=0)
        w1 = tl.load(v_ptrs + 1, mask=mask, other=0)
        a0 = _to_dot(w0.to(tl.int32).to(tl.float32, bitcast=True), x_ptr, DOT_FP32)
        a1 = _to_dot((w0 >> 32).to(tl.int32).to(tl.float32, bitcast=True), x_ptr, DOT_FP32)
        b0 = _to_dot(w1.to(tl.int32).to(tl.float32, bitcast=True), x_ptr, DOT_FP32)
        b1 = _to_dot((w1 >> 32).to(tl.int32).to(tl.float32, bitcast=True), x_ptr, DOT_FP32)
    else:
        w = tl.load(v_ptrs, mask=mask, other=0)
        a0 = _to_dot(_half_bits(w, 0, VALUES), x_ptr, DOT_FP32)
        a1 = _to_dot(_half_bits(w, 16, VALUES), x_ptr, DOT_FP32)
        b0 = _to_dot(_half_bits(w, 32, VALUES), x_ptr, DOT_FP32)
        b1 = _to_dot(_half_bits(w, 48, VALUES), x_ptr, DOT_FP32)
    return a0, a1, b0, b1


@triton.jit
def _sparse24_linear_kernel(
    x_ptr, v_ptr, meta_ptr, scale_ptr, bias_ptr, y_ptr,
    M, N, K, M_BUCKET, K_PER_SPLIT,
    stride_xm, stride_xk,
    stride_vn, stride_vw,
    stride_mn, stride_mj,
    stride_sn,
    stride_bn,
    stride_ys, stride_ym, stride_yn,
    VALUES: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    SPLIT_OUT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    ROUND_BF16_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # M_BUCKET is only an autotune key. K_PER_SPLIT is a multiple of BLOCK_K (or K itself
    # when there is one split), so a split's tiles never reach into the next split.
    BLOCK_J: tl.constexpr = BLOCK_K // 8
    # fp32 values take two int64 words per octet, the other kinds one word.
    WORDS: tl.constexpr = 2 if VALUES == "fp32" else 1
    pid = tl.program_id(0)
    split = tl.program_id(1)
    # Grouped ordering: GROUP_M row blocks sweep the N blocks together, so a column block
    # of W is fetched from DRAM once per group and then served from L2.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # int64 offsets: row * stride overflows int32 for large operands and transposed views.
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    octets = K // 8
    k_begin = split * K_PER_SPLIT
    k_steps = tl.cdiv(tl.minimum(K_PER_SPLIT, K - k_begin), BLOCK_K)
    x_rows = x_ptr + offs_m64[:, None] * stride_xm
    v_rows = v_ptr + offs_n64[None, :] * stride_vn
    m_rows = meta_ptr + offs_n64[None, :] * stride_mn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(k_steps):
        j = (k_begin // 8 + step * BLOCK_J + tl.arange(0, BLOCK_J))
        mask_j = j < octets
        j64 = j.to(tl.int64)
        mask_w = mask_j[:, None] & mask_n[None, :]
        meta = tl.load(m_rows + j64[:, None] * stride_mj, mask=mask_w, other=0).to(tl.int32)
        a0, a1, b0, b1 = _load_octet(v_rows + (j64 * WORDS)[:, None] * stride_vw, mask_w,
                                     x_ptr, VALUES, DOT_FP32)
        mask_x = mask_m[:, None] & mask_j[None, :]
        for q in tl.static_range(8):
            # Phase q of octet j is dense column 8j + q, which lies in group 2j (q < 4) or
            # 2j + 1, at position q % 4; it holds the group's first value, its second,
            # or zero. pack_24 stores distinct ascending positions, so at most one matches.
            if q < 4:
                first = meta & 3
                second = (meta >> 2) & 3
                w_q = tl.where(first == q, a0, tl.where(second == q, a1, 0.0))
            else:
                first = (meta >> 4) & 3
                second = (meta >> 6) & 3
                w_q = tl.where(first == q - 4, b0, tl.where(second == q - 4, b1, 0.0))
            x_q = tl.load(x_rows + (j64 * 8 + q)[None, :] * stride_xk, mask=mask_x, other=0.0)
            acc = tl.dot(_to_dot(x_q, x_ptr, DOT_FP32), w_q, acc, input_precision=INPUT_PRECISION)

    if SPLIT_OUT:
        y_ptrs = (y_ptr + split.to(tl.int64) * stride_ys + offs_m64[:, None] * stride_ym
                  + offs_n64[None, :] * stride_yn)
        tl.store(y_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])
    else:
        _epilogue_store(acc, scale_ptr, bias_ptr, y_ptr, offs_m64, offs_n64, mask_m, mask_n,
                        stride_sn, stride_bn, stride_ym, stride_yn,
                        HAS_SCALE, HAS_BIAS, ACTIVATION, ROUND_BF16_OUT)


@triton.jit
def _sparse24_split_reduce_kernel(
    ws_ptr, scale_ptr, bias_ptr, y_ptr,
    M, N, SPLITS,
    stride_ws, stride_wm, stride_wn,
    stride_sn,
    stride_bn,
    stride_ym, stride_yn,
    HAS_SCALE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    ROUND_BF16_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    mask = mask_m[:, None] & mask_n[None, :]
    ptrs = ws_ptr + offs_m64[:, None] * stride_wm + offs_n64[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # Fixed summation order: the result does not depend on which split finished first.
    for _ in range(SPLITS):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += stride_ws
    _epilogue_store(acc, scale_ptr, bias_ptr, y_ptr, offs_m64, offs_n64, mask_m, mask_n,
                    stride_sn, stride_bn, stride_ym, stride_yn,
                    HAS_SCALE, HAS_BIAS, ACTIVATION, ROUND_BF16_OUT)


# ---------------------------------------------------------------------------------------
# Block-sparse (BSR)
# ---------------------------------------------------------------------------------------

@triton.jit
def _block_sparse_linear_kernel(
    x_ptr, v_ptr, col_ptr, row_ptr_ptr, bias_ptr, y_ptr,
    M, N, K, M_BUCKET, NNZ,
    stride_xm, stride_xk,
    stride_vb, stride_vn, stride_vk,
    stride_c,
    stride_r,
    stride_bn,
    stride_ym, stride_yn,
    BN: tl.constexpr,
    BK: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    USE_DOT: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    ROUND_BF16_OUT: tl.constexpr,
    TILE_N: tl.constexpr,
    TILE_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    # One flat grid axis (the y axis stops at 65535 programs); the M tiles of one block
    # row are adjacent in launch order, so its blocks are read from DRAM about once.
    N_SUB: tl.constexpr = (BN + TILE_N - 1) // TILE_N
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_pid_m
    rest = pid // num_pid_m
    block_row = rest // N_SUB
    offs_bn = (rest % N_SUB) * TILE_N + tl.arange(0, TILE_N)
    mask_bn = offs_bn < BN
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = block_row.to(tl.int64) * BN + offs_bn.to(tl.int64)
    offs_bn64 = offs_bn.to(tl.int64)
    # Clamped so that corrupt indices cannot address memory outside the operands.
    start = tl.maximum(tl.load(row_ptr_ptr + block_row.to(tl.int64) * stride_r), 0)
    end = tl.minimum(tl.load(row_ptr_ptr + (block_row.to(tl.int64) + 1) * stride_r), NNZ)
    last_col = K // BK - 1
    x_rows = x_ptr + offs_m64[:, None] * stride_xm
    # Pointers step through the block row (a 64-bit pointer plus an int32 stride per
    # block) rather than being recomputed from the loop index.
    c_ptr = col_ptr + start.to(tl.int64) * stride_c
    v_block = v_ptr + start.to(tl.int64) * stride_vb + offs_bn64[None, :] * stride_vn

    acc = tl.zeros((BLOCK_M, TILE_N), dtype=tl.float32)
    for _ in range(start, end):
        col = tl.minimum(tl.maximum(tl.load(c_ptr), 0), last_col).to(tl.int64)
        for kk in range(0, BK, TILE_K):
            offs_bk = kk + tl.arange(0, TILE_K)
            mask_bk = offs_bk < BK
            offs_bk64 = offs_bk.to(tl.int64)
            a = tl.load(x_rows + (col * BK + offs_bk64)[None, :] * stride_xk,
                        mask=mask_m[:, None] & mask_bk[None, :], other=0.0)
            # The block is [bn, bk]; read through its strides as [TILE_K, TILE_N] it is the
            # transposed operand of x @ W^T, with no copy.
            w = tl.load(v_block + offs_bk64[:, None] * stride_vk,
                        mask=mask_bk[:, None] & mask_bn[None, :], other=0.0)
            if USE_DOT:
                acc = tl.dot(_to_dot(a, x_ptr, DOT_FP32), _to_dot(w, x_ptr, DOT_FP32), acc,
                             input_precision=INPUT_PRECISION)
            else:
                prod = a.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :]
                acc += tl.sum(prod, axis=1)
        c_ptr += stride_c
        v_block += stride_vb

    _epilogue_store(acc, None, bias_ptr, y_ptr, offs_m64, offs_n64, mask_m, mask_bn,
                    0, stride_bn, stride_ym, stride_yn,
                    False, HAS_BIAS, ACTIVATION, ROUND_BF16_OUT)


_s24_prune = None if _config.INTERPRETER else {
    "early_config_prune": _config.prune_sparse24_configs}
_sparse24_tuned = triton.autotune(
    configs=_config.sparse24_configs(), key=_config.SPARSE24_KEY, prune_configs_by=_s24_prune,
)(_sparse24_linear_kernel)
_sparse24_split_tuned = triton.autotune(
    configs=_config.sparse24_split_k_configs(), key=_config.SPARSE24_KEY,
    prune_configs_by=_s24_prune,
)(_sparse24_linear_kernel)
_block_sparse_tuned = triton.autotune(
    configs=_config.block_sparse_configs(), key=_config.BLOCK_SPARSE_KEY,
    prune_configs_by=None if _config.INTERPRETER else {
        "early_config_prune": _config.prune_block_sparse_configs},
)(_block_sparse_linear_kernel)


# ---------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------

def _check(name, value, arg, dtypes, dims, what):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: `{arg}` must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != dims:
        raise ValueError(f"{name}: `{arg}` must be {dims}-D {what}, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: `{arg}` has dtype {value.dtype}; expected one of {names}")
    return value


def _check_x_bias_activation(name, x, bias, n, activation):
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"{name}: `activation` must be one of {ACTIVATIONS}, got {activation!r}")
    _check(name, x, "x", _FLOAT_DTYPES, 2, "[M, K]")
    if bias is not None:
        _check(name, bias, "bias", tuple(dict.fromkeys((torch.float32, x.dtype))), 1, f"[{n}]")
        if bias.shape != (n,):
            raise ValueError(f"{name}: `bias` must have shape ({n},), got {tuple(bias.shape)}")


def _check_devices(name, x, **tensors):
    for arg, t in tensors.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: `{arg}` is on {t.device} but `x` is on {x.device}")
    if not (x.device.type == "cuda" or (_config.INTERPRETER and x.device.type == "cpu")):
        raise ValueError(
            f"{name}: `x` is on {x.device}; the Triton kernels need a CUDA device "
            "(or a CPU tensor with TRITON_INTERPRET=1 set before triton is imported)")


def _check_sizes(name, **sizes):
    if max(sizes.values()) >= 2**31:
        # Row/column indices are int32 inside the kernels (only offsets are int64).
        shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(f"{name}: dimensions must be < 2**31, got {shown}")


def _dot_mode(x_dtype: torch.dtype, w_dtype: torch.dtype) -> tuple[bool, str]:
    """(DOT_FP32, INPUT_PRECISION) for x and weight values of these dtypes (module docstring)."""
    halves = (torch.float16, torch.bfloat16)
    if x_dtype == torch.float32 or w_dtype == torch.float32:
        return True, _fp32_input_precision()
    if w_dtype in (x_dtype, torch.int8):
        # Interpreter: fp32 operands instead of bf16 ones (QUIRKS.bf16_dot_on_raw_bits),
        # exact since bf16 products fit fp32.
        return QUIRKS.bf16_dot_on_raw_bits and x_dtype == torch.bfloat16, "ieee"
    assert x_dtype in halves and w_dtype in halves
    return True, "tf32"


def _launch(x: torch.Tensor, fn) -> None:
    # Triton launches on the current device; a tensor on another GPU needs it made current
    # (checked first: the context manager costs microseconds per decode step).
    if x.device.type == "cuda" and x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            fn()
    else:
        fn()


def _octet_words(values: torch.Tensor) -> torch.Tensor:
    """values [N, K/2] seen as the words the kernel loads (see the module docstring)."""
    word = _OCTET_WORD[values.element_size()]
    try:
        return values.view(word)
    except RuntimeError:  # a K stride other than 1 or an unaligned row/offset
        return values.contiguous().view(word)


def sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    meta: torch.Tensor,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """Return ``act((x @ W^T) * scale + bias)`` in x's dtype, W in the 2:4 compressed format.

    x: [M, K] fp16/bf16/fp32, any strides, K a multiple of 8; values: [N, K/2] fp16, bf16,
    fp32 or int8; meta: [N, K/8] uint8 (layout of ``bigperf.sparsity.pack_24``); scale:
    [N, 1] fp32, required exactly when values are int8; bias: [N] fp32 (or x's dtype) or
    None; activation: one of :data:`ACTIVATIONS`. The metadata's content is not checked
    here (the op does that once per tensor); corrupt metadata gives a wrong result, never
    an out-of-bounds access. Raises TypeError/ValueError naming the argument.
    """
    name = _S24_NAME
    _check(name, values, "values", _FLOAT_DTYPES + (torch.int8,), 2, "[N, K/2]")
    N = values.shape[0]
    _check_x_bias_activation(name, x, bias, N, activation)
    M, K = x.shape
    if K % 8:
        raise ValueError(f"{name}: `x` has K = {K} features; the 2:4 format needs K % 8 == 0")
    if values.shape[1] * 2 != K:
        raise ValueError(f"{name}: `values` has shape {tuple(values.shape)} but x is "
                         f"{tuple(x.shape)}; values must be [N, {K // 2}]")
    _check(name, meta, "meta", (torch.uint8,), 2, "[N, K/8]")
    if meta.shape != (N, K // 8):
        raise ValueError(f"{name}: `meta` must have shape ({N}, {K // 8}), got {tuple(meta.shape)}")
    if (values.dtype == torch.int8) != (scale is not None):
        raise ValueError(f"{name}: `scale` is required exactly when `values` is int8 "
                         f"(values are {values.dtype}, scale is "
                         f"{'None' if scale is None else 'given'})")
    if scale is not None:
        _check(name, scale, "scale", (torch.float32,), 2, "[N, 1]")
        if scale.shape != (N, 1):
            raise ValueError(f"{name}: `scale` must have shape ({N}, 1), got {tuple(scale.shape)}")
    _check_sizes(name, M=M, N=N, K=K)
    _check_devices(name, x, values=values, meta=meta, scale=scale, bias=bias)

    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y
    words = _octet_words(values)
    dot_fp32, precision = _dot_mode(x.dtype, values.dtype)
    round_out = QUIRKS.fp32_to_bf16_truncates and x.dtype == torch.bfloat16
    splits, k_per_split = _config.sparse24_split_k(M, N, K, _config.sm_count(x))
    split = splits > 1
    # Split-K: the GEMM writes fp32 partials, the reduce kernel owns scale, bias, activation.
    out = torch.empty((splits, M, N), device=x.device, dtype=torch.float32) if split else y[None]
    tuned = _sparse24_split_tuned if split else _sparse24_tuned
    gemm_scale, gemm_bias = (None, None) if split else (scale, bias)

    def grid(meta_args):
        return (triton.cdiv(M, meta_args["BLOCK_M"]) * triton.cdiv(N, meta_args["BLOCK_N"]),
                splits)

    def run():
        tuned[grid](
            x, words, meta, gemm_scale, gemm_bias, out,
            M, N, K, _config.m_bucket(M), k_per_split,
            x.stride(0), x.stride(1),
            words.stride(0), words.stride(1),
            meta.stride(0), meta.stride(1),
            gemm_scale.stride(0) if gemm_scale is not None else 0,
            gemm_bias.stride(0) if gemm_bias is not None else 0,
            out.stride(0) if split else 0, out.stride(1), out.stride(2),
            VALUES=_VALUE_KIND[values.dtype], HAS_SCALE=gemm_scale is not None,
            HAS_BIAS=gemm_bias is not None, ACTIVATION="none" if split else activation,
            SPLIT_OUT=split, DOT_FP32=dot_fp32, INPUT_PRECISION=precision,
            ROUND_BF16_OUT=round_out and not split)
        if split:
            reduce_grid = (triton.cdiv(M, _REDUCE_BLOCK_M), triton.cdiv(N, _REDUCE_BLOCK_N))
            _sparse24_split_reduce_kernel[reduce_grid](
                out, scale, bias, y,
                M, N, splits,
                out.stride(0), out.stride(1), out.stride(2),
                scale.stride(0) if scale is not None else 0,
                bias.stride(0) if bias is not None else 0,
                y.stride(0), y.stride(1),
                HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
                ACTIVATION=activation, ROUND_BF16_OUT=round_out,
                BLOCK_M=_REDUCE_BLOCK_M, BLOCK_N=_REDUCE_BLOCK_N)

    _launch(x, run)
    return y


def block_sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    col_indices: torch.Tensor,
    row_ptr: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """Return ``act(x @ W^T + bias)`` in x's dtype, W in BSR form; reads only stored blocks.

    x: [M, K] fp16/bf16/fp32, any strides; values: [nnz, bn, bk] float (any block shape;
    bn and bk >= 16 use tensor cores, smaller blocks a CUDA-core path); col_indices:
    [nnz] int32 block columns; row_ptr: [N/bn + 1] int32, so N = (len(row_ptr) - 1) * bn;
    K must be a multiple of bk. bias: [N] fp32 (or x's dtype) or None. The indices'
    content is not checked here (the op does that once per tensor); the kernel clamps
    them, so corrupt indices give a wrong result, never an out-of-bounds access. Raises
    TypeError/ValueError naming the argument.
    """
    name = _BSR_NAME
    _check(name, values, "values", _FLOAT_DTYPES, 3, "[nnz, bn, bk]")
    _check(name, col_indices, "col_indices", (torch.int32,), 1, "[nnz]")
    _check(name, row_ptr, "row_ptr", (torch.int32,), 1, "[N/bn + 1]")
    nnz, bn, bk = values.shape
    if bn < 1 or bk < 1:
        raise ValueError(f"{name}: `values` has an empty block shape {bn}x{bk}")
    if row_ptr.shape[0] < 2:
        raise ValueError(f"{name}: `row_ptr` needs N/bn + 1 >= 2 entries, got {row_ptr.shape[0]}")
    N = (row_ptr.shape[0] - 1) * bn
    _check_x_bias_activation(name, x, bias, N, activation)
    M, K = x.shape
    if K % bk:
        raise ValueError(f"{name}: `x` has K = {K} features, not a multiple of the block "
                         f"width bk = {bk} of `values` {tuple(values.shape)}")
    if col_indices.shape[0] != nnz:
        raise ValueError(f"{name}: `col_indices` has {col_indices.shape[0]} entries for the "
                         f"{nnz} blocks of `values`")
    _check_sizes(name, M=M, N=N, K=K, nnz=nnz)
    _check_devices(name, x, values=values, col_indices=col_indices, row_ptr=row_ptr, bias=bias)

    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y
    tile_n, tile_k, use_dot = _config.block_sparse_tiles(bn, bk)
    dot_fp32, precision = _dot_mode(x.dtype, values.dtype)
    n_sub = triton.cdiv(bn, tile_n)

    def grid(meta_args):
        return (triton.cdiv(M, meta_args["BLOCK_M"]) * (N // bn) * n_sub,)

    def run():
        _block_sparse_tuned[grid](
            x, values, col_indices, row_ptr, bias, y,
            M, N, K, _config.m_bucket(M), nnz,
            x.stride(0), x.stride(1),
            values.stride(0), values.stride(1), values.stride(2),
            col_indices.stride(0),
            row_ptr.stride(0),
            bias.stride(0) if bias is not None else 0,
            y.stride(0), y.stride(1),
            BN=bn, BK=bk, HAS_BIAS=bias is not None, ACTIVATION=activation,
            USE_DOT=use_dot, DOT_FP32=dot_fp32, INPUT_PRECISION=precision,
            ROUND_BF16_OUT=QUIRKS.fp32_to_bf16_truncates and x.dtype == torch.bfloat16,
            TILE_N=tile_n, TILE_K=tile_k)

    _launch(x, run)
    return y

