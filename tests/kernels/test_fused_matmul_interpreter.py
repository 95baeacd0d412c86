"""bigperf.kernels.fused_matmul under the Triton CPU interpreter.

Run in its own process, e.g. ``TRITON_INTERPRET=1 pytest tests/kernels -m interpreter``:
triton decides at @triton.jit decoration time whether kernels are interpreted, so the
variable must be set before triton is first imported.
"""
import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "needs TRITON_INTERPRET=1 set before triton is imported; run via `make test` "
        "(separate pytest process)",
        allow_module_level=True,
    )

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bigperf.kernels import _config  # noqa: E402
from bigperf.kernels import fused_matmul as fm  # noqa: E402
from bigperf.kernels.fused_matmul import ACTIVATIONS, fused_linear  # noqa: E402

if not _config.INTERPRETER:
    pytest.skip("bigperf.kernels was imported before TRITON_INTERPRET=1 was set",
                allow_module_level=True)

pytestmark = [
    pytest.mark.interpreter,
    # numpy warns when exp(-t) overflows to inf inside sigmoid-style activations; the
    # result (x / inf -> 0) is the intended saturation, as on the GPU.
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
]

NAME = "bigperf.kernels.fused_matmul.fused_linear"

# (dtype, max relative Frobenius error against the float64 reference)
DTYPES = [
    pytest.param(torch.float32, 1e-5, id="fp32"),
    pytest.param(torch.float16, 2e-3, id="fp16"),
    # bf16 runs through the kernel's interpreter workarounds (UPCAST_DOT, ROUND_BF16_OUT).
    pytest.param(torch.bfloat16, 1e-2, id="bf16"),
]
# With the interpreter's single 16x32x32 tile, GROUP_M=2: M=1/3/17 cover one and two row
# blocks, 40 three (a partial group); N and K are not multiples of 16.
SHAPES = [(1, 40, 72), (3, 24, 50), (17, 33, 100), (40, 70, 37)]

_ACT = {
    "none": lambda v: v,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
    "silu": F.silu,
}


def reference(x, w, bias, residual, activation):
    z = x.double() @ w.double().t()
    if bias is not None:
        z = z + bias.double()
    z = _ACT[activation](z)
    if residual is not None:
        z = z + residual.double()
    return z


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def make(m, n, k, dtype, w_dtype=None, bias=True, residual=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(w_dtype or dtype)
    b = torch.randn(n, generator=g) if bias else None
    r = torch.randn(m, n, generator=g).to(dtype) if residual else None
    return x, w, b, r


@pytest.fixture
def poison_empty(monkeypatch):
    """Make the launcher's output allocation NaN-filled, so an unwritten element shows."""
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)


def test_interpreter_uses_exactly_one_config():
    # Autotuning more than one config needs a GPU driver to benchmark.
    assert len(fm._fused_linear_tuned.configs) == 1


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64_reference(shape, dtype, tol, activation, poison_empty):
    x, w, b, r = make(*shape, dtype)
    y = fused_linear(x, w, b, r, activation)
    assert y.dtype == dtype and y.shape == (shape[0], shape[1])
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) or NaN output elements"
    assert rel_err(y, reference(x, w, b, r, activation)) <= tol


@pytest.mark.parametrize("bias,residual", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[1:3], ids=lambda s: "x".join(map(str, s)))
def test_bias_and_residual_optional(shape, dtype, tol, bias, residual):
    x, w, b, r = make(*shape, dtype, bias=bias, residual=residual)
    y = fused_linear(x, w, b, r, "gelu")
    assert rel_err(y, reference(x, w, b, r, "gelu")) <= tol


@pytest.mark.parametrize("dtype,tol", DTYPES[1:])
def test_bias_in_input_dtype(dtype, tol):
    x, w, b, r = make(17, 33, 100, dtype)
    b = b.to(dtype)
    y = fused_linear(x, w, b, r, "silu")
    assert rel_err(y, reference(x, w, b, r, "silu")) <= tol


