"""The ops on the triton backend (CPU tensors under TRITON_INTERPRET=1), vs float64.

The kernels' own tests call the launchers; these check the op → launcher wiring
(reshapes, bias conversion, residual, backend selection)."""

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported; run via `make test` "
                "(separate pytest process)", allow_module_level=True)

import bigperf  # noqa: E402
from bigperf.ops.fused_linear import fused_linear  # noqa: E402
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error  # noqa: E402

pytestmark = pytest.mark.interpreter


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                             (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16)])
def test_fused_linear_op_on_triton(x_dtype, w_dtype):
    x = random_tensor(2, 3, 40, dtype=x_dtype)
    w = random_tensor(24, 40, dtype=w_dtype, seed=1, scale=0.2)
    b = random_tensor(24, seed=2, dtype=torch.bfloat16)  # converted to fp32 by the op
    r = random_tensor(2, 3, 24, dtype=x_dtype, seed=3)
    with bigperf.use_backend("triton"):
        out = fused_linear(x, w, b, r, "gelu")
    assert out.shape == (2, 3, 24) and out.dtype == x_dtype
    assert rel_error(out, fused_linear_fp64(x, w, b, r, "gelu")) < max(TOLERANCE[x_dtype], 1e-5)


def test_triton_refuses_a_combination_it_does_not_compile():
    x = random_tensor(2, 16, dtype=torch.bfloat16)
    w = random_tensor(8, 16)
    with bigperf.use_backend("triton"), pytest.raises(bigperf.NoBackendError, match="triton: needs weight"):
        fused_linear(x, w)
