"""torch.ops.bigperf.sparse24_lanes_linear (2:4 weight in the CPU lane layout) vs float64,
on the cpu kernel and on the reference backend (which unpacks and calls sparse24_linear)."""

import dataclasses
import itertools

import pytest
import torch

import bigperf
from bigperf.formats import sparse24_lanes
from bigperf.formats.sparse24_lanes import pack_24_lanes
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.sparse24_lanes_linear import LANES_BACKENDS, sparse24_lanes_linear
from bigperf.ops.sparse_linear import S24_BACKENDS, sparse24_linear
from bigperf.sparsity import nm_mask, pack_24, pack_24_int8, unpack_24
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
VALUE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]
X_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def packed(n, k, v_dtype, seed=0):
    """Canonical 2:4 tensors of a pruned weight with outputs of order 1 (no activation tails)."""
    w = random_tensor(n, k, seed=seed, scale=(2 / k) ** 0.5)
    w = w * nm_mask(w)
    return pack_24_int8(w) if v_dtype == torch.int8 else pack_24(w.to(v_dtype))


def lanes(p):
    return pack_24_lanes(p.values, p.meta, p.scale)


def expected_fp64(x, p, bias, activation):
    w = unpack_24(p.values, p.meta, p.scale, torch.float64)
    return fused_linear_fp64(x, w, bias, None, activation)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_dtype", X_DTYPES)
@pytest.mark.parametrize("v_dtype", VALUE_DTYPES)
def test_matches_float64_for_every_shape_activation_and_bias(backend, x_dtype, v_dtype):
    """M in {1, 2, 3, 5, 16, 17} x N in {1, 15, 16, 33} x every activation x bias or not
    (K varies with the case: 8 .. 264); failures are listed together."""
    failures = []
    for i, (m, n, activation, with_bias) in enumerate(itertools.product(
            (1, 2, 3, 5, 16, 17), (1, 15, 16, 33), ACTIVATIONS, (False, True))):
        k = (8, 40, 136, 264)[i % 4]
        p = packed(n, k, v_dtype, seed=i)
        x, b = random_tensor(m, k, dtype=x_dtype, seed=1000 + i), random_tensor(n, seed=2000 + i) if with_bias else None
        with bigperf.use_backend(backend):
            out = sparse24_lanes_linear(x, lanes(p), b, activation)
        error = rel_error(out, expected_fp64(x, p, b, activation))
        if out.dtype != x_dtype or out.shape != (m, n) or not error < TOLERANCE[x_dtype]:
            failures.append(f"M={m} N={n} K={k} {activation} bias={with_bias}: {out.dtype} {tuple(out.shape)}, "
                            f"rel error {error:.2e}")
    assert not failures, f"{len(failures)} failing case(s):\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("v_dtype", VALUE_DTYPES)
