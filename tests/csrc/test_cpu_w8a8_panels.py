"""The W8A8 kernels (AVX2, and AVX-512 VNNI where it runs) on the held w8a8-cpu layout
(bigperf._C.int8_dynamic_linear_panels): every test runs on each runnable ISA path.

Exact int32 sums and the reference's float64 rescale, so every output matches
dynamic_reference on the same codes to the last bit of the activation; checked at every
tile remainder (1..7 rows, 13, 16), across K slices and the row-block loop, for panel
tails in N and K, each x dtype and activation, given absmax, threads, and the binding's
refusals. Runs on any CPU whose AVX2 path is runnable (AVX-512 CPUs included).
"""

from __future__ import annotations

import pytest
import torch

from bigperf.formats.w8a8_cpu import pack_w8a8_cpu, unpack_w8a8_cpu, unit_of
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.int8_linear import dynamic_reference
from bigperf.quant import quantize_weight
from tests.helpers import TOLERANCE, rel_error

C = pytest.importorskip("bigperf._C", reason="bigperf._C is not built")
if not hasattr(C, "int8_dynamic_linear_panels"):
    pytest.skip("bigperf._C was built without the w8a8-cpu kernel (rebuild the package)", allow_module_level=True)
if "avx2" not in C.runnable_isas():
    pytest.skip("the w8a8-cpu kernel is AVX2 code; this CPU or build has no AVX2 path", allow_module_level=True)

CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
pytestmark = pytest.mark.usefixtures("layout_isa")  # every test on each ISA path (conftest.py)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _weight(n, k, seed=1):
    q = quantize_weight(_randn(n, k, seed=seed, scale=0.2))
    return q.qweight, q.scale


def _run(x, layout, bias=None, act="none", threads=1, absmax=None, out=None):
    m, k = x.shape
    n = layout.n
    out = torch.empty(m, n, dtype=x.dtype) if out is None else out
    C.int8_dynamic_linear_panels(_ISA, x.data_ptr(), x.stride(0), CODE[x.dtype], layout.weight.data_ptr(),
                                 layout.colsum.data_ptr(), layout.scale.data_ptr(),
                                 bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, n, k,
                                 ACTIVATIONS.index(act), threads, layout.act_bits,
                                 absmax.data_ptr() if absmax is not None else 0)
    return out


@pytest.mark.parametrize("act_bits", (8, 7))
@pytest.mark.parametrize("n, k", [(1, 1), (15, 31), (17, 33), (40, 100), (130, 256)])
# 7 .. 33: the AVX-512 kernel's dot form in balanced blocks of up to 6 rows (every block size).
@pytest.mark.parametrize("m", (1, 2, 3, 4, 5, 6, 7, 9, 13, 16, 17, 31, 33))
def test_every_tile_remainder_and_panel_tail_is_exact(m, n, k, act_bits):
    qweight, scale = _weight(n, k, seed=n + k)
    layout = pack_w8a8_cpu(qweight, scale, act_bits)
    x = _randn(m, k, seed=m)
    bias = _randn(n, seed=3)
    got = _run(x, layout, bias)
    assert torch.equal(got, dynamic_reference(x, qweight, scale, bias, "none", act_bits))


@pytest.mark.parametrize("act_bits", (8, 7))
def test_k_slices_and_row_blocks(act_bits):
    """K = 1100 over 200 rows: 34 balanced row blocks of the AVX-512 dot form per group of
    panels, on 2 threads (the AVX2 kernel: several K slices of its GEMM, more than one row
    block of 192)."""
    n, k = 48, 1100
    qweight, scale = _weight(n, k, seed=7)
    layout = pack_w8a8_cpu(qweight, scale, act_bits)
    for m in (7, 200):
        x = _randn(m, k, seed=m)
        assert torch.equal(_run(x, layout, threads=2), dynamic_reference(x, qweight, scale, None, "none", act_bits))


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=lambda d: str(d)[6:])
def test_dtypes_and_activations(dtype, act):
    n, k = 33, 70
    qweight, scale = _weight(n, k, seed=9)
    for act_bits, m in ((8, 3), (7, 9)):
        layout = pack_w8a8_cpu(qweight, scale, act_bits)
        x = _randn(m, k, seed=5, dtype=dtype)
        bias = _randn(n, seed=6)
        want = dynamic_reference(x, qweight, scale, bias, act, act_bits)
        got = _run(x, layout, bias, act)
        # fp32: the activation's last bits; half outputs: their rounding (tests/csrc/test_cpu_int8_linear.py)
        assert got.dtype == dtype and rel_error(got, want) <= (1e-6 if dtype == torch.float32 else TOLERANCE[dtype])


