"""bigperf.kernels.int8_matmul under the Triton CPU interpreter.

Run in its own process, e.g. ``TRITON_INTERPRET=1 pytest tests/kernels -m interpreter``:
triton decides at @triton.jit decoration time whether kernels are interpreted, so the
variable must be set before triton is first imported.

Under the interpreter the split-K path sizes itself for _config.INT8_INTERPRETER_SM_COUNT
SMs, so M <= 16 with a few N tiles and K >= 128 takes it with several splits.
"""
import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "needs TRITON_INTERPRET=1 set before triton is imported; run via `make test` "
        "(separate pytest process)",
        allow_module_level=True,
    )

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402

import bigperf  # noqa: E402
from bigperf import quant  # noqa: E402
from bigperf.kernels import _config  # noqa: E402
from bigperf.kernels import int8_matmul as im  # noqa: E402
from bigperf.kernels.int8_matmul import (  # noqa: E402
    ACTIVATIONS,
    int8_dynamic_linear,
    int8_weight_linear,
)
from bigperf.ops import int8_linear as ops  # noqa: E402

if not _config.INTERPRETER:
    pytest.skip("bigperf.kernels was imported before TRITON_INTERPRET=1 was set",
                allow_module_level=True)

pytestmark = [
    pytest.mark.interpreter,
    # exp(-t) overflowing to inf inside sigmoid-style activations is the intended
    # saturation (x / inf -> 0), as on the GPU.
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
]

WEIGHT_NAME = "bigperf.kernels.int8_matmul.int8_weight_linear"
DYNAMIC_NAME = "bigperf.kernels.int8_matmul.int8_dynamic_linear"

# (dtype, max relative Frobenius error against the float64 reference). The weight codes
# are exact in every dtype and scales multiply fp32 partial sums, so the bounds are the
# accumulation (fp32) and the final rounding of the output (fp16, bf16).
DTYPES = [
    pytest.param(torch.float32, 1e-5, id="fp32"),
    pytest.param(torch.float16, 2e-3, id="fp16"),
    # bf16 goes through the interpreter workarounds (UPCAST_DOT, ROUND_BF16_OUT).
    pytest.param(torch.bfloat16, 1e-2, id="bf16"),
]
# (group_size, symmetric)
QUANT = [
    pytest.param(None, True, id="channel"),
    pytest.param(None, False, id="channel-zp"),
    pytest.param(32, True, id="g32"),
    pytest.param(64, False, id="g64-zp"),
    pytest.param(128, True, id="g128"),
    pytest.param(256, False, id="g256-zp"),
]
# M <= 16 with K >= 256 takes the split-K path (asserted in test_path_taken; for K = 256
# with group 256 there is one chunk, so that case runs unsplit); M = 17 and 40 the regular
# one (40: three row blocks, a partial GROUP_M group). N is never a multiple of 16; K is a
# multiple of every group size.
SPLIT_SHAPES = [(1, 40, 512), (3, 33, 256), (16, 24, 256)]
REGULAR_SHAPES = [(17, 40, 256), (40, 70, 256)]
# Per channel, K need not be a multiple of anything.
ODD_K_SHAPES = [(1, 33, 100), (3, 24, 50), (17, 40, 72)]

_ACT = {
    "none": lambda v: v,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"),
    "silu": F.silu,
}


def _id(shape):
    return "x".join(map(str, shape))


