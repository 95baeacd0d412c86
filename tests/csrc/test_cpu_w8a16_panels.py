"""The W8A16 kernels (AVX2, and AVX-512 where it runs) on the held w8a16-cpu layout
(bigperf._C.int8_weight_linear_panels): every test runs on each runnable ISA path.

Both forms ("dot": the weight streamed per row block; "gemm": the panel GEMM) against the
float64 oracle on the dequantised weight: every row-block remainder of the dot form (1..7
rows, 16, 17: a second pass), panel tails in N, odd K, per-group scales and zero points, K
slices and row blocks of the GEMM, each x dtype and activation, strided rows, threads, and
the binding's refusals. Runs on any
CPU whose AVX2 path is runnable (AVX-512 CPUs included).
"""

from __future__ import annotations

import pytest
import torch

from bigperf.formats.w8a16_cpu import pack_w8a16_cpu, unpack_w8a16_cpu
from bigperf.ops.activations import ACTIVATIONS
from bigperf.quant import dequantize_weight, quantize_weight
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error

C = pytest.importorskip("bigperf._C", reason="bigperf._C is not built")
if not hasattr(C, "int8_weight_linear_panels"):
    pytest.skip("bigperf._C was built without the w8a16-cpu kernels (rebuild the package)", allow_module_level=True)
if "avx2" not in C.runnable_isas():
    pytest.skip("the w8a16-cpu kernels are AVX2 code; this CPU or build has no AVX2 path", allow_module_level=True)

CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
FORMS = ("dot", "gemm")
pytestmark = pytest.mark.usefixtures("layout_isa")  # every test on each ISA path (conftest.py)


def _weight(n, k, seed=1, group_size=None, symmetric=True):
    q = quantize_weight(random_tensor(n, k, seed=seed, scale=0.2), group_size, symmetric=symmetric)
    return q.qweight, q.scale, q.zero_point


def _run(form, x, layout, bias=None, act="none", threads=1, out=None):
    m, k = x.shape
    n = layout.n
    out = torch.empty(m, n, dtype=x.dtype) if out is None else out
    zero = layout.zero.data_ptr() if layout.zero is not None else 0
    C.int8_weight_linear_panels(_ISA, form, x.data_ptr(), x.stride(0), CODE[x.dtype], layout.weight.data_ptr(),
                                layout.scale.data_ptr(), zero, layout.scale.shape[0],
                                bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, n, k,
                                ACTIVATIONS.index(act), threads)
    return out


def _oracle(x, qweight, scale, bias=None, act="none", zero_point=None):
    return fused_linear_fp64(x, dequantize_weight(qweight, scale, zero_point).double(), bias, None, act)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n, k", [(1, 1), (15, 31), (17, 33), (40, 100), (130, 257)])
@pytest.mark.parametrize("m", (1, 2, 3, 4, 5, 6, 7, 16, 17))
def test_every_row_block_and_panel_tail(form, m, n, k):
    qweight, scale, _ = _weight(n, k, seed=n + k)
    layout = pack_w8a16_cpu(qweight, scale)
    x = random_tensor(m, k, seed=m)
    bias = random_tensor(n, seed=3)
    assert rel_error(_run(form, x, layout, bias), _oracle(x, qweight, scale, bias)) < 1e-6


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("group_size, symmetric", [(32, True), (32, False), (64, False), (128, True)])
@pytest.mark.parametrize("m", (1, 2, 3, 5, 17))
def test_groups_and_zero_points(form, m, group_size, symmetric):
    """Per-group scales (and zero points) applied per group: K = 384 spans several groups and,
    in the GEMM, K slices that start inside a group."""
    n, k = 40, 384
    qweight, scale, zero_point = _weight(n, k, seed=m, group_size=group_size, symmetric=symmetric)
    layout = pack_w8a16_cpu(qweight, scale, zero_point)
    assert (layout.zero is None) == symmetric and layout.scale.shape == (k // group_size, 48)
    x = random_tensor(m, k, seed=m + 1)
    bias = random_tensor(n, seed=4)
    want = _oracle(x, qweight, scale, bias, "none", zero_point)
    assert rel_error(_run(form, x, layout, bias), want) < 1e-6


@pytest.mark.parametrize("form", FORMS)
def test_k_slices_and_row_blocks(form):
    """K = 1100 spans several K slices of the GEMM (kKC = 256), 200 rows more than one of its
    row blocks (kMC = 192) and many passes of the dot form (16 rows each)."""
    n, k = 48, 1100
    qweight, scale, _ = _weight(n, k, seed=7)
    layout = pack_w8a16_cpu(qweight, scale)
    for m in (7, 200):
        x = random_tensor(m, k, seed=m)
        assert rel_error(_run(form, x, layout, threads=2), _oracle(x, qweight, scale)) < 1e-6


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=lambda d: str(d)[6:])
def test_dtypes_and_activations(dtype, act):
    n, k = 33, 70
    qweight, scale, _ = _weight(n, k, seed=9)
    layout = pack_w8a16_cpu(qweight, scale)
    bias = random_tensor(n, seed=6)
    for form, m in (("dot", 3), ("gemm", 9)):
        x = random_tensor(m, k, seed=5, dtype=dtype)
        got = _run(form, x, layout, bias, act)
        assert got.dtype == dtype
        assert rel_error(got, _oracle(x, qweight, scale, bias, act)) <= (1e-6 if dtype == torch.float32
                                                                         else TOLERANCE[dtype])


