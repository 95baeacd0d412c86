"""bigperf.kernels.sparse_matmul (2:4 and block-sparse) under the Triton CPU interpreter.

Run in its own process: ``TRITON_INTERPRET=1 python -m pytest -q -m interpreter
tests/kernels/test_sparse_matmul_interpreter.py``; triton decides at @triton.jit decoration
time whether kernels are interpreted, so the variable must be set before it is imported.
The oracle is bigperf.sparsity's unpacking followed by float64 math.
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

import bigperf  # noqa: E402
from bigperf.kernels import _config  # noqa: E402
from bigperf.kernels import sparse_matmul as sm  # noqa: E402
from bigperf.kernels.sparse_matmul import (  # noqa: E402
    ACTIVATIONS,
    block_sparse_linear,
    sparse24_linear,
)
from bigperf.ops import sparse_linear as ops  # noqa: E402
from bigperf.sparsity import (  # noqa: E402
    block_mask,
    nm_mask,
    pack_24,
    pack_24_int8,
    pack_bsr,
    unpack_24,
    unpack_bsr,
)
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error  # noqa: E402

if not _config.INTERPRETER:
    pytest.skip("bigperf.kernels was imported before TRITON_INTERPRET=1 was set",
                allow_module_level=True)

pytestmark = [
    pytest.mark.interpreter,
    # exp(-t) overflowing to inf inside sigmoid-style activations is the intended
    # saturation (x / inf -> 0), as on the GPU.
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
]

S24 = "bigperf.kernels.sparse_matmul.sparse24_linear"
BSR = "bigperf.kernels.sparse_matmul.block_sparse_linear"
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
# bf16 runs through the kernels' interpreter workarounds (fp32 dot operands, rounding the
# output by hand: _config.QUIRKS); the same kernel code runs natively in fp16 and fp32.
DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in (F32, F16, BF16)]
# (M, N, K): M = 1, 3, 17; N not a multiple of 16; K a multiple of 8 but not of the
# interpreter's BLOCK_K (32), so the last K step is partial.
SHAPES_24 = [(1, 40, 72), (3, 24, 136), (17, 33, 200)]


def tol(dtype):
    return max(TOLERANCE[dtype], 1e-5)


@pytest.fixture
def poison_empty(monkeypatch):
    """NaN-fill every float allocation of the launchers, so an unwritten element shows."""
    real_empty = torch.empty

    def nan_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)


@pytest.fixture
def no_split(monkeypatch):
    """Pretend the device has no SMs to fill: the 2:4 launcher then never splits K."""
    monkeypatch.setattr(_config, "sm_count", lambda tensor: 0)


def pruned_24(n, k, seed=0):
    w = random_tensor(n, k, seed=seed, scale=k ** -0.5)
    return w * nm_mask(w)


def packed_24(n, k, v_dtype, seed=0):
    w = pruned_24(n, k, seed)
    return pack_24_int8(w) if v_dtype == torch.int8 else pack_24(w.to(v_dtype))


def ref_24(x, p, bias=None, activation="none"):
    w = unpack_24(p.values, p.meta, p.scale, torch.float64)
    return fused_linear_fp64(x, w, bias, None, activation)


def pruned_bsr(n, k, block, density, seed=0, empty_rows=(0,)):
    w = random_tensor(n, k, seed=seed, scale=k ** -0.5)
    w = w * block_mask(w, block, density)
    for r in empty_rows:
        w[r * block[0]:(r + 1) * block[0]] = 0
    return w


def ref_bsr(x, p, bias=None, activation="none"):
    w = unpack_bsr(p.values.double(), p.col_indices, p.row_ptr, x.shape[-1])
    return fused_linear_fp64(x, w, bias, None, activation)


def test_interpreter_uses_exactly_one_config():
    # Autotuning more than one config needs a GPU driver to benchmark.
    for tuned in (sm._sparse24_tuned, sm._sparse24_split_tuned, sm._block_sparse_tuned):
        assert len(tuned.configs) == 1


# ----------------------------------------------------------------------------- 2:4

@pytest.mark.parametrize("v_kind", ["same", "int8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES_24, ids=lambda s: "x".join(map(str, s)))
def test_sparse24_matches_float64_reference(shape, dtype, v_kind, poison_empty):
    m, n, k = shape
    p = packed_24(n, k, torch.int8 if v_kind == "int8" else dtype)
    x, b = random_tensor(m, k, dtype=dtype, seed=1), random_tensor(n, seed=2)
    y = sparse24_linear(x, p.values, p.meta, p.scale, b, "gelu")
    assert y.dtype == dtype and y.shape == (m, n)
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) or NaN output elements"
    assert rel_error(y, ref_24(x, p, b, "gelu")) <= tol(dtype)


@pytest.mark.parametrize("split", [True, False], ids=["split_k", "one_pass"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_sparse24_activations(dtype, activation, split, request):
    if not split:
        request.getfixturevalue("no_split")
    m, n, k = 3, 40, 136
    # The shape must take the path the test is named for.
    assert (_config.sparse24_split_k(m, n, k, _config.sm_count(torch.empty(0)))[0] > 1) == split
    p = packed_24(n, k, dtype)
    x, b = random_tensor(m, k, dtype=dtype, seed=3), random_tensor(n, seed=4)
    y = sparse24_linear(x, p.values, p.meta, None, b, activation)
    assert rel_error(y, ref_24(x, p, b, activation)) <= tol(dtype)


@pytest.mark.parametrize("x_dtype,v_dtype", [(F32, F16), (F32, BF16), (F16, BF16),
                                             (BF16, F16), (F16, F32)],
                         ids=["fp32x_fp16v", "fp32x_bf16v", "fp16x_bf16v", "bf16x_fp16v",
                              "fp16x_fp32v"])
def test_sparse24_values_in_another_dtype(x_dtype, v_dtype):
    p = packed_24(33, 72, v_dtype)
    x = random_tensor(17, 72, dtype=x_dtype, seed=5)
    y = sparse24_linear(x, p.values, p.meta, None, None, "silu")
    assert y.dtype == x_dtype
    assert rel_error(y, ref_24(x, p, None, "silu")) <= tol(x_dtype)


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_sparse24_int8_without_bias_and_bias_in_x_dtype(dtype):
    p = packed_24(24, 64, torch.int8)
    x = random_tensor(3, 64, dtype=dtype, seed=6)
    y = sparse24_linear(x, p.values, p.meta, p.scale)
    assert rel_error(y, ref_24(x, p)) <= tol(dtype)
    b = random_tensor(24, dtype=dtype, seed=7)
    y = sparse24_linear(x, p.values, p.meta, p.scale, b, "relu")
    assert rel_error(y, ref_24(x, p, b, "relu")) <= tol(dtype)


def test_sparse24_split_and_one_pass_agree(monkeypatch):
    p = packed_24(40, 200, F32)
    x = random_tensor(1, 200, seed=8)
    splits = _config.sparse24_split_k(1, 40, 200, _config.sm_count(x))[0]
    assert splits > 2, "the shape should split K several ways under the interpreter"
    y_split = sparse24_linear(x, p.values, p.meta)
    monkeypatch.setattr(_config, "sm_count", lambda tensor: 0)
    y_one = sparse24_linear(x, p.values, p.meta)
    assert rel_error(y_split, y_one) <= 1e-6
    assert rel_error(y_split, ref_24(x, p)) <= 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse24_non_contiguous_inputs(dtype, poison_empty):
    m, n, k = 17, 33, 72
    p = packed_24(n, k, torch.int8)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(m + 4, 2 * k + 3, generator=g).to(dtype)[2:2 + m, 1:1 + 2 * k:2]
    # values with a row stride that is not a whole number of octet words (copied by the
    # launcher), meta stored column-major, scale and bias strided views.
    values = torch.zeros(n, k // 2 + 3, dtype=torch.int8)[:, 1:1 + k // 2]
    values.copy_(p.values)
    meta = p.meta.t().contiguous().t()
    scale = torch.cat([p.scale, p.scale], dim=1)[:, :1]
    b = random_tensor(2 * n, seed=10)[::2]
    assert not (x.is_contiguous() or values.is_contiguous() or meta.is_contiguous())
    y = sparse24_linear(x, values, meta, scale, b, "gelu_tanh")
    assert not torch.isnan(y).any()
    assert rel_error(y, ref_24(x, p, b, "gelu_tanh")) <= tol(dtype)


def test_sparse24_changed_weight_changes_output():
    p = packed_24(24, 64, F32)
    x = random_tensor(3, 64, seed=11)
    y0 = sparse24_linear(x, p.values, p.meta)
    values = p.values.clone()
    values[5, 7] += 1.0
    y1 = sparse24_linear(x, values, p.meta)
    changed = (y1 != y0).any(dim=0)
    assert changed[5] and changed.sum() == 1


def test_sparse24_empty_shapes():
    p = packed_24(24, 64, F16)
    y = sparse24_linear(torch.empty(0, 64, dtype=F16), p.values, p.meta)
    assert y.shape == (0, 24)


def _bad_24_cases():
    p = packed_24(24, 64, F16)
    q = packed_24(24, 64, torch.int8)
    x = random_tensor(3, 64, dtype=F16)
    return [
        ("x_list", lambda: sparse24_linear(x.tolist(), p.values, p.meta), TypeError, "`x`"),
        ("x_int", lambda: sparse24_linear(x.int(), p.values, p.meta), TypeError, "`x`"),
        ("x_3d", lambda: sparse24_linear(x[None], p.values, p.meta), ValueError, "`x`"),
        ("x_k", lambda: sparse24_linear(x[:, :56], p.values, p.meta), ValueError, "`values`"),
        ("k_not_8", lambda: sparse24_linear(x[:, :60], p.values[:, :30], p.meta), ValueError,
         "`x`"),
        ("values_int32", lambda: sparse24_linear(x, p.values.int(), p.meta), TypeError,
         "`values`"),
        ("values_1d", lambda: sparse24_linear(x, p.values[0], p.meta), ValueError, "`values`"),
        ("meta_dtype", lambda: sparse24_linear(x, p.values, p.meta.to(torch.int8)), TypeError,
         "`meta`"),
        ("meta_shape", lambda: sparse24_linear(x, p.values, p.meta[:, :4]), ValueError,
         "`meta`"),
        ("int8_no_scale", lambda: sparse24_linear(x, q.values, q.meta), ValueError, "`scale`"),
        ("float_with_scale", lambda: sparse24_linear(x, p.values, p.meta, q.scale), ValueError,
         "`scale`"),
        ("scale_dtype", lambda: sparse24_linear(x, q.values, q.meta, q.scale.half()), TypeError,
         "`scale`"),
        ("scale_shape", lambda: sparse24_linear(x, q.values, q.meta, q.scale.t()), ValueError,
         "`scale`"),
        ("bias_shape", lambda: sparse24_linear(x, p.values, p.meta, None, torch.zeros(23)),
         ValueError, "`bias`"),
        ("bias_dtype", lambda: sparse24_linear(x, p.values, p.meta, None,
                                               torch.zeros(24, dtype=BF16)), TypeError, "`bias`"),
        ("activation", lambda: sparse24_linear(x, p.values, p.meta, None, None, "tanh"),
         ValueError, "`activation`"),
        ("x_meta_device", lambda: sparse24_linear(x, p.values, p.meta.to("meta")), ValueError,
         "`meta`"),
        ("x_device", lambda: sparse24_linear(x.to("meta"), p.values.to("meta"),
                                             p.meta.to("meta")), ValueError, "`x`"),
    ]


@pytest.mark.parametrize("case", _bad_24_cases(), ids=lambda c: c[0])
def test_sparse24_bad_inputs(case):
    _, call, exc, arg = case
    with pytest.raises(exc, match=f"^{S24}: {arg}"):
        call()


# ----------------------------------------------------------------------------- block-sparse

# (M, block, block rows, block columns): N = rows * bn is not a multiple of 16 where
# bn allows; (24, 8) and (160, 96) are not powers of two (masked tiles), (160, 96) also
# spans two 128-wide N tiles and two 64-deep K steps per block; 4x4 and 8x32 take the
# CUDA-core path.
BSR_SHAPES = [
    (1, (16, 16), 5, 6),
    (3, (32, 16), 3, 5),
    (17, (24, 8), 3, 7),
    (3, (4, 4), 6, 8),
    (17, (8, 32), 5, 3),
    (1, (160, 96), 2, 2),
]


@pytest.mark.parametrize("density", [0.1, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BSR_SHAPES, ids=lambda c: f"m{c[0]}_{c[1][0]}x{c[1][1]}")
def test_block_sparse_matches_float64_reference(case, dtype, density, poison_empty):
    m, block, rows, cols = case
    n, k = rows * block[0], cols * block[1]
    # At 10% some block rows hold no block at all; block row 0 is always empty.
    w = pruned_bsr(n, k, block, density, seed=12, empty_rows=(0,) if density < 1 else ())
    p = pack_bsr(w.to(dtype), block)
    x, b = random_tensor(m, k, dtype=dtype, seed=13), random_tensor(n, seed=14)
    y = block_sparse_linear(x, p.values, p.col_indices, p.row_ptr, b, "gelu")
    assert y.dtype == dtype and y.shape == (m, n)
    assert not torch.isnan(y).any(), "unwritten (NaN-poisoned) or NaN output elements"
    assert rel_error(y, ref_bsr(x, p, b, "gelu")) <= tol(dtype)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("block", [(16, 16), (4, 4)], ids=["dot", "cuda_cores"])
@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_block_sparse_activations(dtype, block, activation):
    n, k = 3 * block[0], 4 * block[1]
    p = pack_bsr(pruned_bsr(n, k, block, 0.5, seed=15).to(dtype), block)
    x, b = random_tensor(3, k, dtype=dtype, seed=16), random_tensor(n, seed=17)
    y = block_sparse_linear(x, p.values, p.col_indices, p.row_ptr, b, activation)
    assert rel_error(y, ref_bsr(x, p, b, activation)) <= tol(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_no_blocks_at_all(dtype, poison_empty):
    p = pack_bsr(torch.zeros(48, 64, dtype=dtype), (16, 16))
    assert p.values.shape[0] == 0
    x, b = random_tensor(3, 64, dtype=dtype, seed=18), random_tensor(48, seed=19)
    y = block_sparse_linear(x, p.values, p.col_indices, p.row_ptr, b, "silu")
    assert rel_error(y, torch.nn.functional.silu(b.double()).expand(3, 48)) <= tol(dtype)
    y = block_sparse_linear(x, p.values, p.col_indices, p.row_ptr)
    assert (y == 0).all()


@pytest.mark.parametrize("x_dtype,v_dtype", [(F32, BF16), (F16, BF16), (BF16, F32)],
                         ids=["fp32x_bf16v", "fp16x_bf16v", "bf16x_fp32v"])
@pytest.mark.parametrize("block", [(16, 32), (8, 8)], ids=["dot", "cuda_cores"])
def test_block_sparse_values_in_another_dtype(x_dtype, v_dtype, block):
    n, k = 3 * block[0], 3 * block[1]
    p = pack_bsr(pruned_bsr(n, k, block, 0.6, seed=20).to(v_dtype), block)
    x = random_tensor(17, k, dtype=x_dtype, seed=21)
    y = block_sparse_linear(x, p.values, p.col_indices, p.row_ptr)
    assert y.dtype == x_dtype
    assert rel_error(y, ref_bsr(x, p)) <= tol(x_dtype)


@pytest.mark.parametrize("block", [(16, 16), (8, 4)], ids=["dot", "cuda_cores"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_non_contiguous_inputs(dtype, block, poison_empty):
    bn, bk = block
    n, k, m = 4 * bn, 5 * bk, 17
    p = pack_bsr(pruned_bsr(n, k, block, 0.5, seed=22).to(dtype), block)
    g = torch.Generator().manual_seed(23)
    x = torch.randn(m + 4, 2 * k + 3, generator=g).to(dtype)[2:2 + m, 1:1 + 2 * k:2]
    values = p.values.transpose(1, 2).contiguous().transpose(1, 2)  # column-major blocks
    cols = torch.stack([p.col_indices, p.col_indices], dim=1)[:, 0]
    rows = torch.stack([p.row_ptr, p.row_ptr], dim=1)[:, 1]
    b = random_tensor(2 * n, seed=24)[::2]
    assert not any(t.is_contiguous() for t in (x, values, cols, rows, b))
    y = block_sparse_linear(x, values, cols, rows, b, "relu")
    assert not torch.isnan(y).any()
    assert rel_error(y, ref_bsr(x, p, b, "relu")) <= tol(dtype)


def test_block_sparse_changed_block_changes_its_rows_only():
    p = pack_bsr(pruned_bsr(64, 64, (16, 16), 0.5, seed=25), (16, 16))
    x = random_tensor(3, 64, seed=26)
    y0 = block_sparse_linear(x, p.values, p.col_indices, p.row_ptr)
    values = p.values.clone()
    values[-1] += 1.0  # the last stored block belongs to the last non-empty block row
    y1 = block_sparse_linear(x, values, p.col_indices, p.row_ptr)
    last_row = int(torch.searchsorted(p.row_ptr, p.values.shape[0] - 1, right=True)) - 1
    changed = (y1 != y0).any(dim=0).reshape(4, 16).any(dim=1)
    assert changed.tolist() == [r == last_row for r in range(4)]


def test_block_sparse_corrupt_indices_stay_in_bounds():
    # The op refuses these before any kernel runs; the kernel itself clamps them, so a
    # caller that skips the op's checks gets a wrong answer, not an out-of-bounds read.
    p = pack_bsr(pruned_bsr(32, 64, (16, 16), 1.0, seed=27), (16, 16))
    x = random_tensor(3, 64, seed=28)
    cols = p.col_indices.clone()
    cols[0], cols[1] = 1 << 30, -(1 << 30)
    rows = p.row_ptr.clone()
    rows[-1] = 1 << 30
    y = block_sparse_linear(x, p.values, cols, rows)
    clamped = p.col_indices.clone()
    clamped[0], clamped[1] = 3, 0  # into [0, K / bk); row_ptr's end into [0, nnz]
    # Accumulated by hand: the clamped columns repeat, which unpack_bsr cannot express.
    w = torch.zeros(32, 64, dtype=torch.float64)
    for i, c in enumerate(clamped.tolist()):
        w[16:32, 16 * c:16 * (c + 1)] += p.values[i].double()  # all blocks are in row 1
    assert p.row_ptr.tolist() == [0, 0, 4]
    assert rel_error(y, x.double() @ w.t()) <= 1e-5


def _bad_bsr_cases():
    p = pack_bsr(pruned_bsr(32, 64, (16, 16), 0.5), (16, 16))
    x = random_tensor(3, 64, dtype=F16)
    v, c, r = p.values.half(), p.col_indices, p.row_ptr
    return [
        ("x_list", lambda: block_sparse_linear(x.tolist(), v, c, r), TypeError, "`x`"),
        ("x_1d", lambda: block_sparse_linear(x[0], v, c, r), ValueError, "`x`"),
        ("x_k", lambda: block_sparse_linear(x[:, :40], v, c, r), ValueError, "`x`"),
        ("values_int8", lambda: block_sparse_linear(x, v.to(torch.int8), c, r), TypeError,
         "`values`"),
        ("values_2d", lambda: block_sparse_linear(x, v[0], c, r), ValueError, "`values`"),
        ("cols_int64", lambda: block_sparse_linear(x, v, c.long(), r), TypeError,
         "`col_indices`"),
        ("cols_count", lambda: block_sparse_linear(x, v, c[:-1], r), ValueError,
         "`col_indices`"),
        ("row_ptr_int64", lambda: block_sparse_linear(x, v, c, r.long()), TypeError,
         "`row_ptr`"),
        ("row_ptr_short", lambda: block_sparse_linear(x, v, c, r[:1]), ValueError, "`row_ptr`"),
        ("bias_shape", lambda: block_sparse_linear(x, v, c, r, torch.zeros(16)), ValueError,
         "`bias`"),
        ("activation", lambda: block_sparse_linear(x, v, c, r, None, "gelu_erf"), ValueError,
         "`activation`"),
        ("values_device", lambda: block_sparse_linear(x, v.to("meta"), c, r), ValueError,
         "`values`"),
        ("row_ptr_device", lambda: block_sparse_linear(x, v, c, r.to("meta")), ValueError,
         "`row_ptr`"),
    ]


@pytest.mark.parametrize("case", _bad_bsr_cases(), ids=lambda c: c[0])
def test_block_sparse_bad_inputs(case):
    _, call, exc, arg = case
    with pytest.raises(exc, match=f"^{BSR}: {arg}"):
        call()


# ----------------------------------------------------------------------------- the ops

@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse24_op_on_triton(dtype):
    p = packed_24(40, 72, dtype)
    q = packed_24(40, 72, torch.int8, seed=1)
    x = random_tensor(2, 3, 72, dtype=dtype, seed=29)
    b = random_tensor(40, dtype=BF16, seed=30)  # converted to fp32 by the op
    with bigperf.use_backend("triton"):
        y = ops.sparse24_linear(x, p.values, p.meta, None, b, "gelu")
        yq = ops.sparse24_linear(x, q.values, q.meta, q.scale, None, "silu")
    assert y.shape == yq.shape == (2, 3, 40) and y.dtype == yq.dtype == dtype
    x2 = x.reshape(6, 72)
    assert rel_error(y.reshape(6, 40), ref_24(x2, p, b, "gelu")) <= tol(dtype)
    assert rel_error(yq.reshape(6, 40), ref_24(x2, q, None, "silu")) <= tol(dtype)


@pytest.mark.parametrize("block", [(16, 16), (4, 8)], ids=["dot", "cuda_cores"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_block_sparse_op_on_triton(dtype, block):
    n, k = 4 * block[0], 6 * block[1]
    p = pack_bsr(pruned_bsr(n, k, block, 0.3, seed=31).to(dtype), block)
    x = random_tensor(2, 3, k, dtype=dtype, seed=32)
    b = random_tensor(n, dtype=dtype, seed=33)
    with bigperf.use_backend("triton"):
        y = ops.block_sparse_linear(x, p.values, p.col_indices, p.row_ptr, b, "relu")
    assert y.shape == (2, 3, n) and y.dtype == dtype
    assert rel_error(y.reshape(6, n), ref_bsr(x.reshape(6, k), p, b, "relu")) <= tol(dtype)


def test_ops_refuse_corrupt_indices_before_the_kernel(monkeypatch):
    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel ran on corrupt index data")

    monkeypatch.setattr(sm, "sparse24_linear", no_kernel)
    monkeypatch.setattr(sm, "block_sparse_linear", no_kernel)
    p = packed_24(24, 64, F32)
    meta = p.meta.clone()
    meta[0, 0] = 0  # both kept positions of a group equal
    pb = pack_bsr(pruned_bsr(32, 64, (16, 16), 0.5), (16, 16))
    cols = pb.col_indices.clone()
    cols[0] = 4
    x = random_tensor(3, 64)
    with bigperf.use_backend("triton"):
        with pytest.raises(ValueError, match="'meta' is corrupt"):
            ops.sparse24_linear(x, p.values, meta)
        with pytest.raises(ValueError, match="corrupt"):
            ops.block_sparse_linear(x, pb.values, cols, pb.row_ptr)