def test_reference_backend_is_sparse24_linear_on_the_unpacked_weight(v_dtype):
    p = packed(33, 64, v_dtype, seed=3)
    x, b = random_tensor(5, 64, seed=4), random_tensor(33, seed=5)
    with bigperf.use_backend("reference"):
        assert torch.equal(sparse24_lanes_linear(x, lanes(p), b, "silu"), sparse24_linear(x, *vars(p).values(), b, "silu"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dimensions_non_contiguous_x_and_large_k(backend):
    p = packed(40, 4096, torch.bfloat16, seed=6)
    layout = lanes(p)
    x = random_tensor(2, 3, 8192, dtype=torch.bfloat16, seed=7)[..., ::2]  # stride 2 along K
    x1 = random_tensor(4096, seed=8)
    with bigperf.use_backend(backend):
        out, out1 = sparse24_lanes_linear(x, layout, None, "gelu"), sparse24_lanes_linear(x1, layout)
    assert out.shape == (2, 3, 40) and rel_error(out, expected_fp64(x, p, None, "gelu")) < TOLERANCE[torch.bfloat16]
    assert out1.shape == (40,) and rel_error(out1, expected_fp64(x1, p, None, "none")) < 1e-5


@pytest.mark.skipif(CPU_KERNEL_MISSING is not None, reason=f"cpu backend unavailable: {CPU_KERNEL_MISSING}")
@pytest.mark.parametrize("v_dtype", [torch.bfloat16, torch.int8])
def test_cpu_kernel_writes_every_output_element(v_dtype, monkeypatch):
    """Outputs are poisoned (NaN) before the kernel runs: each must be overwritten."""
    real_empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: real_empty(*a, **kw).fill_(float("nan")))
    p = packed(33, 72, v_dtype, seed=9)
    x = random_tensor(17, 72, seed=10)
    with bigperf.use_backend("cpu"):
        out = sparse24_lanes_linear(x, lanes(p), random_tensor(33, seed=11), "relu")
    assert not out.isnan().any()
    assert rel_error(out, expected_fp64(x, p, random_tensor(33, seed=11), "relu")) < 1e-5


@pytest.mark.skipif(CPU_KERNEL_MISSING is not None, reason=f"cpu backend unavailable: {CPU_KERNEL_MISSING}")
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("magnitude", [1e30, 1e36])
def test_int8_codes_keep_fp32_range_for_huge_x(m, magnitude):
    """The kernel multiplies int8 codes as q * 2^24 where x allows it; an x whose products
    would overflow there (found by the fuzzer: -1e30 gave -inf, the reference -5.5e29) takes
    the codes as they are. Every row of x here is huge in one place and order 1 elsewhere."""
    p = packed(33, 72, torch.int8, seed=14)
    x = random_tensor(m, 72, seed=15)
    x[:, 3] = -magnitude
    with bigperf.use_backend("cpu"):
        out = sparse24_lanes_linear(x, lanes(p), None, "none")
    ref = expected_fp64(x, p, None, "none")
    assert torch.isfinite(out).all()
    assert rel_error(out, ref) < 1e-5


@pytest.mark.skipif(CPU_KERNEL_MISSING is not None, reason=f"cpu backend unavailable: {CPU_KERNEL_MISSING}")
def test_cpu_kernel_reads_the_weight_negative_control():
    """Changing one kept value of the last (padded) row block changes exactly that output."""
    p = packed(33, 64, torch.float32, seed=12)
    x = random_tensor(3, 64, seed=13)
    before = sparse24_lanes_linear(x, lanes(p))
    p.values[32, 5] += 1.0
    after = sparse24_lanes_linear(x, lanes(p))
    changed = (after != before).any(dim=0)
    assert changed[32] and not changed[:32].any()


@pytest.mark.parametrize("v_dtype,with_bias", [(torch.bfloat16, True), (torch.int8, False)])
def test_opcheck_and_compile(v_dtype, with_bias):
    layout = lanes(packed(20, 32, v_dtype, seed=14))
    x, b = random_tensor(3, 32, seed=15), random_tensor(20, seed=16) if with_bias else None
    args = (x, layout.values, layout.meta, layout.scale, layout.n, b, "gelu")
    torch.library.opcheck(torch.ops.bigperf.sparse24_lanes_linear.default, args)
    eager = sparse24_lanes_linear(x, layout, b, "gelu")

    def f(x):
        return sparse24_lanes_linear(x, layout, b, "gelu")

    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x), eager)
    assert rel_error(torch.compile(f, fullgraph=True)(x), eager) < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_meta_is_refused_before_any_kernel_runs(backend, monkeypatch):
    ran = []
    for name, entry in list(LANES_BACKENDS.backends.items()):
        counted = dataclasses.replace(entry, run=lambda *args, _run=entry.run: ran.append(1) or _run(*args))
        monkeypatch.setitem(LANES_BACKENDS.backends, name, counted)
    p = packed(20, 32, torch.float32, seed=17)
    layout = lanes(p)
    x = random_tensor(2, 32)
    with bigperf.use_backend(backend):
        sparse24_lanes_linear(x, layout)  # valid: passes and is cached
        assert len(ran) == 1
        layout.meta[1, 3] = 0b00000101  # positions (1, 1): corrupted in place after a cached pass
        with pytest.raises(ValueError, match="sparse24_lanes_linear: argument 'meta' is corrupt.*pack_24_lanes"):
            sparse24_lanes_linear(x, layout)
        layout.meta[1, 3] = 0x44
        layout.meta[1, -1] = 0x00  # a padding row's byte: the kernel reads those too
        with pytest.raises(ValueError, match="'meta' is corrupt"):
            sparse24_lanes_linear(x, layout)
    assert len(ran) == 1, "a kernel ran on corrupt metadata"


