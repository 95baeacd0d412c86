"""The CPU int8 linear kernels (bigperf._C.int8_weight_linear / int8_dynamic_linear), for
every ISA path compiled into the module.

Through the ops (cpu backend, one ISA forced) against the PyTorch references on the same
quantised weights, and through the raw binding for what the op never sends (more than
16 rows to the weight-only kernel, poisoned and padded outputs, bad sizes). Compiled
paths this CPU cannot execute are skipped with the reason.
"""

from __future__ import annotations

import types

import pytest
import torch

import bigperf
from bigperf.ops import int8_linear as ops
from bigperf.ops.activations import ACTIVATIONS
from bigperf.quant import GROUP_SIZES, quantize_activation_per_token, quantize_weight
from tests.helpers import TOLERANCE, rel_error

C = pytest.importorskip("bigperf._C", reason="bigperf._C is not built")
if not hasattr(C, "int8_weight_linear"):
    pytest.skip("bigperf._C was built without the int8 kernels (rebuild the package)", allow_module_level=True)

CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# fp32 weight-only: fp32 accumulation in another order than the reference's GEMM.
WEIGHT_ONLY_FP32_TOL = 1e-5
# W8A8: exact int32 sums and the reference's float64 rescale; only the activation's
# last bits may differ.
DYNAMIC_FP32_TOL = 1e-6


def _isa_params():
    runnable = set(C.runnable_isas())
    features = C.cpu_features()
    params = []
    for isa in C.compiled_isas():
        if isa in runnable:
            params.append(pytest.param(isa, id=isa))
        else:
            missing = ", ".join(sorted(k for k, v in features.items() if not v)) or "unknown"
            reason = f"ISA path '{isa}' is compiled but this CPU cannot run it (missing: {missing})"
            params.append(pytest.param(isa, id=isa, marks=pytest.mark.skip(reason=reason)))
    return params


ISAS = _isa_params()


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _strided_x(m, k, dtype, seed, pad=5):
    """A [m, k] view with row stride k + pad (the op keeps it: unit stride along K)."""
    return _randn(m, k + pad, dtype=dtype, seed=seed)[:, :k]


def _quantized(n, k, group_size, symmetric, seed):
    return quantize_weight(_randn(n, k, seed=seed, scale=0.05), group_size, symmetric)


def _raw_codes(n, k, group_size, symmetric, seed):
    """Codes, scales and zero points for any group size dividing K (the binding takes any;
    bigperf.quant makes only 32-256), in quantize_weight's layout."""
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size is None else k // group_size
    qweight = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, groups, generator=g) * 0.01 + 1e-3
    zero_point = None if symmetric else torch.randint(-20, 20, (n, groups), generator=g, dtype=torch.int8)
    return types.SimpleNamespace(qweight=qweight, scale=scale, zero_point=zero_point)


def _tol(dtype, fp32_tol):
    return fp32_tol if dtype == torch.float32 else TOLERANCE[dtype]


def weight_only_op(isa, x, qw, bias=None, activation="none"):
    with bigperf.use_backend("cpu"), bigperf.use_cpu_isa(isa):
        return ops.int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, bias, activation)


def dynamic_op(isa, x, qweight, scale, bias=None, activation="none", act_bits=8, act_absmax=None):
    with bigperf.use_backend("cpu"), bigperf.use_cpu_isa(isa):
        return ops.int8_dynamic_linear(x, qweight, scale, bias, activation, act_bits, act_absmax)


WEIGHT_KERNELS = pytest.mark.parametrize("kernel", ["int8_weight_linear", "int8_weight_linear_panel"],
                                         ids=["dot", "panel"])


def weight_only_raw(isa, x, qw, bias=None, activation="none", out=None, threads=2, kernel="int8_weight_linear"):
    m, k = x.shape
    n = qw.qweight.shape[0]
    out = torch.full((m, n), float("nan"), dtype=x.dtype) if out is None else out
    z = qw.zero_point
    getattr(C, kernel)(isa, x.data_ptr(), x.stride(0), CODE[x.dtype], qw.qweight.data_ptr(), qw.qweight.stride(0),
                         qw.scale.data_ptr(), z.data_ptr() if z is not None else 0, qw.scale.shape[1],
                         bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, n, k,
                         ACTIVATIONS.index(activation), threads)
    return out


