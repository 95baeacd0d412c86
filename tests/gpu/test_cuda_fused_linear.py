"""bigperf._C_cuda.fused_linear on a real GPU, against a float64 reference.

Calls the raw-pointer binding directly with torch CUDA tensors (every tile configuration,
odd shapes, all activations, bias/residual, strided views, poisoned outputs, negative
controls), then, when the lead's op exists, bigperf.ops.fused_linear under the "cuda" and
"triton" backends.
"""
from __future__ import annotations

import importlib

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False", allow_module_level=True)

cuda_ext = pytest.importorskip("bigperf._C_cuda", reason="bigperf._C_cuda is not built or does not import")

from tests.gpu.gpu_util import pointer_checks  # noqa: E402
from tests.helpers import TOLERANCE, fused_linear_fp64  # noqa: E402

DEV = torch.device("cuda", torch.cuda.current_device())
FN = "bigperf._C_cuda.fused_linear"
ACT_NAMES = ["none", "relu", "gelu", "gelu_tanh", "silu"]  # index = act_code
DTYPE_CODE = {torch.float16: 1, torch.bfloat16: 2}
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]
CONFIGS = [pytest.param(-1, id="auto"), pytest.param(0, id="small"), pytest.param(1, id="medium"),
           pytest.param(2, id="large")]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def padded(rows, cols, dtype, seed, *, scale=1.0, fill=None, lead=0):
    """(buffer, [rows, cols] view): row stride rounded up to 8 plus 8, `lead` columns skipped."""
    stride = lead + -(-max(cols, 1) // 8) * 8 + 8
    buf = (torch.randn(rows, stride, generator=_gen(seed), device=DEV) * scale).to(dtype)
    if fill is not None:
        buf.fill_(fill)
    return buf, buf[:, lead:lead + cols]


def launch(x, w, bias, residual, out, act_code, config=-1, stream=None):
    m, k = x.shape
    n = w.shape[0]
    stream = stream if stream is not None else torch.cuda.current_stream(DEV)
    cuda_ext.fused_linear(
        x.data_ptr(), x.stride(0), w.data_ptr(), w.stride(0),
        bias.data_ptr() if bias is not None else 0,
        residual.data_ptr() if residual is not None else 0,
        residual.stride(0) if residual is not None else 0,
        out.data_ptr(), out.stride(0), m, n, k, DTYPE_CODE[x.dtype], act_code, stream.cuda_stream, config)


def rel_error(out, ref) -> float:
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def make_problem(m, n, k, dtype, seed, *, with_bias=True, with_residual=True):
    _, x = padded(m, k, dtype, seed)
    _, w = padded(n, k, dtype, seed + 1, scale=k ** -0.5 if k else 1.0)
    bias = torch.randn(n, generator=_gen(seed + 2), device=DEV) if with_bias else None
    residual = padded(m, n, dtype, seed + 3)[1] if with_residual else None
    return x, w, bias, residual


# M = 1, 3, 17 and ~4096; N and K not multiples of 16 (K % 8 == 0 is required).
SHAPES = [(1, 200, 136), (3, 1000, 520), (17, 333, 72), (64, 130, 1032), (16, 256, 14336), (4099, 1000, 1032)]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
@pytest.mark.parametrize("act_code", range(5), ids=ACT_NAMES)
@pytest.mark.parametrize("extras", [True, False], ids=["bias+residual", "plain"])
def test_matches_fp64(config, dtype, shape, act_code, extras):
    m, n, k = shape
    seed = (m * 7 + n * 13 + k + act_code) % 10007
    x, w, bias, residual = make_problem(m, n, k, dtype, seed, with_bias=extras, with_residual=extras)
    out_buf, out = padded(m, n, dtype, 0, fill=float("nan"))
    launch(x, w, bias, residual, out, act_code, config)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "some output elements were never written"
    assert torch.isnan(out_buf[:, n:]).all(), "the kernel wrote past column N"
    err = rel_error(out, fused_linear_fp64(x, w, bias, residual, ACT_NAMES[act_code]))
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_configs_agree(dtype):
    x, w, bias, residual = make_problem(300, 520, 776, dtype, 11)
    outs = []
    for config in range(3):
        out = torch.empty(300, 520, dtype=dtype, device=DEV)
        launch(x, w, bias, residual, out, 3, config)
        outs.append(out.float())
    for o in outs[1:]:
        assert rel_error(o, outs[0].double()) < TOLERANCE[dtype]


@pytest.mark.parametrize("config", CONFIGS)
def test_offset_views_and_contiguous_inputs(config):
    dtype = torch.bfloat16
    m, n, k = 37, 90, 264
    # x starts 8 elements (16 bytes) into each row of a wider buffer; w is contiguous.
    _, x = padded(m, k, dtype, 1, lead=8)
    w = torch.randn(n, k, generator=_gen(2), device=DEV).to(dtype) * k ** -0.5
    residual = torch.randn(m, 96, generator=_gen(3), device=DEV).to(dtype)[:, :n]
    out = torch.empty(m, 96, dtype=dtype, device=DEV)[:, :n]
    launch(x, w, None, residual, out, 4, config)
    assert rel_error(out, fused_linear_fp64(x, w, None, residual, "silu")) < TOLERANCE[dtype]


@pytest.mark.parametrize("config", CONFIGS)
def test_residual_in_place(config):
    dtype = torch.float16
    x, w, bias, residual = make_problem(50, 200, 128, dtype, 5)
    expected = fused_linear_fp64(x, w, bias, residual, "gelu")
    launch(x, w, bias, residual, residual, 2, config)  # out is residual
    assert rel_error(residual, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("config", CONFIGS)
def test_zero_k_is_epilogue_only(config):
    m, n = 9, 40
    bias = torch.randn(n, device=DEV)
    residual = torch.randn(m, n, device=DEV).to(torch.bfloat16)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=DEV)
    cuda_ext.fused_linear(0, 0, 0, 0, bias.data_ptr(), residual.data_ptr(), n, out.data_ptr(), n,
                          m, n, 0, 2, 1, torch.cuda.current_stream().cuda_stream, config)
    expected = torch.relu(bias.double()) + residual.double()
    assert rel_error(out, expected) < 1e-2


@pytest.mark.parametrize("config", CONFIGS)
def test_negative_control(config):
    dtype = torch.bfloat16
    x, w, bias, _ = make_problem(33, 150, 200, dtype, 8, with_residual=False)
    base = torch.empty(33, 152, dtype=dtype, device=DEV)[:, :150]
    launch(x, w, bias, None, base, 0, config)
    w2 = w.clone()
    w2[77] += 0.5
    moved = torch.empty_like(base)
    launch(x, w2, bias, None, moved, 0, config)
    changed_cols = (base != moved).any(dim=0)
    assert changed_cols[77] and changed_cols.sum() == 1, "a changed weight row must move exactly its column"
    x2 = x.clone()
    x2[20] += 0.5
    launch(x2, w, bias, None, moved, 0, config)
    changed_rows = (base != moved).any(dim=1)
    assert changed_rows[20] and changed_rows.sum() == 1, "a changed input row must move exactly its row"


def test_runs_on_the_given_stream():
    dtype = torch.float16
    x, w, bias, residual = make_problem(256, 512, 1024, dtype, 3)
    out = torch.full((256, 512), float("nan"), dtype=dtype, device=DEV)
    side = torch.cuda.Stream(DEV)
    side.wait_stream(torch.cuda.current_stream(DEV))
    with torch.cuda.stream(side):
        launch(x, w, bias, residual, out, 0, -1, stream=side)
    side.synchronize()
    assert rel_error(out, fused_linear_fp64(x, w, bias, residual, "none")) < TOLERANCE[dtype]


def test_rejects_host_memory():
    x = torch.randn(4, 64).to(torch.float16)  # CPU tensor: a host pointer
    w = torch.randn(32, 64, device=DEV).to(torch.float16)
    out = torch.empty(4, 32, dtype=torch.float16, device=DEV)
    with pointer_checks(cuda_ext), pytest.raises(ValueError, match=f"{FN}: x_ptr"):
        launch(x, w, None, None, out, 0)


def test_rejects_misaligned_view():
    buf = torch.randn(4, 80, device=DEV).to(torch.float16)
    x = buf[:, 1:65]  # 2 bytes past a 16-byte boundary
    w = torch.randn(32, 64, device=DEV).to(torch.float16)
    out = torch.empty(4, 32, dtype=torch.float16, device=DEV)
    with pytest.raises(ValueError, match=f"{FN}: x_ptr must be 16-byte aligned"):
        launch(x, w, None, None, out, 0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_rejects_memory_of_another_device():
    x = torch.randn(4, 64, device="cuda:1").to(torch.float16)
    w = torch.randn(32, 64, device="cuda:0").to(torch.float16)
    out = torch.empty(4, 32, dtype=torch.float16, device="cuda:0")
    with torch.cuda.device(0), pointer_checks(cuda_ext), pytest.raises(ValueError, match="x_ptr lives on device 1"):
        launch(x, w, None, None, out, 0)


def test_device_is_reported():
    from bigperf.ops.cuda_launch import device_caps, device_why_not

    assert cuda_ext.device_count() == torch.cuda.device_count()
    major, minor = torch.cuda.get_device_capability(DEV)
    archs = [a.rstrip("a") for a in cuda_ext.compiled_archs()]
    # SASS: sm_80 code serves 8.x devices, sm_90a code only 9.0 (others JIT the PTX).
    covered = (major == 8 and "80" in archs) or (major, minor) == (9, 0) and "90" in archs
    assert covered, f"compute capability {major}.{minor} has no SASS in {archs}"
    caps = device_caps(DEV.index)
    assert caps.capability == (major, minor) and caps.sm_count == torch.cuda.get_device_properties(DEV).multi_processor_count
    assert caps.smem_per_block_optin >= 99 * 1024, caps
    for kernel in ("fused_linear", "w8a16_linear", "sparse24_linear"):
        assert device_why_not(DEV.index, kernel) is None, kernel


def test_forced_config_beyond_the_device_shared_memory_is_a_value_error():
    from bigperf.ops.cuda_launch import device_caps

    smem = cuda_ext.sparse24_requirements()["config_smem_bytes"]
    if max(smem) <= device_caps(DEV.index).smem_per_block_optin:
        pytest.skip(f"every 2:4 configuration fits this GPU's {device_caps(DEV.index).smem_per_block_optin} B per block")
    x = torch.randn(256, 64, device=DEV).to(torch.float16)
    out = torch.empty(256, 64, dtype=torch.float16, device=DEV)
    with pytest.raises(ValueError, match="needs 102400 bytes of shared memory per block"):
        cuda_ext.sparse24_linear(x.data_ptr(), 64, x.data_ptr(), 32, x.data_ptr(), 0, out.data_ptr(), 64,
                                 256, 64, 64, 1, 0, torch.cuda.current_stream(DEV).cuda_stream, 2)


# ----------------------------------------------------------------------------- the op

def _op():
    try:
        module = importlib.import_module("bigperf.ops.fused_linear")
    except ImportError:
        return None
    return getattr(module, "fused_linear", None)


OP = _op()
OP_SHAPES = [(1, 200, 136), (17, 333, 520), (300, 1000, 1032)]


@pytest.mark.skipif(OP is None, reason="bigperf.ops.fused_linear.fused_linear does not exist yet")
@pytest.mark.skipif(not hasattr(importlib.import_module("bigperf"), "use_backend"),
                    reason="bigperf.use_backend does not exist yet")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", OP_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in OP_SHAPES])
@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh", "silu", "relu"])
def test_op_backend_matches_fp64(backend, dtype, shape, activation):
    import bigperf

    m, n, k = shape
    x, w, bias, residual = make_problem(m, n, k, dtype, 21)
    x, w, residual = x.contiguous(), w.contiguous(), residual.contiguous()
    with bigperf.use_backend(backend):
        out = OP(x, w, bias=bias, residual=residual, activation=activation)
    torch.cuda.synchronize()
    assert out.shape == (m, n) and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()
    err = rel_error(out, fused_linear_fp64(x, w, bias, residual, activation))
    assert err < TOLERANCE[dtype], f"{backend}: relative error {err:.2e}"


@pytest.mark.skipif(OP is None, reason="bigperf.ops.fused_linear.fused_linear does not exist yet")
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float16], ids=["bf16w", "fp16w"])
@pytest.mark.parametrize("precision,tol", [("highest", 1e-5), ("high", 1e-3)])
def test_triton_fp32_x_with_half_weight_on_tensor_cores(w_dtype, precision, tol):
    """fp32 x with a lower-precision weight runs TF32 tensor cores on the Triton path: at
    "highest" as two TF32 products (x's head and remainder; the weight is exact in TF32),
    held to the fp32 tolerance; at "high" as one, held to TF32's."""
    import bigperf

    x = torch.randn(300, 1032, generator=_gen(31), device=DEV)
    w = (torch.randn(1000, 1032, generator=_gen(32), device=DEV) * 1032 ** -0.5).to(w_dtype)
    bias = torch.randn(1000, generator=_gen(33), device=DEV)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        with bigperf.use_backend("triton"):
            out = OP(x, w, bias=bias, activation="gelu")
    finally:
        torch.set_float32_matmul_precision(old)
    torch.cuda.synchronize()
    assert out.dtype == torch.float32
    err = rel_error(out, fused_linear_fp64(x, w, bias, None, "gelu"))
    assert err < tol, f"{precision}: relative error {err:.2e}"


