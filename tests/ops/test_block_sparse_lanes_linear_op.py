"""torch.ops.bigperf.block_sparse_lanes_linear (BSR weight in the CPU lane layout) vs float64,
on the cpu kernel and on the reference backend (which unpacks and calls block_sparse_linear)."""

import dataclasses
import itertools
import os

import pytest
import torch

import bigperf
import bigperf.ops.block_sparse_lanes_linear as lanes_ops
from bigperf.formats import bsr_lanes
from bigperf.formats.bsr_lanes import pack_bsr_lanes
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.block_sparse_lanes_linear import LANES_BACKENDS, block_sparse_lanes_linear
from bigperf.ops.sparse_linear import BSR_BACKENDS, block_sparse_linear
from bigperf.sparsity import block_mask, pack_bsr, unpack_bsr
from tests.helpers import (
    TOLERANCE,
    assert_paths_answer_as_canonical,
    fused_linear_fp64,
    random_tensor,
    rel_error,
    without_cpu_kernel,
)

CPU_KERNEL_MISSING = LANES_BACKENDS.backends["cpu"].why_not(torch.empty(1, 8))
BACKENDS = ["reference", pytest.param("cpu", marks=pytest.mark.skipif(
    CPU_KERNEL_MISSING is not None, reason=f"cpu backend unavailable: {CPU_KERNEL_MISSING}"))]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BLOCKS = [(16, 16), (16, 32), (32, 16), (32, 8)]
DENSITIES = [0.1, 0.5, 1.0]


def packed(n, k, block, v_dtype, density=0.5, seed=0):
    """Canonical BSR tensors of a block-pruned weight with outputs of order 1."""
    w = random_tensor(n, k, seed=seed, scale=(2 / (k * density)) ** 0.5)
    return pack_bsr((w * block_mask(w, block, density)).to(v_dtype), block)


def lanes(p, k):
    return pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, k)