def dynamic_raw(isa, x, qweight, scale, bias=None, activation="none", out=None, threads=2, act_bits=8,
                kernel="int8_dynamic_linear"):
    m, k = x.shape
    n = qweight.shape[0]
    out = torch.full((m, n), float("nan"), dtype=x.dtype) if out is None else out
    getattr(C, kernel)(isa, x.data_ptr(), x.stride(0), CODE[x.dtype], qweight.data_ptr(), qweight.stride(0),
                       scale.data_ptr(), bias.data_ptr() if bias is not None else 0, out.data_ptr(),
                       out.stride(0), m, n, k, ACTIVATIONS.index(activation), threads, act_bits)
    return out


def _check(out, ref, tol):
    assert not torch.isnan(out).any(), "kernel left unwritten (NaN-poisoned) outputs"
    err = rel_error(out, ref)
    assert err <= tol, f"relative Frobenius error {err:.3g} > {tol:.1g}"


# ----------------------------------------------------------------------------- weight-only

@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("symmetric", (True, False), ids=("sym", "asym"))
@pytest.mark.parametrize("group_size", (None, *GROUP_SIZES), ids=lambda g: f"g{g}" if g else "per_channel")
def test_weight_only_groups(isa, group_size, symmetric):
    n = 77
    k = 97 if group_size is None else 3 * group_size  # per channel: K not a multiple of 8
    qw = _quantized(n, k, group_size, symmetric, seed=1)
    bias = _randn(n, seed=2)
    for m in (1, 2, 3, 4, 5, 9, 16, 17, 33):
        x = _strided_x(m, k, torch.float32, seed=10 + m)
        ref = ops.weight_only_reference(x, qw.qweight, qw.scale, qw.zero_point, bias, "none")
        _check(weight_only_op(isa, x, qw, bias), ref, WEIGHT_ONLY_FP32_TOL)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_weight_only_activations_and_dtypes(isa, activation, dtype):
    n, k = 70, 256
    qw = _quantized(n, k, 64, False, seed=3)
    bias = _randn(n, seed=4)
    for m in (1, 3, 12):
        # Pre-activations of order 3 reach the tails of erf/tanh/exp.
        x = _strided_x(m, k, dtype, seed=20 + m) * 2
        ref = ops.weight_only_reference(x, qw.qweight, qw.scale, qw.zero_point, bias, activation)
        out = weight_only_op(isa, x, qw, bias, activation)
        assert out.dtype == dtype and out.shape == (m, n)
        _check(out, ref, _tol(dtype, WEIGHT_ONLY_FP32_TOL))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("symmetric", (True, False), ids=("sym", "asym"))
@pytest.mark.parametrize("group_size", (None, 4, 12, 64), ids=lambda g: f"g{g}" if g else "per_channel")
def test_weight_only_panel_form(isa, group_size, symmetric, dtype):
    """The panel form (csrc/cpu/int8_weight_panel.h) across its blocks: K slices of 256 with
    a tail, column blocks with a partial strip, row blocks of 192 with a partial row tile;
    group sizes that are not a multiple of 8 take the per-lane scales."""
    n = 139
    k = 97 * 4 if group_size in (None, 4) else 44 * group_size
    qw = _raw_codes(n, k, group_size, symmetric, seed=13)
    bias = _randn(n, seed=14)
    for m in (1, 7, 200):
        x = _strided_x(m, k, dtype, seed=30 + m)
        ref = ops.weight_only_reference(x, qw.qweight, qw.scale, qw.zero_point, bias, "gelu")
        out = weight_only_raw(isa, x, qw, bias, "gelu", kernel="int8_weight_linear_panel")
        _check(out, ref, _tol(dtype, WEIGHT_ONLY_FP32_TOL))


@pytest.mark.parametrize("isa", ISAS)
def test_weight_only_batched_input_and_no_bias(isa):
    qw = _quantized(33, 128, 32, True, seed=5)
    x = _randn(2, 3, 128, seed=6)
    out = weight_only_op(isa, x, qw)
    assert out.shape == (2, 3, 33)
    _check(out, ops.weight_only_reference(x, qw.qweight, qw.scale, None, None, "none"), WEIGHT_ONLY_FP32_TOL)


@WEIGHT_KERNELS
@pytest.mark.parametrize("isa", ISAS)
def test_weight_only_writes_exactly_its_outputs(isa, kernel):
    """Poisoned outputs are all written; padding past N in each out row is untouched."""
    m, n, k = 5, 45, 100
    qw = _quantized(n, k, None, False, seed=7)
    x = _randn(m, k, seed=8)
    for rows in (1, 5, 20):
        xr = _randn(rows, k, seed=9)
        canvas = torch.full((rows, n + 3), float("nan"))
        weight_only_raw(isa, xr, qw, out=canvas[:, :n], kernel=kernel)
        assert not torch.isnan(canvas[:, :n]).any()
        assert torch.isnan(canvas[:, n:]).all(), "kernel wrote past N"
    # Negative control: one changed weight changes exactly its output column.
    base = weight_only_raw(isa, x, qw, kernel=kernel)
    changed = quantize_weight(_randn(n, k, seed=7, scale=0.05), None, False)
    changed.qweight[4, 10] = changed.qweight[4, 10] ^ 1
    diff = (weight_only_raw(isa, x, changed, kernel=kernel) - base).abs().amax(dim=0)
    assert diff[4] > 0 and torch.count_nonzero(diff) == 1