@pytest.mark.parametrize("form", FORMS)
def test_strided_rows_and_untouched_padding(form):
    n, k, m = 20, 45, 11
    qweight, scale, _ = _weight(n, k, seed=11)
    layout = pack_w8a16_cpu(qweight, scale)
    x = random_tensor(m, k + 7, seed=12)[:, :k]  # row stride k + 7
    out = torch.full((m, n + 5), 7.0)  # row stride n + 5: the 5 extra columns must stay 7
    _run(form, x, layout, out=out)
    assert rel_error(out[:, :n], _oracle(x, qweight, scale)) < 1e-6
    assert (out[:, n:] == 7.0).all()


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("m", (1, 2, 30))
def test_threads_agree(form, m):
    """Enough work that 2 threads split the panels (int8_linear_common.h: threads_for)."""
    qweight, scale, zero_point = _weight(600, 512, seed=13, group_size=128, symmetric=False)
    layout = pack_w8a16_cpu(qweight, scale, zero_point)
    x = random_tensor(m, 512, seed=14)
    assert torch.equal(_run(form, x, layout, threads=1), _run(form, x, layout, threads=2))


def test_layout_order_is_the_one_the_kernel_reads():
    """weight[p, k * 16 + c] holds the code of column 16 p + c at k (a negative control for
    the packer: a transposed panel would still round-trip through unpack)."""
    qweight, scale, zero_point = _weight(20, 64, seed=15, group_size=32, symmetric=False)
    layout = pack_w8a16_cpu(qweight, scale, zero_point)
    assert layout.weight.shape == (2, 64 * 16) and layout.scale.shape == layout.zero.shape == (2, 32)
    for p, c, k in ((0, 0, 0), (0, 5, 3), (1, 3, 39), (0, 15, 17)):
        assert layout.weight[p, k * 16 + c] == qweight[16 * p + c, k]
    assert (layout.weight[1].view(64, 16)[:, 4:] == 0).all()  # columns 20..31: padding
    assert layout.scale[1, 7] == scale[7, 1] and layout.zero[0, 19] == zero_point[19, 0]  # group-major
    assert (layout.scale[:, 20:] == 0).all() and (layout.zero[:, 20:] == 0).all()
    unpacked = unpack_w8a16_cpu(layout)
    assert all(torch.equal(a, b) for a, b in zip(unpacked, (qweight, scale, zero_point)))


def test_binding_refuses_bad_arguments():
    qweight, scale, _ = _weight(16, 32)
    layout = pack_w8a16_cpu(qweight, scale)
    x = random_tensor(2, 32)
    out = torch.empty(2, 16)
    args = dict(isa=_ISA, form="dot", x=x.data_ptr(), x_row_stride=32, x_dtype=0, panels=layout.weight.data_ptr(),
                scale=layout.scale.data_ptr(), zero_point=0, groups=1, bias=0, out=out.data_ptr(), out_row_stride=16,
                M=2, N=16, K=32, act=0, num_threads=1)
    for change, words in (({"form": "rows"}, "'form' must be 'dot', 'gemm' or 'gemm-bf16'"), ({"scale": 0}, "'scale'"),
                          ({"groups": 3}, "'groups' 3 must be >= 1 and divide K"), ({"groups": 0}, "'groups'"),
                          ({"K": 0}, "'K' must be positive"), ({"out_row_stride": 3}, "out_row_stride"),
                          ({"num_threads": 0}, "num_threads"), ({"act": 99}, "activation code"),
                          ({"x_dtype": 7}, "x_dtype")):
        with pytest.raises(ValueError, match=words):
            C.int8_weight_linear_panels(**{**args, **change})
