"""bigperf._C_cuda.w8a16_linear and sparse24_linear on a real GPU, against float64 references.

The raw bindings with weights packed by bigperf.cuda_layouts (every configuration, odd
shapes, per-channel and per-group scales, zero points, forced K splits, activations,
poisoned outputs, negative controls, split-K counters left at zero, determinism), then the
ops under the "cuda" backend (int8_weight_linear, sparse24_linear), including the cached
re-layout following in-place weight updates.
"""
from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is False", allow_module_level=True)

cuda_ext = pytest.importorskip("bigperf._C_cuda", reason="bigperf._C_cuda is not built or does not import")
if not hasattr(cuda_ext, "w8a16_linear"):
    pytest.skip("bigperf._C_cuda was built without w8a16_linear / sparse24_linear", allow_module_level=True)

import bigperf
from bigperf.formats.sparse24 import pack_s24
from bigperf.formats.w8a16_cuda import pack_w8a16
from bigperf.quant import dequantize_weight, quantize_weight
from bigperf.sparsity import nm_mask, pack_24
from tests.gpu.gpu_util import pointer_checks
from tests.helpers import TOLERANCE, fused_linear_fp64, rel_error

DEV = torch.device("cuda", torch.cuda.current_device())
ACT_NAMES = ["none", "relu", "gelu", "gelu_tanh", "silu"]
CODE = {torch.float16: 1, torch.bfloat16: 2}
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device=DEV).manual_seed(seed)


def padded(rows, cols, dtype, seed, *, scale=1.0, fill=None):
    """(buffer, [rows, cols] view) with the row stride rounded up to 8, plus 8."""
    stride = -(-max(cols, 1) // 8) * 8 + 8
    buf = (torch.randn(rows, stride, generator=_gen(seed), device=DEV) * scale).to(dtype)
    if fill is not None:
        buf.fill_(fill)
    return buf, buf[:, :cols]


# ----------------------------------------------------------------------------- W8A16

def w8a16(x, layout, bias, out, act_code, config=-1, splits=-1, counters=None):
    m, k = x.shape
    sm = torch.cuda.get_device_properties(DEV).multi_processor_count
    plan = cuda_ext.w8a16_plan(m, layout.n, k, sm, config, splits)
    ws = torch.empty(max(plan["workspace_bytes"], 16), dtype=torch.uint8, device=DEV)
    if counters is None:
        counters = torch.zeros(max(plan["counters"], 1), dtype=torch.int32, device=DEV)
    cuda_ext.w8a16_linear(
        x.data_ptr(), x.stride(0), layout.weight.data_ptr(), layout.scale.data_ptr(),
        layout.zero.data_ptr() if layout.zero is not None else 0, layout.group_size or 0,
        bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0),
        ws.data_ptr(), ws.numel(), counters.data_ptr(), counters.numel(), m, layout.n, k,
        CODE[x.dtype], act_code, torch.cuda.current_stream(DEV).cuda_stream, plan["config"], plan["splits"])
    return counters


def quantized(n, k, group_size, symmetric, seed):
    w = torch.randn(n, k, generator=_gen(seed), device=DEV) * k ** -0.5
    return quantize_weight(w, group_size=group_size, symmetric=symmetric)


W8_SHAPES = [(1, 200, 136), (3, 1000, 512), (16, 256, 4096), (17, 333, 1024), (64, 1030, 2048), (5, 14336, 4096)]
W8_QUANT = [pytest.param(None, True, id="channel"), pytest.param(None, False, id="channel-asym"),
            pytest.param(32, True, id="g32"), pytest.param(128, False, id="g128-asym"),
            pytest.param(256, True, id="g256")]
SPLITS = [pytest.param(-1, id="auto"), pytest.param(1, id="nosplit"), pytest.param(4, id="split4")]


