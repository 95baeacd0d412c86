"""The CPU sparse kernels (bigperf._C.sparse24_linear / block_sparse_linear), for every ISA
path compiled into the module, through the ops under use_backend("cpu") + use_cpu_isa and
directly on raw pointers. The oracle is float64 math on the pruned dense weight; compiled
paths this CPU cannot execute are skipped with the reason, and the AVX-512 unit is also
checked under SIMDe emulation against the scalar path (last test)."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import bigperf
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.sparse_linear import block_sparse_linear, sparse24_linear
from bigperf.sparsity import (
    block_mask,
    nm_mask,
    pack_24,
    pack_24_int8,
    pack_bsr,
    unpack_24,
    unpack_bsr,
)
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error

C = pytest.importorskip("bigperf._C", reason="bigperf._C is not built")
if not hasattr(C, "sparse24_linear"):
    pytest.skip("bigperf._C was built without the sparse kernels (rebuild the package)", allow_module_level=True)

CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
VALUE_TYPES = ("f32", "f16", "bf16", "int8")
VALUE_DTYPE = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def _isa_params():
    runnable = set(C.runnable_isas())
    missing = ", ".join(sorted(k for k, v in C.cpu_features().items() if not v)) or "unknown"
    return [pytest.param(isa, id=isa) if isa in runnable else
            pytest.param(isa, id=isa, marks=pytest.mark.skip(
                reason=f"ISA path '{isa}' is compiled but this CPU cannot run it (missing: {missing})"))
            for isa in C.compiled_isas()]


ISAS = _isa_params()
RUNNABLE = C.runnable_isas()


def _tol(dtype):
    return max(TOLERANCE[dtype], 1e-5)


def _pruned24(n, k, seed, sparse_groups=True):
    """A 2:4 weight; with sparse_groups some groups keep fewer than two non-zeros."""
    w = random_tensor(n, k, seed=seed, scale=k ** -0.5)
    w = w * nm_mask(w)
    if sparse_groups:
        w[torch.rand(n, k, generator=torch.Generator().manual_seed(seed + 1)) < 0.1] = 0
    return w


def _pack24(w, vt):
    return pack_24_int8(w) if vt == "int8" else pack_24(w.to(VALUE_DTYPE[vt]))


@functools.cache
def _packed24(n, k, vt, seed, sparse_groups=True):
    """Packed weights and their dense form, shared by the ISA variants of a test (read only)."""
    p = _pack24(_pruned24(n, k, seed, sparse_groups), vt)
    return p, _dense24(p)


def _dense24(p):
    return unpack_24(p.values, p.meta, p.scale, torch.float32)


def _run24(isa, x, p, bias=None, activation="none"):
    with bigperf.use_backend("cpu"), bigperf.use_cpu_isa(isa):
        return sparse24_linear(x, p.values, p.meta, p.scale, bias, activation)


def _runbsr(isa, x, p, bias=None, activation="none"):
    with bigperf.use_backend("cpu"), bigperf.use_cpu_isa(isa):
        return block_sparse_linear(x, p.values, p.col_indices, p.row_ptr, bias, activation)


def _check(out, ref, dtype):
    assert out.dtype == dtype and not torch.isnan(out).any(), "NaN in the output: an element was not written"
    err = rel_error(out, ref)
    assert err <= _tol(dtype), f"relative Frobenius error {err:.3g} > {_tol(dtype):.1g}"


# ----------------------------------------------------------------------------- 2:4

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("vt", VALUE_TYPES)
@pytest.mark.parametrize("x_dtype", FLOATS, ids=lambda d: "x_" + str(d)[6:])
def test_sparse24_dtypes_and_activations(isa, x_dtype, vt, activation):
    # K = 136: two whole 64-element steps and a tail of one metadata byte.
    n, k = 40, 136
    p = _pack24(_pruned24(n, k, seed=1), vt)
    x, b = random_tensor(3, k, dtype=x_dtype, seed=2, scale=2.0), random_tensor(n, seed=3)
    out = _run24(isa, x, p, b, activation)
    _check(out, fused_linear_fp64(x, _dense24(p), b, None, activation), x_dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("vt", ["bf16", "int8", "f32"])
@pytest.mark.parametrize("m", [1, 3, 17, 33])
@pytest.mark.parametrize("n,k", [(77, 72), (130, 264), (5, 8), (300, 1024)])
def test_sparse24_shapes(isa, vt, m, n, k):
    p, dense = _packed24(n, k, vt, seed=4)
    x = random_tensor(m, k, seed=5)
    _check(_run24(isa, x, p), fused_linear_fp64(x, dense), torch.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("vt", VALUE_TYPES)
def test_sparse24_gemv_large(isa, vt):
    """The decode shape's code path (threads over N, many tiles) on a smaller N."""
    p, dense = _packed24(600, 4096, vt, seed=6, sparse_groups=False)
    x = random_tensor(1, 4096, seed=7)
    _check(_run24(isa, x, p), fused_linear_fp64(x, dense), torch.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("vt", ["bf16", "int8"])
def test_sparse24_strided_x_and_poisoned_output(isa, vt):
    m, n, k = 5, 70, 200
    p = _pack24(_pruned24(n, k, seed=8), vt)
    x = random_tensor(m, k + 24, seed=9)[:, :k]  # row stride k + 24
    b = random_tensor(n, seed=10)
    _check(_run24(isa, x, p, b, "silu"), fused_linear_fp64(x, _dense24(p), b, None, "silu"), torch.float32)
    # Direct call into a NaN-poisoned output with padded rows: every element of [m, n] is
    # written and nothing beyond it.
    wide = torch.full((m, n + 3), float("nan"))
    code = 3 if vt == "int8" else CODE[p.values.dtype]
    C.sparse24_linear(isa, x.data_ptr(), x.stride(0), 0, p.values.data_ptr(), p.values.stride(0), code,
                      p.meta.data_ptr(), p.meta.stride(0), p.scale.data_ptr() if p.scale is not None else 0,
                      b.data_ptr(), wide.data_ptr(), wide.stride(0), m, n, k, ACTIVATIONS.index("silu"), 2)
    _check(wide[:, :n], fused_linear_fp64(x, _dense24(p), b, None, "silu"), torch.float32)
    assert torch.isnan(wide[:, n:]).all(), "the kernel wrote past the end of an output row"


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("m", [1, 3])  # the M = 1 tile and the paired-rows tile of M > 1
def test_sparse24_negative_control(isa, m):
    p = pack_24(_pruned24(16, 64, seed=11).bfloat16())
    x = random_tensor(m, 64, seed=12)
    before = _run24(isa, x, p)
    p.values[7, 13] += 1.0
    after = _run24(isa, x, p)
    changed = sorted({c for _, c in (after != before).nonzero().tolist()})
    assert changed == [7], f"changing one value of row 7 changed output columns {changed}"


# ----------------------------------------------------------------------------- 2:4, lane layout

S24_LANES_KERNELS = pytest.mark.parametrize(
    "kernel", ["sparse24_lanes_linear", "sparse24_lanes_linear_panel"], ids=["dot", "panel"])


def _lanes_call(isa, x, layout, bias, activation, out, kernel="sparse24_lanes_linear"):
    """bigperf._C.sparse24_lanes_linear (or its panel form, `kernel`) on raw pointers into
    `out` (row stride honoured)."""
    code = 3 if layout.values.dtype == torch.int8 else CODE[layout.values.dtype]
    m, n, k = x.shape[0], layout.n, layout.k
    getattr(C, kernel)(isa, x.data_ptr(), x.stride(0), CODE[x.dtype], layout.values.data_ptr(), code,
                            layout.meta.data_ptr(), layout.scale.data_ptr() if layout.scale is not None else 0,
                            bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, n, k,
                            ACTIVATIONS.index(activation), 2)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("vt", VALUE_TYPES)
@pytest.mark.parametrize("x_dtype", FLOATS, ids=lambda d: "x_" + str(d)[6:])
@pytest.mark.parametrize("m,n,k", [(1, 1, 8), (1, 17, 64), (3, 33, 72), (4, 48, 264), (5, 130, 136),
                                   (17, 40, 128), (2, 300, 4096), (200, 33, 264)])
@S24_LANES_KERNELS
def test_sparse24_lanes_kernel(isa, vt, x_dtype, m, n, k, kernel):
    """The lane-layout kernel (both forms) against float64 on the pruned weight: N not a
    multiple of 16 (a partial last block), every x-row tile (1-4, 16-row passes; panel form:
    blocks of 48 or 96 rows, tasks of 192, K slices of 64), strided x, and a NaN-poisoned
    output wider than N that must stay untouched past N."""
    from bigperf.formats.sparse24_lanes import pack_24_lanes

    p, dense = _packed24(n, k, vt, seed=20)
    layout = pack_24_lanes(p.values, p.meta, p.scale)
    x = random_tensor(m, k + 8, dtype=x_dtype, seed=21, scale=2.0)[:, :k]
    b = random_tensor(n, seed=22) if (m + n) % 2 else None
    activation = ACTIVATIONS[(m + k) % len(ACTIVATIONS)]
    wide = torch.full((m, n + 5), float("nan"), dtype=x_dtype)
    _lanes_call(isa, x, layout, b, activation, wide, kernel)
    _check(wide[:, :n], fused_linear_fp64(x, dense, b, None, activation), x_dtype)
    assert torch.isnan(wide[:, n:]).all(), "the kernel wrote past the end of an output row"


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("vt", ["bf16", "int8"])
@pytest.mark.parametrize("m", [1, 2, 5])
@S24_LANES_KERNELS
def test_sparse24_lanes_negative_control(isa, vt, m, kernel):
    """One changed value moves exactly its own output column (lane and block bookkeeping)."""
    from bigperf.formats.sparse24_lanes import pack_24_lanes

    p = _pack24(_pruned24(40, 64, seed=23, sparse_groups=False), vt)
    x = random_tensor(m, 64, seed=24)
    outs = []
    for bump in (False, True):
        values = p.values.clone()
        if bump:
            values[21, 13] += 1 if vt == "int8" else 1.0
        layout = pack_24_lanes(values, p.meta, p.scale)
        out = torch.empty(m, 40)
        _lanes_call(isa, x, layout, None, "none", out, kernel)
        outs.append(out)
    changed = sorted({c for _, c in (outs[1] != outs[0]).nonzero().tolist()})
    assert changed == [21], f"changing one value of row 21 changed output columns {changed}"


@S24_LANES_KERNELS
def test_sparse24_lanes_binding_refuses_bad_arguments(kernel):
    from bigperf.formats.sparse24_lanes import pack_24_lanes

    p = pack_24(_pruned24(16, 64, seed=25).bfloat16())
    layout = pack_24_lanes(p.values, p.meta)
    x, out = random_tensor(1, 64), torch.empty(1, 16)
    args = dict(isa="scalar", x=x.data_ptr(), x_row_stride=64, x_dtype=0, values=layout.values.data_ptr(),
                values_dtype=2, meta=layout.meta.data_ptr(), scale=0, bias=0, out=out.data_ptr(), out_row_stride=16,
                M=1, N=16, K=64, act=0, num_threads=1)
    for change, needle in [({"K": 60}, "multiple of 8"), ({"values_dtype": 7}, "values_dtype"),
                           ({"values_dtype": 3}, "scale"), ({"isa": "sse9"}, "isa"), ({"act": 9}, "act"),
                           ({"out": 0}, "out"), ({"x_row_stride": 10, "M": 2}, "x_row_stride")]:
        with pytest.raises(ValueError, match=needle):
            getattr(C, kernel)(**{**args, **change})


# ----------------------------------------------------------------------------- BSR

def _pruned_bsr(n, k, block, density, seed, empty_rows=()):
    w = random_tensor(n, k, seed=seed, scale=k ** -0.5)
    w = w * block_mask(w, block, density)
    for r in empty_rows:  # block rows with no stored block at all
        w[r * block[0]:(r + 1) * block[0]] = 0
    return w


def _dense_bsr(p, k):
    return unpack_bsr(p.values.float(), p.col_indices, p.row_ptr, k)


BLOCKS = [(16, 16), (8, 32), (32, 8), (4, 4), (3, 12), (5, 2)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("v_dtype", FLOATS, ids=lambda d: "v_" + str(d)[6:])
def test_block_sparse_blocks_and_densities(isa, block, density, v_dtype):
    bn, bk = block
    n, k = 12 * bn, 16 * bk
    empty = (1, 5) if density < 1 else ()
    p = pack_bsr(_pruned_bsr(n, k, block, density, seed=13, empty_rows=empty).to(v_dtype), block)
    if empty:
        assert (p.row_ptr[2] == p.row_ptr[1]) and (p.row_ptr[6] == p.row_ptr[5])
    x, b = random_tensor(3, k, seed=14), random_tensor(n, seed=15)
    out = _runbsr(isa, x, p, b, "gelu")
    _check(out, fused_linear_fp64(x, _dense_bsr(p, k), b, None, "gelu"), torch.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("x_dtype", FLOATS, ids=lambda d: "x_" + str(d)[6:])
def test_block_sparse_x_dtypes_and_activations(isa, x_dtype, activation):
    block = (8, 16)
    p = pack_bsr(_pruned_bsr(48, 96, block, 0.5, seed=16).bfloat16(), block)
    x, b = random_tensor(2, 96, dtype=x_dtype, seed=17, scale=2.0), random_tensor(48, seed=18)
    out = _runbsr(isa, x, p, b, activation)
    _check(out, fused_linear_fp64(x, _dense_bsr(p, 96), b, None, activation), x_dtype)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 3, 17, 33])
@pytest.mark.parametrize("block", [(16, 16), (4, 4)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_block_sparse_rows_and_threads(isa, m, block):
    n, k = 36 * 4 if block == (4, 4) else 144, 512  # N not a multiple of 16 for 4x4 blocks
    p = pack_bsr(_pruned_bsr(n, k, block, 0.3, seed=19), block)
    x = random_tensor(m, k, seed=20)
    _check(_runbsr(isa, x, p), fused_linear_fp64(x, _dense_bsr(p, k)), torch.float32)


@pytest.mark.parametrize("isa", ISAS)
def test_block_sparse_strided_x_and_poisoned_output(isa):
    m, n, k, block = 4, 64, 160, (16, 16)
    p = pack_bsr(_pruned_bsr(n, k, block, 0.4, seed=21, empty_rows=(2,)), block)
    x = random_tensor(m, k + 8, seed=22)[:, :k]
    b = random_tensor(n, seed=23)
    _check(_runbsr(isa, x, p, b, "relu"), fused_linear_fp64(x, _dense_bsr(p, k), b, None, "relu"), torch.float32)
    wide = torch.full((m, n + 5), float("nan"))
    C.block_sparse_linear(isa, x.data_ptr(), x.stride(0), 0, p.values.data_ptr(), 0, 16, 16,
                          p.col_indices.data_ptr(), p.row_ptr.data_ptr(), p.values.shape[0], b.data_ptr(),
                          wide.data_ptr(), wide.stride(0), m, n, k, ACTIVATIONS.index("relu"), 2)
    _check(wide[:, :n], fused_linear_fp64(x, _dense_bsr(p, k), b, None, "relu"), torch.float32)
    assert torch.isnan(wide[:, n:]).all(), "the kernel wrote past the end of an output row"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("block", [(16, 16), (32, 16), (16, 32), (32, 32), (48, 16), (16, 48)],
                         ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16], ids=lambda d: "x_" + str(d)[6:])
def test_block_sparse_one_row_bf16(isa, block, x_dtype):
    """M = 1 with bf16 blocks: on AVX2 the paired-rows kernel (rows i and i + 8 of a block
    share an accumulator) for bn % 16 == 0 and bk in (16, 32); 16x48 takes the generic
    path. Large enough for several threads and work items, with empty block rows."""
    bn = block[0]
    n, k = 40 * bn, 1152  # K divisible by every block width here
    p = pack_bsr(_pruned_bsr(n, k, block, 0.3, seed=30, empty_rows=(0, 7, 39)).bfloat16(), block)
    x, b = random_tensor(1, k, dtype=x_dtype, seed=31), random_tensor(n, seed=32)
    out = _runbsr(isa, x, p, b, "gelu")
    _check(out, fused_linear_fp64(x, _dense_bsr(p, k), b, None, "gelu"), x_dtype)


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("row", [0, 7, 8, 15, 16, 31])
def test_block_sparse_one_row_bf16_negative_control(isa, row):
    """A changed value in row `row` of a stored block changes that output alone: rows i
    and i + 8 share an accumulator's two halves in the paired-rows kernel."""
    block = (32, 16)
    p = pack_bsr(_pruned_bsr(64, 128, block, 0.5, seed=33).bfloat16(), block)
    x = random_tensor(1, 128, seed=34)
    before = _runbsr(isa, x, p)
    p.values[1, row, 5] += 1.0  # block 1 lies in block row 0 (each block row keeps 4 blocks)
    after = _runbsr(isa, x, p)
    changed = (after != before).flatten().nonzero().flatten().tolist()
    assert changed == [row], f"changing one value of row {row} changed outputs {changed}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("m,v_dtype", [(1, torch.bfloat16), (3, torch.float32)], ids=["m1_bf16", "m3_f32"])
def test_block_sparse_thread_counts(isa, threads, m, v_dtype):
    """Chunks of block rows from a shared counter, for thread counts above and below the cores."""
    n, k, block = 1024, 1024, (16, 16)
    p = pack_bsr(_pruned_bsr(n, k, block, 0.3, seed=35, empty_rows=(3,)).to(v_dtype), block)
    x = random_tensor(m, k, seed=36)
    out = torch.full((m, n), float("nan"))
    C.block_sparse_linear(isa, x.data_ptr(), k, 0, p.values.data_ptr(), CODE[v_dtype], 16, 16,
                          p.col_indices.data_ptr(), p.row_ptr.data_ptr(), p.values.shape[0], 0,
                          out.data_ptr(), n, m, n, k, 0, threads)
    _check(out, fused_linear_fp64(x, _dense_bsr(p, k)), torch.float32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("m", [1, 4])
def test_sparse24_thread_counts(isa, threads, m):
    """Work items of output columns from a shared counter, N not a multiple of an item."""
    n, k = 1000, 512
    p, dense = _packed24(n, k, "bf16", seed=37)
    x = random_tensor(m, k, seed=38)
    out = torch.full((m, n), float("nan"))
    C.sparse24_linear(isa, x.data_ptr(), k, 0, p.values.data_ptr(), p.values.stride(0), CODE[torch.bfloat16],
                      p.meta.data_ptr(), p.meta.stride(0), 0, 0, out.data_ptr(), n, m, n, k, 0, threads)
    _check(out, fused_linear_fp64(x, dense), torch.float32)


# ----------------------------------------------------------------------------- bad input

def _bsr_call(col_indices_t=None, row_ptr_t=None, **over):
    """Direct block_sparse_linear call on a valid 32x64 problem, with overrides; returns
    (out, the float64 result of the valid problem). out starts NaN-poisoned."""
    block = (8, 16)
    p = pack_bsr(_pruned_bsr(32, 64, block, 0.5, seed=24), block)
    x, out = random_tensor(2, 64), torch.full((2, 32), float("nan"))
    ci = p.col_indices if col_indices_t is None else col_indices_t
    rp = p.row_ptr if row_ptr_t is None else row_ptr_t
    args = {"isa": RUNNABLE[0], "x": x.data_ptr(), "x_row_stride": 64, "x_dtype": 0, "values": p.values.data_ptr(),
            "values_dtype": 0, "bn": 8, "bk": 16, "col_indices": ci.data_ptr(), "row_ptr": rp.data_ptr(),
            "nnz": p.values.shape[0], "bias": 0, "out": out.data_ptr(), "out_row_stride": 32, "M": 2, "N": 32,
            "K": 64, "act": 0, "num_threads": 1}
    args.update(over)
    keep = (p, x, out, ci, rp)  # noqa: F841 - the pointers must stay valid during the call
    C.block_sparse_linear(**args)
    return out, fused_linear_fp64(x, _dense_bsr(p, 64))


def _corrupt(kind):
    p = pack_bsr(_pruned_bsr(32, 64, (8, 16), 0.5, seed=24), (8, 16))
    ci, rp = p.col_indices.clone(), p.row_ptr.clone()
    if kind == "col_high":
        ci[3] = 4  # K / bk = 4 block columns
    elif kind == "col_negative":
        ci[0] = -1
    elif kind == "row_ptr_start":
        rp[0] = 1
    elif kind == "row_ptr_decreasing":
        rp[2] = rp[1] - 1
    elif kind == "row_ptr_end":
        rp[-1] += 1
    return {"col_indices_t": ci, "row_ptr_t": rp}


@pytest.mark.parametrize("kind,match", [("col_high", "col_indices"), ("col_negative", "col_indices"),
                                        ("row_ptr_start", "row_ptr"), ("row_ptr_decreasing", "row_ptr"),
                                        ("row_ptr_end", "row_ptr")])
def test_corrupt_bsr_indices_are_refused(kind, match):
    with pytest.raises(ValueError, match=f"bigperf._C.block_sparse_linear: argument '{match}'"):
        _bsr_call(**_corrupt(kind))


@pytest.mark.parametrize("over,match", [
    ({"N": 30}, "'N'"), ({"K": 60}, "'K'"), ({"bn": 0}, "'bn'"), ({"nnz": -1}, "'nnz'"),
    ({"M": -1}, "'M'"), ({"values_dtype": 3}, "'values_dtype'"), ({"x_dtype": 7}, "'x_dtype'"),
    ({"act": 9}, "'act'"), ({"num_threads": 0}, "'num_threads'"), ({"x_row_stride": 10}, "'x_row_stride'"),
    ({"out_row_stride": 8}, "'out_row_stride'"), ({"out": 0}, "'out'"), ({"row_ptr": 0}, "'row_ptr'"),
    ({"col_indices": 0}, "'values' or 'col_indices'"), ({"isa": "neon"}, "'isa'")])
def test_bad_bsr_sizes_are_refused(over, match):
    with pytest.raises(ValueError, match=f"bigperf._C.block_sparse_linear: argument {match}"):
        _bsr_call(**over)


def _s24_call(**over):
    """Direct sparse24_linear call on a valid 16x64 int8 problem, with overrides; returns
    (out, the float64 result of the valid problem). out starts NaN-poisoned."""
    p = pack_24_int8(_pruned24(16, 64, seed=25))
    x, out = random_tensor(2, 64), torch.full((2, 16), float("nan"))
    args = {"isa": RUNNABLE[0], "x": x.data_ptr(), "x_row_stride": 64, "x_dtype": 0, "values": p.values.data_ptr(),
            "values_row_stride": 32, "values_dtype": 3, "meta": p.meta.data_ptr(), "meta_row_stride": 8,
            "scale": p.scale.data_ptr(), "bias": 0, "out": out.data_ptr(), "out_row_stride": 16, "M": 2, "N": 16,
            "K": 64, "act": 0, "num_threads": 1}
    args.update(over)
    keep = (p, x, out)  # noqa: F841 - the pointers must stay valid during the call
    C.sparse24_linear(**args)
    return out, fused_linear_fp64(x, _dense24(p))


@pytest.mark.parametrize("over,match", [
    ({"K": 60}, "'K'"), ({"scale": 0}, "'scale'"), ({"values_dtype": 4}, "'values_dtype'"),
    ({"values_row_stride": 31}, "'values_row_stride'"), ({"meta_row_stride": 7}, "'meta_row_stride'"),
    ({"x_row_stride": 63}, "'x_row_stride'"), ({"out_row_stride": 15}, "'out_row_stride'"),
    ({"N": -1}, "'N'"), ({"act": 5}, "'act'"), ({"num_threads": 0}, "'num_threads'"),
    ({"meta": 0}, "'values' or 'meta'"), ({"x_dtype": 3}, "'x_dtype'"), ({"isa": "sse"}, "'isa'")])
def test_bad_sparse24_sizes_are_refused(over, match):
    with pytest.raises(ValueError, match=f"bigperf._C.sparse24_linear: argument {match}"):
        _s24_call(**over)


@pytest.mark.parametrize("call", [_s24_call, _bsr_call], ids=["sparse24", "bsr"])
def test_valid_direct_calls_write_every_output_correctly(call):
    out, expected = call()
    assert not torch.isnan(out).any(), "kernel left unwritten (NaN-poisoned) outputs"
    assert rel_error(out, expected) < _tol(torch.float32)


# ----------------------------------------------------------------------------- BSR, lane layout

BSR_LANES_KERNELS = pytest.mark.parametrize(
    "kernel", ["block_sparse_lanes_linear", "block_sparse_lanes_linear_panel"], ids=["dot", "panel"])

def _bsr_lanes_call(isa, x, layout, n, bias, activation, out, kernel="block_sparse_lanes_linear"):
    """bigperf._C.block_sparse_lanes_linear (or its panel form, `kernel`) on raw pointers into
    `out` (row stride honoured)."""
    v = layout.values
    getattr(C, kernel)(isa, x.data_ptr(), x.stride(0), CODE[x.dtype], v.data_ptr(), CODE[v.dtype],
                                layout.bn, layout.bk, layout.col_indices.data_ptr(), layout.row_ptr.data_ptr(),
                                v.shape[0], bias.data_ptr() if bias is not None else 0, out.data_ptr(),
                                out.stride(0), x.shape[0], n, x.shape[1], ACTIVATIONS.index(activation), 2)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("block", [(16, 16), (16, 32), (32, 16), (32, 8), (16, 2)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("v_dtype", FLOATS, ids=lambda d: "v_" + str(d)[6:])
@pytest.mark.parametrize("m", [1, 2, 5, 17, 200])
@BSR_LANES_KERNELS
def test_block_sparse_lanes_kernel(isa, block, density, v_dtype, m, kernel):
    """The lane-layout BSR kernel (both forms) against float64: empty block rows, odd strip
    counts per chunk (the M = 1 pairs), x-row tiles of 1-4 (panel form: 6 or 12, row blocks
    of 192), strided x and a NaN-poisoned output wider than N that must stay untouched past N."""
    from bigperf.formats.bsr_lanes import pack_bsr_lanes

    bn, bk = block
    n, k = 13 * bn, 9 * bk
    empty = (1, 5) if density < 1 else ()
    p = pack_bsr(_pruned_bsr(n, k, block, density, seed=30, empty_rows=empty).to(v_dtype), block)
    layout = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, k)
    x = random_tensor(m, k + 4, seed=31, scale=2.0)[:, :k]
    b = random_tensor(n, seed=32) if m % 2 else None
    activation = ACTIVATIONS[(m + bn) % len(ACTIVATIONS)]
    wide = torch.full((m, n + 3), float("nan"))
    _bsr_lanes_call(isa, x, layout, n, b, activation, wide, kernel)
    _check(wide[:, :n], fused_linear_fp64(x, _dense_bsr(p, k), b, None, activation), torch.float32)
    assert torch.isnan(wide[:, n:]).all(), "the kernel wrote past the end of an output row"


@pytest.mark.parametrize("isa", RUNNABLE)
@pytest.mark.parametrize("m", [1, 3])
@BSR_LANES_KERNELS
def test_block_sparse_lanes_negative_control(isa, m, kernel):
    """One changed value moves exactly its own output column (strip and lane bookkeeping)."""
    from bigperf.formats.bsr_lanes import pack_bsr_lanes

    n, k = 64, 64
    p = pack_bsr(_pruned_bsr(n, k, (16, 16), 0.5, seed=33).bfloat16(), (16, 16))
    x = random_tensor(m, k, seed=34)
    outs = []
    for bump in (False, True):
        values = p.values.clone()
        if bump:
            values[p.values.shape[0] // 2, 9, 5] += 1.0
        out = torch.empty(m, n)
        _bsr_lanes_call(isa, x, pack_bsr_lanes(values, p.col_indices, p.row_ptr, k), n, None, "none", out, kernel)
        outs.append(out)
    changed = sorted({c for _, c in (outs[1] != outs[0]).nonzero().tolist()})
    block_row = int(torch.searchsorted(p.row_ptr, p.values.shape[0] // 2, right=True)) - 1
    assert changed == [block_row * 16 + 9], f"changing one value of row {block_row * 16 + 9} changed columns {changed}"


@BSR_LANES_KERNELS
def test_block_sparse_lanes_binding_refuses_bad_arguments(kernel):
    from bigperf.formats.bsr_lanes import pack_bsr_lanes

    p = pack_bsr(_pruned_bsr(32, 32, (16, 16), 0.5, seed=35).bfloat16(), (16, 16))
    layout = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, 32)
    x, out = random_tensor(1, 32), torch.empty(1, 32)
    bad_cols = p.col_indices.clone()
    bad_cols[0] = 7
    args = dict(isa="scalar", x=x.data_ptr(), x_row_stride=32, x_dtype=0, values=layout.values.data_ptr(),
                values_dtype=2, bn=16, bk=16, col_indices=p.col_indices.data_ptr(), row_ptr=p.row_ptr.data_ptr(),
                nnz=p.values.shape[0], bias=0, out=out.data_ptr(), out_row_stride=32, M=1, N=32, K=32, act=0,
                num_threads=1)
    for change, needle in [({"bn": 8, "N": 32}, "multiple of 16"), ({"bk": 3, "K": 33}, "even"),
                           ({"isa": "sse9"}, "isa"), ({"col_indices": bad_cols.data_ptr()}, "col_indices"),
                           ({"nnz": p.values.shape[0] + 1}, "row_ptr")]:
        with pytest.raises(ValueError, match=needle):
            getattr(C, kernel)(**{**args, **change})


# ----------------------------------------------------------------------------- AVX-512 on SIMDe

EMULATION = Path(__file__).resolve().parent / "sparse_linear_emulation"
SIMDE_HEADER = Path("/usr/include/simde/x86/avx512.h")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 kernels")
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
@pytest.mark.skipif(not SIMDE_HEADER.exists(),
                    reason="SIMDe headers not installed (apt-get install libsimde-dev) to emulate AVX-512")
def test_avx512_path_under_simde_emulation(tmp_path):
    """The AVX-512 unit built on SIMDe and compared with the scalar path (check_*.cpp).

    Checks its logic on any x86 CPU; on an AVX-512 machine the tests above run it for real.
    """
    root = Path(__file__).resolve().parents[2]
    flags = ["g++", "-std=c++17", "-O1", "-DBIGPERF_X86=1", f"-I{root / 'csrc'}", "-pthread", "-w",
             *os.environ.get("BIGPERF_EMULATION_CXXFLAGS", "").split()]  # make test-sanitize
    unit = tmp_path / "unit.o"
    subprocess.run([*flags, "-c", str(EMULATION / "sparse_linear_avx512_simde.cpp"), "-o", str(unit)], check=True)
    exe = tmp_path / "check"
    subprocess.run([*flags, str(EMULATION / "check_sparse_linear_avx512.cpp"), str(unit),
                    str(root / "csrc/cpu/sparse_linear_scalar.cpp"), str(root / "csrc/cpu/thread_pool.cpp"),
                    "-o", str(exe)], check=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " 0 failures" in run.stdout