@WEIGHT_KERNELS
@pytest.mark.parametrize("isa", ISAS)
def test_weight_only_threads_agree(isa, kernel):
    qw = _quantized(300, 512, 128, False, seed=11)
    x = _randn(3 if kernel == "int8_weight_linear" else 200, 512, seed=12)
    one = weight_only_raw(isa, x, qw, threads=1, kernel=kernel)
    assert torch.equal(one, weight_only_raw(isa, x, qw, threads=3, kernel=kernel)), "thread split changed the result"


# ----------------------------------------------------------------------------- dynamic (W8A8)

# act_bits 8: codes in [-127, 127]; 7: [-63, 63], which the AVX2 GEMM multiplies as u8
# (q + 64) x s8 quads with vpmaddubsw (int8_dynamic_avx2.cpp).
ACT_BITS = pytest.mark.parametrize("act_bits", (8, 7), ids=("a8", "a7"))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", (1, 33, 256, 1000))
@ACT_BITS
def test_dynamic_shapes(isa, k, act_bits):
    n = 77
    qw = _quantized(n, k, None, True, seed=13)
    bias = _randn(n, seed=14)
    for m in (1, 3, 7, 8, 17, 33):
        x = _strided_x(m, k, torch.float32, seed=30 + m)
        ref = ops.dynamic_reference(x, qw.qweight, qw.scale, bias, "none", act_bits)
        _check(dynamic_op(isa, x, qw.qweight, qw.scale, bias, act_bits=act_bits), ref, DYNAMIC_FP32_TOL)


@pytest.mark.parametrize("isa", ISAS)
@ACT_BITS
def test_dynamic_gemm_blocks(isa, act_bits):
    """Past the GEMM's row block, column block and K slice (int8_dynamic_*.cpp); K = 2100
    is not a multiple of 32 (the 7-bit GEMM's K block)."""
    m, n, k = 200, 300, 2100
    qw = _quantized(n, k, None, True, seed=50)
    x = _strided_x(m, k, torch.float32, seed=51)
    bias = _randn(n, seed=52)
    _check(dynamic_op(isa, x, qw.qweight, qw.scale, bias, "gelu", act_bits),
           ops.dynamic_reference(x, qw.qweight, qw.scale, bias, "gelu", act_bits), DYNAMIC_FP32_TOL)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", (1, 20), ids=("dot", "gemm"))
@ACT_BITS
def test_dynamic_given_absmax(isa, m, act_bits):
    """act_absmax replaces each row's own absmax: two K slices quantised against the whole
    row's absmax get the whole row's codes, so their outputs add up to the whole layer's
    (a row-wise shard's sum); quantised against their own, they do not."""
    n, k = 40, 192
    qw = _quantized(n, k, None, True, seed=70)
    x = _randn(m, k, seed=71)
    whole = dynamic_op(isa, x, qw.qweight, qw.scale, act_bits=act_bits)
    absmax = x.abs().amax(-1)
    halves = (slice(0, 96), slice(96, 192))

    def summed(given):
        return sum(dynamic_op(isa, x[:, s], qw.qweight[:, s].contiguous(), qw.scale, act_bits=act_bits,
                              act_absmax=given) for s in halves)

    assert rel_error(summed(absmax), whole) < 1e-6
    assert rel_error(summed(None), whole) > 1e-4  # negative control
    # Against the reference with the same given absmax: larger than the row's own, and
    # smaller for row 0, whose codes clamp to +-qmax.
    given = absmax * 1.5
    given[0] = absmax[0] / 2
    ref = ops.dynamic_reference(x, qw.qweight, qw.scale, None, "none", act_bits, given)
    got = dynamic_op(isa, x, qw.qweight, qw.scale, act_bits=act_bits, act_absmax=given)
    _check(got, ref, DYNAMIC_FP32_TOL)
    assert rel_error(got, whole) > 1e-4  # the given absmax reached the kernel
    # A row holding NaN stays NaN whatever absmax it is given.
    x[0, 5] = float("nan")
    out = dynamic_op(isa, x, qw.qweight, qw.scale, act_bits=act_bits, act_absmax=given)
    assert torch.isnan(out[0]).all() and (m == 1 or torch.isfinite(out[1:]).all())


