"""The int8 ops' contract: references against float64 math, validation, opcheck.

Kernel backends are compared with these references in tests/csrc and tests/kernels."""

import os

import pytest
import torch

import bigperf

from bigperf.ops.int8_linear import (dynamic_reference, int8_dynamic_linear, int8_weight_linear,
                                     weight_only_reference)
from bigperf.quant import dequantize_weight, quantize_activation_per_token, quantize_weight
from tests.helpers import (
    assert_paths_answer_as_canonical,
    fused_linear_fp64,
    random_tensor,
    rel_error,
    without_cpu_kernel,
)


def packed(n=24, k=128, group_size=None, symmetric=True, seed=0):
    return quantize_weight(random_tensor(n, k, seed=seed), group_size=group_size, symmetric=symmetric)


@pytest.mark.parametrize("group_size,symmetric", [(None, True), (32, True), (64, False)])
def test_weight_only_reference_is_dequantised_linear(group_size, symmetric):
    q = packed(group_size=group_size, symmetric=symmetric)
    x, b = random_tensor(5, 128, seed=1), random_tensor(24, seed=2)
    expected = fused_linear_fp64(x, dequantize_weight(q.qweight, q.scale, q.zero_point).double(), b, None, "silu")
    with torch.no_grad():
        assert rel_error(int8_weight_linear(x, q.qweight, q.scale, q.zero_point, b, "silu"), expected) < 1e-5
        assert rel_error(weight_only_reference(x, q.qweight, q.scale, q.zero_point, b, "silu"), expected) < 1e-5


@pytest.mark.parametrize("act_bits", [8, 7])
def test_dynamic_reference_is_exact_integer_math(act_bits):
    q = packed()
    x, b = random_tensor(2, 3, 128, seed=3), random_tensor(24, seed=4)
    xq, xs = quantize_activation_per_token(x.reshape(-1, 128), act_bits)
    assert xq.abs().max() == (127 if act_bits == 8 else 63)
    exact = (xq.long() @ q.qweight.long().t()).double() * xs.double()[:, None] * q.scale.double().t() + b.double()
    out = int8_dynamic_linear(x, q.qweight, q.scale, b, "relu", act_bits)
    assert out.shape == (2, 3, 24)
    assert rel_error(out.reshape(-1, 24), exact.relu()) < 1e-6
    assert torch.equal(dynamic_reference(x, q.qweight, q.scale, b, "relu", act_bits), out) or rel_error(
        dynamic_reference(x, q.qweight, q.scale, b, "relu", act_bits), out) < 1e-6


def test_opcheck_both_ops():
    q = packed(group_size=32, symmetric=False)
    x, b = random_tensor(3, 128), random_tensor(24)
    torch.library.opcheck(torch.ops.bigperf.int8_weight_linear.default, (x, q.qweight, q.scale, q.zero_point, b, "gelu"))
    q = packed()
    torch.library.opcheck(torch.ops.bigperf.int8_dynamic_linear.default, (x, q.qweight, q.scale, b, "none"))
    torch.library.opcheck(torch.ops.bigperf.int8_dynamic_linear.default, (x, q.qweight, q.scale, b, "none", 7))
    x12 = random_tensor(12, 128, seed=5)  # the CPU kernel's GEMM form (M >= 8)
    torch.library.opcheck(torch.ops.bigperf.int8_dynamic_linear.default, (x12, q.qweight, q.scale, None, "gelu", 7))


def test_schema_has_act_bits_and_act_absmax_with_defaults():
    arguments = torch.ops.bigperf.int8_dynamic_linear.default._schema.arguments
    assert arguments[-2].name == "act_bits" and arguments[-2].default_value == 8
    assert arguments[-1].name == "act_absmax" and arguments[-1].default_value is None


def test_opcheck_and_compile_with_act_absmax():
    q = packed()
    x = random_tensor(2, 3, 128)
    absmax = 2 * x.abs().amax(-1)
    torch.library.opcheck(torch.ops.bigperf.int8_dynamic_linear.default, (x, q.qweight, q.scale, None, "none", 8,
                                                                          absmax))
    f = lambda x, a: int8_dynamic_linear(x, q.qweight, q.scale, None, "none", 8, a)  # noqa: E731
    out = torch.compile(f, fullgraph=True, backend="eager")(x, absmax)
    assert torch.equal(out, dynamic_reference(x, q.qweight, q.scale, None, "none", 8, absmax))
    assert not torch.equal(out, int8_dynamic_linear(x, q.qweight, q.scale))


def test_compile_fullgraph():
    q = packed()
    x = random_tensor(4, 128)
    f = lambda x: int8_weight_linear(x, q.qweight, q.scale) + int8_dynamic_linear(x, q.qweight, q.scale)  # noqa: E731
    assert torch.allclose(torch.compile(f, fullgraph=True, backend="eager")(x), f(x))


