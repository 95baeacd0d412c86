"""The kernels in bf16 arithmetic (csrc/cpu/panel_gemm_bf16.h, AVX512-BF16): W8A16 on the
row-major weight (bigperf._C.int8_weight_linear_panel_bf16) and on the held w8a16-cpu layout
(int8_weight_linear_panels, form "gemm-bf16"); the 2:4 and BSR lane layouts with bf16 values
(sparse24_lanes_linear_panel_bf16, block_sparse_lanes_linear_panel_bf16), and 2:4 with int8
codes and row scales.

It rounds x and the dequantised weight to bf16 and sums in fp32, so it is checked against a
float64 GEMM of exactly those rounded operands (per channel and symmetric: the codes are
exact in bf16 and the scales multiply the sums; otherwise (q - zero) * scale is rounded), to
fp32 summation's error: a wrong pair order, a dropped strip or a misplaced scale would be off
by far more. Shapes cover the strip and row-tile tails (N not a multiple of 16 or 32, M not
a multiple of 6, more rows than one task's 192), K past one slice (4096), every x dtype.
Runs where the AVX-512 path runs; CPUs without it run the same code under SIMDe emulation
(test_cpu_int8_avx512_emulated.py).
"""

from __future__ import annotations

import pytest
import torch

from bigperf.formats import bsr_lanes, sparse24_lanes
from bigperf.formats.bsr import run_cpu_bsr
from bigperf.formats.bsr_lanes import pack_bsr_lanes
from bigperf.formats.sparse24 import run_cpu_24
from bigperf.formats.sparse24_lanes import pack_24_lanes
from bigperf.formats.w8a16_cpu import pack_w8a16_cpu
from bigperf.ops.activations import ACTIVATIONS, apply_activation
from bigperf.ops.common import bf16_panel_why_not, bf16_values_panel_why_not
from bigperf.sparsity import block_mask, nm_mask, pack_24, pack_24_int8, pack_bsr, unpack_24
from tests.helpers import random_tensor, rel_error

C = pytest.importorskip("bigperf._C", reason="bigperf._C is not built")
if not hasattr(C, "int8_weight_linear_panel_bf16"):
    pytest.skip("bigperf._C was built without the bf16 panel GEMM (rebuild the package)", allow_module_level=True)
if "avx512" not in C.runnable_isas():
    pytest.skip("the bf16 panel GEMM is AVX-512 (AVX512-BF16) code and this CPU cannot run it; "
                "test_cpu_int8_avx512_emulated.py checks it under emulation", allow_module_level=True)

pytestmark = pytest.mark.bf16_dispatch  # (the why_not checks here are of fp32 x too)
CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOL = 2e-6  # fp32 sums in another order than float64's, over the same bf16 operands
HOLDS = ("rowmajor", "w8a16-cpu")


def _codes(n, k, group_size, symmetric, seed):
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size is None else k // group_size
    qweight = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, groups, generator=g) * 0.01 + 1e-3
    zero = None if symmetric else torch.randint(-20, 20, (n, groups), generator=g, dtype=torch.int8)
    return qweight, scale, zero


def _run(hold, x, qweight, scale, zero, bias=None, act="none", threads=2, out=None):
    m, k = x.shape
    n = qweight.shape[0]
    out = torch.full((m, n), float("nan"), dtype=x.dtype) if out is None else out
    b = bias.data_ptr() if bias is not None else 0
    if hold == "rowmajor":
        C.int8_weight_linear_panel_bf16("avx512", x.data_ptr(), x.stride(0), CODE[x.dtype], qweight.data_ptr(),
                                        qweight.stride(0), scale.data_ptr(), zero.data_ptr() if zero is not None else 0,
                                        scale.shape[1], b, out.data_ptr(), out.stride(0), m, n, k,
                                        ACTIVATIONS.index(act), threads)
    else:
        layout = pack_w8a16_cpu(qweight, scale, zero)
        C.int8_weight_linear_panels("avx512", "gemm-bf16", x.data_ptr(), x.stride(0), CODE[x.dtype],
                                    layout.weight.data_ptr(), layout.scale.data_ptr(),
                                    layout.zero.data_ptr() if layout.zero is not None else 0, layout.scale.shape[0],
                                    b, out.data_ptr(), out.stride(0), m, n, k, ACTIVATIONS.index(act), threads)
    return out


def _oracle(x, qweight, scale, zero, bias=None, act="none"):
    """float64 over the kernel's own bf16 operands."""
    k = qweight.shape[1]
    xb = x.to(torch.bfloat16).double()
    group = k // scale.shape[1]
    s = scale.repeat_interleave(group, dim=1)
    if zero is None and scale.shape[1] == 1:  # codes exact, scales on the sums
        y = (xb @ qweight.double().t()) * scale.double().t()
    else:
        q = qweight.float() - (zero.repeat_interleave(group, dim=1).float() if zero is not None else 0)
        y = xb @ (q * s).to(torch.bfloat16).double().t()
    if bias is not None:
        y = y + bias.double()
    return apply_activation(y, act)