@pytest.mark.parametrize("splits", SPLITS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size,symmetric", W8_QUANT)
@pytest.mark.parametrize("shape", W8_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in W8_SHAPES])
def test_w8a16_matches_fp64(shape, group_size, symmetric, dtype, splits):
    m, n, k = shape
    if group_size is not None and k % group_size:
        pytest.skip(f"group size {group_size} does not divide K = {k}")
    seed = (m * 7 + n * 13 + k) % 10007
    q = quantized(n, k, group_size, symmetric, seed)
    layout = pack_w8a16(q.qweight, q.scale, q.zero_point)
    _, x = padded(m, k, dtype, seed + 1)
    bias = torch.randn(n, generator=_gen(seed + 2), device=DEV)
    act = seed % 5
    out_buf, out = padded(m, n, dtype, 0, fill=float("nan"))
    counters = w8a16(x, layout, bias, out, act, splits=splits)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "some output elements were never written"
    assert torch.isnan(out_buf[:, n:]).all(), "the kernel wrote past column N"
    assert not counters.any(), "split-K counters must be left at zero"
    ref = fused_linear_fp64(x, dequantize_weight(q.qweight, q.scale, q.zero_point), bias, None, ACT_NAMES[act])
    assert rel_error(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("config", [0, 1], ids=["m16", "m32"])
def test_w8a16_is_deterministic_and_reuses_counters(config):
    m, n, k = 9, 1024, 4096
    q = quantized(n, k, 128, False, 3)
    layout = pack_w8a16(q.qweight, q.scale, q.zero_point)
    x = torch.randn(m, k, generator=_gen(4), device=DEV).to(torch.bfloat16)
    first = torch.empty(m, n, dtype=torch.bfloat16, device=DEV)
    counters = w8a16(x, layout, None, first, 0, config, 8)
    for _ in range(3):  # the same counters, left at zero by each launch
        again = torch.empty_like(first)
        w8a16(x, layout, None, again, 0, config, 8, counters=counters)
        torch.cuda.synchronize()
        assert torch.equal(first, again), "split-K sums must not depend on CTA arrival order"


def test_w8a16_negative_control():
    m, n, k = 7, 384, 1024
    q = quantized(n, k, 64, True, 5)
    x = torch.randn(m, k, generator=_gen(6), device=DEV).to(torch.float16)
    base = torch.empty(m, n, dtype=torch.float16, device=DEV)
    w8a16(x, pack_w8a16(q.qweight, q.scale), None, base, 0)
    qw = q.qweight.clone()
    qw[200, 333] = 100 if int(qw[200, 333]) < 0 else -100
    moved = torch.empty_like(base)
    w8a16(x, pack_w8a16(qw, q.scale), None, moved, 0)
    changed = (base != moved).any(dim=0)
    assert changed[200] and changed.sum() == 1, "a changed code must move exactly its column"


def test_w8a16_rejects_host_memory():
    q = quantized(32, 64, None, True, 7)
    layout = pack_w8a16(q.qweight, q.scale)
    x = torch.randn(4, 64).to(torch.float16)  # CPU tensor: a host pointer
    out = torch.empty(4, 32, dtype=torch.float16, device=DEV)
    with pointer_checks(cuda_ext), pytest.raises(ValueError, match="bigperf._C_cuda.w8a16_linear: x_ptr"):
        w8a16(x, layout, None, out, 0, splits=1)


# ----------------------------------------------------------------------------- 2:4 sparse

def sparse24(x, layout, bias, out, act_code, config=-1, stream=None):
    m, k = x.shape
    stream = stream if stream is not None else torch.cuda.current_stream(DEV)
    cuda_ext.sparse24_linear(
        x.data_ptr(), x.stride(0), layout.values.data_ptr(), layout.values.stride(0), layout.meta.data_ptr(),
        bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, layout.n, k,
        CODE[x.dtype], act_code, stream.cuda_stream, config)


def pruned(n, k, dtype, seed):
    w = torch.randn(n, k, generator=_gen(seed), device=DEV) * k ** -0.5
    return (w * nm_mask(w)).to(dtype)


S24_SHAPES = [(1, 200, 136), (3, 1000, 520), (17, 333, 72), (130, 1000, 1032), (4099, 1000, 1032), (512, 4096, 4096)]
S24_CONFIGS = [pytest.param(-1, id="auto"), pytest.param(0, id="small"), pytest.param(1, id="medium"),
               pytest.param(2, id="large"), pytest.param(3, id="narrow")]


@pytest.mark.parametrize("config", S24_CONFIGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", S24_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in S24_SHAPES])
@pytest.mark.parametrize("act_code", [0, 2, 4], ids=["none", "gelu", "silu"])
def test_sparse24_matches_fp64(config, dtype, shape, act_code):
    m, n, k = shape
    seed = (m * 7 + n * 13 + k + act_code) % 10007
    w = pruned(n, k, dtype, seed)
    p = pack_24(w)
    layout = pack_s24(p.values, p.meta)
    _, x = padded(m, k, dtype, seed + 1)
    bias = torch.randn(n, generator=_gen(seed + 2), device=DEV) if act_code != 2 else None
    out_buf, out = padded(m, n, dtype, 0, fill=float("nan"))
    sparse24(x, layout, bias, out, act_code, config)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), "some output elements were never written"
    assert torch.isnan(out_buf[:, n:]).all(), "the kernel wrote past column N"
    assert rel_error(out, fused_linear_fp64(x, w, bias, None, ACT_NAMES[act_code])) < TOLERANCE[dtype]


def test_sparse24_negative_control_and_stream():
    dtype = torch.bfloat16
    m, n, k = 200, 296, 520  # N % 8 == 0: out is a plain contiguous [M, N]
    w = pruned(n, k, dtype, 9)
    x = torch.randn(m, k, generator=_gen(10), device=DEV).to(dtype)
    p = pack_24(w)
    base = torch.empty(m, n, dtype=dtype, device=DEV)
    side = torch.cuda.Stream(DEV)
    side.wait_stream(torch.cuda.current_stream(DEV))
    with torch.cuda.stream(side):
        sparse24(x, pack_s24(p.values, p.meta), None, base, 0, stream=side)
    side.synchronize()
    values = p.values.clone()
    values[123, 40] += 1.0
    moved = torch.empty_like(base)
    sparse24(x, pack_s24(values, p.meta), None, moved, 0)
    torch.cuda.synchronize()
    changed = (base != moved).any(dim=0)
    assert changed[123] and changed.sum() == 1, "a changed value must move exactly its column"


# ----------------------------------------------------------------------------- the ops

OP_ACTS = ["none", "gelu", "silu"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 5, 16, 32])  # x is [2, m, K]: M = 2m <= 64
@pytest.mark.parametrize("activation", OP_ACTS)
def test_int8_weight_linear_op_on_cuda(dtype, m, activation):
    from bigperf.ops.int8_linear import int8_weight_linear

    n, k = 520, 1024
    q = quantized(n, k, 128, False, 11)
    x = torch.randn(2, m, k, generator=_gen(12), device=DEV).to(dtype)
    bias = torch.randn(n, generator=_gen(13), device=DEV).to(dtype)
    with bigperf.use_backend("cuda"):
        out = int8_weight_linear(x, q.qweight, q.scale, q.zero_point, bias, activation)
    assert out.shape == (2, m, n) and out.dtype == dtype
    ref = fused_linear_fp64(x.reshape(-1, k), dequantize_weight(q.qweight, q.scale, q.zero_point), bias, None,
                            activation)
    assert rel_error(out.reshape(-1, n), ref) < TOLERANCE[dtype]


