"""Property-based fuzzing of every public op through its public wrapper (bigperf.ops.*).

Each example draws sizes (0, 1, odd, large K), the layout of x and of the weight
(transposed, stride-0, sliced, batched), dtypes, special values (NaN, Inf, huge, denormal),
group sizes, an activation and a backend; the result must match the float64 reference or
the call must raise a clear error naming the op and the argument (tests/fuzz/support.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import bigperf
from bigperf.ops.activations import ACTIVATIONS, apply_activation
from bigperf.ops.fused_linear import fused_linear
from bigperf.ops.int8_linear import int8_dynamic_linear, int8_weight_linear
from bigperf.ops.registry import NoBackendError
from bigperf.ops.sparse_linear import block_sparse_linear, sparse24_linear
from bigperf.quant import GROUP_SIZES
from bigperf.sparsity import nm_mask, pack_24, pack_24_int8, pack_bsr
from tests.fuzz.support import (
    FLOATS,
    activations_x,
    assert_matches_reference,
    fill,
    lay_out,
    name_check,
    seeds,
    sizes,
    tolerance,
)

BACKENDS = ("auto", "cpu", "torch", "reference")
ks = st.sampled_from([0, 1, 3, 8, 16, 24, 64, 136, 1024, 4096 + 8])
activations = st.sampled_from(ACTIVATIONS)


# K = 0 is a valid call (an empty sum: y = bias) on every op and path; test_k0_every_path pins it.


def run(backend: str, function: str, arguments, call):
    """call() under `backend` ("auto": the measured choice); None when it raised a clear
    error. A forced backend that cannot serve the call may say so (NoBackendError)."""
    try:
        if backend == "auto":
            return call()
        with bigperf.use_backend(backend):
            return call()
    except NoBackendError as error:
        assert backend != "auto" or "reference" in str(error), f"no backend at all: {error}"
        assert function in str(error), str(error)
        return None
    except (ValueError, TypeError, RuntimeError) as error:
        name_check(error, function, arguments)
        return None


def finish(y, bias, activation):
    if bias is not None:
        y = y + bias.double()
    return apply_activation(y, activation)


def rows64(x):
    """x as fp64 [rows, K] (reshape(-1, K) is ambiguous when K = 0)."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).double()


def reference_rows(x, weight64, bias, activation):
    """fp64 act(x @ W^T + b) with x's leading dims kept."""
    y = finish(rows64(x) @ weight64.t(), bias, activation)
    return y.reshape(*x.shape[:-1], weight64.shape[0])


def magnitude(x, weight64):
    """|x| @ |W|^T / sqrt(K): the size of an fp32 accumulation's rounding, for outputs that
    cancel to near zero (support.assert_matches_reference)."""
    k = max(1, x.shape[-1])
    y = rows64(x).abs().nan_to_num(0.0, 0.0, 0.0) @ weight64.abs().nan_to_num(0.0, 0.0, 0.0).t() / math.sqrt(k)
    return y.reshape(*x.shape[:-1], weight64.shape[0])


@given(data=st.data(), k=ks, n=sizes, activation=activations, backend=st.sampled_from(BACKENDS),
       w_dtype=st.sampled_from(FLOATS), w_layout=st.sampled_from(("contiguous", "transposed", "sliced")),
       with_bias=st.booleans(), with_residual=st.booleans())
def test_fused_linear(data, k, n, activation, backend, w_dtype, w_layout, with_bias, with_residual):
    x, _ = data.draw(activations_x(k))
    weight = lay_out(fill((n, k), w_dtype, data.draw(seeds), scale=0.5), w_layout)
    bias = fill((n,), torch.float32, data.draw(seeds)) if with_bias else None
    residual = fill((*x.shape[:-1], n), x.dtype, data.draw(seeds)) if with_residual else None
    out = run(backend, "bigperf.fused_linear", ("x", "weight", "bias", "residual", "activation"),
              lambda: fused_linear(x, weight, bias, residual, activation))
    if out is None:
        return
    ref = reference_rows(x, weight.double(), bias, activation)
    if residual is not None:
        ref = ref + residual.double()
    assert out.dtype == x.dtype
    assert_matches_reference(out, ref, tolerance(x.dtype, w_dtype), f"fused_linear[{backend}]",
                             magnitude(x, weight.double()))