def make(m, n, k, dtype, group=None, symmetric=True, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    qw = quant.quantize_weight(torch.randn(n, k, generator=g), group, symmetric)
    b = torch.randn(n, generator=g) if bias else None
    return x, qw, b


def weight_reference(x, qw, bias, activation):
    """float64: (q - z) * s and the GEMM without any rounding."""
    n, k = qw.qweight.shape
    groups = qw.scale.shape[1]
    q = qw.qweight.double().reshape(n, groups, k // groups)
    if qw.zero_point is not None:
        q = q - qw.zero_point.double()[..., None]
    w = (q * qw.scale.double()[..., None]).reshape(n, k)
    y = x.double() @ w.t()
    if bias is not None:
        y = y + bias.double()
    return _ACT[activation](y)


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def splits(m, n, k, group=None):
    return _config.int8_split_k(m, n, k, group or 0, _config.INT8_INTERPRETER_SM_COUNT)[0]


@pytest.fixture
def poison_empty(monkeypatch):
    """NaN-fill every float allocation (outputs and the split-K workspace) so that an
    element no kernel wrote shows."""
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)


@pytest.fixture
def reduce_launches(monkeypatch):
    """The grids of every split-K reduce launch (the split path ran once per entry)."""
    launches = []
    real_reduce = im._split_k_reduce_kernel

    class Spy:
        def __getitem__(self, grid):
            launches.append(grid)
            return real_reduce[grid]

    monkeypatch.setattr(im, "_split_k_reduce_kernel", Spy())
    return launches


@pytest.fixture
def no_split_k(monkeypatch):
    monkeypatch.setattr(_config, "INT8_SPLIT_K_MAX_M", 0)


def test_interpreter_uses_exactly_one_config():
    # Autotuning more than one config needs a GPU driver to benchmark.
    for tuned in (im._int8_weight_tuned, im._int8_weight_split_tuned, im._int8_gemm_tuned,
                  im._int8_gemm_split_tuned):
        assert len(tuned.configs) == 1


def test_group_sizes_match_the_quantizer():
    assert _config.INT8_GROUP_SIZES == quant.GROUP_SIZES


@pytest.mark.parametrize("shape", SPLIT_SHAPES + REGULAR_SHAPES, ids=_id)
def test_path_taken(shape):
    m, n, k = shape
    if shape in REGULAR_SHAPES:
        assert m > _config.INT8_SPLIT_K_MAX_M
    else:
        assert splits(m, n, k) > 1 and splits(m, n, k, 64) > 1


# ----------------------------------------------------------------------------- W8A16

@pytest.mark.parametrize("group,symmetric", QUANT)
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", SPLIT_SHAPES + REGULAR_SHAPES, ids=_id)
def test_weight_only_matches_float64(shape, dtype, tol, group, symmetric, poison_empty):
    x, qw, b = make(*shape, dtype, group, symmetric)
    y = int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, b, "gelu_tanh")
    assert y.dtype == dtype and y.shape == shape[:2]
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) or NaN output elements"
    assert rel_err(y, weight_reference(x, qw, b, "gelu_tanh")) <= tol


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "zp"])
@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("shape", ODD_K_SHAPES, ids=_id)
def test_weight_only_odd_k_per_channel(shape, dtype, tol, symmetric, poison_empty):
    x, qw, b = make(*shape, dtype, None, symmetric, seed=1)
    y = int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, b, "silu")
    assert not torch.isnan(y).any()
    assert rel_err(y, weight_reference(x, qw, b, "silu")) <= tol


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype,tol", DTYPES[:2])
@pytest.mark.parametrize("shape,group", [((3, 33, 256), 64), ((17, 40, 128), None)],
                         ids=["split-g64", "regular-channel"])
def test_weight_only_activations(shape, group, dtype, tol, activation):
    x, qw, b = make(*shape, dtype, group, symmetric=False, seed=2)
    y = int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, b, activation)
    assert rel_err(y, weight_reference(x, qw, b, activation)) <= tol
    y = int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, None, activation)
    assert rel_err(y, weight_reference(x, qw, None, activation)) <= tol


@pytest.mark.parametrize("group", [None, 64])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_split_k_matches_regular_path_and_is_deterministic(m, group, monkeypatch, reduce_launches):
    launches = reduce_launches
    x, qw, b = make(m, 40, 512, torch.float32, group, symmetric=False, seed=3)
    y_split = int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, b, "relu")
    again = int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, b, "relu")
    assert len(launches) == 2, "M <= 16 here must take the split-K path"
    assert torch.equal(y_split, again), "split-K must sum its partials in a fixed order"
    monkeypatch.setattr(_config, "INT8_SPLIT_K_MAX_M", 0)
    y_regular = int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, b, "relu")
    assert len(launches) == 2
    torch.testing.assert_close(y_split, y_regular, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m,n,k,group,sms", [
    (1, 4096, 4096, 0, 132), (16, 14336, 4096, 128, 132), (1, 40, 512, 32, 4),
    (3, 33, 96, 0, 4), (1, 4096, 14336, 256, 108), (8, 1024, 1000, 0, 132), (1, 8, 64, 0, 132),
])
def test_split_k_plan(m, n, k, group, sms):
    count, per_split = _config.int8_split_k(m, n, k, group, sms)
    align = _config.int8_split_k_align(group)
    assert 1 <= count <= _config.INT8_SPLIT_K_MAX
    assert per_split % align == 0 and (not group or per_split % group == 0)
    # Every split has work and together they cover K.
    assert (count - 1) * per_split < max(k, 1) <= count * per_split


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("m", [3, 17], ids=["split", "regular"])
def test_weight_only_non_contiguous_inputs(m, dtype, tol, poison_empty):
    n, k, group = 33, 256, 64
    x0, qw, b = make(m, n, k, dtype, group, symmetric=False, seed=4)
    x = torch.zeros(m + 3, 2 * k + 1, dtype=dtype)[1:1 + m, 1::2]
    x.copy_(x0)
    qweight = qw.qweight.t().contiguous().t()  # [N, K] view with unit stride along N
    scale = torch.zeros(n, 2 * qw.scale.shape[1])[:, ::2]
    scale.copy_(qw.scale)
    zero = qw.zero_point.t().contiguous().t()
    bias = torch.zeros(2 * n)[::2]
    bias.copy_(b)
    assert not any(t.is_contiguous() for t in (x, qweight, scale, zero, bias))
    y = int8_weight_linear(x, qweight, scale, zero, bias, "gelu")
    assert not torch.isnan(y).any()
    assert rel_err(y, weight_reference(x0, qw, b, "gelu")) <= tol


