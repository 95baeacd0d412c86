"""Ahead-of-time variants of bigperf.kernels.int8_matmul's kernels (kernels/aot.py).

Kept apart from the kernels so that neither file outgrows the size limit; kernels/aot.py
finds this module's ``aot_specs()`` like any kernel module's.
"""
from __future__ import annotations

import torch
import triton

from . import _config
from .int8_matmul import (
    _QMAX,
    _REDUCE_BLOCK_M,
    _REDUCE_BLOCK_N,
    _int8_gemm_kernel,
    _int8_weight_linear_kernel,
    _quantize_rows_kernel,
    _split_k_reduce_kernel,
)

_MMA_OPERAND = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "tf32"}


def _spec(fn, name, ptr_types, const, cfg=None, *, operand=None, not_div16=("M",)):
    """A KernelSpec whose signature is every argument of ``fn`` that ``const`` does not fix:
    ``*_ptr`` typed from ``ptr_types``, the rest i32 and (but for ``not_div16``) marked
    16-divisible, as the JIT marks aligned pointers, sizes and row strides."""
    from .aot import KernelSpec

    if cfg is None:
        warps, stages, cores = 4, 1, {}
    else:
        const = {**const, **cfg.kwargs}
        warps, stages = cfg.num_warps, cfg.num_stages
        # wgmma needs a warpgroup (4 warps) per 64 rows; shorter tiles stay on mma.sync.
        cores = {"sm_80": operand and "mma",
                 "sm_90a": operand and ("wgmma" if cfg.kwargs["BLOCK_M"] >= 64 else "mma")}
    sig = {a: ptr_types[a] if a.endswith("_ptr") else "i32" for a in fn.arg_names if a not in const}
    return KernelSpec(name=f"int8_matmul/{name}", fn=fn, signature=sig, constexprs=const,
                      num_warps=warps, num_stages=stages,
                      divisible_by_16=tuple(a for a in sig if a not in not_div16),
                      tensor_core=cores, mma_operand=operand)


