"""Every CPU candidate path of every op computes the layer within its tolerance.

The measuring dispatcher (bigperf/tune.py) may pick any eligible path — our kernel or one of
PyTorch's (backend "torch", per compute dtype) — so each one is checked here against a
float64 reference, directly through the op's table, at an M where the dispatcher would
consider it. The torch paths materialise weights in chunks of rows: the chunk is shrunk
here so that the loop over chunks (and its row alignment) is exercised too.
"""
from __future__ import annotations

from math import inf, nan

import pytest
import torch

import bigperf
import bigperf.ops.torch_paths as torch_paths
from bigperf.formats.bsr_lanes import pack_bsr_lanes
from bigperf.formats.sparse24_lanes import pack_24_lanes
from bigperf.formats.w8a8_cpu import pack_w8a8_cpu
from bigperf.formats.w8a16_cpu import pack_w8a16_cpu
from bigperf.ops.activations import apply_activation
from bigperf.ops.block_sparse_lanes_linear import LANES_BACKENDS as BSR_LANES_BACKENDS
from bigperf.ops.common import BF16_PANEL_VARIANT
from bigperf.ops.fused_linear import BACKENDS as FUSED_BACKENDS
from bigperf.ops.int8_dynamic_layout_linear import LAYOUT_BACKENDS as W8A8_CPU_BACKENDS
from bigperf.ops.int8_linear import DYNAMIC_BACKENDS, WEIGHT_ONLY_BACKENDS, dynamic_reference
from bigperf.ops.int8_weight_cpu_layout_linear import LAYOUT_BACKENDS as W8A16_CPU_BACKENDS
from bigperf.ops.sparse24_lanes_linear import LANES_BACKENDS as S24_LANES_BACKENDS
from bigperf.ops.sparse_linear import BSR_BACKENDS, S24_BACKENDS
from bigperf.quant import dequantize_weight, quantize_weight
from bigperf.sparsity import block_mask, nm_mask, pack_24, pack_24_int8, pack_bsr, unpack_24, unpack_bsr
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error

pytestmark = pytest.mark.bf16_dispatch  # every path, those that round fp32 x to bf16 included
M, N, K = 37, 96, 64  # N spans several 16-row chunks; M above every "skinny" regime


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(torch_paths, "CHUNK_BYTES", 1)
    monkeypatch.setattr(torch_paths, "MIN_CHUNK_ROWS", 16)


def _fp64(x, w, b, act):
    return fused_linear_fp64(x, w, b, None, act)


def _case_fused(x_dtype, w_dtype):
    x = random_tensor(M, K, dtype=x_dtype, seed=1)
    w = random_tensor(N, K, dtype=w_dtype, seed=2, scale=0.2)
    b = random_tensor(N, seed=3)
    r = random_tensor(M, N, dtype=x_dtype, seed=4)
    ref = fused_linear_fp64(x, w, b, r, "gelu")
    return FUSED_BACKENDS, (x, w, b, r, "gelu"), ref, max(TOLERANCE[x_dtype], TOLERANCE[w_dtype])


def _case_weight_only(x_dtype, group_size):
    x = random_tensor(M, K, dtype=x_dtype, seed=5)
    q = quantize_weight(random_tensor(N, K, seed=6, scale=0.2), group_size, symmetric=group_size is None)
    b = random_tensor(N, seed=7)
    ref = _fp64(x, dequantize_weight(q.qweight, q.scale, q.zero_point), b, "silu")
    return WEIGHT_ONLY_BACKENDS, (x, q.qweight, q.scale, q.zero_point, b, "silu"), ref, TOLERANCE[x_dtype]


def _case_weight_only_w8a16_cpu(x_dtype, group_size=None):
    _, (x, qweight, scale, zero_point, b, act), ref, tol = _case_weight_only(x_dtype, group_size)
    layout = pack_w8a16_cpu(qweight, scale, zero_point)
    args = (x, layout.weight, layout.scale, layout.zero, layout.n, layout.k, layout.group_size or 0, b, act)
    return W8A16_CPU_BACKENDS, args, ref, tol