def expected_fp64(x, p, bias, activation):
    w = unpack_bsr(p.values.double(), p.col_indices, p.row_ptr, x.shape[-1])
    return fused_linear_fp64(x, w, bias, None, activation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("v_dtype", FLOAT_DTYPES)
def test_matches_float64_for_every_shape_block_density_activation_and_bias(backend, x_dtype, v_dtype):
    """M in {1, 2, 3, 5, 17} x blocks {(16, 16), (16, 32), (32, 16), (32, 8)} x densities
    {0.1, 0.5, 1.0} x every activation x bias or not (N = 64 or 96, K = 96 or 128 with the
    case); failures are listed together."""
    failures = []
    weights = {}
    for i, (m, block, density, activation, with_bias) in enumerate(itertools.product(
            (1, 2, 3, 5, 17), BLOCKS, DENSITIES, ACTIVATIONS, (False, True))):
        n, k = (64, 96) if i % 2 else (96, 128)
        key = (n, k, block, density)
        if key not in weights:
            p = packed(n, k, block, v_dtype, density, seed=len(weights))
            weights[key] = (p, lanes(p, k))
        p, layout = weights[key]
        x = random_tensor(m, k, dtype=x_dtype, seed=1000 + i)
        b = random_tensor(n, seed=2000 + i) if with_bias else None
        with bigperf.use_backend(backend):
            out = block_sparse_lanes_linear(x, layout, b, activation)
        error = rel_error(out, expected_fp64(x, p, b, activation))
        if out.dtype != x_dtype or out.shape != (m, n) or not error < TOLERANCE[x_dtype]:
            failures.append(f"M={m} N={n} K={k} block={block} density={density} {activation} bias={with_bias}: "
                            f"{out.dtype} {tuple(out.shape)}, rel error {error:.2e}")
    assert not failures, f"{len(failures)} failing case(s):\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("v_dtype", FLOAT_DTYPES)
def test_reference_backend_is_block_sparse_linear_on_the_unpacked_weight(v_dtype):
    p = packed(64, 96, (32, 16), v_dtype, seed=3)
    x, b = random_tensor(5, 96, seed=4), random_tensor(64, seed=5)
    with bigperf.use_backend("reference"):
        assert torch.equal(block_sparse_lanes_linear(x, lanes(p, 96), b, "silu"),
                           block_sparse_linear(x, p.values, p.col_indices, p.row_ptr, b, "silu"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_block_rows_no_blocks_leading_dimensions_non_contiguous_x_and_large_k(backend):
    w = random_tensor(64, 4096, seed=6, scale=0.05)
    w[16:48] = 0  # block rows 1 and 2 hold no block: their outputs are bias + activation only
    p = pack_bsr((w * block_mask(w, (16, 32), 0.3)).to(torch.bfloat16), (16, 32))
    layout = lanes(p, 4096)
    x = random_tensor(2, 3, 8192, dtype=torch.bfloat16, seed=7)[..., ::2]  # stride 2 along K
    x1 = random_tensor(4096, seed=8)
    b = random_tensor(64, seed=9)
    empty = pack_bsr(torch.zeros(32, 4096, dtype=torch.float16), (32, 16))
    with bigperf.use_backend(backend):
        out, out1 = block_sparse_lanes_linear(x, layout, b, "gelu"), block_sparse_lanes_linear(x1, layout)
        none = block_sparse_lanes_linear(x1, lanes(empty, 4096), b[:32], "relu")
    assert out.shape == (2, 3, 64) and rel_error(out, expected_fp64(x, p, b, "gelu")) < TOLERANCE[torch.bfloat16]
    assert out1.shape == (64,) and rel_error(out1, expected_fp64(x1, p, None, "none")) < 1e-5
    assert torch.equal(none, b[:32].relu())


@pytest.mark.skipif(CPU_KERNEL_MISSING is not None, reason=f"cpu backend unavailable: {CPU_KERNEL_MISSING}")
@pytest.mark.parametrize("v_dtype", FLOAT_DTYPES)
def test_cpu_kernel_writes_every_output_element(v_dtype, monkeypatch):
    """Outputs are poisoned (NaN) before the kernel runs: each must be overwritten, also in
    block rows that hold no block."""
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    p = packed(96, 64, (32, 16), v_dtype, density=0.1, seed=10)
    assert (p.row_ptr[1:] == p.row_ptr[:-1]).any(), "the case needs an empty block row"
    x, b = random_tensor(17, 64, seed=11), random_tensor(96, seed=12)
    with bigperf.use_backend("cpu"):
        out = block_sparse_lanes_linear(x, lanes(p, 64), b, "relu")
    assert not out.isnan().any()
    assert rel_error(out, expected_fp64(x, p, b, "relu")) < 1e-5


@pytest.mark.skipif(CPU_KERNEL_MISSING is not None, reason=f"cpu backend unavailable: {CPU_KERNEL_MISSING}")
@pytest.mark.parametrize("v_dtype", FLOAT_DTYPES)
def test_cpu_kernel_reads_the_weight_negative_control(v_dtype):
    """Changing one value of the last block changes exactly its output row."""
    p = packed(64, 64, (32, 16), v_dtype, density=1.0, seed=13)
    x = random_tensor(3, 64, seed=14)
    with bigperf.use_backend("cpu"):
        before = block_sparse_lanes_linear(x, lanes(p, 64))
        p.values[-1, 21, 5] += 1.0  # block row 1: output row 32 + 21
        after = block_sparse_lanes_linear(x, lanes(p, 64))
    changed = (after != before).any(dim=0)
    assert changed[53] and changed.sum() == 1


@pytest.mark.parametrize("v_dtype,with_bias", [(torch.bfloat16, True), (torch.float32, False)])
def test_opcheck_and_compile(v_dtype, with_bias):
    p = packed(64, 32, (32, 16), v_dtype, seed=15)
    layout = lanes(p, 32)
    x, b = random_tensor(3, 32, seed=16), random_tensor(64, seed=17) if with_bias else None
    args = (x, layout.values, layout.col_indices, layout.row_ptr, layout.bk, b, "gelu")
    torch.library.opcheck(torch.ops.bigperf.block_sparse_lanes_linear.default, args)
    eager = block_sparse_lanes_linear(x, layout, b, "gelu")

    def f(x):
        return block_sparse_lanes_linear(x, layout, b, "gelu")

    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x), eager)
    assert rel_error(torch.compile(f, fullgraph=True)(x), eager) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_indices_are_refused_before_any_kernel_runs(backend, monkeypatch):
    ran = []
    for table in (LANES_BACKENDS, lanes_ops.BSR_BACKENDS):  # (the unpacked backends run block_sparse_linear's)
        for name, entry in list(table.backends.items()):
            counted = dataclasses.replace(entry, run=lambda *args, _run=entry.run: ran.append(1) or _run(*args))
            monkeypatch.setitem(table.backends, name, counted)
    p = packed(64, 64, (16, 16), torch.float32, seed=18)
    layout = lanes(p, 64)
    x = random_tensor(2, 64)
    with bigperf.use_backend(backend):
        block_sparse_lanes_linear(x, layout)  # valid: passes and is cached
        calls = len(ran)
        assert calls >= 1
        bad_cols = dataclasses.replace(layout, col_indices=p.col_indices.clone())
        bad_cols.col_indices[-1] = 4  # only 4 block columns: 0..3
        with pytest.raises(ValueError, match="block_sparse_lanes_linear: argument 'x' has 64 features .* up to K = 80 "
                                             ".* or 'col_indices' is corrupt"):
            block_sparse_lanes_linear(x, bad_cols)
        bad_rows = dataclasses.replace(layout, row_ptr=p.row_ptr.clone())
        bad_rows.row_ptr[1] = 100
        with pytest.raises(ValueError, match="'row_ptr' are corrupt"):
            block_sparse_lanes_linear(x, bad_rows)
        layout.col_indices[0] = -1  # corrupted in place after a cached pass
        with pytest.raises(ValueError, match="'col_indices'/'row_ptr' are corrupt"):
            block_sparse_lanes_linear(x, layout)
    assert len(ran) == calls, "a kernel ran on corrupt indices"


def test_the_canonical_weight_and_its_lane_layout_share_one_index_check(monkeypatch):
    import bigperf.ops.sparse_linear as ops

    checks = []
    real = ops.bsr_is_valid
    monkeypatch.setattr(ops, "bsr_is_valid", lambda *a: checks.append(1) or real(*a))
    p = packed(64, 64, (16, 16), torch.float32, seed=19)
    x = random_tensor(2, 64)
    block_sparse_linear(x, p.values, p.col_indices, p.row_ptr)
    for backend in ("reference", "auto"):
        with bigperf.use_backend(backend):
            block_sparse_lanes_linear(x, lanes(p, 64))
    assert len(checks) == 1


def _bad_calls():
    p = packed(64, 32, (32, 16), torch.bfloat16, seed=20)
    layout = lanes(p, 32)
    x = random_tensor(2, 32)
    f = block_sparse_lanes_linear
    r = dataclasses.replace
    return [
        (lambda: f(x, r(layout, values=layout.values.double())), TypeError, ["'values'", "dtype"]),
        (lambda: f(x, r(layout, values=layout.values.to(torch.int8))), TypeError, ["'values'", "dtype"]),
        (lambda: f(x, r(layout, values=layout.values[0])), ValueError, ["'values'", "3-D"]),
        (lambda: f(x, r(layout, values=layout.values[:, :, :-16])), ValueError, ["'values'", "16 bk", "shape"]),
        (lambda: f(x, r(layout, bk=8)), ValueError, ["'values'", "[nnz, bn/16, 16 bk]"]),
        (lambda: f(x, r(layout, bk=0)), ValueError, ["'bk'", "positive"]),
        (lambda: f(x, r(layout, values=layout.values[:, :, :3 * 16], bk=3)), ValueError, ["bfloat16", "even", "bk = 3"]),
        (lambda: f(x, r(layout, bn=16)), ValueError, ["bn = 16", "'values'"]),
        (lambda: f(x, r(layout, col_indices=layout.col_indices.long())), TypeError, ["'col_indices'", "int32"]),
        (lambda: f(x, r(layout, row_ptr=layout.row_ptr.float())), TypeError, ["'row_ptr'", "int32"]),
        (lambda: f(x, r(layout, col_indices=layout.col_indices[:-1])), ValueError, ["'col_indices'", "entries for"]),
        (lambda: f(x, r(layout, row_ptr=layout.row_ptr[:1])), ValueError, ["'row_ptr'", ">= 2"]),
        (lambda: f(x, r(layout, version=0)), ValueError, ["version 0"]),
        (lambda: f(x, (layout.values, layout.col_indices, layout.row_ptr)), TypeError, ["'layout'", "BsrLanes"]),
        (lambda: f(x, r(layout, k=48)), ValueError, ["'x'", "K = 48"]),
        (lambda: f(x[:, :16], layout), ValueError, ["'x'", "K = 32"]),
        (lambda: f(x[:, :24], r(layout, k=24)), ValueError, ["'x' has 24 features", "block width 16"]),
        (lambda: f(x.int(), layout), TypeError, ["'x'"]),
        (lambda: f(x, layout, torch.ones(5)), ValueError, ["'bias'", "[64]"]),
        (lambda: f(x, layout, torch.ones(64, dtype=torch.int32)), TypeError, ["'bias'"]),
        (lambda: f(x, layout, torch.ones(64, device="meta")), ValueError, ["'bias'"]),
        (lambda: f(x, layout, None, "tanh"), ValueError, ["'activation'"]),
        (lambda: f(x, r(layout, values=layout.values.to("meta"))), ValueError, ["'values' is on meta"]),
        (lambda: f(x, r(layout, col_indices=layout.col_indices.to("meta"))), ValueError, ["'col_indices' is on meta"]),
        (lambda: f(x, r(layout, row_ptr=layout.row_ptr.to("meta"))), ValueError, ["'row_ptr' is on meta"]),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_input_is_refused_clearly(case):
    call, error, words = _bad_calls()[case]
    with pytest.raises(error) as info:
        call()
    assert "bigperf.block_sparse_lanes_linear" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_cpu_backend_says_why_it_is_unavailable(monkeypatch):
    """Before bigperf._C has the kernel (an older build) the op still runs, on another backend."""
    without_cpu_kernel(monkeypatch, "block_sparse_lanes_linear")
    p = packed(64, 32, (16, 16), torch.bfloat16, seed=21)
    layout, x = lanes(p, 32), random_tensor(2, 32)
    assert "without block_sparse_lanes_linear" in bsr_lanes.cpu_kernel_why_not(x)
    args = (x, layout.values, layout.col_indices, layout.row_ptr, layout.bk, None, "none")
    assert LANES_BACKENDS.select(*args).name != "cpu"
    error = rel_error(block_sparse_lanes_linear(x, layout), expected_fp64(x, p, None, "none"))
    assert error < TOLERANCE[torch.bfloat16]  # (the path chosen may compute in the values' bf16)


def test_other_backends_answer_as_block_sparse_linears_own():
    """Each non-cpu path is block_sparse_linear's path of that name: the same why_not on the
    unpacked weight (on this CPU triton refuses; it never passes blindly)."""
    p = packed(64, 32, (16, 16), torch.bfloat16, seed=22)
    layout, x = lanes(p, 32), random_tensor(2, 32)
    lane_args = (x, layout.values, layout.col_indices, layout.row_ptr, layout.bk, None, "none")
    canonical_args = (x, p.values, p.col_indices, p.row_ptr, None, "none")
    assert_paths_answer_as_canonical(LANES_BACKENDS, BSR_BACKENDS, "cpu", lane_args, canonical_args)
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert LANES_BACKENDS.backends["triton"].why_not(*lane_args) is not None
