"""The W8A16 and 2:4 CUDA kernels' layouts on the CPU, through their host emulators.

`_emulate_w8a16_linear` and `_emulate_sparse24_linear` run the kernels' own index maps
(csrc/cuda/w8a16_tile.h, sparse24_tile.h) and register dequantisation against models of
cp.async, ldmatrix, mma.m16n8k16 and mma.sp.m16n8k32 written from the PTX ISA (including
its rule that metadata nibbles hold two ascending positions). The packed inputs come from
bigperf.cuda_layouts, so a mismatch between the Python layout and the kernel's reading of
it fails here. Races, pipeline ordering, PTX syntax and speed need tests/gpu.
"""
from __future__ import annotations

import contextlib
import json
import types
from pathlib import Path

import pytest
import torch

from bigperf.cuda_layouts import pack_s24, pack_w8a16
from bigperf.quant import dequantize_weight, quantize_weight
from bigperf.sparsity import nm_mask, pack_24
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error

ROOT = Path(__file__).resolve().parent.parent
_info = {}
try:
    _info = json.loads((ROOT / "bigperf" / "_build_info.json").read_text())
except (OSError, ValueError):
    pass
if not _info.get("cuda_built"):
    pytest.skip(f"bigperf._C_cuda was not built (reason: {_info.get('cuda_skip_reason')})", allow_module_level=True)
cuda_ext = pytest.importorskip("bigperf._C_cuda", reason="bigperf._C_cuda is built but does not import")

ACT_NAMES = ["none", "relu", "gelu", "gelu_tanh", "silu"]
CODE = {torch.float16: 1, torch.bfloat16: 2}
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