# fp32 x with a lower-precision W: the W tile is widened in registers. "high" selects one
# TF32 dot, "highest" two ("tf32x2": x's TF32 head and its remainder; W is exact in TF32)
# or IEEE for an fp32 W. The interpreter computes every dot in full fp32, so this exercises
# the launcher's precision switch; test_tf32_dots_under_a_tensor_core_model below shows
# what the split buys once TF32 operands are rounded as on a GPU.
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16w", "fp16w", "fp32w"])
@pytest.mark.parametrize("precision,tol", [("highest", 1e-5), ("high", 1e-3)])
def test_fp32_input_with_lower_precision_weight(w_dtype, precision, tol):
    x, w, b, r = make(17, 40, 72, torch.float32, w_dtype=w_dtype)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        y = fused_linear(x, w, b, r, "gelu_tanh")
    finally:
        torch.set_float32_matmul_precision(old)
    assert y.dtype == torch.float32
    assert rel_err(y, reference(x, w, b, r, "gelu_tanh")) <= tol


@pytest.fixture
def tf32_tensor_cores(monkeypatch):
    """Interpreted tl.dot computes in fp32 whatever input_precision says; make TF32 dots read
    their fp32 operands as TF32 tensor cores do (low 13 mantissa bits dropped: truncation,
    the pessimistic reading of the PTX ISA's "lower 13 bits are ignored")."""
    import numpy as np
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    real_create_dot = interpreter.InterpreterBuilder.create_dot
    dots = []

    def tf32(handle):
        if handle.data.dtype != np.float32:
            return handle
        bits = handle.data.view(np.uint32) & np.uint32(0xFFFFE000)
        return interpreter.TensorHandle(bits.view(np.float32), handle.dtype)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        dots.append(input_precision)
        if input_precision == ir.INPUT_PRECISION.TF32:
            a, b = tf32(a), tf32(b)
        return real_create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", create_dot)
    return dots


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float16], ids=["bf16w", "fp16w"])
def test_tf32_dots_under_a_tensor_core_model(w_dtype, tf32_tensor_cores):
    """At "highest", fp32 x with an fp16/bf16 W runs on TF32 tensor cores (two dots per k
    step) and still meets the fp32 tolerance; one TF32 dot ("high") only meets TF32's."""
    from triton._C.libtriton import ir

    x, w, b, r = make(17, 40, 200, torch.float32, w_dtype=w_dtype, seed=7)
    ref = reference(x, w, b, r, "none")
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        split = fused_linear(x, w, b, r, "none")
        assert tf32_tensor_cores and set(tf32_tensor_cores) == {ir.INPUT_PRECISION.TF32}, "not on tensor cores"
        torch.set_float32_matmul_precision("high")
        single = fused_linear(x, w, b, r, "none")
    finally:
        torch.set_float32_matmul_precision(old)
    assert rel_err(split, ref) <= 1e-5
    assert 1e-5 < rel_err(single, ref) <= 1e-3, "the model must make a single TF32 dot visibly less exact"


def test_fp32_weight_at_highest_stays_ieee(tf32_tensor_cores):
    from triton._C.libtriton import ir

    x, w, b, r = make(17, 40, 72, torch.float32, seed=8)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        y = fused_linear(x, w, b, r, "none")
    finally:
        torch.set_float32_matmul_precision(old)
    assert set(tf32_tensor_cores) == {ir.INPUT_PRECISION.IEEE}
    assert rel_err(y, reference(x, w, b, r, "none")) <= 1e-5


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_non_contiguous_inputs(dtype, tol, poison_empty):
    m, n, k = 17, 33, 50
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m + 4, 2 * k + 3, generator=g).to(dtype)[2:2 + m, 1:1 + 2 * k:2]
    w = torch.randn(k, n, generator=g).to(dtype).t()  # transposed view: W^T in memory
    b = torch.randn(2 * n, generator=g)[::2]
    r = torch.randn(n, m, generator=g).to(dtype).t()
    assert not (x.is_contiguous() or w.is_contiguous() or b.is_contiguous()
                or r.is_contiguous())
    y = fused_linear(x, w, b, r, "relu")
    assert not torch.isnan(y).any()
    assert rel_err(y, reference(x, w, b, r, "relu")) <= tol