def test_compile_fullgraph_act_bits_7():
    q = packed()
    x = random_tensor(9, 128)
    f = lambda x: int8_dynamic_linear(x, q.qweight, q.scale, None, "none", 7)  # noqa: E731
    out = torch.compile(f, fullgraph=True, backend="eager")(x)
    assert torch.equal(out, dynamic_reference(x, q.qweight, q.scale, None, "none", 7))
    assert not torch.equal(out, int8_dynamic_linear(x, q.qweight, q.scale))  # 8-bit differs


def test_negative_control_changed_code_changes_one_column():
    q = packed()
    x = random_tensor(2, 128)
    before = int8_weight_linear(x, q.qweight, q.scale)
    qw = q.qweight.clone()
    qw[7, 3] = qw[7, 3] // 2 + 5
    after = int8_weight_linear(x, qw, q.scale)
    assert (after != before).any(dim=0).nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("call,error,words", [
    (lambda x, q: int8_weight_linear(x, q.qweight.float(), q.scale), TypeError, ["'qweight'", "int8"]),
    (lambda x, q: int8_weight_linear(x, q.qweight, q.scale.double()), TypeError, ["'scale'", "float32"]),
    (lambda x, q: int8_weight_linear(x, q.qweight, q.scale[:5]), ValueError, ["'scale'", "shape"]),
    (lambda x, q: int8_weight_linear(x, q.qweight, torch.ones(24, 3)), ValueError, ["'scale'"]),  # 128/3
    (lambda x, q: int8_weight_linear(x, q.qweight, torch.ones(24, 8)), ValueError, ["'scale'", "group_size"]),  # 16
    (lambda x, q: int8_weight_linear(x, q.qweight, q.scale, torch.zeros(24, 2, dtype=torch.int8)), ValueError,
     ["'zero_point'"]),
    (lambda x, q: int8_weight_linear(x, q.qweight, q.scale, q.scale), TypeError, ["'zero_point'", "int8"]),
    (lambda x, q: int8_weight_linear(x[:, :64], q.qweight, q.scale), ValueError, ["'x'", "features"]),
    (lambda x, q: int8_weight_linear(x.int(), q.qweight, q.scale), TypeError, ["'x'"]),
    (lambda x, q: int8_weight_linear(x, q.qweight, q.scale, None, torch.ones(3)), ValueError, ["'bias'"]),
    (lambda x, q: int8_dynamic_linear(x, q.qweight, torch.ones(24, 4)), ValueError, ["'scale'", "per channel"]),
    (lambda x, q: int8_dynamic_linear(x, q.qweight, q.scale, None, "swish"), ValueError, ["'activation'"]),
    (lambda x, q: int8_dynamic_linear(x, q.qweight, q.scale, None, "none", 8, torch.ones(3)), ValueError,
     ["'act_absmax'", "leading shape"]),
    (lambda x, q: int8_dynamic_linear(x, q.qweight, q.scale, None, "none", 8, torch.ones(2, dtype=torch.float64)),
     TypeError, ["'act_absmax'", "float32"]),
    (lambda x, q: int8_dynamic_linear(x, q.qweight, q.scale, None, "none", 4), ValueError,
     ["bigperf.int8_dynamic_linear", "'act_bits'", "7 or 8"]),
    (lambda x, q: int8_dynamic_linear(x, q.qweight, q.scale, None, "none", True), ValueError, ["'act_bits'"]),
])
def test_bad_input_is_refused_clearly(call, error, words):
    x, q = random_tensor(2, 128), packed()
    with pytest.raises(error) as info:
        call(x, q)
    for word in words:
        assert word in str(info.value)


def test_layout_op_opcheck_and_compile():
    """The op behind a layer held in the CUDA W8A16 layout (on the CPU: unpacked per call)."""
    from bigperf.formats.w8a16_cuda import pack_w8a16
    from bigperf.ops.int8_layout_linear import int8_weight_linear_w8a16

    q = packed(n=40, group_size=32, symmetric=False)
    layout = pack_w8a16(q.qweight, q.scale, q.zero_point)
    x, b = random_tensor(3, 128), random_tensor(40)
    args = (x, layout.weight, layout.scale, layout.zero, layout.n, layout.k, 32, b, "silu")
    torch.library.opcheck(torch.ops.bigperf.int8_weight_linear_w8a16.default, args)
    # One path for both ops: the measuring dispatcher picks each op's fastest independently,
    # and two paths agree to rounding only.
    with bigperf.use_backend("cpu"):
        expected = int8_weight_linear(x, q.qweight, q.scale, q.zero_point, b, "silu")
        assert torch.equal(int8_weight_linear_w8a16(x, layout, b, "silu"), expected)
        f = lambda x: int8_weight_linear_w8a16(x, layout, b, "silu")  # noqa: E731
        assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x), expected)