def test_transposed_x_view():
    x = torch.randn(72, 3).t()  # stride along K is the row count
    _, qw, b = make(3, 24, 72, torch.float32, seed=5)
    y = int8_weight_linear(x, qw.qweight, qw.scale, None, b, "none")
    assert rel_err(y, weight_reference(x, qw, b, "none")) <= 1e-5


@pytest.mark.parametrize("m", [1, 17], ids=["split", "regular"])
def test_every_element_written_and_correct(m, poison_empty):
    x, qw, b = make(m, 70, 256, torch.float32, 32, symmetric=False, seed=6)
    y = int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point, b, "silu")
    assert not torch.isnan(y).any()
    torch.testing.assert_close(y.double(), weight_reference(x, qw, b, "silu"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [2, 17], ids=["split", "regular"])
def test_changed_code_or_scale_changes_only_its_column(m):
    x, qw, b = make(m, 33, 256, torch.float32, 64, seed=7)
    y0 = int8_weight_linear(x, qw.qweight, qw.scale, None, b, "none")
    q2 = qw.qweight.clone()
    q2[5, 70] = q2[5, 70] + (1 if q2[5, 70] < 127 else -1)
    y1 = int8_weight_linear(x, q2, qw.scale, None, b, "none")
    changed = (y1 != y0).any(dim=0)
    assert changed[5] and changed.sum() == 1, "a changed code must change exactly its column"
    s2 = qw.scale.clone()
    s2[9, 3] *= 2  # group 3 of row 9: K 192..255
    y2 = int8_weight_linear(x, qw.qweight, s2, None, b, "none")
    changed = (y2 != y0).any(dim=0)
    assert changed[9] and changed.sum() == 1, "a changed group scale must change exactly its column"
    part = x[:, 192:] @ (qw.qweight[9, 192:].float() * qw.scale[9, 3])
    torch.testing.assert_close(y2[:, 9] - y0[:, 9], part, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m", [3, 17], ids=["split", "regular"])
def test_bf16_output_is_rounded_to_nearest(m):
    # Guards ROUND_BF16_OUT in both epilogues (GEMM and split-K reduce): a truncating
    # fp32 -> bf16 cast leaves about half of the elements more than half an ulp off.
    x, qw, b = make(m, 33, 256, torch.bfloat16, 128, seed=8)
    y = int8_weight_linear(x, qw.qweight, qw.scale, None, b, "none").double()
    ref = weight_reference(x, qw, b, "none")
    ulp = torch.exp2(torch.floor(torch.log2(ref.abs())) - 7)
    excess = (y - ref).abs() - (0.5 * ulp + 1e-5 * ref.abs())
    assert (excess <= 0).all(), f"{int((excess > 0).sum())} elements not rounded to nearest"


@pytest.mark.parametrize("quirk", ["bf16_dot_on_raw_bits", "fp32_to_bf16_truncates"])
def test_bf16_workarounds_are_still_needed(quirk, monkeypatch):
    # Each interpreter defect the bf16 path works around (kernels/_config.py: QUIRKS) is
    # re-checked on this kernel with its workaround off; once a triton release fixes one,
    # this skips and says so. bf16_dot_on_raw_bits off also exercises the int8 -> bf16
    # .to() (QUIRKS.int8_to_bf16_reinterprets) that the upcast avoids.
    monkeypatch.setattr(im, "QUIRKS", dataclasses.replace(_config.QUIRKS, **{quirk: False}))
    x, qw, b = make(17, 33, 256, torch.bfloat16, 128, seed=8)
    with np.errstate(all="ignore"):  # raw-bit products overflow
        y = int8_weight_linear(x, qw.qweight, qw.scale, None, b, "none").double()
    ref = weight_reference(x, qw, b, "none")
    if quirk == "bf16_dot_on_raw_bits":
        broken = not torch.isfinite(y).all() or rel_err(y, ref) > 1.0
    else:
        ulp = torch.exp2(torch.floor(torch.log2(ref.abs())) - 7)
        broken = ((y - ref).abs() > 0.5 * ulp + 1e-5 * ref.abs()).any()
    if not broken:
        pytest.skip(f"triton {triton.__version__}'s interpreter no longer shows {quirk}; "
                    "the workaround in kernels/int8_matmul.py can be dropped")


def test_empty_k_gives_activation_of_bias():
    b = torch.randn(5)
    y = int8_weight_linear(torch.randn(3, 0), torch.zeros(5, 0, dtype=torch.int8),
                           torch.ones(5, 1), None, b, "relu")
    torch.testing.assert_close(y, torch.relu(b).expand(3, 5))


@pytest.mark.parametrize("m,n", [(0, 5), (4, 0)])
def test_empty_output(m, n):
    q = torch.zeros(n, 32, dtype=torch.int8)
    s = torch.ones(n, 1)
    assert int8_weight_linear(torch.randn(m, 32), q, s).shape == (m, n)
    assert int8_dynamic_linear(torch.randn(m, 32), q, s).shape == (m, n)


# ----------------------------------------------------------------------------- W8A8

@pytest.mark.parametrize("act_bits", [8, 7], ids=["a8", "a7"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
def test_quantize_rows_is_bit_exact(dtype, act_bits):
    qmax = 127.0 if act_bits == 8 else 63.0
    g = torch.Generator().manual_seed(9)
    k = 150  # > INT8_QUANT_BLOCK_K under the interpreter: the row loop takes 3 steps
    x = torch.randn(6, k, generator=g) * torch.tensor([1.0, 1e-3, 50.0, 1.0, 1.0, 1.0])[:, None]
    x[3] = 0.0  # all-zero row: scale 1, codes 0
    # Row 4: absmax qmax gives scale 1, so x / scale sits exactly on .5 ties: half to even.
    x[4] = torch.arange(k) % 7 - 3.5
    x[4, 0] = qmax
    x[5, ::2] = x[5, 1::2] = -2.5  # negative ties
    x[5, 7] = -qmax
    x = x.to(dtype)
    xv = torch.zeros(6, 2 * k, dtype=dtype)[:, ::2]  # non-contiguous rows
    xv.copy_(x)
    q = torch.full((6, 160), 99, dtype=torch.int8)
    scale = torch.empty(6)
    im._quantize_rows_kernel[(6,)](xv, q, scale, scale, k, xv.stride(0), xv.stride(1), q.stride(0),
                                   BLOCK_K=_config.INT8_QUANT_BLOCK_K, QMAX=qmax, GIVEN_ABSMAX=False)
    q_ref, s_ref = quant.quantize_activation_per_token(x, act_bits)
    assert torch.equal(scale, s_ref)
    assert torch.equal(q[:, :k], q_ref), (q[:, :k] != q_ref).nonzero()[:5]
    assert (q[:, k:] == 99).all(), "the row padding must not be written"
    # -2.5 -1.5 -0.5 0.5 1.5 2.5 -3.5 round half to even, as torch.round does.
    assert q[4, 1:8].tolist() == [-2, -2, 0, 0, 2, 2, -4]


DYNAMIC_SHAPES = [(1, 40, 72), (3, 33, 100), (4, 40, 600), (17, 24, 50), (40, 70, 37)]  # (4, 40, 600): split-K


@pytest.mark.parametrize("dtype,tol", [
    # int32 accumulation is exact; only the fp32 rescale (3 roundings) remains.
    pytest.param(torch.float32, 1e-6, id="fp32"),
    # Kernel and reference round nearly the same fp32 value once to the output dtype: an
    # element differs, by one ulp, only where the two straddle a rounding boundary.
    pytest.param(torch.float16, 1e-3, id="fp16"),
    pytest.param(torch.bfloat16, 4e-3, id="bf16"),
])
@pytest.mark.parametrize("shape", DYNAMIC_SHAPES, ids=_id)
@pytest.mark.parametrize("act_bits", [8, 7], ids=["a8", "a7"])
def test_dynamic_matches_reference(shape, dtype, tol, act_bits, poison_empty):
    x, qw, b = make(*shape, dtype, seed=10)
    y = int8_dynamic_linear(x, qw.qweight, qw.scale, b, "gelu", act_bits)
    assert y.dtype == dtype and y.shape == shape[:2]
    assert not torch.isnan(y).any()
    assert rel_err(y, ops.dynamic_reference(x, qw.qweight, qw.scale, b, "gelu", act_bits)) <= tol


@pytest.mark.parametrize("act_bits", [8, 7], ids=["a8", "a7"])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_dynamic_split_k_is_exact_and_deterministic(m, act_bits, monkeypatch, reduce_launches):
    """Small M takes split-K: int32 partials summed exactly, so the result is bit for bit
    the one-pass result, on every run."""
    launches = reduce_launches
    x, qw, b = make(m, 40, 600, torch.float32, seed=12)
    assert splits(m, 40, 600) > 1
    y_split = int8_dynamic_linear(x, qw.qweight, qw.scale, b, "silu", act_bits)
    again = int8_dynamic_linear(x, qw.qweight, qw.scale, b, "silu", act_bits)
    assert len(launches) == 2, "M <= 16 here must take the split-K path"
    assert torch.equal(y_split, again)
    monkeypatch.setattr(_config, "INT8_SPLIT_K_MAX_M", 0)
    y_regular = int8_dynamic_linear(x, qw.qweight, qw.scale, b, "silu", act_bits)
    assert len(launches) == 2
    assert torch.equal(y_split, y_regular), "int32 partials must add up to the one-pass sum exactly"
    assert rel_err(y_split, ops.dynamic_reference(x, qw.qweight, qw.scale, b, "silu", act_bits)) <= 1e-6


@pytest.mark.parametrize("m", [1, 40])  # split-K, and the one-pass GEMM
def test_dynamic_given_absmax(m):
    """act_absmax replaces each row's own absmax (row 0's is below its own: its codes clamp);
    a row holding NaN stays NaN."""
    x, qw, b = make(m, 40, 600, torch.float32, seed=13)
    given = 1.5 * x.abs().amax(-1)
    given[0] = given[0] / 3
    y = int8_dynamic_linear(x, qw.qweight, qw.scale, b, "none", 8, given)
    assert rel_err(y, ops.dynamic_reference(x, qw.qweight, qw.scale, b, "none", 8, given)) <= 1e-6
    assert rel_err(y, int8_dynamic_linear(x, qw.qweight, qw.scale, b, "none", 8)) > 1e-4
    x[0, 3] = float("nan")
    y = int8_dynamic_linear(x, qw.qweight, qw.scale, b, "none", 8, given)
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1:]).all()
    with pytest.raises(ValueError, match="act_absmax"):
        int8_dynamic_linear(x, qw.qweight, qw.scale, b, "none", 8, given[:-1] if m > 1 else given.double())


def test_dynamic_act_bits_7_codes_and_range():
    # 7-bit codes: a row with absmax 63 has scale 1, so the output (identity weight)
    # shows each code; a row of +-3 saturates at +-63, not +-127.
    k = 64
    x = torch.stack([torch.arange(k, dtype=torch.float32) - 32.0 + 0.5, torch.full((k,), 3.0)])
    x[0, 0] = 63.0
    eye = torch.eye(k, dtype=torch.int8)
    y = int8_dynamic_linear(x, eye, torch.ones(k, 1), None, "none", 7)
    q_ref, _ = quant.quantize_activation_per_token(x, 7)
    assert torch.equal(y, q_ref.float() * torch.tensor([[1.0], [3.0 / 63.0]]))
    assert q_ref[1].eq(63).all()
    with pytest.raises(ValueError, match="act_bits"):
        int8_dynamic_linear(x, eye, torch.ones(k, 1), None, "none", 6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dynamic_activations(activation):
    x, qw, b = make(17, 33, 100, torch.float32, seed=11)
    for bias in (b, None):
        y = int8_dynamic_linear(x, qw.qweight, qw.scale, bias, activation)
        ref = ops.dynamic_reference(x, qw.qweight, qw.scale, bias, activation)
        assert rel_err(y, ref) <= 1e-6


def test_dynamic_int32_accumulation_is_exact():
    # Codes at the extremes: |sum| = 127 * 127 * K = 4.1e6, far beyond fp16's 2048 but exact
    # in int32 and in fp32 (< 2**24). A zero row must give exactly the bias.
    k = 256
    x = torch.full((3, k), 3.0)
    x[1] = -x[1]
    x[2] = 0.0
    q = torch.full((5, k), 127, dtype=torch.int8)
    q[1] = -127
    s = torch.ones(5, 1)
    b = torch.arange(5.0)
    y = int8_dynamic_linear(x, q, s, b, "none")
    # x quantises to +-127 with scale 3/127: y = 127 * 127 * K * (3 / 127) + bias.
    expect = 127 * k * 3.0
    assert y[0, 0].item() == pytest.approx(expect, rel=1e-7)
    assert y[1, 1].item() == pytest.approx(expect + 1, rel=1e-7)
    assert torch.equal(y[2], b)


def test_dynamic_non_contiguous_inputs(poison_empty):
    m, n, k = 17, 33, 100
    x0, qw, b = make(m, n, k, torch.float16, seed=12)
    x = torch.zeros(k, 2 * m, dtype=torch.float16).t()[::2]  # strides (2, 2m)
    x.copy_(x0)
    qweight = qw.qweight.t().contiguous().t()
    scale = torch.zeros(n, 3)[:, 1:2]
    scale.copy_(qw.scale)
    assert not any(t.is_contiguous() for t in (x, qweight, scale))
    y = int8_dynamic_linear(x, qweight, scale, b, "relu")
    assert not torch.isnan(y).any()
    assert rel_err(y, ops.dynamic_reference(x0, qw.qweight, qw.scale, b, "relu")) <= 1e-3


def test_dynamic_changed_code_changes_only_its_column():
    x, qw, _ = make(3, 33, 100, torch.float32, seed=13)
    y0 = int8_dynamic_linear(x, qw.qweight, qw.scale)
    q2 = qw.qweight.clone()
    q2[4, 10] = 0 if q2[4, 10] != 0 else 5
    changed = (int8_dynamic_linear(x, q2, qw.scale) != y0).any(dim=0)
    assert changed[4] and changed.sum() == 1


def test_dynamic_empty_k_gives_activation_of_bias():
    b = torch.randn(5)
    y = int8_dynamic_linear(torch.randn(3, 0), torch.zeros(5, 0, dtype=torch.int8),
                            torch.ones(5, 1), b, "silu")
    torch.testing.assert_close(y, F.silu(b).expand(3, 5))


# ----------------------------------------------------------------------------- through the ops

@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("m,group,symmetric", [(1, None, True), (3, 128, False), (17, 64, True)],
                         ids=["m1-channel", "m3-g128-zp", "m17-g64"])
def test_weight_only_op_on_triton_backend(m, group, symmetric, dtype, tol):
    x, qw, b = make(m, 40, 256, dtype, group, symmetric, seed=14)
    x3 = x.reshape(1, m, 256)  # the op flattens leading dimensions
    with bigperf.use_backend("triton"):
        y = ops.int8_weight_linear(x3, qw.qweight, qw.scale, qw.zero_point, b.to(dtype), "silu")
        y_dispatch = torch.ops.bigperf.int8_weight_linear(x, qw.qweight, qw.scale, qw.zero_point,
                                                          b, "silu")
    assert y.shape == (1, m, 40) and y.dtype == dtype
    ref = ops.weight_only_reference(x, qw.qweight, qw.scale, qw.zero_point, b.to(dtype), "silu")
    assert rel_err(y.reshape(m, 40), ref) <= tol
    assert rel_err(y_dispatch, weight_reference(x, qw, b, "silu")) <= tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 1e-3),
                                       (torch.bfloat16, 4e-3)], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("m", [1, 17])
def test_dynamic_op_on_triton_backend(m, dtype, tol):
    x, qw, b = make(m, 40, 100, dtype, seed=15)
    x3 = x.reshape(m, 1, 100)
    with bigperf.use_backend("triton"):
        y = ops.int8_dynamic_linear(x3, qw.qweight, qw.scale, b, "gelu_tanh")
        y_dispatch = torch.ops.bigperf.int8_dynamic_linear(x, qw.qweight, qw.scale, None, "none")
    assert y.shape == (m, 1, 40) and y.dtype == dtype
    ref = ops.dynamic_reference(x3, qw.qweight, qw.scale, b, "gelu_tanh")
    assert rel_err(y, ref) <= tol
    assert rel_err(y_dispatch, ops.dynamic_reference(x, qw.qweight, qw.scale, None, "none")) <= tol


# ----------------------------------------------------------------------------- bad input

def _bad_inputs():
    x, qw, b = make(4, 6, 64, torch.float16, 32, symmetric=False)
    q, s, z = qw.qweight, qw.scale, qw.zero_point
    common = {
        "x-not-tensor": (dict(x=x.tolist()), TypeError, "x"),
        "x-3d": (dict(x=x[None]), ValueError, "x"),
        "x-int": (dict(x=x.to(torch.int32)), TypeError, "x"),
        "qweight-float": (dict(qweight=q.half()), TypeError, "qweight"),
        "qweight-1d": (dict(qweight=q[0]), ValueError, "qweight"),
        "qweight-k-mismatch": (dict(qweight=q[:, :32]), ValueError, "qweight"),
        "scale-fp16": (dict(scale=s.half()), TypeError, "scale"),
        "scale-1d": (dict(scale=s[:, 0]), ValueError, "scale"),
        "scale-rows": (dict(scale=s[:5]), ValueError, "scale"),
        "bias-shape": (dict(bias=b[:5]), ValueError, "bias"),
        "bias-dtype": (dict(bias=b.double()), TypeError, "bias"),
        "bias-device": (dict(bias=b.to("meta")), ValueError, "bias"),
        "activation": (dict(activation="tanh"), ValueError, "activation"),
        # A stride-0 view: 2**31 rows without the memory.
        "x-rows-overflow-int32": (dict(x=x[:1].expand(2 ** 31, 64)), ValueError, "x"),
        "x-on-meta": (dict(x=x.to("meta"), qweight=q.to("meta"), scale=s.to("meta"), bias=None,
                           zero_point=None), ValueError, "x"),
    }
    weight_only = {
        **common,
        # 64 / 3 groups: a group size that does not divide K; 64 / 4 = 16 is not offered.
        "scale-group-not-dividing": (dict(scale=torch.ones(6, 3), zero_point=None), ValueError,
                                     "scale"),
        "scale-group-16": (dict(scale=torch.ones(6, 4), zero_point=None), ValueError, "scale"),
        "zero_point-dtype": (dict(zero_point=z.to(torch.uint8)), TypeError, "zero_point"),
        "zero_point-shape": (dict(zero_point=z[:, :1]), ValueError, "zero_point"),
        "zero_point-not-tensor": (dict(zero_point=3), TypeError, "zero_point"),
    }
    base = dict(x=x, qweight=q, scale=s, zero_point=z, bias=b, activation="relu")
    cases = [pytest.param(int8_weight_linear, WEIGHT_NAME, base, over, exc, arg,
                          id=f"weight-{name}")
             for name, (over, exc, arg) in weight_only.items()]
    sc = s[:, :1].contiguous()
    dynamic = {name: case for name, case in common.items() if "zero_point" not in case[0]}
    dynamic["x-on-meta"] = (dict(x=x.to("meta"), qweight=q.to("meta"), scale=sc.to("meta"),
                                 bias=None), ValueError, "x")
    dynamic["scale-per-group"] = (dict(scale=s), ValueError, "scale")
    # int32 sums of 127 * 127 products overflow past K = 133144 (stride-0 views: no memory).
    big_k = 133_145
    dynamic["x-k-overflows-int32"] = (dict(x=x[:, :1].expand(4, big_k),
                                           qweight=q[:, :1].expand(6, big_k)), ValueError, "x")
    base = dict(x=x, qweight=q, scale=sc, bias=b, activation="relu")
    cases += [pytest.param(int8_dynamic_linear, DYNAMIC_NAME, base, over, exc, arg,
                           id=f"dynamic-{name}")
              for name, (over, exc, arg) in dynamic.items()]
    return cases


@pytest.mark.parametrize("fn,name,base,over,exc,arg", _bad_inputs())
def test_bad_input_raises_clear_error(fn, name, base, over, exc, arg):
    with pytest.raises(exc) as info:
        fn(**{**base, **over})
    msg = str(info.value)
    assert name in msg and f"`{arg}`" in msg, msg
