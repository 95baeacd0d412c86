"""Ahead-of-time variants of bigperf.kernels.sparse_matmul's kernels (kernels/aot.py).

Kept apart from the kernels so that neither file outgrows the size limit; kernels/aot.py
finds this module's ``aot_specs()`` like any kernel module's.
"""
from __future__ import annotations

import torch
import triton

from . import _config
from .sparse_matmul import (
    _REDUCE_BLOCK_M,
    _REDUCE_BLOCK_N,
    _block_sparse_linear_kernel,
    _sparse24_linear_kernel,
    _sparse24_split_reduce_kernel,
)

_TDT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_MMA_OPERAND = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "tf32"}


def _spec(fn, name, ptr_types, const, cfg, tensor_core, operand, not_div16):
    """A KernelSpec typing every argument ``const`` does not fix: ``*_ptr`` from
    ``ptr_types``, the rest i32, all but ``not_div16`` marked 16-divisible as the JIT marks
    aligned pointers, sizes and row strides."""
    from .aot import KernelSpec

    const = {**const, **cfg.kwargs}
    sig = {}
    for arg in fn.arg_names:
        if arg in const:
            continue
        sig[arg] = ptr_types[arg] if arg.endswith("_ptr") else "i32"
    return KernelSpec(
        name=f"sparse_matmul/{name}", fn=fn, signature=sig, constexprs=const,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        divisible_by_16=tuple(a for a in sig if a not in not_div16),
        tensor_core=tensor_core, mma_operand=operand)