def _case_dynamic(x_dtype, act_bits, given_absmax=False):
    x = random_tensor(M, K, dtype=x_dtype, seed=8)
    q = quantize_weight(random_tensor(N, K, seed=9, scale=0.2))
    b = random_tensor(N, seed=10)
    # Quantised against twice each token's own absmax: a path that ignored it would be off
    # by a quantisation step, far outside the tolerance of the exact W8A8 math.
    absmax = 2 * x.float().abs().amax(-1) if given_absmax else None
    args = (x, q.qweight, q.scale, b, "relu", act_bits, absmax)
    ref = dynamic_reference(*args).double()  # the W8A8 math exactly (fp64 integer sums)
    return DYNAMIC_BACKENDS, args, ref, TOLERANCE[x_dtype]


def _case_dynamic_w8a8_cpu(x_dtype, act_bits, given_absmax=False):
    _, (x, qweight, scale, b, act, bits, absmax), ref, tol = _case_dynamic(x_dtype, act_bits, given_absmax)
    layout = pack_w8a8_cpu(qweight, scale, act_bits)
    args = (x, layout.weight, layout.colsum, layout.scale, layout.n, layout.k, b, act, bits, absmax)
    return W8A8_CPU_BACKENDS, args, ref, tol


def _pruned_24(dtype):
    w = random_tensor(N, K, seed=11, scale=0.2)
    return (w * nm_mask(w)).to(dtype)


def _case_24(x_dtype, int8_values):
    x = random_tensor(M, K, dtype=x_dtype, seed=12)
    p = pack_24_int8(_pruned_24(torch.float32)) if int8_values else pack_24(_pruned_24(x_dtype))
    b = random_tensor(N, seed=13)
    ref = _fp64(x, unpack_24(p.values, p.meta, p.scale, torch.float32), b, "none")
    return S24_BACKENDS, (x, p.values, p.meta, p.scale, b, "none"), ref, TOLERANCE[x_dtype]


def _case_24_lanes(x_dtype, int8_values):
    table, (x, values, meta, scale, b, act), ref, tol = _case_24(x_dtype, int8_values)
    layout = pack_24_lanes(values, meta, scale)
    return S24_LANES_BACKENDS, (x, layout.values, layout.meta, layout.scale, layout.n, b, act), ref, tol


