"""The CUDA kernels' layouts on the CPU, through their host emulators.

The emulators (tests/csrc/cuda_emulation, built on demand into the test-only module
_cuda_emulators by tests/cuda_emulators.py; bigperf._C_cuda does not carry them) run the
kernels' own index maps (csrc/cuda/*_tile.h: tile raster, cp.async chunks, smem swizzle,
ldmatrix lane addresses, accumulator coordinates, staged epilogue, W8A16's register
dequantisation and split-K protocol, 2:4 metadata registers) against models of cp.async,
ldmatrix, mma.m16n8k16 and mma.sp.m16n8k32 written from the PTX ISA (including its rule
that metadata nibbles hold two ascending positions). The packed inputs come from
bigperf.cuda_layouts, so a mismatch between the Python layout and the kernel's reading of
it fails here. The module also binds the launchers' own validation and planning
(csrc/cuda/kernel_plans.cpp), and the Python launch glue (bigperf/ops/cuda_launch.py) runs
against it with faked device properties. Races, pipeline ordering, PTX syntax and speed
need tests/gpu.
"""
from __future__ import annotations

import re
import types

import pytest
import torch

from bigperf.formats.sparse24 import pack_s24
from bigperf.formats.w8a16_cuda import pack_w8a16
from bigperf.quant import dequantize_weight, quantize_weight
from bigperf.sparsity import nm_mask, pack_24
from tests import cuda_emulators
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error

try:
    emu = cuda_emulators.load()