@pytest.mark.parametrize("isa", ISAS)
@ACT_BITS
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_dynamic_dot_form_at_any_m(isa, act_bits, dtype):
    """int8_dynamic_linear_dot: AVX2's dot form in row blocks of at most 7 (the dispatcher's
    cpu:dot), at M past the GEMM threshold, bitwise the GEMM's result where both are exact
    (fp32 out), and writing exactly its outputs."""
    n, k = 45, 230  # K not a multiple of 16: the dot form's tail block
    qw = _quantized(n, k, None, True, seed=40)
    bias = _randn(n, seed=41)
    for m in (8, 13, 15, 33):
        x = _strided_x(m, k, dtype, seed=42 + m)
        canvas = torch.full((m, n + 3), float("nan"), dtype=dtype)
        out = dynamic_raw(isa, x, qw.qweight, qw.scale, bias, "gelu", out=canvas[:, :n], act_bits=act_bits,
                          kernel="int8_dynamic_linear_dot")
        assert torch.isnan(canvas[:, n:]).all(), "kernel wrote past N"
        ref = ops.dynamic_reference(x, qw.qweight, qw.scale, bias, "gelu", act_bits)
        _check(out, ref, _tol(dtype, DYNAMIC_FP32_TOL))
        both = dynamic_raw(isa, x, qw.qweight, qw.scale, bias, "gelu", act_bits=act_bits)
        if dtype == torch.float32:
            assert torch.equal(out, both), m


@pytest.mark.parametrize("isa", ISAS)
def test_dynamic_act_bits_changes_the_codes(isa):
    """Negative control: 7-bit codes are not the 8-bit ones (and each run is exact to its
    own reference, so the option reaches the kernel)."""
    n, k = 40, 96
    qw = _quantized(n, k, None, True, seed=60)
    for m in (3, 20):
        x = _randn(m, k, seed=61)
        a8 = dynamic_op(isa, x, qw.qweight, qw.scale)
        a7 = dynamic_op(isa, x, qw.qweight, qw.scale, act_bits=7)
        assert not torch.equal(a8, a7)
        assert torch.equal(a7, ops.dynamic_reference(x, qw.qweight, qw.scale, None, "none", 7))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_dynamic_activations_and_dtypes(isa, activation, dtype):
    n, k = 70, 200
    qw = _quantized(n, k, None, True, seed=15)
    bias = _randn(n, seed=16)
    for m in (2, 20):
        x = _strided_x(m, k, dtype, seed=40 + m) * 2
        ref = ops.dynamic_reference(x, qw.qweight, qw.scale, bias, activation)
        out = dynamic_op(isa, x, qw.qweight, qw.scale, bias, activation)
        assert out.dtype == dtype
        _check(out, ref, _tol(dtype, DYNAMIC_FP32_TOL))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", (1, 12))
@ACT_BITS
def test_dynamic_rounds_half_to_even(isa, m, act_bits):
    """x / scale landing exactly on .5 rounds as torch.round; identity weights expose
    each quantised value in the output."""
    k = 40
    qmax = 127.0 if act_bits == 8 else 63.0
    row = torch.tensor([qmax] + [v + 0.5 for v in range(-20, 19)])  # scale = 1: exact ties
    x = row.repeat(m, 1)
    x[-1] = -x[-1]
    qweight = torch.eye(k, dtype=torch.int8)
    scale = torch.ones(k, 1)
    out = dynamic_op(isa, x, qweight, scale, act_bits=act_bits)
    expected, _ = quantize_activation_per_token(x, act_bits)
    assert torch.equal(out, expected.float()), "quantisation differs from torch.round (half to even)"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,k", ((1, 4096), (9, 4096), (9, 4099)))