def test_transposed_x_view():
    x = torch.randn(72, 3).t()  # stride along K is the row count
    w = torch.randn(24, 72)
    y = fused_linear(x, w, None, None, "none")
    assert rel_err(y, reference(x, w, None, None, "none")) <= 1e-5


def test_every_element_written_and_correct(poison_empty):
    # Elementwise check on a grid with partial tiles in M, N, K and a partial GROUP_M group.
    x, w, b, r = make(40, 70, 37, torch.float32)
    y = fused_linear(x, w, b, r, "silu")
    ref = reference(x, w, b, r, "silu")
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_changed_weight_changes_only_its_column():
    x, w, b, r = make(17, 33, 50, torch.float32, seed=3)
    y0 = fused_linear(x, w, b, r, "none")
    w2 = w.clone()
    w2[5, 7] += 1.0
    y1 = fused_linear(x, w2, b, r, "none")
    changed = (y1 != y0).any(dim=0)
    assert changed[5], "a changed weight row did not change its output column"
    assert changed.sum() == 1
    torch.testing.assert_close(y1[:, 5] - y0[:, 5], x[:, 7], rtol=1e-4, atol=1e-4)


def test_empty_k_gives_activation_of_bias_plus_residual():
    x = torch.randn(3, 0)
    w = torch.randn(5, 0)
    b = torch.randn(5)
    r = torch.randn(3, 5)
    y = fused_linear(x, w, b, r, "relu")
    torch.testing.assert_close(y, torch.relu(b).expand(3, 5) + r)


@pytest.mark.parametrize("m,n", [(0, 5), (4, 0)])
def test_empty_output(m, n):
    y = fused_linear(torch.randn(m, 8), torch.randn(n, 8), None, None, "none")
    assert y.shape == (m, n)


def test_bf16_output_is_rounded_to_nearest():
    # Guards the ROUND_BF16_OUT workaround: a truncating fp32->bf16 cast leaves about half
    # of the elements more than half a bf16 ulp from the exact result.
    x, w, b, r = make(17, 33, 100, torch.bfloat16, seed=4)
    y = fused_linear(x, w, b, r, "none").double()
    ref = reference(x, w, b, r, "none")
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs())) - 7)
    excess = (y - ref).abs() - (0.5 * ulp + 1e-5 * ref.abs())
    assert (excess <= 0).all(), f"{int((excess > 0).sum())} elements not rounded to nearest"


def _bad_inputs():
    x, w, b, r = make(4, 6, 8, torch.float16)
    cases = {
        "x-not-tensor": (dict(x=x.tolist()), TypeError, "x"),
        "x-3d": (dict(x=x[None]), ValueError, "x"),
        "x-int": (dict(x=x.to(torch.int32)), TypeError, "x"),
        "weight-1d": (dict(weight=w[0]), ValueError, "weight"),
        "weight-k-mismatch": (dict(weight=w[:, :7]), ValueError, "weight"),
        "weight-bf16-with-fp16-x": (dict(weight=w.bfloat16()), TypeError, "weight"),
        "weight-fp32-with-fp16-x": (dict(weight=w.float()), TypeError, "weight"),
        "bias-shape": (dict(bias=b[:5]), ValueError, "bias"),
        "bias-dtype": (dict(bias=b.bfloat16()), TypeError, "bias"),
        "bias-device": (dict(bias=b.to("meta")), ValueError, "bias"),
        "residual-shape": (dict(residual=r.t()), ValueError, "residual"),
        "residual-dtype": (dict(residual=r.float()), TypeError, "residual"),
        "activation": (dict(activation="tanh"), ValueError, "activation"),
        # A stride-0 view: 2**31 rows without the memory.
        "x-rows-overflow-int32": (dict(x=x[:1].expand(2 ** 31, 8), residual=None),
                                  ValueError, "x"),
        "x-on-meta": (dict(x=x.to("meta"), weight=w.to("meta"), bias=None, residual=None),
                      ValueError, "x"),
    }
    base = dict(x=x, weight=w, bias=b, residual=r, activation="relu")
    return [pytest.param({**base, **over}, exc, arg, id=name)
            for name, (over, exc, arg) in cases.items()]