@pytest.mark.parametrize("act_bits", (8, 7))
def test_given_absmax_and_strided_rows_and_untouched_padding(act_bits):
    n, k, m = 20, 45, 11
    qweight, scale = _weight(n, k, seed=11)
    layout = pack_w8a8_cpu(qweight, scale, act_bits)
    x = _randn(m, k + 7, seed=12)[:, :k]  # row stride k + 7
    absmax = 2 * x.abs().amax(-1)
    out = torch.full((m, n + 5), 7.0)  # row stride n + 5: the 5 extra columns must stay 7
    _run(x, layout, absmax=absmax, out=out)
    assert torch.equal(out[:, :n], dynamic_reference(x, qweight, scale, None, "none", act_bits, absmax))
    assert (out[:, n:] == 7.0).all()


@pytest.mark.parametrize("m", (1, 2, 30))
def test_threads_agree(m):
    """Enough work that 2 threads split the column blocks (int8_linear_common.h: threads_for)."""
    qweight, scale = _weight(600, 520, seed=13)
    layout = pack_w8a8_cpu(qweight, scale, 8)
    x = _randn(m, 520, seed=14)
    assert torch.equal(_run(x, layout, threads=1), _run(x, layout, threads=2))


def test_layout_order_is_the_one_the_kernel_reads():
    """weight[p, (unit * 16 + c) * u + e] holds the code of column 16 p + c at k = u * unit + e:
    the order csrc/cpu/int8_dynamic_avx2.cpp reads, and int8_dynamic_avx512.cpp's load_quad
    (a negative control for both packers)."""
    qweight, scale = _weight(20, 40, seed=15)
    for act_bits in (8, 7):
        u = unit_of(act_bits)
        layout = pack_w8a8_cpu(qweight, scale, act_bits)
        assert layout.weight.shape == (2, 64 * 16)
        for p, c, k in ((0, 0, 0), (0, 5, 3), (1, 3, 39), (0, 15, 17)):
            unit, e = divmod(k, u)
            assert layout.weight[p, (unit * 16 + c) * u + e] == qweight[16 * p + c, k]
        assert (layout.weight[1].view(-1, 16, u)[:, 4:] == 0).all()  # columns 20..31: padding
        assert torch.equal(layout.colsum[:20], qweight.sum(1, dtype=torch.int32)) and (layout.colsum[20:] == 0).all()
        assert torch.equal(unpack_w8a8_cpu(layout)[0], qweight)


def test_binding_refuses_bad_arguments():
    qweight, scale = _weight(16, 32)
    layout = pack_w8a8_cpu(qweight, scale, 8)
    x = _randn(2, 32)
    out = torch.empty(2, 16)
    args = dict(isa=_ISA, x=x.data_ptr(), x_row_stride=32, x_dtype=0, panels=layout.weight.data_ptr(),
                colsum=layout.colsum.data_ptr(), w_scale=scale.data_ptr(), bias=0, out=out.data_ptr(),
                out_row_stride=16, M=2, N=16, K=32, act=0, num_threads=1, act_bits=8)
    for change, words in (({"act_bits": 6}, "'act_bits' must be 7 or 8"), ({"colsum": 0}, "'colsum'"),
                          ({"K": 0}, "'K' must be positive"), ({"out_row_stride": 3}, "out_row_stride"),
                          ({"num_threads": 0}, "num_threads"), ({"act": 99}, "activation code"),
                          ({"isa": "scalar"}, "'isa' must be 'avx2' or 'avx512'")):
        with pytest.raises(ValueError, match=words):
            C.int8_dynamic_linear_panels(**{**args, **change})
