"""NaN and Inf through the Triton kernels (issue 14, class 9), under the CPU interpreter:
the same F.linear pattern as every other backend (tests/test_reliability_kernels.py).
Run as ``TRITON_INTERPRET=1 pytest -m interpreter tests/kernels``."""
import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported; run via `make test` "
                "(separate pytest process)", allow_module_level=True)

import torch  # noqa: E402

import bigperf  # noqa: E402
from bigperf.ops.activations import ACTIVATIONS  # noqa: E402
from tests.test_reliability_kernels import K, M, N, _expected, _op_cases, _pattern, _poisoned_inputs  # noqa: E402

pytestmark = [pytest.mark.interpreter,
              # exp overflowing to inf inside the sigmoid-style activations is intended
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]

# fp32 x only: the interpreter's bf16 quirks (kernels/_config.py) are not what this checks.
TRITON_OPS = ["fused", "int8_weight_only", "int8_dynamic", "sparse24", "sparse24_int8", "block_sparse"]


@pytest.mark.parametrize("op", [pytest.param(op, marks=pytest.mark.xfail(
    strict=True, reason="the Triton BSR kernel skips blocks that are not stored; its path makes a row of x holding "
    "NaN/Inf all NaN (bigperf/formats/_nonfinite.py: exact for NaN rows, but F.linear gives +-Inf, and relu 0, at "
    "some outputs of an Inf row); exact would need the dense weight per call"))
    if op == "block_sparse" else op for op in TRITON_OPS])
def test_triton_nan_and_inf_propagate_as_in_f_linear(op):
    call, w_dense, w8a8 = _op_cases()[op]
    x, bias = _poisoned_inputs(M, K, N, torch.float32)
    failures = []
    for activation in ACTIVATIONS:
        for b in (None, bias):
            try:
                with bigperf.use_backend("triton"):
                    y = call(x, b, activation)
            except bigperf.ops.NoBackendError as error:
                pytest.skip(f"{op} has no triton path here: {error}")
            expected = _pattern(_expected(x, w_dense, b, activation, w8a8))
            got = _pattern(y)

            if not torch.equal(got, expected):
                rows = (got != expected).any(dim=1).nonzero().flatten().tolist()
                failures.append(f"{activation}, bias={'yes' if b is not None else 'no'}: rows {rows} differ")
    assert not failures, failures


def test_triton_bsr_rows_holding_nan_are_nan_everywhere():
    """What the BSR path does guarantee: a NaN in a row of x makes that whole output row NaN,
    as in F.linear, although the kernel never reads the blocks that are not stored."""
    call, _, _ = _op_cases()["block_sparse"]
    x, _ = _poisoned_inputs(M, K, N, torch.float32)
    x[2:4] = 1.0  # only row 1 keeps a non-finite value: its NaN
    with bigperf.use_backend("triton"):
        try:
            y = call(x, None, "relu")
        except bigperf.ops.NoBackendError as error:
            pytest.skip(f"block_sparse has no triton path here: {error}")
    nan_rows = torch.isnan(y).all(dim=1)
    assert nan_rows[1] and torch.isfinite(y[[0, 2, 3]]).all()