@pytest.mark.parametrize("kwargs,exc,arg", _bad_inputs())
def test_bad_input_raises_clear_error(kwargs, exc, arg):
    with pytest.raises(exc) as info:
        fused_linear(**kwargs)
    msg = str(info.value)
    assert NAME in msg and f"`{arg}`" in msg, msg


# ---------------------------------------------------------------------------------------
# The interpreter defects the kernels work around (kernels/_config.py: QUIRKS). Each probe
# passes while the defect is present; once a triton release fixes one, the probe skips and
# says so (the workaround stays correct, it just becomes unnecessary).
# ---------------------------------------------------------------------------------------
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _probe_dot_kernel(a_ptr, b_ptr, c_ptr):
    r = tl.arange(0, 16)
    a = tl.load(a_ptr + r[:, None] * 16 + r[None, :])
    b = tl.load(b_ptr + r[:, None] * 16 + r[None, :])
    tl.store(c_ptr + r[:, None] * 16 + r[None, :], tl.dot(a, b))


@triton.jit
def _probe_cast_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    r = tl.arange(0, BLOCK)
    m = r < n
    tl.store(dst_ptr + r, tl.load(src_ptr + r, mask=m).to(tl.bfloat16), mask=m)


def _fixed(what):
    pytest.skip(f"triton {triton.__version__}'s interpreter no longer shows: {what}; "
                "the workaround in kernels/_config.py (QUIRKS) can be dropped")


def test_quirk_bf16_dot_on_raw_bits():
    assert _config.QUIRKS.bf16_dot_on_raw_bits
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=g).bfloat16()
    b = torch.randn(16, 16, generator=g).bfloat16()
    c = torch.empty(16, 16)
    _probe_dot_kernel[(1,)](a, b, c)
    ref = a.double() @ b.double()
    if rel_err(c, ref) < 1e-3:
        _fixed("tl.dot on bf16 operands computing on raw bits")
    # Seen with triton 3.9.0: entries ~1e10 (uint16 bit patterns multiplied as integers).
    assert c.abs().max() > 1e6


def test_quirk_fp32_to_bf16_truncates():
    assert _config.QUIRKS.fp32_to_bf16_truncates
    src = torch.tensor([1 + 2 ** -8 + 2 ** -10, 255.9, -(1 + 2 ** -8 + 2 ** -12)])
    dst = torch.empty(3, dtype=torch.bfloat16)
    _probe_cast_kernel[(1,)](src, dst, 3, BLOCK=4)
    if torch.equal(dst, src.bfloat16()):
        _fixed("fp32 -> bf16 .to() truncating instead of rounding to nearest even")
    # Seen with triton 3.9.0: [1.0, 255.0, -1.0] where torch rounds to [1.0078, 256, -1.0078].
    assert dst.float().tolist() == [1.0, 255.0, -1.0]


def test_quirk_int8_to_bf16_reinterprets_bits():
    assert _config.QUIRKS.int8_to_bf16_reinterprets
    src = torch.tensor([1, -1, 2, 100], dtype=torch.int8)
    dst = torch.empty(4, dtype=torch.bfloat16)
    _probe_cast_kernel[(1,)](src, dst, 4, BLOCK=4)
    if torch.equal(dst.float(), src.float()):
        _fixed("int8 -> bf16 .to() reinterpreting the integer as bf16 bits")
    # Seen with triton 3.9.0: 1 -> 9.2e-41, -1 -> nan (0xFFFF), 2 -> 1.8e-40, 100 -> 9.2e-39.
    got = dst.float()
    assert got[0].abs() < 1e-30 and torch.isnan(got[1])