def aot_specs() -> list:
    """Variants specialised as the JIT does for contiguous, 16-byte aligned tensors.

    Every GPU autotune config is compiled once (it must fit shared memory on both
    targets); epilogue, dtype and quantisation variants use one large and one decode tile.
    """
    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    tdt = {f16: "fp16", bf16: "bf16", f32: "fp32"}

    def tile(cfg):
        kw = cfg.kwargs
        return f"{kw['BLOCK_M']}x{kw['BLOCK_N']}x{kw['BLOCK_K']}_w{cfg.num_warps}_s{cfg.num_stages}"

    def weight(name, cfg, x_dt, *, group=0, zero=False, bias=False, activation="none",
               split=False, precision="ieee"):
        if group:  # as prune_int8_weight_configs does
            cfg = triton.Config({**cfg.kwargs, "BLOCK_K": min(cfg.kwargs["BLOCK_K"], group)},
                                num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        ptrs = {"x_ptr": f"*{tdt[x_dt]}", "w_ptr": "*i8", "scale_ptr": "*fp32",
                "zero_ptr": "*i8", "bias_ptr": "*fp32",
                "y_ptr": "*fp32" if split else f"*{tdt[x_dt]}"}
        # A contiguous [N, G] scale / zero point: strides (G, 1), and G = 1 per channel.
        const = dict(stride_xk=1, stride_wk=1, stride_yn=1, stride_bn=1, stride_sg=1,
                     stride_zg=1, GROUP_SIZE=group, HAS_ZERO=zero, HAS_BIAS=bias,
                     ACTIVATION=activation, SPLIT_OUT=split, INPUT_PRECISION=precision,
                     UPCAST_DOT=False, ROUND_BF16_OUT=False)
        const.update({} if group else dict(stride_sn=1, stride_zn=1))
        const.update({} if zero else dict(zero_ptr=None, stride_zn=0, stride_zg=0))
        const.update({} if bias else dict(bias_ptr=None, stride_bn=0))
        const.update({} if split else dict(stride_ys=0))
        operand = None if (x_dt == f32 and precision == "ieee") else _MMA_OPERAND[x_dt]
        return _spec(_int8_weight_linear_kernel, f"weight_{name}", ptrs, const, cfg,
                     operand=operand)

    def gemm(name, cfg, y_dt, *, bias=False, activation="none", split=False):
        ptrs = {"x_ptr": "*i8", "w_ptr": "*i8", "x_scale_ptr": "*fp32", "w_scale_ptr": "*fp32",
                "bias_ptr": "*fp32", "y_ptr": "*i32" if split else f"*{tdt[y_dt]}"}
        const = dict(stride_xk=1, stride_wk=1, stride_xs=1, stride_ws=1, stride_yn=1,
                     stride_bn=1, HAS_BIAS=bias, ACTIVATION=activation, SPLIT_OUT=split,
                     ROUND_BF16_OUT=False)
        const.update({} if bias else dict(bias_ptr=None, stride_bn=0))
        const.update({} if split else dict(stride_ys=0))
        return _spec(_int8_gemm_kernel, f"gemm_{name}", ptrs, const, cfg, operand="s8")

    def reduce(name, y_dt, *, bias, activation, rescale=False):
        ptrs = {"ws_ptr": "*i32" if rescale else "*fp32", "x_scale_ptr": "*fp32", "w_scale_ptr": "*fp32",
                "bias_ptr": "*fp32", "y_ptr": f"*{tdt[y_dt]}"}
        const = dict(stride_wn=1, stride_yn=1, stride_bn=1, RESCALE=rescale, HAS_BIAS=bias,
                     ACTIVATION=activation, ROUND_BF16_OUT=False, BLOCK_M=_REDUCE_BLOCK_M,
                     BLOCK_N=_REDUCE_BLOCK_N)
        const.update(dict(stride_xs=1, stride_sn=1) if rescale else
                     dict(x_scale_ptr=None, w_scale_ptr=None, stride_xs=0, stride_sn=0))
        const.update({} if bias else dict(bias_ptr=None, stride_bn=0))
        return _spec(_split_k_reduce_kernel, f"split_k_reduce_{name}", ptrs, const,
                     not_div16=("M", "SPLITS"))

    def quantize(x_dt, act_bits=8):
        ptrs = {"x_ptr": f"*{tdt[x_dt]}", "q_ptr": "*i8", "scale_ptr": "*fp32"}
        const = dict(stride_xk=1, BLOCK_K=_config.INT8_QUANT_BLOCK_K, QMAX=_QMAX[act_bits], absmax_ptr=None,
                     GIVEN_ABSMAX=False)
        suffix = "" if act_bits == 8 else f"_a{act_bits}"
        return _spec(_quantize_rows_kernel, f"quantize_rows_{tdt[x_dt]}{suffix}", ptrs, const)

    large, small = _config.INT8_WEIGHT_LARGE_M, _config.INT8_WEIGHT_SMALL_M
    split_cfgs = _config.INT8_WEIGHT_SPLIT_K
    specs = [weight(f"fp16_{tile(c)}", c, f16)
             for c in small + _config.INT8_WEIGHT_MEDIUM_M + large]
    specs += [weight(f"split_fp16_g128_zp_{tile(c)}", c, f16, group=128, zero=True, split=True)
              for c in split_cfgs]
    specs += [
        weight("bf16_g128_zp_bias_gelu_tanh", large[0], bf16, group=128, zero=True, bias=True,
               activation="gelu_tanh"),
        weight("bf16_decode_zp_bias_silu", small[0], bf16, zero=True, bias=True, activation="silu"),
        weight("split_bf16_g32", split_cfgs[0], bf16, group=32, split=True),
        # fp32 IEEE products are FMAs in registers: a 64x64 tile keeps that small.
        weight("fp32_ieee_g64_bias_relu", large[-1], f32, group=64, bias=True, activation="relu"),
        weight("fp32_tf32_zp_gelu", large[-1], f32, zero=True, activation="gelu",
               precision="tf32"),
    ]
    specs += [gemm(f"fp16_{tile(c)}", c, f16) for c in _config.INT8_GEMM_CONFIGS]
    specs += [
        gemm("bf16_bias_gelu", _config.INT8_GEMM_CONFIGS[4], bf16, bias=True, activation="gelu"),
        gemm("fp32_decode_bias_relu", _config.INT8_GEMM_CONFIGS[0], f32, bias=True,
             activation="relu"),
        reduce("fp16_bias_silu", f16, bias=True, activation="silu"),
        reduce("bf16", bf16, bias=False, activation="none"),
        reduce("fp32_bias_gelu_tanh", f32, bias=True, activation="gelu_tanh"),
        gemm(f"split_{tile(split_cfgs[0])}", split_cfgs[0], bf16, split=True),
        reduce("rescale_bf16_bias_silu", bf16, bias=True, activation="silu", rescale=True),
    ]
    specs += [quantize(dt) for dt in (f16, bf16, f32)] + [quantize(f16, act_bits=7)]
    return specs