def _bad_calls():
    p = packed(20, 32, torch.int8, seed=18)
    layout = lanes(p)
    x = random_tensor(2, 32)
    f = sparse24_lanes_linear
    r = dataclasses.replace
    return [
        (lambda: f(x, r(layout, values=layout.values.float())), ValueError, ["'scale'", "int8"]),
        (lambda: f(x, r(layout, values=layout.values.double())), TypeError, ["'values'", "dtype"]),
        (lambda: f(x, r(layout, meta=layout.meta.int())), TypeError, ["'meta'", "uint8"]),
        (lambda: f(x, r(layout, values=layout.values.flatten())), ValueError, ["'values'", "2-D"]),
        (lambda: f(x, r(layout, values=layout.values[:, :-16])), ValueError, ["'values'", "shape"]),
        (lambda: f(x, r(layout, meta=layout.meta[:, :-2])), ValueError, ["'meta'", "multiple of 8"]),
        (lambda: f(x, r(layout, meta=layout.meta[:, :-32])), ValueError, ["'values'", "K = 16", "shape"]),
        (lambda: f(x, r(layout, meta=layout.meta[:1])), ValueError, ["'meta'", "shape"]),
        (lambda: f(x, r(layout, n=33)), ValueError, ["'n'", "(16, 32]"]),
        (lambda: f(x, r(layout, n=0)), ValueError, ["'n'"]),
        (lambda: f(x, r(layout, scale=None)), ValueError, ["'scale'", "int8"]),
        (lambda: f(x, r(layout, scale=layout.scale.double())), TypeError, ["'scale'", "float32"]),
        (lambda: f(x, r(layout, scale=layout.scale[:20])), ValueError, ["'scale'", "(32,)"]),
        (lambda: f(x, r(layout, version=0)), ValueError, ["version 0"]),
        (lambda: f(x, (layout.values, layout.meta)), TypeError, ["'layout'", "Sparse24Lanes"]),
        (lambda: f(x[:, :16], layout), ValueError, ["'x'", "K = 32"]),
        (lambda: f(x.int(), layout), TypeError, ["'x'"]),
        (lambda: f(x, layout, torch.ones(5)), ValueError, ["'bias'", "[20]"]),
        (lambda: f(x, layout, torch.ones(20, dtype=torch.int32)), TypeError, ["'bias'"]),
        (lambda: f(x, layout, torch.ones(20, device="meta")), ValueError, ["'bias'"]),
        (lambda: f(x, layout, None, "tanh"), ValueError, ["'activation'"]),
        (lambda: f(x, r(layout, values=layout.values.to("meta"))), ValueError, ["'values' is on meta"]),
        (lambda: f(x, r(layout, meta=layout.meta.to("meta"))), ValueError, ["'meta' is on meta"]),
        (lambda: f(x, r(layout, scale=layout.scale.to("meta"))), ValueError, ["'scale' is on meta"]),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_input_is_refused_clearly(case):
    call, error, words = _bad_calls()[case]
    with pytest.raises(error) as info:
        call()
    assert "bigperf.sparse24_lanes_linear" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_cpu_backend_says_why_it_is_unavailable(monkeypatch):
    """Before bigperf._C has the kernel (an older build) the op still runs, on another backend."""
    without_cpu_kernel(monkeypatch, "sparse24_lanes_linear")
    p = packed(20, 32, torch.bfloat16, seed=19)
    layout, x = lanes(p), random_tensor(2, 32)
    assert "without sparse24_lanes_linear" in sparse24_lanes.cpu_kernel_why_not(x)
    args = (x, layout.values, layout.meta, layout.scale, layout.n, None, "none")
    assert LANES_BACKENDS.select(*args).name != "cpu"
    error = rel_error(sparse24_lanes_linear(x, layout), expected_fp64(x, p, None, "none"))
    assert error < TOLERANCE[torch.bfloat16]  # (the path chosen may compute in the values' bf16)


@pytest.mark.parametrize("v_dtype", [torch.bfloat16, torch.int8])
def test_other_backends_answer_as_sparse24_linears_own(v_dtype):
    """Each non-cpu path is sparse24_linear's path of that name: the same why_not on the
    unpacked weight (on this CPU cuda refuses; it never passes blindly)."""
    p = packed(20, 32, v_dtype, seed=22)
    layout, x = lanes(p), random_tensor(2, 32)
    lane_args = (x, layout.values, layout.meta, layout.scale, layout.n, None, "none")
    canonical_args = (x, p.values, p.meta, p.scale, None, "none")
    assert_paths_answer_as_canonical(LANES_BACKENDS, S24_BACKENDS, "cpu", lane_args, canonical_args)
    assert LANES_BACKENDS.backends["cuda"].why_not(*lane_args) is not None


def test_the_backend_selected_is_the_one_that_runs(monkeypatch):
    """With the lane kernel missing from bigperf._C (an older build) the op selects another
    path, and sparse24_linear's path of that name runs, not its canonical cpu kernel."""
    without_cpu_kernel(monkeypatch, "sparse24_lanes_linear")
    ran = []
    for key, path in S24_BACKENDS.backends.items():
        def run(*args, key=key, path=path):
            ran.append(key)
            return path.run(*args)
        monkeypatch.setitem(S24_BACKENDS.backends, key, dataclasses.replace(path, run=run))
    p = packed(20, 32, torch.bfloat16, seed=23)
    layout, x = lanes(p), random_tensor(2, 32)
    selected = LANES_BACKENDS.select(x, layout.values, layout.meta, layout.scale, layout.n, None, "none")
    ran.clear()  # (selection may have timed the candidates)
    out = sparse24_lanes_linear(x, layout)
    assert selected.name != "cpu" and ran == [getattr(selected, "id", selected.name)]
    assert rel_error(out, expected_fp64(x, p, None, "none")) < 1e-2


@pytest.mark.skipif(CPU_KERNEL_MISSING is not None, reason=f"cpu backend unavailable: {CPU_KERNEL_MISSING}")
@pytest.mark.parametrize("v_dtype", [torch.bfloat16, torch.int8])
def test_panel_form_with_x_beyond_the_cache_share(v_dtype):
    """The panel form walks chunks of x in the outer loop once the transposed x outgrows its
    cache share (8 MB: here 600 x 4096 fp32, 9.8 MB), each weight block in the inner one;
    a block is unpacked again per chunk, the last chunk is partial and N ends mid-block."""
    m, k, n = 600, 4096, 40
    p = packed(n, k, v_dtype, seed=7)
    x, b = random_tensor(m, k, seed=8), random_tensor(n, seed=9)
    layout = lanes(p)
    out = LANES_BACKENDS.backends["cpu:panel"].run(x, layout.values, layout.meta, layout.scale, layout.n, b, "gelu")
    assert rel_error(out, expected_fp64(x, p, b, "gelu")) < TOLERANCE[torch.float32]
