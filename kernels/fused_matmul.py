"""Fused mixed-precision linear: ``y = act(x @ W^T + bias) + residual`` in one Triton kernel.

Layers (see docs/ARCHITECTURE.md): ``_fused_linear_kernel`` (private ``@triton.jit``), the launcher
:func:`fused_linear`, and the op registration in ``bigperf/ops`` that calls the launcher.

Precision contract
------------------
* x and W in fp16, bf16 or fp32; W has x's dtype, or x is fp32 and W is fp16/bf16 (a
  weight stored at lower precision). The compute dtype is x's dtype: each W tile is
  converted to it in registers, so W never takes a second copy in memory.
* fp32 compute uses IEEE fp32 products when ``torch.get_float32_matmul_precision()`` is
  "highest" (PyTorch's default) and TF32 tensor cores otherwise, as ``torch.matmul`` does.
  One exception keeps "highest" on tensor cores: with an fp16/bf16 W ("tf32x2"), W is
  exact in TF32, so x is split into its TF32 head and the remainder and both products run
  as TF32 MMAs; the result is within ~2^-21 of IEEE fp32 per product (held to the fp32
  tolerance, 1e-5 relative), where IEEE products would run on the CUDA cores.
* Accumulation, bias, activation and residual add are fp32; the result is rounded once
  to x's dtype. bias is fp32 or x's dtype; residual has x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _config
from ._config import QUIRKS
from ._epilogue import apply_activation, round_bf16_bits

__all__ = ["fused_linear", "ACTIVATIONS"]

ACTIVATIONS = _config.FUSED_MATMUL_ACTIVATIONS
_NAME = "bigperf.kernels.fused_matmul.fused_linear"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

@triton.jit
def _fused_linear_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_bn,
    stride_rm, stride_rn,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    ACTIVATION: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    ROUND_BF16_OUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # M_BUCKET is only an autotune key; the kernel itself never reads it.
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row blocks sweep the N blocks together, so a column block
    # of W is fetched from DRAM once per group and then served from L2.
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    # Element offsets in int64: row * stride exceeds 2^31 already for a 64k x 32k operand,
    # and a transposed view makes the K stride as large as the row count.
    offs_m64 = offs_m.to(tl.int64)
    offs_n64 = offs_n.to(tl.int64)
    offs_k64 = offs_k.to(tl.int64)
    x_ptrs = x_ptr + offs_m64[:, None] * stride_xm + offs_k64[None, :] * stride_xk
    # W is [N, K] (nn.Linear layout); reading it through its strides as a [K, N] tile gives
    # W^T without a transpose in memory.
    w_ptrs = w_ptr + offs_k64[:, None] * stride_wk + offs_n64[None, :] * stride_wn
    step_x = tl.cast(stride_xk, tl.int64) * BLOCK_K
    step_w = tl.cast(stride_wk, tl.int64) * BLOCK_K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        # A lower-precision W tile is widened to x's dtype here, in registers.
        b = b.to(x_ptr.dtype.element_ty)
        if UPCAST_DOT:
            # Interpreter only (QUIRKS.bf16_dot_on_raw_bits); exact, bf16 products fit fp32.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if INPUT_PRECISION == "tf32x2":
            # b came from fp16/bf16, so it is exact in TF32. x = head + tail with the head
            # truncated to TF32's 10 mantissa bits (so the MMA reads it exactly) and the tail
            # exact in fp32; the tail's own TF32 rounding costs ~2^-21 relative. (An inf in x
            # gives NaN here: inf - inf.)
            a_head = (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
            acc = tl.dot(a - a_head, b, acc, input_precision="tf32")
            acc = tl.dot(a_head, b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        x_ptrs += step_x
        w_ptrs += step_w

    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n64 * stride_bn, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    mask_mn = mask_m[:, None] & mask_n[None, :]
    if HAS_RESIDUAL:
        r_ptrs = res_ptr + offs_m64[:, None] * stride_rm + offs_n64[None, :] * stride_rn
        acc += tl.load(r_ptrs, mask=mask_mn, other=0.0).to(tl.float32)
    if ROUND_BF16_OUT:
        acc = round_bf16_bits(acc)
    y_ptrs = y_ptr + offs_m64[:, None] * stride_ym + offs_n64[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_mn)


_fused_linear_tuned = triton.autotune(
    configs=_config.fused_matmul_configs(),
    key=_config.FUSED_MATMUL_KEY,
    prune_configs_by=None if _config.INTERPRETER else {
        "early_config_prune": _config.prune_fused_matmul_configs
    },
)(_fused_linear_kernel)


def _check_tensor(value, arg: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{_NAME}: `{arg}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_dtype(t: torch.Tensor, arg: str, allowed) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{_NAME}: `{arg}` has dtype {t.dtype}; expected one of {names}")


def _fp32_input_precision() -> str:
    # Follow torch.matmul: TF32 only when the user allowed it globally.
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """Return ``act(x @ weight.T + bias) + residual`` in x's dtype, accumulated in fp32.

    x: [M, K]; weight: [N, K] (nn.Linear layout); bias: [N] or None; residual: [M, N] or
    None; activation: one of :data:`ACTIVATIONS`. Any strides are accepted. See the module
    docstring for the dtype contract. Raises TypeError/ValueError naming the argument.
    No autograd here: the op registration in bigperf/ops owns the backward.
    """
    x = _check_tensor(x, "x")
    weight = _check_tensor(weight, "weight")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"{_NAME}: `activation` must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() != 2:
        raise ValueError(f"{_NAME}: `x` must be 2-D [M, K], got shape {tuple(x.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"{_NAME}: `weight` must be 2-D [N, K], got shape {tuple(weight.shape)}")
    _check_dtype(x, "x", _FLOAT_DTYPES)
    allowed_w = _FLOAT_DTYPES if x.dtype == torch.float32 else (x.dtype,)
    _check_dtype(weight, "weight", allowed_w)
    M, K = x.shape
    N, Kw = weight.shape
    if Kw != K:
        raise ValueError(
            f"{_NAME}: `weight` has shape {tuple(weight.shape)} but x is {tuple(x.shape)}; "
            f"weight must be [N, {K}]"
        )
    if bias is not None:
        bias = _check_tensor(bias, "bias")
        if bias.shape != (N,):
            raise ValueError(f"{_NAME}: `bias` must have shape ({N},), got {tuple(bias.shape)}")
        _check_dtype(bias, "bias", tuple(dict.fromkeys((torch.float32, x.dtype))))
    if residual is not None:
        residual = _check_tensor(residual, "residual")
        if residual.shape != (M, N):
            raise ValueError(f"{_NAME}: `residual` must have shape ({M}, {N}), got {tuple(residual.shape)}")
        _check_dtype(residual, "residual", (x.dtype,))
    if max(M, N, K) >= 2**31:
        # Row/column indices are int32 inside the kernel (only offsets are int64).
        raise ValueError(f"{_NAME}: `x`/`weight` dimensions must be < 2**31, got M={M}, N={N}, K={K}")
    for arg, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{_NAME}: `{arg}` is on {t.device} but `x` is on {x.device}")
    if not (x.device.type == "cuda" or (_config.INTERPRETER and x.device.type == "cpu")):
        raise ValueError(
            f"{_NAME}: `x` is on {x.device}; the Triton kernel needs a CUDA device "
            "(or a CPU tensor with TRITON_INTERPRET=1 set before triton is imported)"
        )

    y = torch.empty((M, N), device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return y

    upcast = QUIRKS.bf16_dot_on_raw_bits and x.dtype == torch.bfloat16
    round_out = QUIRKS.fp32_to_bf16_truncates and x.dtype == torch.bfloat16
    precision = _fp32_input_precision() if x.dtype == torch.float32 else "ieee"
    if precision == "ieee" and x.dtype == torch.float32 and weight.dtype != torch.float32:
        # A weight exact in TF32 keeps "highest" on tensor cores: two TF32 products (kernel).
        precision = "tf32x2"

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    args = (
        x, weight, bias, residual, y,
        M, N, K, _config.m_bucket(M),
        x.stride(0), x.stride(1),
        weight.stride(0), weight.stride(1),
        bias.stride(0) if bias is not None else 0,
        residual.stride(0) if residual is not None else 0,
        residual.stride(1) if residual is not None else 0,
        y.stride(0), y.stride(1),
    )
    meta = dict(
        HAS_BIAS=bias is not None,
        HAS_RESIDUAL=residual is not None,
        ACTIVATION=activation,
        INPUT_PRECISION=precision,
        UPCAST_DOT=upcast,
        ROUND_BF16_OUT=round_out,
    )
    if x.device.type == "cuda" and x.device.index != torch.cuda.current_device():
        # Triton launches on the current device; a tensor on another GPU needs it made
        # current (checked first: the context manager costs microseconds per decode step).
        with torch.cuda.device(x.device):
            _fused_linear_tuned[grid](*args, **meta)
    else:
        _fused_linear_tuned[grid](*args, **meta)
    return y


_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def aot_specs() -> list:
    """Variants for kernels/aot.py, specialised as the JIT does for contiguous, aligned tensors.

    Every GPU autotune config is compiled once in fp16 (it must fit shared memory on both
    targets); the dtype and epilogue variants use one large and one decode tile.
    """
    from .aot import KernelSpec

    def spec(name, cfg, x_dt, w_dt, *, bias=True, residual=True, activation="gelu_tanh",
             precision="ieee", w_transposed=False):
        kw = cfg.kwargs
        if x_dt == torch.float32 and precision == "ieee":
            tensor_core, operand = {"sm_80": None, "sm_90a": None}, None
        else:
            # wgmma needs a warpgroup (4 warps) per 64 rows; shorter tiles stay on mma.sync.
            tensor_core = {"sm_80": "mma", "sm_90a": "wgmma" if kw["BLOCK_M"] >= 64 else "mma"}
            operand = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "tf32"}[x_dt]
        sig = {
            "x_ptr": f"*{_TRITON_DTYPE[x_dt]}", "w_ptr": f"*{_TRITON_DTYPE[w_dt]}",
            "y_ptr": f"*{_TRITON_DTYPE[x_dt]}",
            "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32",
            "stride_xm": "i32", "stride_ym": "i32",
        }
        # A [K, N]-stored weight (GPT-2's Conv1D) arrives as a transposed view: unit stride
        # along N and a runtime K stride, which takes the int64 pointer-step path.
        w_unit, w_strided = ("stride_wn", "stride_wk") if w_transposed else ("stride_wk", "stride_wn")
        sig[w_strided] = "i32"
        const = dict(
            stride_xk=1, stride_yn=1, **{w_unit: 1},
            HAS_BIAS=bias, HAS_RESIDUAL=residual, ACTIVATION=activation,
            INPUT_PRECISION=precision, UPCAST_DOT=False, ROUND_BF16_OUT=False, **kw,
        )
        div16 = ["x_ptr", "w_ptr", "y_ptr", "N", "K", "M_BUCKET", "stride_xm", w_strided,
                 "stride_ym"]
        if bias:
            sig["bias_ptr"] = "*fp32"
            const["stride_bn"] = 1
            div16.append("bias_ptr")
        else:
            const.update(bias_ptr=None, stride_bn=0)
        if residual:
            sig.update(res_ptr=f"*{_TRITON_DTYPE[x_dt]}", stride_rm="i32")
            const["stride_rn"] = 1
            div16 += ["res_ptr", "stride_rm"]
        else:
            const.update(res_ptr=None, stride_rm=0, stride_rn=0)
        return KernelSpec(
            name=f"fused_matmul/{name}", fn=_fused_linear_kernel, signature=sig,
            constexprs=const, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            divisible_by_16=tuple(div16), tensor_core=tensor_core, mma_operand=operand,
        )

    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    big = _config.FUSED_MATMUL_LARGE_M[0]
    small = _config.FUSED_MATMUL_SMALL_M[0]
    # fp32 operands double the smem ring; 128x128x32 fits both targets where 128x256x64 does not.
    f32_cfg = _config.FUSED_MATMUL_LARGE_M[3]
    # Without tensor cores every product is an FMA in registers; a 64x64 tile keeps that
    # (and its compile time) small.
    f32_ieee_cfg = _config.FUSED_MATMUL_LARGE_M[-1]
    gpu_cfgs = (_config.FUSED_MATMUL_SMALL_M + _config.FUSED_MATMUL_MEDIUM_M
                + _config.FUSED_MATMUL_LARGE_M)
    specs = []
    for cfg in gpu_cfgs:
        kw = cfg.kwargs
        tag = f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}_w{cfg.num_warps}_s{cfg.num_stages}"
        specs.append(spec(f"fp16_{tag}", cfg, f16, f16, bias=False, residual=False,
                          activation="none"))
    # Full epilogue on the wgmma tile; each activation on the cheaper-to-compile decode tile.
    specs.append(spec("bf16_bias_res_gelu_tanh", big, bf16, bf16))
    for act in ACTIVATIONS:
        specs.append(spec(f"bf16_decode_bias_res_{act}", small, bf16, bf16, activation=act))
    specs += [
        spec("fp16_decode_res_gelu", small, f16, f16, bias=False, activation="gelu"),
        spec("fp16_wT_bias_gelu_tanh", big, f16, f16, residual=False, w_transposed=True),
        spec("bf16_decode_wT_bias_silu", small, bf16, bf16, residual=False, activation="silu",
             w_transposed=True),
        spec("fp32x_bf16w_tf32_bias_relu", f32_cfg, f32, bf16, residual=False,
             activation="relu", precision="tf32"),
        # What fp32 x with an fp16/bf16 W runs at "highest": two TF32 MMAs per k step.
        spec("fp32x_bf16w_tf32x2_bias_relu", f32_cfg, f32, bf16, residual=False,
             activation="relu", precision="tf32x2"),
        spec("fp32x_fp16w_tf32x2_decode_res", small, f32, f16, bias=False, activation="none",
             precision="tf32x2"),
        spec("fp32_ieee_bias", f32_ieee_cfg, f32, f32, residual=False, activation="none"),
        spec("fp32_tf32_res", f32_cfg, f32, f32, bias=False, activation="silu",
             precision="tf32"),
    ]
    return specs