def _case_bsr(x_dtype, lanes=False):
    x = random_tensor(M, K, dtype=x_dtype, seed=14)
    w = random_tensor(N, K, seed=15, scale=0.2)
    w = (w * block_mask(w, (16, 16), 0.5)).to(x_dtype)
    p = pack_bsr(w, (16, 16))
    b = random_tensor(N, seed=16)
    ref = _fp64(x, unpack_bsr(p.values.float(), p.col_indices, p.row_ptr, K), b, "gelu")
    if lanes:
        layout = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, K)
        args = (x, layout.values, layout.col_indices, layout.row_ptr, layout.bk, b, "gelu")
        return BSR_LANES_BACKENDS, args, ref, TOLERANCE[x_dtype]
    return BSR_BACKENDS, (x, p.values, p.col_indices, p.row_ptr, b, "gelu"), ref, TOLERANCE[x_dtype]


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
CASES = {
    "fused fp32": lambda: _case_fused(F32, F32),
    "fused fp32 x bf16 w": lambda: _case_fused(F32, BF16),
    "fused bf16": lambda: _case_fused(BF16, BF16),
    "fused fp16 x fp16 w": lambda: _case_fused(F16, F16),
    "int8 per channel fp32": lambda: _case_weight_only(F32, None),
    "int8 g32 asymmetric bf16": lambda: _case_weight_only(BF16, 32),
    "w8a16-cpu layout fp32": lambda: _case_weight_only_w8a16_cpu(F32),
    "w8a16-cpu layout bf16": lambda: _case_weight_only_w8a16_cpu(BF16),
    "w8a16-cpu layout g32 asymmetric bf16": lambda: _case_weight_only_w8a16_cpu(BF16, 32),
    "w8a8 fp32": lambda: _case_dynamic(F32, 8),
    "w8a8 7-bit bf16": lambda: _case_dynamic(BF16, 7),
    "w8a8 given absmax fp32": lambda: _case_dynamic(F32, 8, given_absmax=True),
    "w8a8-cpu layout fp32": lambda: _case_dynamic_w8a8_cpu(F32, 8),
    "w8a8-cpu layout 7-bit bf16": lambda: _case_dynamic_w8a8_cpu(BF16, 7),
    "w8a8-cpu layout given absmax": lambda: _case_dynamic_w8a8_cpu(F32, 7, given_absmax=True),
    "2:4 fp32": lambda: _case_24(F32, False),
    "2:4 bf16": lambda: _case_24(BF16, False),
    "2:4 int8 fp32": lambda: _case_24(F32, True),
    "2:4 int8 bf16": lambda: _case_24(BF16, True),  # torch:bf16 unpacks int8 values into a bf16 chunk
    "2:4 lanes bf16": lambda: _case_24_lanes(BF16, False),
    "2:4 lanes int8 fp32": lambda: _case_24_lanes(F32, True),
    "2:4 lanes int8 bf16": lambda: _case_24_lanes(BF16, True),
    "bsr fp32": lambda: _case_bsr(F32),
    "bsr bf16": lambda: _case_bsr(BF16),
    "bsr lanes fp32": lambda: _case_bsr(F32, lanes=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_eligible_cpu_path_matches_the_float64_reference(case):
    table, args, ref, tol = CASES[case]()
    x = args[0]
    ran = []
    for path in table.backends.values():
        if path.name not in ("cpu", "torch") or path.why_not(*args) is not None:
            continue
        out = path.run(*args)
        assert out.dtype == x.dtype and out.shape == ref.shape, path.id
        assert torch.isfinite(out).all(), path.id
        err = rel_error(out, ref)
        # A bf16 GEMM (PyTorch's, or our kernels' bf16 panel form) serves fp32 x only on int8
        # or bf16 weights (torch_paths.precision_of): bf16's tolerance, the precision class the
        # weight is already in.
        bf16_gemm = path.id == "torch:bf16" or path.variant == BF16_PANEL_VARIANT
        path_tol = max(tol, TOLERANCE[torch.bfloat16]) if bf16_gemm else tol
        assert err < path_tol, f"{case}: path {path.id} is off by {err:.2e} (tolerance {path_tol:.0e})"
        ran.append(path.id)
    assert "torch:fp32" in ran, f"{case}: the fp32 torch path must serve every layer; ran {ran}"
    assert len(ran) >= 2, f"{case}: expected our kernel and a torch path, ran {ran}"


def test_half_paths_only_where_the_inputs_already_have_that_precision():
    _, args, _, _ = _case_fused(F32, F32)
    assert FUSED_BACKENDS.backends["torch:bf16"].why_not(*args)  # would round fp32 x and weight
    _, args, _, _ = _case_weight_only(F32, None)
    assert WEIGHT_ONLY_BACKENDS.backends["torch:bf16"].why_not(*args) is None  # int8 codes: bf16 class
    assert WEIGHT_ONLY_BACKENDS.backends["torch:fp16"].why_not(*args)  # fp32 x could overflow fp16
    _, args, _, _ = _case_dynamic(F32, 8)
    assert DYNAMIC_BACKENDS.backends["torch:bf16"].why_not(*args)  # W8A8: exact integer sums, not bf16's
    _, args, _, _ = _case_fused(F32, BF16)
    assert FUSED_BACKENDS.backends["torch:bf16"].why_not(*args) is None  # the weight is bf16
    assert FUSED_BACKENDS.backends["torch:fp16"].why_not(*args)


def test_fp32_compute_keeps_fp32_x_in_fp32():
    """bigperf.fp32_compute(): the paths that would round fp32 x to bf16 refuse it inside the
    block (and serve again after it); x already in bf16 is not rounded by them, so they serve."""
    _, args, _, _ = _case_weight_only(F32, None)
    bf16_ids = ["torch:bf16"] + [p.id for p in WEIGHT_ONLY_BACKENDS.backends.values()
                                 if p.variant == BF16_PANEL_VARIANT and p.why_not(*args) is None]
    assert all(WEIGHT_ONLY_BACKENDS.backends[i].why_not(*args) is None for i in bf16_ids)
    _, bf16_args, _, _ = _case_weight_only(BF16, None)
    with bigperf.fp32_compute():
        for i in bf16_ids:
            assert "fp32_compute" in WEIGHT_ONLY_BACKENDS.backends[i].why_not(*args), i
            assert WEIGHT_ONLY_BACKENDS.backends[i].why_not(*bf16_args) is None, i
        assert WEIGHT_ONLY_BACKENDS.backends["torch:fp32"].why_not(*args) is None
    assert all(WEIGHT_ONLY_BACKENDS.backends[i].why_not(*args) is None for i in bf16_ids)


def test_a_changed_weight_changes_every_path():
    """Negative control: a path that ignored (part of) the weight would pass the checks above
    only by luck; here one weight row changes and exactly that output column must move."""
    table, args, _, _ = _case_weight_only(F32, None)
    x, q, s, zp, b, act = args
    q2 = q.clone()
    q2[N - 1] = -q2[N - 1]  # the last row: in the last chunk
    for path in table.backends.values():
        if path.name not in ("cpu", "torch") or path.why_not(*args) is not None:
            continue
        before = path.run(*args)
        after = path.run(x, q2, s, zp, b, act)
        moved = (after != before).any(dim=0)
        assert moved[N - 1] and moved.sum() == 1, path.id


def test_the_torch_path_output_is_activation_of_the_gemm():
    x = random_tensor(5, K, seed=20)
    w = random_tensor(N, K, seed=21)
    out = FUSED_BACKENDS.backends["torch:fp32"].run(x, w, None, None, "relu")
    assert rel_error(out, apply_activation(x.double() @ w.double().t(), "relu")) < 1e-6


@pytest.mark.parametrize("case", list(CASES))
def test_broadcast_rows_are_accepted_by_every_path(case):
    """x.expand(...) (row stride 0), which nn.Linear takes, gives the result of the copied x."""
    table, args, _, tol = CASES[case]()
    x = args[0]
    expanded = x[:1].expand(x.shape[0], x.shape[1])
    for path in table.backends.values():
        if path.name not in ("cpu", "torch") or path.why_not(*args) is not None:
            continue
        got = path.run(expanded, *args[1:])
        want = path.run(expanded.contiguous(), *args[1:])
        assert rel_error(got, want.double()) < 1e-6, path.id


# The opt-in float copy (torch:copy): what each op's weight materialises to, in fp32.
def _float_copy_for(table, args):
    from bigperf.formats import bsr, bsr_lanes, dense, int8_rowmajor, sparse24, sparse24_lanes, w8a8_cpu, w8a16_cpu

    if table is FUSED_BACKENDS:
        return dense.float_weight(args[1])
    if table is WEIGHT_ONLY_BACKENDS:
        return int8_rowmajor.float_weight(args[1], args[2], args[3], weight_only=True)
    if table is DYNAMIC_BACKENDS:
        return int8_rowmajor.float_weight(args[1], args[2], None, weight_only=False)
    if table is W8A16_CPU_BACKENDS:
        return w8a16_cpu.float_weight(w8a16_cpu.as_layout(*args[1:7]))
    if table is W8A8_CPU_BACKENDS:
        return w8a8_cpu.float_weight(w8a8_cpu.as_layout(*args[1:6], args[8]))
    if table is S24_BACKENDS:
        return sparse24.float_weight(*args[1:4])
    if table is S24_LANES_BACKENDS:
        x, values, meta, scale, n = args[:5]
        return sparse24_lanes.float_weight(sparse24_lanes.Sparse24Lanes(values, meta, scale, n, meta.shape[1] // 2))
    if table is BSR_BACKENDS:
        return bsr.float_weight(*args[1:4], K)
    x, values, col_indices, row_ptr, bk = args[:5]
    return bsr_lanes.float_weight(bsr_lanes.BsrLanes(values, col_indices, row_ptr, 16 * values.shape[1], bk, K))


@pytest.mark.parametrize("case", list(CASES))
def test_the_float_copy_path_serves_only_with_a_fresh_copy_and_matches_the_reference(case):
    table, args, ref, tol = CASES[case]()
    path = table.backends["torch:copy"]
    weight = args[1]
    assert "no float copy" in path.why_not(*args)  # never without the user's opt-in
    torch_paths.attach_float_copy(weight, _float_copy_for(table, args))
    try:
        assert path.why_not(*args) is None
        out = path.run(*args)
        assert out.dtype == args[0].dtype and out.shape == ref.shape
        err = rel_error(out, ref)
        assert err < tol, f"{case}: torch:copy is off by {err:.2e} (tolerance {tol:.0e})"
        weight.add_(0) if weight.is_floating_point() else weight.mul_(1)  # an in-place write: the copy is stale
        assert "stale" in path.why_not(*args)
    finally:
        torch_paths.attach_float_copy(weight, None)
    assert "no float copy" in path.why_not(*args)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("x_requires_grad", [False, True])
def test_chunked_torch_gemm_writes_each_chunk_into_its_own_columns(with_bias, x_requires_grad):
    # fp32 chunks larger than CHUNK_BYTES (1 here) are written by BLAS straight into the
    # output's columns; a wrong slice or leading dimension would put one chunk's columns over
    # another's. With a gradient recorded, out= cannot serve: F.linear and a copy.
    x = random_tensor(M, K, seed=40).requires_grad_(x_requires_grad)
    w = random_tensor(N, K, seed=41)
    b = random_tensor(N, seed=42) if with_bias else None
    with torch.set_grad_enabled(x_requires_grad):
        out = torch_paths.torch_linear(x, N, K, torch.float32, rows=torch_paths.copy_rows(w), bias=b)
    whole = torch.nn.functional.linear(x.detach(), w, b)
    assert out.shape == (M, N)
    torch.testing.assert_close(out.detach(), whole, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("x_dtype", [F32, BF16])
@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("m", [1, 6, 37])
def test_zero_point_paths_give_f_linears_infinities(x_dtype, group_size, m):
    """Our weight-only kernels take zero points as sum(q x) - z sum(x): an Inf in x made that
    Inf - Inf = NaN where F.linear on the dequantised weight gives +-Inf. Every path (row-major
    and the w8a16-cpu layout) gives the reference's NaN and Inf pattern on rows holding Inf
    (one sign, both signs, NaN) and the reference's values elsewhere, in every pass of rows."""
    x = random_tensor(m, K, dtype=x_dtype, seed=21)
    x[0, 3] = inf
    if m > 1:  # in later passes too: -Inf, both signs (NaN where F.linear has it), NaN
        x[m // 2, 5], x[m - 1, 7], x[m - 1, 9], x[1, 11] = -inf, inf, -inf, nan
    q = quantize_weight(random_tensor(N, K, seed=22, scale=0.2), group_size, symmetric=False)
    assert q.zero_point is not None and bool((q.zero_point != 0).any())
    b = random_tensor(N, seed=23)
    ref = torch.nn.functional.linear(x.double(), dequantize_weight(q.qweight, q.scale, q.zero_point).double(),
                                     b.double())
    assert torch.isinf(ref).any()  # the case this test is about
    layout = pack_w8a16_cpu(q.qweight, q.scale, q.zero_point)
    tables = [(WEIGHT_ONLY_BACKENDS, (x, q.qweight, q.scale, q.zero_point, b, "none")),
              (W8A16_CPU_BACKENDS, (x, layout.weight, layout.scale, layout.zero, layout.n, layout.k,
                                    layout.group_size or 0, b, "none"))]
    nan_ref, inf_ref, finite_rows = torch.isnan(ref), torch.isinf(ref), torch.isfinite(x).all(dim=1)
    ran = []
    for table, args in tables:
        for path in table.backends.values():
            if path.name not in ("cpu", "torch") or path.why_not(*args) is not None:
                continue
            bf16_gemm = path.id == "torch:bf16" or path.variant == BF16_PANEL_VARIANT
            tol = TOLERANCE[torch.bfloat16] if bf16_gemm else TOLERANCE[x_dtype]
            out, what = path.run(*args).double(), f"{table.op_name} {path.id} m={m}"
            assert torch.equal(torch.isnan(out), nan_ref), f"{what}: NaN pattern"
            assert torch.equal(out[inf_ref], ref[inf_ref]), f"{what}: infinities"
            assert rel_error(out[finite_rows], ref[finite_rows]) < tol, what
            ran.append(path.id)
    assert sum(i.startswith("cpu") for i in ran) >= 2, ran  # our kernels on both layouts