def test_int8_weight_linear_cuda_follows_in_place_weight_updates():
    from bigperf.ops.int8_linear import int8_weight_linear

    q = quantized(256, 512, None, True, 14)
    x = torch.randn(3, 512, generator=_gen(15), device=DEV).to(torch.float16)
    with bigperf.use_backend("cuda"):
        before = int8_weight_linear(x, q.qweight, q.scale)
        q.qweight[17].neg_()
        after = int8_weight_linear(x, q.qweight, q.scale)
    changed = (before != after).any(dim=0)
    assert changed[17] and changed.sum() == 1, "the cached re-layout must follow in-place writes"


def test_int8_weight_linear_split_k_reuses_its_scratch():
    """Decode shapes split K; the op's launches share one zeroed counter buffer per stream
    (left at zero by each launch) instead of allocating one per call."""
    from bigperf.ops import cuda_launch
    from bigperf.ops.int8_linear import int8_weight_linear

    n, k = 1024, 4096  # 16 column tiles: split K on any GPU with more than 8 SMs
    q = quantized(n, k, 128, True, 22)
    x = torch.randn(1, k, generator=_gen(23), device=DEV).to(torch.bfloat16)
    with bigperf.use_backend("cuda"):
        outs = [int8_weight_linear(x, q.qweight, q.scale) for _ in range(4)]
    torch.cuda.synchronize()
    key = (DEV.index, torch.cuda.current_stream(DEV).cuda_stream)
    workspace, counters = cuda_launch._SPLIT_SCRATCH[key]
    assert not counters.any(), "each launch must leave the shared counters at zero"
    assert all(torch.equal(o, outs[0]) for o in outs), "a stale counter would change the result"
    ref = fused_linear_fp64(x, dequantize_weight(q.qweight, q.scale))
    assert rel_error(outs[0], ref) < TOLERANCE[torch.bfloat16]
    with bigperf.use_backend("cuda"):
        int8_weight_linear(x, q.qweight, q.scale)
    assert cuda_launch._SPLIT_SCRATCH[key][1] is counters, "the same buffer, not a new one per call"


