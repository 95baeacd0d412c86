"""Tile configs, autotune keys and Triton-interpreter quirks for bigperf.kernels.

Everything a kernel module needs to decide *how* to launch lives here, so that the kernel
modules hold only kernel logic and the quirks of the CPU interpreter are listed in one place.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import triton

# Triton decides at @triton.jit decoration time whether a kernel is interpreted, so the
# flag has to be read at import, exactly as triton reads it; flipping the variable later
# in the same process changes nothing.
INTERPRETER: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class InterpreterQuirks:
    """Defects of the Triton CPU interpreter (observed with triton 3.9.0, see below).

    bf16_dot_on_raw_bits: the interpreter keeps bf16 tensors as numpy uint16 and its
        ``tl.dot`` runs ``np.matmul`` on those integers: a 16x16 bf16 product came out
        ~1.7e10 instead of ~0.9 (relative error 4e9). Upcasting both tiles to fp32 before
        ``tl.dot`` is exact (a bf16*bf16 product fits fp32) and gave 2e-8.
    fp32_to_bf16_truncates: ``.to(tl.bfloat16)`` drops the low 16 bits instead of rounding
        to nearest even (1 + 2^-8 + 2^-10 -> 1.0, 255.9 -> 255.0; torch gives 1.0078125 and
        256.0), also with ``fp_downcast_rounding="rtne"``. Rounding the fp32 bit pattern
        ourselves first makes the truncation exact.
    int8_to_bf16_reinterprets: ``int8 -> bf16`` ``.to()`` reinterprets the integer as bf16 bits
        (1 -> 9.2e-41, -1 -> nan, -128 -> -inf). Convert int8 -> fp32 -> bf16 instead.
    """

    bf16_dot_on_raw_bits: bool
    fp32_to_bf16_truncates: bool
    int8_to_bf16_reinterprets: bool


QUIRKS = InterpreterQuirks(
    bf16_dot_on_raw_bits=INTERPRETER,
    fp32_to_bf16_truncates=INTERPRETER,
    int8_to_bf16_reinterprets=INTERPRETER,
)

# ---------------------------------------------------------------------------------------
# Fused mixed-precision matmul (kernels/fused_matmul.py)
# ---------------------------------------------------------------------------------------

FUSED_MATMUL_ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")

# The autotuner caches one winner per key. Keying on M itself would re-tune for every batch
# size a serving loop sees; a power-of-two bucket keeps decode (M<=16), small-batch and
# prefill shapes apart while tuning each only once. Tensor dtypes are added to the key by
# the autotuner itself.
FUSED_MATMUL_KEY = ["M_BUCKET", "N", "K"]

M_BUCKET_MIN = 16
M_BUCKET_MAX = 4096


def m_bucket(m: int) -> int:
    """Power-of-two bucket of M used as autotune key, clamped to [16, 4096]."""
    b = M_BUCKET_MIN
    while b < m and b < M_BUCKET_MAX:
        b *= 2
    return b


def _cfg(bm, bn, bk, group_m, warps, stages):
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
        num_warps=warps,
        num_stages=stages,
    )


# Large M (prefill, training): BLOCK_M >= 64 with 4 or 8 warps so that on Hopper Triton can
# lower tl.dot to wgmma (one warpgroup per 64 rows); 128x256 and 256x128 tiles are the
# bandwidth-efficient shapes there, the smaller ones cover A100 and narrow N.
FUSED_MATMUL_LARGE_M = [
    _cfg(128, 256, 64, 8, 8, 3),
    _cfg(256, 128, 64, 8, 8, 3),
    _cfg(128, 128, 64, 8, 8, 4),
    _cfg(128, 128, 32, 8, 4, 4),
    _cfg(128, 64, 64, 8, 4, 4),
    _cfg(64, 128, 64, 8, 4, 4),
    _cfg(64, 64, 64, 8, 4, 5),
]

# Small batches (17..64 rows): a tall tile would mostly multiply padding. The 64-row
# tiles of FUSED_MATMUL_LARGE_M also serve the 64 bucket (see prune_fused_matmul_configs).
FUSED_MATMUL_MEDIUM_M = [
    _cfg(32, 64, 64, 8, 4, 4),
    _cfg(32, 128, 64, 8, 4, 4),
    _cfg(32, 256, 64, 8, 4, 3),
]

# Decode (M <= 16): the GEMM is a weight stream, so the tile is as short as tl.dot allows
# (16) and the parallelism comes from N and a deep K step that keeps many loads in flight.
FUSED_MATMUL_SMALL_M = [
    _cfg(16, 64, 128, 1, 4, 4),
    _cfg(16, 128, 64, 1, 4, 4),
    _cfg(16, 256, 64, 1, 4, 3),
    _cfg(16, 32, 256, 1, 2, 4),
]

# Under the interpreter the autotuner must get exactly one config (benchmarking needs a GPU
# driver). Small tiles keep numpy fast; GROUP_M=2 makes test grids with >=3 row blocks
# exercise the partial last group of the grouped ordering.
FUSED_MATMUL_INTERPRETER = [_cfg(16, 32, 32, 2, 4, 1)]

# Conservative shared-memory budget when the device cannot be asked (A100 opt-in limit).
_DEFAULT_SMEM_BYTES = 163 * 1024


def fused_matmul_configs() -> list:
    if INTERPRETER:
        return list(FUSED_MATMUL_INTERPRETER)
    return FUSED_MATMUL_SMALL_M + FUSED_MATMUL_MEDIUM_M + FUSED_MATMUL_LARGE_M


def _smem_estimate(cfg, x_bytes: int, w_bytes: int) -> int:
    kw = cfg.kwargs
    per_stage = kw["BLOCK_M"] * kw["BLOCK_K"] * x_bytes + kw["BLOCK_K"] * kw["BLOCK_N"] * w_bytes
    return per_stage * max(cfg.num_stages, 1)


def _device_smem_bytes(tensor) -> int:
    try:
        import torch

        props = torch.cuda.get_device_properties(tensor.device)
        return int(getattr(props, "shared_memory_per_block_optin", _DEFAULT_SMEM_BYTES))
    except Exception:  # no CUDA or an older torch: fall back to the A100 budget
        return _DEFAULT_SMEM_BYTES


def prune_fused_matmul_configs(configs, named_args, **kwargs):
    """Keep the configs of the M bucket, minus those whose operand ring cannot fit in smem.

    Benchmarking a decode shape with 256-row tiles only wastes tuning time, and a config that
    overflows shared memory fails at launch; both are cheaper to drop here.
    """
    bucket = named_args["M_BUCKET"]
    if bucket <= 16:
        wanted = [c for c in configs if c.kwargs["BLOCK_M"] == 16]
    elif bucket <= 64:
        wanted = [c for c in configs if 16 < c.kwargs["BLOCK_M"] <= bucket]
    else:
        wanted = [c for c in configs if c.kwargs["BLOCK_M"] >= 64]
    wanted = wanted or list(configs)
    x, w = named_args["x_ptr"], named_args["w_ptr"]
    budget = _device_smem_bytes(x)
    fits = [c for c in wanted if _smem_estimate(c, x.element_size(), w.element_size()) <= budget]
    if fits:
        return fits
    return [min(wanted, key=lambda c: _smem_estimate(c, x.element_size(), w.element_size()))]


# ---------------------------------------------------------------------------------------
# int8 linear (kernels/int8_matmul.py)
# ---------------------------------------------------------------------------------------

# The group sizes of bigperf/quant.py (GROUP_SIZES); repeated so that kernels do not import
# the layer-side package, and checked equal by the interpreter test.
INT8_GROUP_SIZES = (32, 64, 128, 256)

# GROUP_SIZE changes which BLOCK_K are legal (a K tile never straddles two scale groups)
# and HAS_ZERO the inner-loop work, so both split the tuning cache.
INT8_WEIGHT_KEY = ["M_BUCKET", "N", "K", "GROUP_SIZE", "HAS_ZERO"]
INT8_GEMM_KEY = ["M_BUCKET", "N", "K"]

# At or below this many rows the weight-only GEMM is a weight stream; its N tiles alone
# cannot fill an H200's 132 SMs for the common N of 4096, so K is split too.
INT8_SPLIT_K_MAX_M = 16
# Beyond 16 splits the fp32 partials (splits x M x N x 4 bytes, written and read back)
# start to rival the weight stream they were meant to spread: at M = 16 that is 1 KiB per
# output column against K bytes of int8 weights.
INT8_SPLIT_K_MAX = 16
# Waves of programs the split aims for: one wave leaves the SMs idle behind the slowest
# program, two let the scheduler even it out.
INT8_SPLIT_K_WAVES = 2
# Under the interpreter there is no device to ask; a small count makes the tests' small
# shapes take the split path with several splits.
INT8_INTERPRETER_SM_COUNT = 4
_A100_SM_COUNT = 108

# W8A16. The int8 W tile takes half the shared memory of an fp16 one, so deeper K steps
# fit; BLOCK_M >= 64 with 4+ warps keeps the Hopper wgmma path open for prefill.
INT8_WEIGHT_LARGE_M = [
    _cfg(128, 256, 64, 8, 8, 3),
    _cfg(128, 128, 64, 8, 4, 4),
    _cfg(128, 128, 128, 8, 8, 3),
    _cfg(64, 128, 128, 8, 4, 4),
    _cfg(64, 64, 128, 8, 4, 4),
]
INT8_WEIGHT_MEDIUM_M = [
    _cfg(32, 64, 128, 8, 4, 4),
    _cfg(32, 128, 128, 8, 4, 4),
]
# M <= 16 when N alone already fills the device (no split needed): as short a tile as
# tl.dot allows, deep K steps to keep many weight loads in flight.
INT8_WEIGHT_SMALL_M = [
    _cfg(16, 64, 128, 1, 4, 4),
    _cfg(16, 128, 128, 1, 4, 4),
    _cfg(16, 64, 256, 1, 4, 3),
]
# The split-K path: BLOCK_N is fixed because the launcher sizes the split (and its
# workspace) from the number of N tiles before the autotuner picks a config.
INT8_SPLIT_K_BLOCK_N = 64
INT8_WEIGHT_SPLIT_K = [
    _cfg(16, INT8_SPLIT_K_BLOCK_N, 128, 1, 4, 4),
    _cfg(16, INT8_SPLIT_K_BLOCK_N, 256, 1, 4, 3),
    _cfg(16, INT8_SPLIT_K_BLOCK_N, 64, 1, 2, 6),
]
# W8A8: int8 operands, int32 accumulation. mma/wgmma take K in steps of 32 for int8, so the
# K tile is twice the fp16 one for the same shared memory.
INT8_GEMM_CONFIGS = [
    _cfg(16, 64, 128, 1, 4, 4),
    _cfg(16, 128, 128, 1, 4, 4),
    _cfg(32, 64, 128, 8, 4, 4),
    _cfg(32, 128, 128, 8, 4, 4),
    _cfg(128, 256, 128, 8, 8, 3),
    _cfg(256, 128, 128, 8, 8, 3),
    _cfg(128, 128, 128, 8, 4, 4),
    _cfg(64, 128, 128, 8, 4, 4),
]
# One config under the interpreter (see FUSED_MATMUL_INTERPRETER); BLOCK_K = 32 is no
# larger than the smallest group, and the split path keeps the same BLOCK_N.
INT8_INTERPRETER = [_cfg(16, 32, 32, 2, 4, 1)]
# Elements of one row of x per step of the per-token quantisation kernel (one program
# per row; it reads the row twice: absmax, then quantise).
INT8_QUANT_BLOCK_K = 64 if INTERPRETER else 1024


def int8_weight_configs() -> list:
    if INTERPRETER:
        return list(INT8_INTERPRETER)
    return INT8_WEIGHT_SMALL_M + INT8_WEIGHT_MEDIUM_M + INT8_WEIGHT_LARGE_M


def int8_split_k_configs() -> list:
    if INTERPRETER:
        return list(INT8_INTERPRETER)
    return list(INT8_WEIGHT_SPLIT_K)


def int8_gemm_configs() -> list:
    if INTERPRETER:
        return list(INT8_INTERPRETER)
    return list(INT8_GEMM_CONFIGS)


def int8_split_k_block_n() -> int:
    return INT8_INTERPRETER[0].kwargs["BLOCK_N"] if INTERPRETER else INT8_SPLIT_K_BLOCK_N


def int8_split_k_align(group_size: int) -> int:
    """K granularity of one split: a multiple of every BLOCK_K the split configs may use
    and of the scale group, so no K tile straddles two splits or two groups."""
    block_k = max(c.kwargs["BLOCK_K"] for c in int8_split_k_configs())
    return max(block_k, group_size)  # all powers of two: the max is the lcm


_SM_COUNTS: dict = {}


def sm_count(tensor) -> int:
    if INTERPRETER and tensor.device.type == "cpu":
        return INT8_INTERPRETER_SM_COUNT
    index = tensor.device.index
    if index not in _SM_COUNTS:
        try:
            import torch

            props = torch.cuda.get_device_properties(tensor.device)
            _SM_COUNTS[index] = props.multi_processor_count
        except Exception:  # no CUDA runtime to ask: size for an A100
            _SM_COUNTS[index] = _A100_SM_COUNT
    return _SM_COUNTS[index]


def int8_split_k(m: int, n: int, k: int, group_size: int, sms: int) -> tuple[int, int]:
    """(splits, K per split) for the weight-only split-K path; splits == 1 means do not split."""
    align = int8_split_k_align(group_size)
    chunks = max(1, -(-k // align))
    block_m = int8_split_k_configs()[0].kwargs["BLOCK_M"]
    tiles = -(-m // block_m) * -(-n // int8_split_k_block_n())
    want = -(-INT8_SPLIT_K_WAVES * sms // max(tiles, 1))
    splits = max(1, min(INT8_SPLIT_K_MAX, chunks, want))
    per_split = -(-chunks // splits)
    # Re-derive the count from the chunks per split: 16 chunks in 5 splits of 4 would
    # leave the fifth split empty.
    return -(-chunks // per_split), per_split * align


def prune_int8_weight_configs(configs, named_args, **kwargs):
    """Cap BLOCK_K at the scale group (a K tile must not straddle two groups), then prune
    by M bucket and shared memory as for the fused matmul. The smem estimate counts the
    int8 tile only; on Hopper the widened copy of it also lives in shared memory, and a
    config that then does not fit is skipped by the autotuner (OutOfResources)."""
    group = kwargs.get("GROUP_SIZE", named_args.get("GROUP_SIZE", 0))
    if group:
        seen, capped = set(), []
        for c in configs:
            kw = {**c.kwargs, "BLOCK_K": min(c.kwargs["BLOCK_K"], group)}
            sig = (tuple(sorted(kw.items())), c.num_warps, c.num_stages)
            if sig not in seen:
                seen.add(sig)
                capped.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
        configs = capped
    return prune_fused_matmul_configs(configs, named_args, **kwargs)


# ---------------------------------------------------------------------------------------
# Sparse linear (kernels/sparse_matmul.py)
# ---------------------------------------------------------------------------------------

SPARSE24_KEY = ["M_BUCKET", "N", "K"]

# The 2:4 kernel feeds tl.dot 8 phase slices of BLOCK_K / 8 dense columns each; mma and
# wgmma need 16 along K, so every GPU config has BLOCK_K >= 128.
# Decode (M <= 16) is the case the kernel exists for: a compressed-weight stream. Wide K
# steps keep many word loads in flight per program.
SPARSE24_SMALL_M = [
    _cfg(16, 64, 256, 1, 4, 3),
    _cfg(16, 64, 128, 1, 4, 4),
    _cfg(16, 128, 128, 1, 4, 4),
    _cfg(16, 32, 256, 1, 2, 4),
]
SPARSE24_MEDIUM_M = [
    _cfg(32, 64, 128, 8, 4, 4),
    _cfg(32, 128, 128, 8, 4, 3),
]
# Prefill: correct and tensor-core backed, but a dense GEMM (or mma.sp) is the better
# tool there; these tiles only keep the kernel reasonable when it is chosen anyway.
SPARSE24_LARGE_M = [
    _cfg(64, 128, 128, 8, 4, 3),
    _cfg(128, 128, 128, 8, 8, 3),
    _cfg(128, 64, 128, 8, 4, 3),
]
# Split-K as for the int8 weight-only GEMM: a fixed BLOCK_N because the launcher sizes
# the split from the number of N tiles before the autotuner picks a config.
SPARSE24_SPLIT_K_MAX_M = 16
SPARSE24_SPLIT_K_MAX = 16
SPARSE24_SPLIT_K_WAVES = 2
SPARSE24_SPLIT_K_BLOCK_N = 64
SPARSE24_SPLIT_K = [
    _cfg(16, SPARSE24_SPLIT_K_BLOCK_N, 128, 1, 4, 4),
    _cfg(16, SPARSE24_SPLIT_K_BLOCK_N, 256, 1, 4, 3),
]
# One config under the interpreter (see FUSED_MATMUL_INTERPRETER). BLOCK_K = 32 is four
# octets per step, so the tests' K of 40..200 take several steps and a partial last one.
SPARSE24_INTERPRETER = [_cfg(16, 32, 32, 2, 4, 1)]


def sparse24_configs() -> list:
    if INTERPRETER:
        return list(SPARSE24_INTERPRETER)
    return SPARSE24_SMALL_M + SPARSE24_MEDIUM_M + SPARSE24_LARGE_M


def sparse24_split_k_configs() -> list:
    if INTERPRETER:
        return list(SPARSE24_INTERPRETER)
    return list(SPARSE24_SPLIT_K)


def sparse24_split_k(m: int, n: int, k: int, sms: int) -> tuple[int, int]:
    """(splits, K per split) for the 2:4 kernel; (1, k) means do not split.

    K per split is a multiple of every split config's BLOCK_K (all powers of two), so no
    K tile straddles two splits."""
    if m > SPARSE24_SPLIT_K_MAX_M:
        return 1, k
    configs = sparse24_split_k_configs()
    align = max(c.kwargs["BLOCK_K"] for c in configs)
    chunks = max(1, -(-k // align))
    tiles = -(-m // 16) * -(-n // configs[0].kwargs["BLOCK_N"])
    want = -(-SPARSE24_SPLIT_K_WAVES * sms // max(tiles, 1))
    splits = max(1, min(SPARSE24_SPLIT_K_MAX, chunks, want))
    per_split = -(-chunks // splits)
    splits = -(-chunks // per_split)
    return (splits, per_split * align) if splits > 1 else (1, k)


def _configs_for_m_bucket(configs, bucket: int) -> list:
    if bucket <= 16:
        wanted = [c for c in configs if c.kwargs["BLOCK_M"] == 16]
    elif bucket <= 64:
        wanted = [c for c in configs if 16 < c.kwargs["BLOCK_M"] <= bucket]
    else:
        wanted = [c for c in configs if c.kwargs["BLOCK_M"] >= 64]
    return wanted or list(configs)


def prune_sparse24_configs(configs, named_args, **kwargs):
    """Only the configs of the M bucket (tests/kernels/test_aot_compile.py checks that
    every config fits shared memory on sm_80 and sm_90a)."""
    return _configs_for_m_bucket(configs, named_args["M_BUCKET"])


# Block-sparse: the N and K tiles follow from the block shape (block_sparse_tiles), so
# only the row tile and the launch shape are tuned.
BLOCK_SPARSE_KEY = ["M_BUCKET", "N", "K", "BN", "BK"]


def _bsr_cfg(bm, warps, stages):
    return triton.Config({"BLOCK_M": bm}, num_warps=warps, num_stages=stages)


BLOCK_SPARSE_CONFIGS = [
    _bsr_cfg(16, 4, 3),
    _bsr_cfg(16, 2, 4),
    _bsr_cfg(32, 4, 3),
    _bsr_cfg(64, 4, 3),
    _bsr_cfg(128, 8, 3),
]
BLOCK_SPARSE_INTERPRETER = [_bsr_cfg(16, 4, 1)]
# Below this along either block dimension tl.dot cannot take the block (mma/wgmma need 16).
BLOCK_SPARSE_MIN_DOT = 16
# Tile caps: a 128x64 fp16 block tile plus its x tile stay well inside shared memory at
# 3 stages; the CUDA-core path keeps its [BLOCK_M, TILE_K, TILE_N] fp32 product near 8k
# elements (BLOCK_M <= 32, see prune_block_sparse_configs) so it stays in registers.
BLOCK_SPARSE_MAX_TILE_N = 128
BLOCK_SPARSE_MAX_TILE_K = 64
BLOCK_SPARSE_SMALL_MAX_TILE_N = 32
BLOCK_SPARSE_SMALL_TILE_NK = 256


def block_sparse_configs() -> list:
    if INTERPRETER:
        return list(BLOCK_SPARSE_INTERPRETER)
    return list(BLOCK_SPARSE_CONFIGS)


def block_sparse_tiles(bn: int, bk: int) -> tuple[int, int, bool]:
    """(TILE_N, TILE_K, USE_DOT) for a (bn, bk) block: power-of-two tiles covering the
    block (masked where it is not a power of two), capped as above."""
    use_dot = bn >= BLOCK_SPARSE_MIN_DOT and bk >= BLOCK_SPARSE_MIN_DOT
    if use_dot:
        return (min(triton.next_power_of_2(bn), BLOCK_SPARSE_MAX_TILE_N),
                min(triton.next_power_of_2(bk), BLOCK_SPARSE_MAX_TILE_K), True)
    tile_n = min(triton.next_power_of_2(bn), BLOCK_SPARSE_SMALL_MAX_TILE_N)
    tile_k = min(triton.next_power_of_2(bk), max(1, BLOCK_SPARSE_SMALL_TILE_NK // tile_n))
    return tile_n, tile_k, False


def prune_block_sparse_configs(configs, named_args, **kwargs):
    wanted = _configs_for_m_bucket(configs, named_args["M_BUCKET"])
    if not kwargs.get("USE_DOT", named_args.get("USE_DOT", True)):
        wanted = [c for c in wanted if c.kwargs["BLOCK_M"] <= 32] or [
            min(configs, key=lambda c: c.kwargs["BLOCK_M"])]
    return wanted