@pytest.mark.skipif(OP is None, reason="bigperf.ops.fused_linear.fused_linear does not exist yet")
@pytest.mark.parametrize("backend", ["cuda", "triton", "auto"])
@pytest.mark.parametrize("region_dtype", DTYPES)
def test_autocast_region_runs_the_regions_dtype(backend, region_dtype):
    """Inside torch.autocast("cuda") the op computes on x in the region's dtype and returns it
    (as nn.Linear does), on the kernels that serve that dtype, bf16 weight or fp16."""
    import bigperf

    x = torch.randn(17, 520, generator=_gen(41), device=DEV)
    w = (torch.randn(333, 520, generator=_gen(42), device=DEV) * 520 ** -0.5).to(torch.bfloat16)
    bias = torch.randn(333, generator=_gen(43), device=DEV)
    with bigperf.use_backend(backend):
        with torch.autocast("cuda", dtype=region_dtype):
            out = OP(x, w, bias=bias, activation="gelu")
        expected = OP(x.to(region_dtype), w, bias=bias, activation="gelu")
    torch.cuda.synchronize()
    assert out.dtype == region_dtype
    assert torch.equal(out, expected)
    assert rel_error(out, fused_linear_fp64(x.to(region_dtype), w, bias, None, "gelu")) < TOLERANCE[region_dtype]