def test_int8_weight_linear_large_m_leaves_cuda():
    from bigperf.ops.int8_linear import WEIGHT_ONLY_BACKENDS

    q = quantized(64, 128, None, True, 16)
    x = torch.randn(65, 128, device=DEV).to(torch.float16)
    why = WEIGHT_ONLY_BACKENDS.why_not_each(x.device, x, q.qweight, q.scale, None, None, "none")["cuda"]
    assert why is not None and "M <= 64" in why


@pytest.mark.parametrize("m", [1, 16, 64, 200])  # 200: past the kernel's rows, unpacked for the call
def test_int8_layer_on_cuda_owns_the_kernel_layout(m):
    """An Int8Linear moved to the GPU holds only the W8A16 layout: no row-major copy, no
    cached re-layout, and the outputs of the row-major form."""
    from bigperf.nn import Int8Linear
    from bigperf.ops import cuda_launch

    linear = torch.nn.Linear(1024, 520)
    layer = Int8Linear.from_linear(linear, group_size=128, symmetric=False, activation="silu")
    x = torch.randn(m, 1024, generator=torch.Generator().manual_seed(21)).to(torch.bfloat16)
    ref = fused_linear_fp64(x.float(), dequantize_weight(layer.qweight, layer.scale, layer.zero_point),
                            layer.bias, None, "silu")
    cached_before = len(cuda_launch._W8A16_CACHE)
    layer = layer.to(DEV)
    assert layer.kernel_layout == "w8a16-cuda" and layer.qweight is None
    out = layer(x.to(DEV))
    assert len(cuda_launch._W8A16_CACHE) == cached_before, "the layer's own layout must not be cached again"
    assert rel_error(out.float().cpu(), ref) < TOLERANCE[torch.bfloat16]
    assert layer.backend() == "cuda"
    assert layer.to("cpu").kernel_layout == "rowmajor"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 77, 2048])
def test_sparse24_linear_op_on_cuda(dtype, m):
    from bigperf.ops.sparse_linear import sparse24_linear

    n, k = 1000, 1032
    w = pruned(n, k, dtype, 17)
    p = pack_24(w)
    x = torch.randn(m, k, generator=_gen(18), device=DEV).to(dtype)
    bias = torch.randn(n, generator=_gen(19), device=DEV)
    with bigperf.use_backend("cuda"):
        out = sparse24_linear(x, p.values, p.meta, None, bias, "gelu_tanh")
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_error(out, fused_linear_fp64(x, w, bias, None, "gelu_tanh")) < TOLERANCE[dtype]


def test_sparse24_linear_int8_values_are_refused_on_cuda():
    from bigperf.ops.registry import NoBackendError
    from bigperf.ops.sparse_linear import sparse24_linear
    from bigperf.sparsity import pack_24_int8

    p = pack_24_int8(pruned(64, 128, torch.float32, 20))
    x = torch.randn(4, 128, device=DEV).to(torch.float16)
    with bigperf.use_backend("cuda"), pytest.raises(NoBackendError, match="int8 2:4 values are not served"):
        sparse24_linear(x, p.values, p.meta, p.scale)