def _w8a16_call(n=40, k=128, group_size=32):
    from bigperf.formats.w8a16_cuda import pack_w8a16

    q = packed(n=n, k=k, group_size=group_size, symmetric=False)
    layout = pack_w8a16(q.qweight, q.scale, q.zero_point)
    x = random_tensor(3, k)
    return q, x, (x, layout.weight, layout.scale, layout.zero, layout.n, layout.k, group_size, None, "none")


def test_layout_op_paths_answer_as_int8_weight_linears_own():
    """Each path of the W8A16-layout op but its own cuda kernel is int8_weight_linear's path
    of that name: the same why_not on the unpacked weight (triton refuses on this CPU)."""
    from bigperf.ops.int8_layout_linear import LAYOUT_BACKENDS
    from bigperf.ops.int8_linear import WEIGHT_ONLY_BACKENDS

    q, x, layout_args = _w8a16_call()
    canonical_args = (x, q.qweight, q.scale, q.zero_point, None, "none")
    assert_paths_answer_as_canonical(LAYOUT_BACKENDS, WEIGHT_ONLY_BACKENDS, "cuda", layout_args, canonical_args)
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert LAYOUT_BACKENDS.backends["triton"].why_not(*layout_args) is not None


def test_layout_op_without_the_cpu_kernel_does_not_claim_cpu(monkeypatch):
    """bigperf._C without int8_weight_linear: the layout op must not select 'cpu' (it would
    then have run another path than the one it reported)."""
    from bigperf.ops.int8_layout_linear import LAYOUT_BACKENDS, int8_weight_linear_w8a16_op

    without_cpu_kernel(monkeypatch, "int8_weight_linear")
    q, x, args = _w8a16_call()
    assert "without int8_weight_linear" in LAYOUT_BACKENDS.backends["cpu"].why_not(*args)
    assert LAYOUT_BACKENDS.select(*args).name != "cpu"
    expected = fused_linear_fp64(x, dequantize_weight(q.qweight, q.scale, q.zero_point).double())
    assert rel_error(int8_weight_linear_w8a16_op(*args), expected) < 1e-2


def test_w8a8_cpu_path_says_why_not_beyond_its_int32_limit():
    """The CPU W8A8 kernel refuses K > 131071 (int32 sums); its path must say so up front, so the
    dispatcher (measuring on or off) never picks a path that would raise at the call."""
    from bigperf.formats.int8_rowmajor import CPU_DYNAMIC_MAX_K
    from bigperf.ops.int8_linear import DYNAMIC_BACKENDS

    assert CPU_DYNAMIC_MAX_K == 131071
    cpu = DYNAMIC_BACKENDS.backends["cpu"]
    for k, refused in ((CPU_DYNAMIC_MAX_K, False), (CPU_DYNAMIC_MAX_K + 1, True)):
        x = torch.empty(1, k)
        qweight, scale = torch.empty(4, k, dtype=torch.int8, device="meta"), torch.empty(4, 1, device="meta")
        reason = cpu.why_not(x, qweight, scale, None, "none")
        assert (reason is not None and "131071" in reason) == refused, reason


def test_w8a8_never_sums_codes_in_an_fp16_gemm():
    """Found by make fuzz: W8A8 with fp16 x on the torch backend summed x's int8 codes in an
    fp16 GEMM, whose sums (up to 127 * 127 * K) overflowed to Inf at K = 64. fp16 is no
    candidate for W8A8 (its canonical and CPU panel ops both); the torch backend computes in fp32."""
    from bigperf.formats.w8a8_cpu import pack_w8a8_cpu
    from bigperf.ops.int8_dynamic_layout_linear import LAYOUT_BACKENDS
    from bigperf.ops.int8_linear import DYNAMIC_BACKENDS

    q = packed(n=8, k=64, seed=5)
    x = (random_tensor(4, 64, seed=6) * 3).half()
    layout = pack_w8a8_cpu(q.qweight, q.scale)
    layout_args = (x, layout.weight, layout.colsum, layout.scale, layout.n, layout.k, None, "none", 8, None)
    for table, args in ((DYNAMIC_BACKENDS, (x, q.qweight, q.scale, None, "none", 8, None)),
                        (LAYOUT_BACKENDS, layout_args)):
        assert "overflows" in table.backends["torch:fp16"].why_not(*args)
    with bigperf.use_backend("torch"):
        out = int8_dynamic_linear(x, q.qweight, q.scale, None, "none")
    assert torch.isfinite(out).all()
    assert rel_error(out, dynamic_reference(x, q.qweight, q.scale, None, "none")) < 1e-3