def _tag(cfg) -> str:
    kw = cfg.kwargs
    dims = "x".join(str(kw[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in kw)
    return f"{dims}_w{cfg.num_warps}_s{cfg.num_stages}"


def aot_specs() -> list:
    """Variants for kernels/aot.py, specialised as the JIT does for contiguous tensors.

    Every GPU config of both kernels compiles once in fp16; dtypes, int8 values, epilogues
    and the CUDA-core paths use one decode tile each. The 2:4 phase dots are 16 deep at
    BLOCK_K = 128 and the decode tiles 16 rows tall, which Hopper runs on mma.sync (wgmma
    needs a 64-row warpgroup tile); the 64+-row tiles use wgmma there.
    """
    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32

    def s24(name, cfg, x_dt, v_kind, *, scale=False, bias=False, activation="none",
            split=False, mixed=False):
        dot_fp32 = x_dt == f32 or v_kind == "fp32" or mixed
        precision = "tf32" if mixed else "ieee"
        word = "*i32" if v_kind == "int8" else "*i64"
        ptrs = {"x_ptr": f"*{_TDT[x_dt]}", "v_ptr": word, "meta_ptr": "*u8",
                "scale_ptr": "*fp32", "bias_ptr": "*fp32",
                "y_ptr": "*fp32" if split else f"*{_TDT[x_dt]}"}
        const = dict(stride_xk=1, stride_vw=1, stride_mj=1, stride_yn=1, VALUES=v_kind,
                     HAS_SCALE=scale, HAS_BIAS=bias, ACTIVATION=activation, SPLIT_OUT=split,
                     DOT_FP32=dot_fp32, INPUT_PRECISION=precision, ROUND_BF16_OUT=False)
        const.update({} if scale else dict(scale_ptr=None))
        const.update(stride_sn=1 if scale else 0)
        const.update(stride_bn=1) if bias else const.update(bias_ptr=None, stride_bn=0)
        const.update({} if split else dict(stride_ys=0))
        if dot_fp32 and precision == "ieee":
            cores, operand = {"sm_80": None, "sm_90a": None}, None
        else:
            wide = cfg.kwargs["BLOCK_M"] >= 64
            cores = {"sm_80": "mma", "sm_90a": "wgmma" if wide else "mma"}
            operand = "tf32" if dot_fp32 else _MMA_OPERAND[x_dt]
        return _spec(_sparse24_linear_kernel, f"s24_{name}", ptrs, const, cfg, cores, operand,
                     ("M", "K_PER_SPLIT") if split else ("M",))

    def reduce(name, y_dt, *, scale, bias, activation):
        cfg = triton.Config({"BLOCK_M": _REDUCE_BLOCK_M, "BLOCK_N": _REDUCE_BLOCK_N},
                            num_warps=4, num_stages=1)
        ptrs = {"ws_ptr": "*fp32", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
                "y_ptr": f"*{_TDT[y_dt]}"}
        const = dict(stride_wn=1, stride_yn=1, HAS_SCALE=scale, HAS_BIAS=bias,
                     ACTIVATION=activation, ROUND_BF16_OUT=False)
        const.update(stride_sn=1) if scale else const.update(scale_ptr=None, stride_sn=0)
        const.update(stride_bn=1) if bias else const.update(bias_ptr=None, stride_bn=0)
        return _spec(_sparse24_split_reduce_kernel, f"s24_reduce_{name}", ptrs, const, cfg,
                     {"sm_80": None, "sm_90a": None}, None, ("M", "SPLITS"))

    def bsr(name, cfg, x_dt, v_dt, block, *, bias=False, activation="none"):
        bn, bk = block
        tile_n, tile_k, use_dot = _config.block_sparse_tiles(bn, bk)
        dot_fp32, precision = (True, "ieee") if f32 in (x_dt, v_dt) else (
            (True, "tf32") if x_dt != v_dt else (False, "ieee"))
        ptrs = {"x_ptr": f"*{_TDT[x_dt]}", "v_ptr": f"*{_TDT[v_dt]}", "col_ptr": "*i32",
                "row_ptr_ptr": "*i32", "bias_ptr": "*fp32", "y_ptr": f"*{_TDT[x_dt]}"}
        const = dict(stride_xk=1, stride_vk=1, stride_c=1, stride_r=1, stride_yn=1,
                     BN=bn, BK=bk, HAS_BIAS=bias, ACTIVATION=activation, USE_DOT=use_dot,
                     DOT_FP32=dot_fp32, INPUT_PRECISION=precision, ROUND_BF16_OUT=False,
                     TILE_N=tile_n, TILE_K=tile_k)
        const.update(stride_bn=1) if bias else const.update(bias_ptr=None, stride_bn=0)
        if not use_dot or (dot_fp32 and precision == "ieee"):
            cores, operand = {"sm_80": None, "sm_90a": None}, None
        else:
            wide = cfg.kwargs["BLOCK_M"] >= 64
            cores = {"sm_80": "mma", "sm_90a": "wgmma" if wide else "mma"}
            operand = "tf32" if dot_fp32 else _MMA_OPERAND[x_dt]
        not_div16 = ["M", "NNZ"] + ([] if bk % 16 == 0 else ["stride_vn"])
        return _spec(_block_sparse_linear_kernel, f"bsr_{name}", ptrs, const, cfg, cores,
                     operand, tuple(not_div16))

    small, fp32_tile = _config.SPARSE24_SMALL_M[0], _config.SPARSE24_SMALL_M[1]
    specs = [s24(f"fp16_{_tag(c)}", c, f16, "fp16") for c in
             _config.SPARSE24_SMALL_M + _config.SPARSE24_MEDIUM_M + _config.SPARSE24_LARGE_M]
    specs += [s24(f"split_fp16_{_tag(c)}", c, f16, "fp16", split=True)
              for c in _config.SPARSE24_SPLIT_K]
    # The activations are fused_matmul's helper, compiled in every form there; one here.
    specs.append(s24("bf16_decode_bias_gelu_tanh", small, bf16, "bf16", bias=True,
                     activation="gelu_tanh"))
    specs += [
        s24("bf16_int8_scale_bias_silu", small, bf16, "int8", scale=True, bias=True,
            activation="silu"),
        s24("split_fp16_int8", _config.SPARSE24_SPLIT_K[0], f16, "int8", split=True),
        s24("bf16_int8_large", _config.SPARSE24_LARGE_M[0], bf16, "int8", scale=True),
        s24("fp16x_bf16v_tf32", small, f16, "bf16", mixed=True),
        # fp32 IEEE dots are unrolled FMAs: the 128-deep decode tile keeps them (and their
        # compile time) moderate.
        s24("fp32_ieee_bias", fp32_tile, f32, "fp32", bias=True, activation="gelu"),
        s24("fp32x_bf16v_ieee", fp32_tile, f32, "bf16"),
        reduce("fp16_scale_bias_gelu_tanh", f16, scale=True, bias=True, activation="gelu_tanh"),
        reduce("bf16", bf16, scale=False, bias=False, activation="none"),
    ]
    specs += [bsr(f"fp16_16x16_{_tag(c)}", c, f16, f16, (16, 16))
              for c in _config.BLOCK_SPARSE_CONFIGS]
    decode, large = _config.BLOCK_SPARSE_CONFIGS[0], _config.BLOCK_SPARSE_CONFIGS[-1]
    specs += [
        bsr("bf16_32x32_bias_gelu", decode, bf16, bf16, (32, 32), bias=True, activation="gelu"),
        bsr("bf16_64x64_large_silu", large, bf16, bf16, (64, 64), bias=True, activation="silu"),
        bsr("fp16_256x128_decode", decode, f16, f16, (256, 128)),
        bsr("fp16x_bf16v_32x32_tf32", decode, f16, bf16, (32, 32)),
        bsr("fp32_16x16_ieee_relu", decode, f32, f32, (16, 16), bias=True, activation="relu"),
        bsr("fp16_4x4_cuda_cores", decode, f16, f16, (4, 4), bias=True, activation="relu"),
        bsr("bf16_8x32_cuda_cores", _config.BLOCK_SPARSE_CONFIGS[2], bf16, bf16, (8, 32)),
    ]
    return specs