@ACT_BITS
def test_dynamic_exact_at_full_int8_range(isa, m, k, act_bits):
    """Extreme sums (|acc| up to K * 127 * 128) stay exact: any int8 weight, -128 included.
    7-bit: codes +-63, stored as u8 127 / 1 by the AVX2 GEMM, whose vpmaddubsw pair sums
    then reach 2 * 127 * -128 = -32512 (no int16 saturation)."""
    n = 20
    qweight = torch.full((n, k), 127, dtype=torch.int8)
    qweight[1::2, 1::2] = -128
    qweight[2] = -128
    qweight[3] = torch.randint(-128, 128, (k,), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    scale = torch.ones(n, 1)
    alternating = torch.full((m, k), 3.0)
    alternating[:, 1::2] = -3.0
    for x in (alternating, torch.full((m, k), 3.0), torch.full((m, k), -3.0)):
        out = dynamic_op(isa, x, qweight, scale, act_bits=act_bits)
        ref = ops.dynamic_reference(x, qweight, scale, None, "none", act_bits)
        assert torch.equal(out, ref)
    # Zero rows of x: scale 1, all-zero codes, output = bias.
    bias = _randn(n, seed=17)
    zero = dynamic_op(isa, torch.zeros(m, k), qweight, scale, bias, act_bits=act_bits)
    assert torch.equal(zero, bias.expand(m, n))


@pytest.mark.parametrize("isa", ISAS)
@ACT_BITS
def test_dynamic_writes_exactly_its_outputs(isa, act_bits):
    n, k = 45, 99
    qw = _quantized(n, k, None, True, seed=18)
    for rows in (1, 4, 13):
        x = _randn(rows, k, seed=19)
        canvas = torch.full((rows, n + 3), float("nan"), dtype=torch.bfloat16)
        dynamic_raw(isa, x.bfloat16(), qw.qweight, qw.scale, out=canvas[:, :n], act_bits=act_bits)
        assert not torch.isnan(canvas[:, :n]).any()
        assert torch.isnan(canvas[:, n:]).all(), "kernel wrote past N"


# ----------------------------------------------------------------------------- bad input

def _weight_only_args(**over):
    x = torch.randn(2, 64)
    qw = torch.zeros(8, 64, dtype=torch.int8)
    scale = torch.ones(8, 2)
    out = torch.empty(2, 8)
    args = dict(isa="scalar", x=x.data_ptr(), x_row_stride=64, x_dtype=0, qw=qw.data_ptr(), qw_row_stride=64,
                scale=scale.data_ptr(), zero_point=0, groups=2, bias=0, out=out.data_ptr(), out_row_stride=8,
                M=2, N=8, K=64, act=0, num_threads=1)
    args.update(over)
    return args, (x, qw, scale, out)


@pytest.mark.parametrize("over, match", [
    (dict(groups=3), "'groups' 3 does not divide K"),
    (dict(groups=0), "'groups' must be >= 1"),
    (dict(M=-1), "non-negative"),
    (dict(act=9), "'act' has unknown activation code 9"),
    (dict(x_dtype=5), "x_dtype has unknown dtype code 5"),
    (dict(num_threads=0), "'num_threads' must be >= 1"),
    (dict(x_row_stride=10), "'x_row_stride' 10 is smaller than K"),
    (dict(qw_row_stride=10), "'qw_row_stride' 10 is smaller than K"),
    (dict(out_row_stride=3), "'out_row_stride' 3 is smaller than N"),
    (dict(out=0), "'out' is a null pointer"),
    (dict(scale=0), "'scale' is a null pointer"),
    (dict(isa="neon"), "ISA path 'neon'"),
])
@WEIGHT_KERNELS
def test_weight_only_binding_rejects_bad_arguments(over, match, kernel):
    args, keep = _weight_only_args(**over)
    with pytest.raises(ValueError, match=f"bigperf._C.{kernel}: .*" + match.replace("(", r"\(")):
        getattr(C, kernel)(**args)


def test_dynamic_binding_rejects_bad_arguments():
    x = torch.randn(2, 64)
    qw = torch.zeros(8, 64, dtype=torch.int8)
    scale = torch.ones(8)
    out = torch.empty(2, 8)
    base = dict(isa="scalar", x=x.data_ptr(), x_row_stride=64, x_dtype=0, qw=qw.data_ptr(), qw_row_stride=64,
                w_scale=scale.data_ptr(), bias=0, out=out.data_ptr(), out_row_stride=8, M=2, N=8, K=64, act=0,
                num_threads=1)
    for over, match in ((dict(K=1 << 20), "'K' 1048576 exceeds"), (dict(x_row_stride=3), "'x_row_stride'"),
                        (dict(act=-1), "'act'"), (dict(w_scale=0), "'scale' is a null pointer"),
                        (dict(act_bits=6), "'act_bits' must be 7 or 8 .*got 6")):
        with pytest.raises(ValueError, match="bigperf._C.int8_dynamic_linear: .*" + match):
            C.int8_dynamic_linear(**{**base, **over})


def test_op_rejects_group_size_that_does_not_divide():
    qw = quantize_weight(torch.randn(8, 96), 32)
    with pytest.raises(ValueError, match="bigperf.int8_weight_linear: argument 'scale'"):
        ops.int8_weight_linear(torch.randn(1, 96), qw.qweight, qw.scale[:, :2], None)
