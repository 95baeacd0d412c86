"""torch.ops.bigperf.fused_linear on every backend that can run here, vs float64."""

import os
import subprocess
import sys

import pytest
import torch

import bigperf
from bigperf import _ext
from bigperf.ops.activations import ACTIVATIONS
from bigperf.ops.fused_linear import BACKENDS, fused_linear
from bigperf.ops.registry import record_paths
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error

CPU_BACKENDS = [name for name in ("cpu", "reference")
                if BACKENDS.backends[name].why_not(torch.empty(1, 4), torch.empty(4, 4), None, None, "none") is None]
ISAS = _ext.runnable_cpu_isas()

# (x dtype, weight dtype, tolerance on the output)
DTYPES = [
    (torch.float32, torch.float32, TOLERANCE[torch.float32]),
    (torch.float32, torch.bfloat16, TOLERANCE[torch.float32]),
    (torch.float32, torch.float16, TOLERANCE[torch.float32]),
    (torch.bfloat16, torch.bfloat16, TOLERANCE[torch.bfloat16]),
    (torch.float16, torch.float16, TOLERANCE[torch.float16]),
    (torch.bfloat16, torch.float32, TOLERANCE[torch.bfloat16]),
]


def make_inputs(m, n, k, x_dtype, w_dtype, *, bias=True, residual=False, seed=0):
    x = random_tensor(m, k, dtype=x_dtype, seed=seed)
    w = random_tensor(n, k, dtype=w_dtype, seed=seed + 1, scale=k ** -0.5)
    b = random_tensor(n, seed=seed + 2) if bias else None
    r = random_tensor(m, n, dtype=x_dtype, seed=seed + 3) if residual else None
    return x, w, b, r


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("x_dtype,w_dtype,tol", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 33, 71), (3, 48, 40), (17, 19, 129), (40, 24, 37)])
def test_matches_float64(backend, x_dtype, w_dtype, tol, m, n, k):
    x, w, b, r = make_inputs(m, n, k, x_dtype, w_dtype, residual=True)
    with bigperf.use_backend(backend):
        out = fused_linear(x, w, b, r, "gelu")
    assert out.dtype == x_dtype and out.shape == (m, n)
    assert rel_error(out, fused_linear_fp64(x, w, b, r, "gelu")) < tol


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("m", [1, 5, 16, 17])
def test_every_isa_and_activation(isa, activation, m):
    x, w, b, _ = make_inputs(m, 37, 53, torch.float32, torch.bfloat16)
    with bigperf.use_backend("cpu"), bigperf.use_cpu_isa(isa):
        out = fused_linear(x, w, b, None, activation)
    assert rel_error(out, fused_linear_fp64(x, w, b, None, activation)) < 1e-5


def test_leading_dims_and_non_contiguous_inputs():
    base = random_tensor(2, 3, 80)
    x = base[:, :, ::2]  # stride 2 along K
    w = random_tensor(64, 40).t().contiguous().t()[:, :]  # transposed storage
    w = random_tensor(40, 24).t()  # [24, 40] with stride (1, 24): not unit stride along K
    b = random_tensor(24)
    r = random_tensor(3, 2, 24).transpose(0, 1)
    out = fused_linear(x, w, b, r, "silu")
    assert out.shape == (2, 3, 24)
    assert rel_error(out, fused_linear_fp64(x, w, b, r, "silu")) < 1e-5


def test_negative_control_changed_weight_changes_output():
    x, w, b, _ = make_inputs(2, 16, 32, torch.float32, torch.bfloat16)
    before = fused_linear(x, w, b)
    w2 = w.clone()
    w2[5, 7] += 1.0
    after = fused_linear(x, w2, b)
    changed = (after != before).any(dim=0)
    assert changed[5] and changed.sum() == 1  # only output column 5 depends on W[5, :]


@pytest.mark.parametrize("x_dtype,w_dtype,tol", DTYPES[:2] + DTYPES[3:5])
def test_large_m_matches_whichever_path_the_dispatcher_picks(x_dtype, w_dtype, tol):
    # At large M the measuring dispatcher may pick PyTorch's GEMM plus the epilogue
    # (tests/ops/test_candidate_paths.py checks each path on its own).
    x, w, b, r = make_inputs(131, 40, 24, x_dtype, w_dtype, residual=True)
    out = fused_linear(x, w, b, r, "relu")
    assert out.dtype == x_dtype and rel_error(out, fused_linear_fp64(x, w, b, r, "relu")) < tol