@pytest.mark.parametrize("hold", HOLDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("group_size, symmetric", [(None, True), (None, False), (4, True), (12, False)],
                         ids=("per_channel", "per_channel_asym", "g4", "g12_asym"))
def test_matches_the_bf16_operands_in_float64(hold, dtype, group_size, symmetric):
    for n, k, m in ((1, 24, 1), (17, 48, 5), (45, 96, 13), (139, 120, 200)):
        qweight, scale, zero = _codes(n, k, group_size, symmetric, seed=n + k)
        x = random_tensor(m, k + 3, dtype=dtype, seed=m)[:, :k]  # strided rows
        bias = random_tensor(n, seed=n)
        out = _run(hold, x, qweight, scale, zero, bias, "gelu")
        assert not torch.isnan(out).any(), "unwritten outputs"
        err = rel_error(out, _oracle(x, qweight, scale, zero, bias, "gelu"))
        tol = TOL if dtype == torch.float32 else 4e-3  # a half-precision output rounds the result
        assert err < tol, f"{hold} n={n} k={k} m={m}: {err:.2e}"


@pytest.mark.parametrize("hold", HOLDS)
def test_k_past_one_slice(hold):
    """K = 8194 runs as two slices of K whose partial sums add up (kMaxKC = 4096)."""
    qweight, scale, zero = _codes(40, 8194, None, True, seed=3)
    x = random_tensor(9, 8194, seed=4)
    err = rel_error(_run(hold, x, qweight, scale, zero), _oracle(x, qweight, scale, zero))
    assert err < TOL


@pytest.mark.parametrize("hold", HOLDS)
def test_writes_exactly_its_outputs_and_each_weight_moves_its_column(hold):
    n, k = 45, 64
    qweight, scale, zero = _codes(n, k, None, True, seed=5)
    x = random_tensor(20, k, seed=6)
    canvas = torch.full((20, n + 3), float("nan"))
    _run(hold, x, qweight, scale, zero, out=canvas[:, :n])
    assert not torch.isnan(canvas[:, :n]).any()
    assert torch.isnan(canvas[:, n:]).all(), "kernel wrote past N"
    # Negative control: one changed code (odd k: the high half of its pair) moves exactly its column.
    base = _run(hold, x, qweight, scale, zero)
    changed = qweight.clone()
    changed[44, 33] = changed[44, 33] ^ 8
    diff = (_run(hold, x, changed, scale, zero) - base).abs().amax(dim=0)
    assert diff[44] > 0 and torch.count_nonzero(diff) == 1


@pytest.mark.parametrize("hold", HOLDS)
def test_threads_agree(hold):
    qweight, scale, zero = _codes(300, 256, 64, False, seed=7)
    x = random_tensor(200, 256, seed=8)
    assert torch.equal(_run(hold, x, qweight, scale, zero, threads=1), _run(hold, x, qweight, scale, zero, threads=3))


@pytest.mark.parametrize("hold", HOLDS)
@pytest.mark.parametrize("isa, k, match", [("avx2", 64, "'avx512' ISA path only"), ("avx512", 63, "even K")])
def test_binding_refuses_what_it_cannot_run(hold, isa, k, match):
    qweight, scale, _ = _codes(16, k, None, True, seed=9)
    x = random_tensor(8, k, seed=10)
    out = torch.empty(8, 16)
    with pytest.raises(ValueError, match=match):
        if hold == "rowmajor":
            C.int8_weight_linear_panel_bf16(isa, x.data_ptr(), k, 0, qweight.data_ptr(), k, scale.data_ptr(), 0, 1, 0,
                                            out.data_ptr(), 16, 8, 16, k, 0, 1)
        else:
            layout = pack_w8a16_cpu(qweight, scale)
            C.int8_weight_linear_panels(isa, "gemm-bf16", x.data_ptr(), k, 0, layout.weight.data_ptr(),
                                        layout.scale.data_ptr(), 0, 1, 0, out.data_ptr(), 16, 8, 16, k, 0, 1)


def test_paths_refuse_calls_whose_precision_is_not_bf16s():
    x = random_tensor(16, 64, seed=11)
    kernel = "int8_weight_linear_panel_bf16"
    assert bf16_panel_why_not(x, 64, kernel, torch.bfloat16) is None  # int8 codes: bf16's class
    assert "round" in bf16_panel_why_not(x, 64, kernel, torch.float32)  # an fp32 weight with fp32 x
    assert "odd" in bf16_panel_why_not(x[:, :63], 63, kernel, torch.bfloat16)
    assert "rows" in bf16_panel_why_not(x[:2], 64, kernel, torch.bfloat16)


# ----------------------------------------------------------------------------- sparse lane layouts
# bf16 values (exact) with x rounded to bf16: against float64 over the same dense bf16 weight.

def _sparse_oracle(x, dense, bias, act):
    y = x.to(torch.bfloat16).double() @ dense.double().t()
    return apply_activation(y + bias.double(), act)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_sparse24_lanes(dtype):
    """Every group's two kept values at their positions (all six position pairs occur), block
    tails past N, more rows than one task, K past one slice (8200: two slices of whole steps)."""
    for n, k, m in ((1, 8, 1), (45, 96, 13), (40, 8200, 3), (139, 64, 200)):
        w = random_tensor(n, k, seed=n + k)
        pruned = (w * nm_mask(w)).to(torch.bfloat16)
        p = pack_24(pruned)
        lanes = pack_24_lanes(p.values, p.meta)
        x = random_tensor(m, k + 3, dtype=dtype, seed=m)[:, :k]
        bias = random_tensor(n, seed=n)
        out = run_cpu_24(sparse24_lanes.CPU_BF16_KERNEL, x, lanes.values, lanes.meta, None, bias, "gelu", n, k)
        tol = TOL if dtype == torch.float32 else 4e-3
        assert rel_error(out, _sparse_oracle(x, pruned, bias, "gelu")) < tol, (n, k, m)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_sparse24_lanes_int8_codes(dtype):
    """int8 codes are exact in bf16 and each row's scale multiplies its sums: against float64
    over the dense codes. Every code from -128 to 127 occurs (byte order within a lane's word,
    sign extension), with the shapes of test_sparse24_lanes."""
    for n, k, m in ((1, 8, 1), (45, 96, 13), (40, 8200, 3), (139, 64, 200)):
        w = random_tensor(n, k, seed=n + k)
        p = pack_24_int8(w * nm_mask(w))
        g = torch.Generator().manual_seed(n * k)
        codes = torch.randint(-128, 128, p.values.shape, generator=g, dtype=torch.int8)
        scale = torch.rand(n, 1, generator=g) * 0.01 + 1e-3
        lanes = pack_24_lanes(codes, p.meta, scale)
        x = random_tensor(m, k + 3, dtype=dtype, seed=m)[:, :k]
        bias = random_tensor(n, seed=n)
        out = run_cpu_24(sparse24_lanes.CPU_BF16_KERNEL, x, lanes.values, lanes.meta, lanes.scale, bias, "gelu", n, k)
        dense_codes = unpack_24(codes, p.meta, dtype=torch.float64)
        y = (x.to(torch.bfloat16).double() @ dense_codes.t()) * scale.double().t()
        ref = apply_activation(y + bias.double(), "gelu")
        tol = TOL if dtype == torch.float32 else 4e-3
        assert rel_error(out, ref) < tol, (n, k, m)


def test_sparse24_lanes_threads_and_positions():
    """The kept-values form (each pair's two x picked by a byte shuffle from the metadata):
    bit-identical for 1 and 3 threads over several tasks (M past 192, N past 64), and moving
    one group's kept positions (the same values, another pair of x) changes that output
    column only, by what float64 says it should."""
    n, k, m = 150, 64, 400
    w = random_tensor(n, k, seed=21)
    pruned = (w * nm_mask(w)).to(torch.bfloat16)
    p = pack_24(pruned)
    x = random_tensor(m, k, seed=22)
    lanes = pack_24_lanes(p.values, p.meta)

    def run(meta, threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run_cpu_24(sparse24_lanes.CPU_BF16_KERNEL, x, lanes.values, pack_24_lanes(p.values, meta).meta,
                              None, None, "none", n, k)
        finally:
            torch.set_num_threads(before)

    base = run(p.meta, 1)
    assert torch.equal(base, run(p.meta, 3))
    moved = p.meta.clone()
    group_byte = int(moved[77, 5])  # row 77, k 40..47: group 0's positions in bits 3:0
    i0, i1 = group_byte & 3, (group_byte >> 2) & 3
    new_pair = next((a, b) for a in range(4) for b in range(a + 1, 4) if (a, b) != (i0, i1))
    moved[77, 5] = (group_byte & 0xF0) | new_pair[0] | new_pair[1] << 2
    out = run(moved, 3)
    diff = (out - base).abs().amax(dim=0)
    assert diff[77] > 0 and torch.count_nonzero(diff) == 1
    dense = unpack_24(p.values, moved, dtype=torch.float64)
    assert rel_error(out[:, 77], x.to(torch.bfloat16).double() @ dense[77]) < TOL


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("block", [(16, 16), (32, 8), (16, 2)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_bsr_lanes(dtype, block):
    """Only the stored blocks are read: empty block rows, row groups of 32-row blocks, tiles of
    16 rows with a tail, more rows than one task."""
    bn, bk = block
    for n, k, m in ((bn, bk, 1), (4 * bn, 6 * bk, 21), (6 * bn, 10 * bk, 200)):
        w = random_tensor(n, k, seed=n + k)
        pruned = (w * block_mask(w, block, 0.5)).to(torch.bfloat16)
        pruned[:bn] = 0  # an empty block row
        p = pack_bsr(pruned, block)
        lanes = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, k)
        x = random_tensor(m, k, dtype=dtype, seed=m)
        bias = random_tensor(n, seed=n)
        out = run_cpu_bsr(bsr_lanes.CPU_BF16_KERNEL, x, lanes.values, lanes.col_indices, lanes.row_ptr, bias, "silu",
                          bn, bk)
        tol = TOL if dtype == torch.float32 else 4e-3
        assert rel_error(out, _sparse_oracle(x, pruned, bias, "silu")) < tol, (n, k, m)


def test_sparse_bf16_forms_refuse_other_values():
    w = random_tensor(16, 32, seed=1)
    p = pack_24((w * nm_mask(w)).float())
    lanes = pack_24_lanes(p.values, p.meta)
    x = random_tensor(8, 32, seed=2)
    with pytest.raises(ValueError, match="bfloat16 or int8 values only"):
        run_cpu_24(sparse24_lanes.CPU_BF16_KERNEL, x, lanes.values, lanes.meta, None, None, "none", 16, 32)
    assert "bfloat16 values" in bf16_values_panel_why_not(x, lanes.values, sparse24_lanes.CPU_BF16_KERNEL)
    readable = (torch.bfloat16, torch.int8)
    assert "bfloat16 or int8 values" in bf16_values_panel_why_not(x, lanes.values, sparse24_lanes.CPU_BF16_KERNEL,
                                                                   readable)
    q = pack_24_int8((w * nm_mask(w)).float())
    codes = pack_24_lanes(q.values, q.meta, q.scale)
    assert bf16_values_panel_why_not(x, codes.values, sparse24_lanes.CPU_BF16_KERNEL, readable) is None


# ----------------------------------------------------------------------------- dense (fused_linear)

@pytest.mark.parametrize("w_dtype", DTYPES, ids=lambda d: "w_" + str(d)[6:])
@pytest.mark.parametrize("x_dtype", DTYPES, ids=lambda d: "x_" + str(d)[6:])
def test_fused_linear_dense_weights(x_dtype, w_dtype):
    """A bf16 weight is packed as it is (16 x 16 transposes of its k pairs, then single pairs
    for K % 32); fp32 and fp16 weights through the fp32 loaders, rounded to bf16. Strided
    weight rows, N past a strip, bias, residual and activation."""
    for n, k, m in ((1, 2, 1), (45, 72, 13), (139, 96, 200)):
        w = random_tensor(n, k + 6, seed=n + k, scale=0.2).to(w_dtype)[:, :k]
        x = random_tensor(m, k, dtype=x_dtype, seed=m)
        bias, res = random_tensor(n, seed=1), random_tensor(m, n, dtype=x_dtype, seed=2)
        out = torch.full((m, n), float("nan"), dtype=x_dtype)
        C.fused_linear_panel_bf16("avx512", x.data_ptr(), x.stride(0), CODE[x_dtype], w.data_ptr(), w.stride(0),
                                  CODE[w_dtype], bias.data_ptr(), res.data_ptr(), res.stride(0), out.data_ptr(),
                                  out.stride(0), m, n, k, ACTIVATIONS.index("gelu"), 2)
        y = x.to(torch.bfloat16).double() @ w.to(torch.bfloat16).double().t()
        want = apply_activation(y + bias.double(), "gelu") + res.double()
        tol = TOL if x_dtype == torch.float32 else 4e-3
        assert rel_error(out, want) < tol, (n, k, m)


def test_fused_linear_bf16_form_refuses_odd_k_and_other_isas():
    w = random_tensor(16, 63).bfloat16()
    x = random_tensor(4, 63)
    out = torch.empty(4, 16)
    args = (x.data_ptr(), 63, 0, w.data_ptr(), 63, 2, 0, 0, 0, out.data_ptr(), 16, 4, 16, 63, 0, 1)
    with pytest.raises(ValueError, match="even K"):
        C.fused_linear_panel_bf16("avx512", *args)
    with pytest.raises(ValueError, match="'avx512' ISA path only"):
        C.fused_linear_panel_bf16("avx2", *args)