except cuda_emulators.Unavailable as error:
    pytest.skip(str(error), allow_module_level=True)

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
    plan = emu.w8a16_plan(m, layout.n, k, 132, config, splits)
    ws = torch.full((max(plan["workspace_bytes"] // 4, 1),), float("nan"))
    counters = torch.zeros(max(plan["counters"], 1), dtype=torch.int32)
    emu.emulate_w8a16_linear(
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
    plan = emu.w8a16_plan
    assert plan(1, 14336, 4096, 132)["config"] == 0 and plan(17, 4096, 4096, 132)["config"] == 1
    p = plan(1, 1024, 4096, 132)  # 16 column tiles: split K to fill the GPU
    assert p["splits"] > 1 and p["counters"] == 16 and p["workspace_bytes"] == p["splits"] * 1 * 1024 * 4
    assert plan(1, 14336, 4096, 132)["splits"] == 1  # 224 tiles x 2 would overflow one resident wave
    assert plan(1, 4096, 4096, 132)["splits"] == 5  # 64 tiles: ~2 CTAs per SM
    assert plan(1, 4096, 64, 132)["splits"] == 1  # too little K to split
    assert plan(16, 4096, 4096, 132, 1, 5) == {"config": 1, "splits": 5, "workspace_bytes": 5 * 16 * 4096 * 4,
                                               "counters": 64 * 1}
    # The K split follows the SM count: fewer SMs, fewer splits for the same 64 tiles.
    assert plan(1, 4096, 4096, 66)["splits"] < plan(1, 4096, 4096, 132)["splits"]
    # Under a device's shared-memory limit m32 gives way to m16; nothing fits -> config -1.
    smem = emu.w8a16_requirements()["config_smem_bytes"]
    assert plan(17, 4096, 4096, 132, max_smem_bytes=smem[1] - 1)["config"] == 0
    assert plan(17, 4096, 4096, 132, max_smem_bytes=smem[0] - 1)["config"] == -1


# ----------------------------------------------------------------------------- 2:4 sparse

def emulate_s24(x, layout, bias, out, act_code, config):
    m, k = x.shape
    emu.emulate_sparse24_linear(
        x.data_ptr(), x.stride(0), layout.values.data_ptr(), layout.values.stride(0), layout.meta.data_ptr(),
        bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, layout.n, k,
        CODE[x.dtype], act_code, config)


def _pruned(n, k, dtype, seed):
    w = random_tensor(n, k, seed=seed, scale=k ** -0.5)
    return (w * nm_mask(w)).to(dtype)


S24_SHAPES = [(1, 40, 72), (3, 70, 136), (17, 33, 200), (130, 150, 96), (64, 8, 8), (16, 64, 4096 // 8)]


@pytest.mark.parametrize("config", [0, 1, 2, 3], ids=["small", "medium", "large", "narrow"])
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
    choose = emu.sparse24_choose_config
    assert choose(1, 14336, 132) == 0  # 224 row tiles of 64 fill 132 SMs
    assert choose(16, 4096, 132) == 3 and choose(1, 1024, 132) == 3  # 64 / 16 tiles: 32-row tiles instead
    assert choose(16, 4096, 64) == 0  # ... unless the GPU has no more SMs than that
    assert choose(64, 4096, 132) == 1 and choose(4096, 14336, 132) == 2
    assert choose(256, 1024, 132) == 1


def test_sparse24_large_tile_gives_way_under_99_kib():
    """sm_86 / sm_89 / sm_120 allow a block 99 KiB; the large tile's ring needs 100 KiB."""
    smem = emu.sparse24_requirements()["config_smem_bytes"]
    assert smem[2] == 102400 > 99 * 1024 and max(smem[:2] + smem[3:]) <= 99 * 1024
    assert emu.sparse24_choose_config(4096, 14336, 132, 227 * 1024) == 2  # sm_90
    assert emu.sparse24_choose_config(4096, 14336, 84, 99 * 1024) == 1  # sm_86: medium instead
    assert emu.sparse24_choose_config(1, 4096, 84, 99 * 1024) == 3
    assert emu.sparse24_choose_config(1, 4096, 84, min(smem) - 1) == -1


# ----------------------------------------------------------------------------- fused linear

def _emulate_fused(x, w, bias, residual, out, act_code, config):
    m, k = x.shape
    n = w.shape[0]
    emu.emulate_fused_linear(
        x.data_ptr(), x.stride(0), w.data_ptr(), w.stride(0),
        bias.data_ptr() if bias is not None else 0,
        residual.data_ptr() if residual is not None else 0,
        residual.stride(0) if residual is not None else 0,
        out.data_ptr(), out.stride(0), m, n, k, CODE[x.dtype], act_code, config)


FUSED_SHAPES = [(1, 40, 64), (3, 70, 136), (17, 33, 200), (130, 150, 96), (64, 8, 8)]


@pytest.mark.parametrize("config", [0, 1, 2], ids=["small", "medium", "large"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", FUSED_SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in FUSED_SHAPES])
@pytest.mark.parametrize("act_code", range(5), ids=ACT_NAMES)
def test_emulated_fused_linear_matches_fp64(config, dtype, shape, act_code):
    m, n, k = shape
    seed = (m * 31 + n * 7 + k + config * 3 + act_code) % 1000
    _, x = _padded(m, k, dtype, seed)
    _, w = _padded(n, k, dtype, seed + 1, scale=k ** -0.5)
    bias = random_tensor(n, seed=seed + 2) if act_code != 1 else None
    residual = _padded(m, n, dtype, seed + 3)[1] if act_code % 2 == 0 else None
    out_buf, out = _padded(m, n, dtype, 0, fill=float("nan"))
    _emulate_fused(x, w, bias, residual, out, act_code, config)
    assert torch.isfinite(out).all(), "some output elements were never written"
    assert torch.isnan(out_buf[:, n:]).all(), "the kernel wrote past column N"
    assert rel_error(out, fused_linear_fp64(x, w, bias, residual, ACT_NAMES[act_code])) < TOLERANCE[dtype]


@pytest.mark.parametrize("config", [0, 1, 2], ids=["small", "medium", "large"])
def test_emulated_fused_linear_zero_k_gives_epilogue_only(config):
    m, n = 5, 24
    bias = random_tensor(n, seed=1)
    residual = random_tensor(m, n, dtype=torch.float16, seed=2)
    out = torch.full((m, n), float("nan"), dtype=torch.float16)
    x = torch.empty((m, 0), dtype=torch.float16)
    w = torch.empty((n, 0), dtype=torch.float16)
    emu.emulate_fused_linear(0, 0, 0, 0, bias.data_ptr(), residual.data_ptr(), n, out.data_ptr(), n, m, n, 0, 1, 4,
                             config)
    assert rel_error(out, fused_linear_fp64(x, w, bias, residual, "silu")) < 2e-3


def test_emulated_fused_linear_weight_change_moves_only_its_column():
    m, n, k = 9, 40, 72
    x = random_tensor(m, k, dtype=torch.bfloat16, seed=5)
    w = random_tensor(n, k, dtype=torch.bfloat16, seed=6)
    out1 = torch.empty(m, n, dtype=torch.bfloat16)
    out2 = torch.empty(m, n, dtype=torch.bfloat16)
    _emulate_fused(x, w, None, None, out1, 0, 0)
    w2 = w.clone()
    w2[13] += 1.0
    _emulate_fused(x, w2, None, None, out2, 0, 0)
    changed = (out1 != out2).any(dim=0)
    assert changed[13] and changed.sum() == 1


# The emulators validate with the launchers' own code (csrc/cuda/kernel_plans.cpp) and
# need the configuration (W8A16: and the split) spelled out.
EMULATOR_BAD_ARGS = [
    ("emulate_fused_linear", dict(x_ptr=0x10008), "x_ptr must be 16-byte aligned"),
    ("emulate_fused_linear", dict(K=12), "K must be a multiple of 8"),
    ("emulate_fused_linear", dict(config=-1), "config must name a configuration"),
    ("emulate_w8a16_linear", dict(x_ptr=0x10008), "x_ptr must be 16-byte aligned"),
    ("emulate_w8a16_linear", dict(group_size=16), "group_size must be"),
    ("emulate_w8a16_linear", dict(splits=-1), "config (0..1) and splits (>= 1) must be given"),
    ("emulate_sparse24_linear", dict(meta_ptr=0), "meta_ptr (packed metadata) must be non-null"),
    ("emulate_sparse24_linear", dict(config=4), "config must be -1 (auto) or 0..3"),
]
_EMULATOR_VALID = {
    "emulate_fused_linear": dict(x_ptr=0x10000, x_row_stride=64, w_ptr=0x20000, w_row_stride=64, bias_ptr=0,
                                 residual_ptr=0, residual_row_stride=0, out_ptr=0x30000, out_row_stride=32, M=4,
                                 N=32, K=64, dtype_code=2, act_code=0, config=0),
    "emulate_w8a16_linear": dict(x_ptr=0x10000, x_row_stride=64, w_ptr=0x20000, scale_ptr=0x30000, zero_ptr=0,
                                 group_size=32, bias_ptr=0, out_ptr=0x40000, out_row_stride=32, workspace_ptr=0,
                                 workspace_bytes=0, counters_ptr=0, counters_count=0, M=4, N=32, K=64,
                                 dtype_code=2, act_code=0, config=0, splits=1),
    "emulate_sparse24_linear": dict(x_ptr=0x10000, x_row_stride=64, values_ptr=0x20000, values_row_stride=32,
                                    meta_ptr=0x30000, bias_ptr=0, out_ptr=0x40000, out_row_stride=32, M=4, N=32,
                                    K=64, dtype_code=1, act_code=0, config=0),
}


@pytest.mark.parametrize("entry,override,message", EMULATOR_BAD_ARGS, ids=[m for _, _, m in EMULATOR_BAD_ARGS])
def test_emulators_validate_like_the_launchers(entry, override, message):
    with pytest.raises(ValueError, match=re.escape(f"_cuda_emulators.{entry}: ") + ".*" + re.escape(message)):
        getattr(emu, entry)(**{**_EMULATOR_VALID[entry], **override})


# ----------------------------------------------------------------------------- Python glue

def fake_gpu(name, capability, sm_count, smem_optin):
    """torch.cuda.get_device_properties(...) of a GPU this machine does not have."""
    return types.SimpleNamespace(name=name, major=capability[0], minor=capability[1],
                                 multi_processor_count=sm_count, shared_memory_per_block_optin=smem_optin)


H100 = fake_gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 227 * 1024)
# Two SMs, so that the grids in which the large tiles win stay small enough to emulate.
SM90_2SM = fake_gpu("sm_90 with 2 SMs", (9, 0), 2, 227 * 1024)
SM86_2SM = fake_gpu("sm_86 with 2 SMs", (8, 6), 2, 99 * 1024)


class _EmulatedCudaModule:
    """bigperf._C_cuda as the launch glue sees it (SASS for 80 and 90a, PTX for 80), with
    the launches run by the emulators on host pointers, choosing configurations as the C++
    launchers do under the faked device's limits."""

    def __init__(self, props):
        self.props = props
        self.launches = []  # (kernel, config, splits, counters_ptr)

    def __getattr__(self, name):
        return getattr(emu, name)

    @staticmethod
    def compiled_archs():
        return ["80", "90a"]

    @staticmethod
    def compiled_ptx_archs():
        return ["80"]

    def w8a16_linear(self, *args):
        *params, _stream, config, splits = args
        self.launches.append(("w8a16", config, splits, params[11]))
        emu.emulate_w8a16_linear(*params, config, splits)

    def sparse24_linear(self, *args, config=-1):
        *params, _stream = args
        m, n = params[8], params[9]
        if config < 0:
            config = emu.sparse24_choose_config(m, n, self.props.multi_processor_count,
                                                self.props.shared_memory_per_block_optin)
        self.launches.append(("sparse24", config, 1, 0))
        emu.emulate_sparse24_linear(*params, config)


@pytest.fixture
def emulated_cuda(monkeypatch, request):
    """The launch glue on CPU tensors: bigperf._C_cuda replaced by the emulators, the
    device properties by a fake GPU (H100 unless the test is parametrized with another)."""
    from bigperf import _ext
    from bigperf.ops import cuda_launch

    props = getattr(request, "param", H100)
    module = _EmulatedCudaModule(props)
    monkeypatch.setattr(_ext, "cuda_module", lambda: module)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: None)  # = a CPU tensor's device.index
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: types.SimpleNamespace(cuda_stream=0))
    monkeypatch.setattr(cuda_launch, "_SPLIT_SCRATCH", {})
    cuda_launch.device_caps.cache_clear()
    yield module
    cuda_launch.device_caps.cache_clear()


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
    assert len(emulated_cuda.launches) == 3


def test_w8a16_split_k_scratch_is_reused_not_reallocated(emulated_cuda, monkeypatch):
    from bigperf.ops import cuda_launch

    n, k = 96, 1024  # 2 column tiles at M = 3: the plan splits K to fill the GPU
    q = quantize_weight(random_tensor(n, k, seed=21), group_size=128)
    x = random_tensor(3, k, dtype=torch.float16, seed=22)
    cuda_launch.launch_w8a16(x, q.qweight, q.scale, None, None, 0)  # packs the weight (and allocates)
    counter_allocations = []
    real_zeros = torch.zeros

    def counting_zeros(*args, **kwargs):
        if kwargs.get("dtype") == torch.int32:
            counter_allocations.append(args)
        return real_zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", counting_zeros)
    outs = [cuda_launch.launch_w8a16(x, q.qweight, q.scale, None, None, 0) for _ in range(3)]
    assert not counter_allocations, "split-K counters must not be allocated per call"
    assert all(split > 1 for _, _, split, _ in emulated_cuda.launches)
    assert len({ptr for *_, ptr in emulated_cuda.launches}) == 1, "every launch must use the same counters"
    (workspace, counters), = cuda_launch._SPLIT_SCRATCH.values()
    assert not counters.any(), "the kernel leaves its counters at zero for the next launch"
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert rel_error(outs[0], fused_linear_fp64(x, dequantize_weight(q.qweight, q.scale))) < TOLERANCE[torch.float16]
    # A launch that needs more grows the pair once (zeroed), and later launches reuse it.
    x_big = random_tensor(16, k, dtype=torch.float16, seed=23)
    for _ in range(2):
        cuda_launch.launch_w8a16(x_big, q.qweight, q.scale, None, None, 0)
    grown = cuda_launch._SPLIT_SCRATCH[(None, 0)]
    assert grown[0].numel() > workspace.numel() and len(counter_allocations) == 1
    assert emulated_cuda.launches[-1][3] == emulated_cuda.launches[-2][3] == grown[1].data_ptr()


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
    assert len(emulated_cuda.launches) == 2


@pytest.mark.parametrize("emulated_cuda,config", [(SM90_2SM, 2), (SM86_2SM, 1)], ids=["sm90", "sm86"],
                         indirect=["emulated_cuda"])
def test_sparse24_large_m_runs_a_tile_the_device_can_hold(emulated_cuda, config):
    """Where the large tile wins, sm_90 runs it; sm_86 (99 KiB per block) runs medium
    instead of failing to launch."""
    from bigperf.ops import cuda_launch

    n, k = 150, 96
    w = _pruned(n, k, torch.bfloat16, 16)
    p = pack_24(w)
    x = random_tensor(130, k, dtype=torch.bfloat16, seed=17)
    out = cuda_launch.launch_sparse24(x, p.values, p.meta, None, 2)
    assert [c for _, c, _, _ in emulated_cuda.launches] == [config]
    assert rel_error(out, fused_linear_fp64(x, w, None, None, "gelu")) < TOLERANCE[torch.bfloat16]