@st.composite
def int8_weights(draw, n: int, k: int, per_channel_only: bool = False):
    """(qweight, scale, zero_point, scale kind): per channel or per group (including group
    sizes the op must refuse), scales sometimes corrupt (NaN, Inf, zero, negative)."""
    group = draw(st.sampled_from((None,) if per_channel_only else (None, 32, 64, 128, 256, 7, 48)))
    groups = 1 if group is None else max(1, k // group)
    g = torch.Generator().manual_seed(draw(seeds))
    qweight = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scale_kind = draw(st.sampled_from(("normal", "normal", "normal", "nan", "inf", "zero", "negative")))
    scale = torch.rand(n, groups, generator=g) * 0.02 + 1e-3
    if scale_kind in ("nan", "inf") and scale.numel():
        scale.view(-1)[0] = float(scale_kind)
    elif scale_kind == "zero":
        scale.zero_()
    elif scale_kind == "negative":
        scale.neg_()
    zero_point = None
    if not per_channel_only and draw(st.booleans()):
        zero_point = torch.randint(-20, 21, (n, groups), generator=g, dtype=torch.int8)
    return qweight, scale, zero_point, scale_kind


def dequantized64(qweight, scale, zero_point):
    n, k = qweight.shape
    groups = scale.shape[1]
    q = qweight.double().reshape(n, groups, k // groups)
    if zero_point is not None:
        q = q - zero_point.double()[..., None]
    return (q * scale.double()[..., None]).reshape(n, k)


@given(data=st.data(), k=ks, n=sizes, activation=activations, backend=st.sampled_from(BACKENDS),
       with_bias=st.booleans())
def test_int8_weight_linear(data, k, n, activation, backend, with_bias):
    x, _ = data.draw(activations_x(k))
    qweight, scale, zero_point, scale_kind = data.draw(int8_weights(n, k))
    bias = fill((n,), torch.float32, data.draw(seeds)) if with_bias else None
    out = run(backend, "bigperf.int8_weight_linear", ("x", "qweight", "scale", "zero_point", "bias"),
              lambda: int8_weight_linear(x, qweight, scale, zero_point, bias, activation))
    if out is None:
        return
    groups = scale.shape[1]
    assert groups == 1 or (k % groups == 0 and k // groups in GROUP_SIZES), "accepted a group size it must refuse"
    weight = dequantized64(qweight, scale, zero_point)
    ref = reference_rows(x, weight, bias, activation)
    if scale_kind in ("nan", "inf"):
        # A corrupt (non-finite) scale: the kernels apply a channel's scale after the sum, so
        # an Inf scale gives ±Inf where the dequantised math has Inf - Inf = NaN, and K = 0
        # gives 0 * NaN. Asked only: non-finite wherever the reference is.
        bad = ~torch.isfinite(ref) & torch.isfinite(out.double())
        assert k == 0 or not bad.any(), f"int8_weight_linear[{backend}]: finite output from a non-finite weight"
        return
    assert_matches_reference(out, ref, tolerance(x.dtype), f"int8_weight_linear[{backend}]", magnitude(x, weight))


@given(data=st.data(), k=ks, n=sizes, backend=st.sampled_from(BACKENDS), act_bits=st.sampled_from((8, 7, 6)),
       with_bias=st.booleans())
def test_int8_dynamic_linear(data, k, n, backend, act_bits, with_bias):
    """W8A8: finite rows agree with fp64 math on the per-token quantised x (tolerance 2e-2:
    a code may round the other way); rows with NaN/Inf are non-finite where F.linear's are."""
    x, kind = data.draw(activations_x(k))
    qweight, scale, _, scale_kind = data.draw(int8_weights(n, k, per_channel_only=True))
    bias = fill((n,), torch.float32, data.draw(seeds)) if with_bias else None
    out = run(backend, "bigperf.int8_dynamic_linear", ("x", "qweight", "scale", "bias", "act_bits"),
              lambda: int8_dynamic_linear(x, qweight, scale, bias, "none", act_bits))
    if out is None:
        return
    assert act_bits in (7, 8), "accepted act_bits it must refuse"
    w64 = dequantized64(qweight, scale, None)
    rows = rows64(x)
    dense = finish(rows @ w64.t(), bias, "none").reshape(out.shape)
    finite_rows = torch.isfinite(rows).all(dim=1) if k else torch.ones(rows.shape[0], dtype=torch.bool)
    got = out.reshape(rows.shape[0], n).double()
    nonfinite_expected = ~torch.isfinite(dense.reshape(rows.shape[0], n))
    bad = (nonfinite_expected & torch.isfinite(got))[~finite_rows]
    assert not bad.any(), f"int8_dynamic_linear[{backend}]: finite outputs where F.linear has NaN/Inf ({kind})"
    # A NaN in a row makes F.linear's whole row NaN: the same NaN pattern, exactly.
    nan_rows = torch.isnan(rows).any(dim=1) if k else torch.zeros(rows.shape[0], dtype=torch.bool)
    nan_expected = torch.isnan(dense.reshape(rows.shape[0], n))
    assert torch.equal(torch.isnan(got)[nan_rows], nan_expected[nan_rows]), \
        f"int8_dynamic_linear[{backend}]: NaN pattern differs from F.linear's on rows holding NaN"
    if scale_kind != "normal" or kind in ("huge",):
        return  # the quantised reference below assumes finite, moderate scales
    qmax = 127 if act_bits == 8 else 63
    absmax = rows.abs().amax(dim=1, keepdim=True) if k else torch.ones(rows.shape[0], 1)
    step = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    xq = torch.clamp(torch.round(rows / step), -qmax, qmax) * step
    ref = finish(xq @ w64.t(), bias, "none")
    # The output in its own dtype: the reference's check allows for its subnormal spacing (fp16
    # x of 1e-6 gives a 4e-7 output, 6 subnormal steps of fp16).
    assert_matches_reference(out.reshape(rows.shape[0], n)[finite_rows], ref[finite_rows], max(2e-2, tolerance(x.dtype)),
                             f"int8_dynamic_linear[{backend}]", magnitude(xq, w64)[finite_rows])


def corrupt(t: torch.Tensor, seed: int, how: str) -> torch.Tensor:
    """A copy of packed index/metadata bytes with one entry damaged."""
    t = t.clone()
    if t.numel() == 0 or how == "none":
        return t
    g = torch.Generator().manual_seed(seed)
    i = int(torch.randint(0, t.numel(), (1,), generator=g))
    flat = t.view(-1)
    if how == "flip":
        flat[i] = flat[i] ^ (1 << int(torch.randint(0, 7, (1,), generator=g)))
    elif how == "big":
        flat[i] = 2**30 if t.dtype == torch.int32 else 0xFF
    elif how == "negative":
        flat[i] = -1 if t.dtype == torch.int32 else 0x00
    return t


@given(data=st.data(), k=st.sampled_from([0, 8, 16, 24, 136, 1024]), n=sizes, activation=activations,
       backend=st.sampled_from(BACKENDS), int8=st.booleans(), v_dtype=st.sampled_from(FLOATS),
       damage=st.sampled_from(("none", "none", "flip", "big", "negative")), with_bias=st.booleans())
def test_sparse24_linear(data, k, n, activation, backend, int8, v_dtype, damage, with_bias):
    assume(not (int8 and n == 0))  # refused by bigperf._C today: test_sparse24_int8_without_rows
    x, _ = data.draw(activations_x(k))
    dense = fill((n, k), torch.float32, data.draw(seeds))
    dense = dense * nm_mask(dense) if dense.numel() else dense
    packed = pack_24_int8(dense) if int8 else pack_24(dense.to(v_dtype))
    meta = corrupt(packed.meta, data.draw(seeds), damage)
    bias = fill((n,), torch.float32, data.draw(seeds)) if with_bias else None
    scale = packed.scale if int8 else None
    out = run(backend, "bigperf.sparse24_linear", ("x", "values", "meta", "scale", "bias"),
              lambda: sparse24_linear(x, packed.values, meta, scale, bias, activation))
    if out is None:
        return
    from bigperf.sparsity import meta_is_valid, unpack_24
    assert meta_is_valid(meta), "accepted corrupt 2:4 metadata"
    weight = unpack_24(packed.values, meta, scale).double()
    ref = reference_rows(x, weight, bias, activation)
    assert_matches_reference(out, ref, tolerance(x.dtype, torch.bfloat16 if int8 else v_dtype),
                             f"sparse24_linear[{backend}]", magnitude(x, weight))


@given(data=st.data(), block=st.sampled_from([(16, 16), (4, 4), (8, 16), (32, 32)]),
       n_blocks=st.integers(0, 3), k_blocks=st.integers(0, 4), density=st.sampled_from([0.0, 0.3, 1.0]),
       activation=activations, backend=st.sampled_from(BACKENDS), v_dtype=st.sampled_from(FLOATS),
       damage=st.sampled_from(("none", "none", "flip", "big", "negative")), target=st.sampled_from(("col", "row")),
       with_bias=st.booleans())
def test_block_sparse_linear(data, block, n_blocks, k_blocks, density, activation, backend, v_dtype, damage,
                             target, with_bias):
    bn, bk = block
    n, k = n_blocks * bn, k_blocks * bk
    x, _ = data.draw(activations_x(k))
    dense = fill((n, k), torch.float32, data.draw(seeds))
    if dense.numel():
        keep = torch.rand(n_blocks, 1, k_blocks, 1, generator=torch.Generator().manual_seed(data.draw(seeds)))
        dense = (dense.reshape(n_blocks, bn, k_blocks, bk) * (keep < density)).reshape(n, k)
    if n == 0:
        return  # a BSR weight needs at least one block row (row_ptr of 2 entries); refusal is tested below
    packed = pack_bsr(dense.to(v_dtype), block)
    col, row = packed.col_indices, packed.row_ptr
    if target == "col":
        col = corrupt(col, data.draw(seeds), damage)
    else:
        row = corrupt(row, data.draw(seeds), damage)
    bias = fill((n,), torch.float32, data.draw(seeds)) if with_bias else None
    out = run(backend, "bigperf.block_sparse_linear", ("x", "values", "col_indices", "row_ptr", "bias"),
              lambda: block_sparse_linear(x, packed.values, col, row, bias, activation))
    if out is None:
        return
    assert torch.equal(col, packed.col_indices) and torch.equal(row, packed.row_ptr) or damage == "none" or \
        _same_weight(packed, col, row, k), "accepted corrupt BSR indices that change the weight"
    from bigperf.sparsity import unpack_bsr
    weight = unpack_bsr(packed.values, col, row, k).double()
    ref = reference_rows(x, weight, bias, activation)
    assert_matches_reference(out, ref, tolerance(x.dtype, v_dtype), f"block_sparse_linear[{backend}]",
                             magnitude(x, weight))


def _same_weight(packed, col, row, k) -> bool:
    """A damaged index may still describe a valid weight (e.g. another valid column)."""
    from bigperf.sparsity import bsr_is_valid
    return bsr_is_valid(col, row, packed.values.shape[0], k // packed.values.shape[2]) is None


def test_block_sparse_linear_refuses_empty_row_ptr():
    x = torch.randn(2, 16)
    with pytest.raises(ValueError, match="bigperf.block_sparse_linear.*'row_ptr'"):
        block_sparse_linear(x, torch.zeros(0, 16, 16), torch.zeros(0, dtype=torch.int32),
                            torch.zeros(1, dtype=torch.int32))


META_OPS = {
    "fused_linear": lambda x, n, k: fused_linear(x, torch.randn(n, k, device="meta")),
    "int8_weight_linear": lambda x, n, k: int8_weight_linear(
        x, torch.zeros(n, k, dtype=torch.int8, device="meta"), torch.ones(n, 1, device="meta")),
    "int8_dynamic_linear": lambda x, n, k: int8_dynamic_linear(
        x, torch.zeros(n, k, dtype=torch.int8, device="meta"), torch.ones(n, 1, device="meta")),
}


@given(op=st.sampled_from(sorted(META_OPS)), m=sizes, n=sizes, k=st.sampled_from([0, 8, 64]),
       dtype=st.sampled_from(FLOATS), x_device=st.sampled_from(("meta", "cpu")))
def test_meta_device(op, m, n, k, dtype, x_device):
    """Meta tensors give a meta result of the right shape; mixing devices is a clear error."""
    x = torch.empty(m, k, dtype=dtype, device=x_device)
    try:
        out = META_OPS[op](x, n, k)
    except (ValueError, TypeError, RuntimeError) as error:
        name_check(error, f"bigperf.{op}", ("x", "weight", "qweight", "scale"))
        return
    assert x_device == "meta", f"{op}: a cpu x with meta weights was accepted"
    assert out.device.type == "meta" and tuple(out.shape) == (m, n) and out.dtype == dtype


K0_CALLS = {
    "int8_dynamic_linear": lambda x, n: int8_dynamic_linear(x, torch.zeros(n, 0, dtype=torch.int8), torch.ones(n, 1),
                                                            torch.arange(n, dtype=torch.float32)),
    "sparse24_linear": lambda x, n: sparse24_linear(x, torch.zeros(n, 0), torch.zeros(n, 0, dtype=torch.uint8), None,
                                                    torch.arange(n, dtype=torch.float32)),
    "block_sparse_linear": lambda x, n: block_sparse_linear(x, torch.zeros(0, 16, 16), torch.zeros(0, dtype=torch.int32),
                                                            torch.zeros(n // 16 + 1, dtype=torch.int32),
                                                            torch.arange(n, dtype=torch.float32)),
}


@pytest.mark.parametrize("m,n", [(3, 16), (0, 16), (3, 0), (0, 0)])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", sorted(K0_CALLS))
def test_k0_every_path(op, backend, m, n, request):
    """K = 0: every path gives y = bias (an empty sum), or says clearly that it cannot."""
    x = torch.randn(m, 0)
    # (a BSR weight of N = 0 rows is refused, naming its row_ptr)
    out = run(backend, f"bigperf.{op}", ("x", "row_ptr"), lambda: K0_CALLS[op](x, n))
    if out is not None:
        assert torch.equal(out, torch.arange(n, dtype=torch.float32).expand(m, n))


def test_sparse24_int8_without_rows():
    """N = 0 is a valid weight: the result is an empty [M, 0] tensor on every path."""
    from bigperf.sparsity import pack_24_int8
    packed = pack_24_int8(torch.zeros(0, 8))
    with bigperf.use_backend("cpu"):
        out = sparse24_linear(torch.randn(3, 8), packed.values, packed.meta, packed.scale)
    assert out.shape == (3, 0)


def test_fp32_x_beyond_fp16_range_with_fp16_weight():
    # Found by make fuzz: torch:fp16 used to serve fp32 x whenever the weight was fp16, and
    # |x| > 65504 became Inf there (NaN after a pruned zero) depending on which path was timed faster.
    x = torch.randn(1, 8)
    x[0, 0] = -1e30
    weight = torch.randn(1, 8).half()
    ref = x.double() @ weight.double().t()
    with bigperf.use_backend("torch"):
        out = fused_linear(x, weight)
    assert torch.isfinite(out).all() and torch.allclose(out.double(), ref, rtol=1e-3)