def test_opcheck():
    x, w, b, r = make_inputs(3, 8, 16, torch.float32, torch.float32, residual=True)
    torch.library.opcheck(torch.ops.bigperf.fused_linear.default, (x, w, b, r, "gelu"))
    x.requires_grad_(True)
    w.requires_grad_(True)
    torch.library.opcheck(torch.ops.bigperf.fused_linear.default, (x, w, None, None, "silu"))


def test_gradients_match_autograd_of_reference():
    x, w, b, r = make_inputs(3, 8, 16, torch.float32, torch.float32, residual=True)
    grad_out = random_tensor(3, 8, seed=9)
    inputs = [t.clone().requires_grad_(True) for t in (x, w, b, r)]
    (fused_linear(*inputs, "gelu_tanh") * grad_out).sum().backward()
    expected = [t.double().requires_grad_(True) for t in (x, w, b, r)]
    (fused_linear_fp64(*expected, "gelu_tanh") * grad_out.double()).sum().backward()
    for got, want in zip(inputs, expected):
        assert rel_error(got.grad, want.grad) < 1e-5


def test_torch_compile_fullgraph():
    x, w, b, _ = make_inputs(4, 24, 32, torch.float32, torch.bfloat16)

    def f(x):
        return fused_linear(x, w, b, None, "relu") * 2

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), f(x))


@pytest.mark.parametrize("call,error,words", [
    (lambda x, w: fused_linear(x.int(), w), TypeError, ["bigperf.fused_linear", "'x'", "dtype"]),
    (lambda x, w: fused_linear(x, w[None]), ValueError, ["'weight'", "2-D"]),
    (lambda x, w: fused_linear(x[:, :5], w), ValueError, ["'x'", "features"]),
    (lambda x, w: fused_linear(x, w, torch.zeros(3)), ValueError, ["'bias'", "shape"]),
    (lambda x, w: fused_linear(x, w, None, torch.zeros(2, 9)), ValueError, ["'residual'"]),
    (lambda x, w: fused_linear(x, w, None, torch.zeros(2, 8, dtype=torch.float64)), TypeError, ["'residual'"]),
    (lambda x, w: fused_linear(x, w, None, None, "tanh"), ValueError, ["'activation'"]),
    (lambda x, w: fused_linear(x, w.to("meta")), ValueError, ["'weight'", "meta"]),
    (lambda x, w: fused_linear(torch.zeros(()), w), ValueError, ["'x'", "dimension"]),
    (lambda x, w: fused_linear(x, "w"), TypeError, ["'weight'", "torch.Tensor"]),
])
def test_bad_input_is_refused_clearly(call, error, words):
    x, w = random_tensor(2, 16), random_tensor(8, 16)
    with pytest.raises(error) as info:
        call(x, w)
    for word in words:
        assert word in str(info.value)


def test_forced_backend_that_cannot_run_lists_why():
    x, w = random_tensor(2, 16), random_tensor(8, 16)
    with bigperf.use_backend("cuda"), pytest.raises(bigperf.NoBackendError) as info:
        fused_linear(x, w)
    assert "cuda:" in str(info.value) and "forced" in str(info.value)
    with pytest.raises(ValueError, match="backend must be one of"):
        with bigperf.use_backend("tpu"):
            pass


def test_one_path_forced_by_id():
    x, w = random_tensor(3, 16), random_tensor(8, 16)
    with bigperf.use_backend("torch:fp32"), record_paths() as ran:
        fused_linear(x, w)
    assert [p for _, p in ran] == ["torch:fp32"]
    with bigperf.use_backend("torch:fp16"), pytest.raises(bigperf.NoBackendError, match="torch:fp16"):
        fused_linear(x, w)  # fp32 x with an fp32 weight: fp16 would lose range, and nothing else may serve
    with pytest.raises(ValueError, match="backend must be one of"):
        with bigperf.use_backend("tpu:fp32"):
            pass


def test_unsupported_isa_is_refused():
    missing = [isa for isa in ("avx512", "avx2", "scalar") if isa not in ISAS]
    if not missing:
        pytest.skip("every ISA path runs on this CPU; nothing to refuse")
    with pytest.raises(ValueError, match="cannot run here"):
        with bigperf.use_cpu_isa(missing[0]):
            pass


def test_environment_variables_force_backend_and_isa():
    code = ("import torch, bigperf\n"
            "from bigperf.ops.fused_linear import BACKENDS\n"
            "from bigperf import _ext\n"
            "x = torch.randn(1, 8); w = torch.randn(4, 8)\n"
            "print(BACKENDS.select(x, w, None, None, 'none').name, _ext.cpu_isa())\n")
    env = dict(os.environ, BIGPERF_BACKEND="reference", BIGPERF_CPU_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["reference", "scalar"]
    env["BIGPERF_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "$BIGPERF_BACKEND" in bad.stderr