def _padded(rows, cols, dtype, seed, scale=1.0, fill=None):
    """[rows, cols] view of a wider buffer (row stride rounded up to 8, plus 8)."""
    stride = -(-max(cols, 1) // 8) * 8 + 8
    buf = random_tensor(rows, stride, dtype=dtype, seed=seed, scale=scale)
    if fill is not None:
        buf.fill_(fill)
    return buf, buf[:, :cols]


# ----------------------------------------------------------------------------- W8A16

def emulate_w8a16(x, layout, bias, out, act_code, config, splits):
    m, k = x.shape
    plan = cuda_ext.w8a16_plan(m, layout.n, k, 132, config, splits)
    ws = torch.full((max(plan["workspace_bytes"] // 4, 1),), float("nan"))
    counters = torch.zeros(max(plan["counters"], 1), dtype=torch.int32)
    cuda_ext._emulate_w8a16_linear(
        x.data_ptr(), x.stride(0), layout.weight.data_ptr(), layout.scale.data_ptr(),
        layout.zero.data_ptr() if layout.zero is not None else 0, layout.group_size or 0,
        bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0),
        ws.data_ptr(), plan["workspace_bytes"], counters.data_ptr(), plan["counters"],
        m, layout.n, k, CODE[x.dtype], act_code, config, splits)
    assert not counters.any(), "split-K counters must be left at zero"


W8_SHAPES = [(1, 40, 72), (3, 70, 128), (16, 96, 256), (17, 100, 256), (33, 40, 512), (5, 130, 1024)]
W8_QUANT = [pytest.param(None, True, id="channel"), pytest.param(32, False, id="g32-asym"),
            pytest.param(64, True, id="g64"), pytest.param(128, False, id="g128-asym"),
            pytest.param(256, True, id="g256")]


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("config", [0, 1], ids=["m16", "m32"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size,symmetric", W8_QUANT)
@pytest.mark.parametrize("shape", W8_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in W8_SHAPES])
def test_emulated_w8a16_matches_fp64(shape, group_size, symmetric, dtype, config, splits):
    m, n, k = shape
    if group_size is not None and k % group_size:
        pytest.skip(f"group size {group_size} does not divide K = {k}")
    seed = (m * 7 + n + k + (group_size or 0)) % 1000
    q = quantize_weight(random_tensor(n, k, seed=seed, scale=k ** -0.5), group_size=group_size, symmetric=symmetric)
    layout = pack_w8a16(q.qweight, q.scale, q.zero_point)
    _, x = _padded(m, k, dtype, seed + 1)
    bias = random_tensor(n, seed=seed + 2)
    act = seed % 5
    out_buf, out = _padded(m, n, dtype, 0, fill=float("nan"))
    emulate_w8a16(x, layout, bias, out, act, config, splits)
    ref = fused_linear_fp64(x, dequantize_weight(q.qweight, q.scale, q.zero_point), bias, None, ACT_NAMES[act])
    assert torch.isfinite(out).all(), "some output elements were never written"
    assert torch.isnan(out_buf[:, n:]).all(), "the kernel wrote past column N"
    assert rel_error(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("act_code", range(5), ids=ACT_NAMES)
def test_emulated_w8a16_epilogue_each_activation(act_code):
    m, n, k = 4, 48, 128
    q = quantize_weight(random_tensor(n, k, seed=1, scale=0.1), group_size=64)
    layout = pack_w8a16(q.qweight, q.scale)
    x = random_tensor(m, k, dtype=torch.bfloat16, seed=2)
    bias = random_tensor(n, seed=3) if act_code % 2 else None
    out = torch.empty(m, n, dtype=torch.bfloat16)
    emulate_w8a16(x, layout, bias, out, act_code, 0, 1)
    ref = fused_linear_fp64(x, dequantize_weight(q.qweight, q.scale), bias, None, ACT_NAMES[act_code])
    assert rel_error(out, ref) < TOLERANCE[torch.bfloat16]


def test_emulated_w8a16_extreme_codes_and_zero_points_are_exact():
    """Codes -128/127 and zero points -128/127 exercise every bit of the dequant tricks;
    with unit scales and small-integer x the fp32 result is exact."""
    n, k = 32, 64
    g = torch.Generator().manual_seed(0)
    qweight = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    qweight[:, :4] = torch.tensor([-128, 127, -1, 0], dtype=torch.int8)
    zero = torch.randint(-128, 128, (n, 2), generator=g, dtype=torch.int8)
    zero[:2] = torch.tensor([[-128, 127], [127, -128]], dtype=torch.int8)
    scale = torch.ones(n, 2)
    x = torch.randint(-2, 3, (3, k), generator=g).float()
    expected = x.double() @ dequantize_weight(qweight, scale, zero).double().t()
    layout = pack_w8a16(qweight, scale, zero)
    for dtype in (torch.float16, torch.bfloat16):
        out = torch.empty(3, n, dtype=dtype)
        emulate_w8a16(x.to(dtype), layout, None, out, 0, 0, 1)
        # The fp32 sums are exact; the only rounding is the final one to fp16 / bf16.
        assert torch.equal(out, expected.to(dtype)), dtype


def test_emulated_w8a16_layout_mismatch_is_caught():
    """Negative control: the emulator must notice bytes of the wrong k inside a lane's word."""
    m, n, k = 2, 32, 64
    q = quantize_weight(random_tensor(n, k, seed=4))
    layout = pack_w8a16(q.qweight, q.scale)
    swapped = layout.weight.view(-1, 4)[:, [0, 2, 1, 3]].reshape(layout.weight.shape).contiguous()
    bad = type(layout)(swapped, layout.scale, None, n, k, None)
    x = random_tensor(m, k, dtype=torch.float16, seed=5)
    out = torch.empty(m, n, dtype=torch.float16)
    emulate_w8a16(x, bad, None, out, 0, 0, 1)
    ref = fused_linear_fp64(x, dequantize_weight(q.qweight, q.scale))
    assert rel_error(out, ref) > 0.3


def test_emulated_w8a16_changed_code_moves_only_its_column():
    m, n, k = 3, 64, 128
    q = quantize_weight(random_tensor(n, k, seed=6), group_size=32)
    x = random_tensor(m, k, dtype=torch.bfloat16, seed=7)
    outs = []
    for qw in (q.qweight, q.qweight.clone()):
        if outs:
            qw[45, 77] = 100 if int(qw[45, 77]) < 0 else -100
        out = torch.empty(m, n, dtype=torch.bfloat16)
        emulate_w8a16(x, pack_w8a16(qw, q.scale), None, out, 0, 0, 2)
        outs.append(out)
    changed = (outs[0] != outs[1]).any(dim=0)
    assert changed[45] and changed.sum() == 1


def test_w8a16_plan():
    plan = cuda_ext.w8a16_plan
    assert plan(1, 14336, 4096, 132)["config"] == 0 and plan(17, 4096, 4096, 132)["config"] == 1
    p = plan(1, 1024, 4096, 132)  # 16 column tiles: split K to fill the GPU
    assert p["splits"] > 1 and p["counters"] == 16 and p["workspace_bytes"] == p["splits"] * 1 * 1024 * 4
    assert plan(1, 14336, 4096, 132)["splits"] == 1  # 224 tiles x 2 would overflow one resident wave
    assert plan(1, 4096, 4096, 132)["splits"] == 5  # 64 tiles: ~2 CTAs per SM
    assert plan(1, 4096, 64, 132)["splits"] == 1  # too little K to split
    assert plan(16, 4096, 4096, 132, 1, 5) == {"config": 1, "splits": 5, "workspace_bytes": 5 * 16 * 4096 * 4,
                                               "counters": 64 * 1}


# ----------------------------------------------------------------------------- 2:4 sparse

def emulate_s24(x, layout, bias, out, act_code, config):
    m, k = x.shape
    cuda_ext._emulate_sparse24_linear(
        x.data_ptr(), x.stride(0), layout.values.data_ptr(), layout.values.stride(0), layout.meta.data_ptr(),
        bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, layout.n, k,
        CODE[x.dtype], act_code, config)


def _pruned(n, k, dtype, seed):
    w = random_tensor(n, k, seed=seed, scale=k ** -0.5)
    return (w * nm_mask(w)).to(dtype)


S24_SHAPES = [(1, 40, 72), (3, 70, 136), (17, 33, 200), (130, 150, 96), (64, 8, 8), (16, 64, 4096 // 8)]


@pytest.mark.parametrize("config", [0, 1, 2], ids=["small", "medium", "large"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", S24_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in S24_SHAPES])
@pytest.mark.parametrize("act_code", [0, 2, 4], ids=["none", "gelu", "silu"])
def test_emulated_sparse24_matches_fp64(config, dtype, shape, act_code):
    m, n, k = shape
    seed = (m * 13 + n + k + config) % 1000
    w = _pruned(n, k, dtype, seed)
    p = pack_24(w)
    layout = pack_s24(p.values, p.meta)
    _, x = _padded(m, k, dtype, seed + 1)
    bias = random_tensor(n, seed=seed + 2) if act_code != 2 else None
    out_buf, out = _padded(m, n, dtype, 0, fill=float("nan"))
    emulate_s24(x, layout, bias, out, act_code, config)
    ref = fused_linear_fp64(x, w, bias, None, ACT_NAMES[act_code])
    assert torch.isfinite(out).all(), "some output elements were never written"
    assert torch.isnan(out_buf[:, n:]).all(), "the kernel wrote past column N"
    assert rel_error(out, ref) < TOLERANCE[dtype]


def test_emulated_sparse24_uses_every_kept_position():
    """Weights whose kept positions cover all six (i0, i1) pairs, with exact arithmetic."""
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    n, k = 24, 96
    w = torch.zeros(n, k)
    for r in range(n):
        for grp in range(k // 4):
            i0, i1 = pairs[(r + grp) % 6]
            w[r, 4 * grp + i0] = (r % 5) - 2
            w[r, 4 * grp + i1] = (grp % 3) + 1
    x = (torch.arange(5 * k).reshape(5, k) % 7 - 3).float()
    p = pack_24(w.half())
    out = torch.empty(5, n, dtype=torch.float16)
    emulate_s24(x.half(), pack_s24(p.values, p.meta), None, out, 0, 1)
    assert torch.equal(out.float(), x @ w.t())


def test_emulated_sparse24_metadata_order_is_checked():
    """Negative control: swapping the two k halves' metadata words must change the result."""
    m, n, k = 4, 32, 64
    w = _pruned(n, k, torch.float16, 8)
    p = pack_24(w)
    layout = pack_s24(p.values, p.meta)
    words = layout.meta.view(-1, 8, 2)[:, :, [1, 0]].reshape(layout.meta.shape).contiguous()
    x = random_tensor(m, k, dtype=torch.float16, seed=9)
    out = torch.empty(m, n, dtype=torch.float16)
    emulate_s24(x, type(layout)(layout.values, words, n, k), None, out, 0, 2)
    assert rel_error(out, fused_linear_fp64(x, w)) > 0.1


def test_sparse24_choose_config():
    choose = cuda_ext.sparse24_choose_config
    assert choose(1, 14336, 132) == 0 and choose(16, 4096, 132) == 0
    assert choose(64, 4096, 132) == 1 and choose(4096, 14336, 132) == 2
    assert choose(256, 1024, 132) == 1


# ----------------------------------------------------------------------------- Python glue

class _EmulatedCudaModule:
    """bigperf._C_cuda with the launches replaced by the emulator (host pointers)."""

    def __init__(self):
        self.launches = 0

    def __getattr__(self, name):
        return getattr(cuda_ext, name)

    def w8a16_linear(self, *args):
        *params, _stream, config, splits = args
        self.launches += 1
        cuda_ext._emulate_w8a16_linear(*params, config, splits)

    def sparse24_linear(self, *args, config=-1):
        *params, _stream = args
        m, n = params[8], params[9]
        self.launches += 1
        cuda_ext._emulate_sparse24_linear(*params, cuda_ext.sparse24_choose_config(m, n, 132))


@pytest.fixture
def emulated_cuda(monkeypatch):
    from bigperf import _ext
    from bigperf.ops import cuda_launch

    module = _EmulatedCudaModule()
    monkeypatch.setattr(_ext, "cuda_module", lambda: module)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(cuda_launch, "_sm_count", lambda index: 132)
    return module


def test_launch_w8a16_glue_through_the_emulator(emulated_cuda):
    from bigperf.ops import cuda_launch

    n, k = 80, 256
    q = quantize_weight(random_tensor(n, k, seed=11), group_size=128, symmetric=False)
    x = random_tensor(2, 3, k + 8, dtype=torch.bfloat16, seed=12)[..., 8:]  # strided, offset rows
    bias = random_tensor(n, seed=13)
    before = len(cuda_launch._W8A16_CACHE)
    out = cuda_launch.launch_w8a16(x, q.qweight, q.scale, q.zero_point, bias, 4)
    assert out.shape == (2, 3, n) and out.dtype == torch.bfloat16
    ref = fused_linear_fp64(x.reshape(-1, k), dequantize_weight(q.qweight, q.scale, q.zero_point), bias, None, "silu")
    assert rel_error(out.reshape(-1, n), ref) < TOLERANCE[torch.bfloat16]
    assert len(cuda_launch._W8A16_CACHE) == before + 1
    cuda_launch.launch_w8a16(x, q.qweight, q.scale, q.zero_point, bias, 4)
    assert len(cuda_launch._W8A16_CACHE) == before + 1, "the re-layout must be cached"
    # An in-place write bumps the version: the next call must see the new weight.
    q.qweight[5].neg_()
    out2 = cuda_launch.launch_w8a16(x, q.qweight, q.scale, q.zero_point, bias, 4)
    changed = (out2 != out).reshape(-1, n).any(dim=0)
    assert changed[5] and changed.sum() == 1
    del q
    assert len(cuda_launch._W8A16_CACHE) == before, "the entry must die with its weight"
    assert emulated_cuda.launches == 3


def test_launch_sparse24_glue_through_the_emulator(emulated_cuda):
    from bigperf.ops import cuda_launch

    n, k = 72, 136
    w = _pruned(n, k, torch.float16, 14)
    p = pack_24(w)
    x = random_tensor(5, k, dtype=torch.float16, seed=15).t().contiguous().t()  # column-major: copied
    out = cuda_launch.launch_sparse24(x, p.values, p.meta, None, 1)
    assert out.shape == (5, n)
    assert rel_error(out, fused_linear_fp64(x, w, None, None, "relu")) < TOLERANCE[torch.float16]
    cuda_launch.launch_sparse24(x, p.values, p.meta, None, 1)
    assert emulated_cuda.launches == 2
