"""bigperf._C_cuda without a GPU: import, argument checks, the no-device error, the SASS
the build embedded (fused linear, W8A16, 2:4 sparse), and the fused linear kernel's layouts
run by the host emulator (the W8A16 and 2:4 emulators: tests/test_cuda_emulated_kernels.py).

The emulator (`_emulate_fused_linear`) executes the kernel's own index maps (tile raster,
cp.async chunks, smem swizzle, ldmatrix lane addresses, accumulator coordinates, staged
epilogue) against an independent model of cp.async / ldmatrix / mma.m16n8k16 written from
the PTX ISA tables, so fragment-layout bugs fail here. Races, pipeline ordering and
speed need the GPU tests in tests/gpu.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor

ROOT = Path(__file__).resolve().parent.parent
BUILD_INFO = ROOT / "bigperf" / "_build_info.json"
FN = "bigperf._C_cuda.fused_linear"
ACT_NAMES = ["none", "relu", "gelu", "gelu_tanh", "silu"]  # index = act_code
DTYPE_CODE = {torch.float16: 1, torch.bfloat16: 2}


def _build_info() -> dict:
    try:
        return json.loads(BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}


if not _build_info().get("cuda_built"):
    pytest.skip(f"bigperf._C_cuda was not built ({BUILD_INFO.name}: cuda_built is not true, "
                f"reason: {_build_info().get('cuda_skip_reason')})", allow_module_level=True)

cuda_ext = pytest.importorskip("bigperf._C_cuda", reason="bigperf._C_cuda is built but does not import")


def _module_path() -> str:
    return cuda_ext.__file__


def _cuobjdump() -> str | None:
    spec = importlib.util.find_spec("triton")
    candidates = []
    if spec and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "backends" / "nvidia" / "bin" / "cuobjdump")
    candidates.append(Path("/usr/local/cuda/bin/cuobjdump"))
    for c in candidates:
        if c.exists() and os.access(c, os.X_OK):
            return str(c)
    return shutil.which("cuobjdump")


# ----------------------------------------------------------------------------- module

def test_module_imports_and_counts_devices():
    count = cuda_ext.device_count()
    assert isinstance(count, int) and count >= 0
    assert "runtime" in cuda_ext.runtime_info()


def test_compiled_archs_match_build():
    built = _build_info()["cuda_archs"]
    # Without a BIGPERF_CUDA_ARCHS_STR define the module reports nvcc's list, which drops
    # the arch-specific "a" suffix.
    assert [a.rstrip("a") for a in cuda_ext.compiled_archs()] == [a.rstrip("a") for a in built]


def test_requirements_are_published():
    req = cuda_ext.fused_linear_requirements()
    assert req["k_multiple"] == 8 and req["row_stride_multiple"] == 8
    assert req["pointer_alignment"] == 16 and req["bias_alignment"] == 4
    assert req["dtype_codes"] == {"float16": 1, "bfloat16": 2}
    assert [req["act_codes"][n] for n in ("none", "relu", "gelu_erf", "gelu_tanh", "silu")] == [0, 1, 2, 3, 4]
    assert len(req["configs"]) == 3


def test_config_choice():
    choose = cuda_ext.fused_linear_choose_config
    assert choose(1, 14336, 132) == 0 and choose(16, 4096, 132) == 0
    assert choose(17, 4096, 132) == 1 and choose(64, 4096, 132) == 1
    assert choose(4096, 14336, 132) == 2
    assert choose(256, 1024, 132) == 1  # 2 x 8 large tiles would leave most SMs idle


# ----------------------------------------------------------------------------- arguments

# Fake but well-aligned addresses: validation happens before anything is dereferenced.
VALID = dict(x_ptr=0x10000, x_row_stride=64, w_ptr=0x20000, w_row_stride=64, bias_ptr=0,
             residual_ptr=0, residual_row_stride=0, out_ptr=0x30000, out_row_stride=32,
             M=4, N=32, K=64, dtype_code=2, act_code=0, stream=0)

BAD_ARGS = [
    ({"M": -1}, "M must be"),
    ({"N": -5}, "N must be"),
    ({"K": 12}, "K must be a multiple of 8"),
    ({"M": 2**31}, "M must be"),
    ({"dtype_code": 0}, "dtype_code"),
    ({"dtype_code": 3}, "dtype_code"),
    ({"act_code": 5}, "act_code"),
    ({"act_code": -1}, "act_code"),
    ({"x_ptr": 0}, "x_ptr is null"),
    ({"x_ptr": 0x10008}, "x_ptr must be 16-byte aligned"),
    ({"w_ptr": 0x20002}, "w_ptr must be 16-byte aligned"),
    ({"w_ptr": 0}, "w_ptr is null"),
    ({"out_ptr": 0}, "out_ptr is null"),
    ({"out_ptr": 0x30004}, "out_ptr must be 16-byte aligned"),
    ({"residual_ptr": 0x40002, "residual_row_stride": 32}, "residual_ptr must be 16-byte aligned"),
    ({"bias_ptr": 0x50002}, "bias_ptr must be 4-byte aligned"),
    ({"x_row_stride": 56}, "x_row_stride (56) must be >= K"),
    ({"x_row_stride": 68}, "x_row_stride must be a multiple of 8"),
    ({"w_row_stride": 0}, "w_row_stride (0) must be >= K"),
    ({"w_row_stride": 100}, "w_row_stride must be a multiple of 8"),
    ({"out_row_stride": 24}, "out_row_stride (24) must be >= N"),
    ({"out_row_stride": 36}, "out_row_stride must be a multiple of 8"),
    ({"residual_ptr": 0x40000, "residual_row_stride": 8}, "residual_row_stride (8) must be >= N"),
    ({"x_row_stride": 2**62}, "x_row_stride is too large"),
    ({"config": 3}, "config must be"),
]


@pytest.mark.parametrize("override,message", BAD_ARGS, ids=[m for _, m in BAD_ARGS])
def test_bad_arguments_raise_value_error(override, message):
    args = {**VALID, **override}
    with pytest.raises(ValueError, match=re.escape(f"{FN}: ") + ".*" + re.escape(message)):
        cuda_ext.fused_linear(**args)


@pytest.mark.parametrize("override,message", BAD_ARGS[:12], ids=[m for _, m in BAD_ARGS[:12]])
def test_emulator_validates_like_the_launcher(override, message):
    args = {**VALID, **override}
    args.pop("stream")
    args.setdefault("config", 0)
    with pytest.raises(ValueError, match=re.escape(message)):
        cuda_ext._emulate_fused_linear(**args)


def test_empty_problem_is_a_no_op():
    assert cuda_ext.fused_linear(**{**VALID, "M": 0, "x_ptr": 0, "out_ptr": 0}) is None
    assert cuda_ext.fused_linear(**{**VALID, "N": 0, "w_ptr": 0, "out_ptr": 0}) is None


needs_no_device = pytest.mark.skipif(cuda_ext.device_count() > 0, reason="a CUDA device is present")


@needs_no_device
def test_no_device_raises_runtime_error():
    with pytest.raises(RuntimeError, match=re.escape(f"{FN}: no CUDA device/driver available (")):
        cuda_ext.fused_linear(**VALID)


@needs_no_device
def test_single_row_ignores_its_row_stride():
    # With M == 1 (and N == 1) no second row is ever addressed, so strides are free.
    args = {**VALID, "M": 1, "x_row_stride": 3, "out_row_stride": 1, "N": 1, "w_row_stride": 5}
    with pytest.raises(RuntimeError, match="no CUDA device"):
        cuda_ext.fused_linear(**args)


# ----------------------------------------------------------------------------- SASS

@pytest.fixture(scope="module")
def sass() -> dict[str, dict[str, str]]:
    """{arch: {kernel name: SASS text}} of the built module."""
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (triton's nvidia backend bin/, /usr/local/cuda/bin, PATH)")
    text = subprocess.run([tool, "-sass", _module_path()], capture_output=True, text=True,
                          check=True, timeout=300).stdout
    out: dict[str, dict[str, str]] = {}
    arch = None
    name = None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (sm_\w+)", line)
        if m:
            arch, name = m.group(1), None
            out.setdefault(arch, {})
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m and arch:
            name = m.group(1)
            out[arch][name] = ""
            continue
        if arch and name:
            out[arch][name] += line + "\n"
    return out


def _expected_archs() -> list[str]:
    return ["sm_" + a for a in _build_info()["cuda_archs"]]


def test_module_carries_sass_for_every_arch():
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (triton's nvidia backend bin/, /usr/local/cuda/bin, PATH)")
    listing = subprocess.run([tool, "--list-elf", _module_path()], capture_output=True, text=True,
                             check=True, timeout=120).stdout
    elf_archs = set(re.findall(r"\.(sm_\w+)\.cubin", listing))
    for arch in _expected_archs():
        assert arch in elf_archs, f"{arch} SASS missing from {_module_path()}: {listing}"
    if not os.environ.get("BIGPERF_CUDA_ARCHS"):
        assert {"sm_80", "sm_90a"} <= elf_archs, "the default build must carry sm_80 and sm_90a SASS"
    fused = re.findall(r"fused_linear\.(sm_\w+)\.cubin", listing)
    assert set(_expected_archs()) <= set(fused)


def test_fused_linear_kernels_use_tensor_cores(sass):
    for arch in _expected_archs():
        kernels = {n: s for n, s in sass.get(arch, {}).items() if "fused_linear_kernel" in n}
        # 3 tile configurations x {fp16, bf16}
        assert len(kernels) == 6, f"{arch}: fused linear kernels found: {list(kernels)}"
        for name, code in kernels.items():
            assert "HMMA.16816.F32" in code, f"{arch} {name}: no HMMA.16816 (mma.sync m16n8k16)"
            assert "LDSM.16.M88.4" in code, f"{arch} {name}: no LDSM (ldmatrix.x4)"
            assert "LDGSTS" in code, f"{arch} {name}: no LDGSTS (cp.async)"
            assert "STL" not in code and "LDL" not in code, f"{arch} {name}: register spills"
            if "bfloat16" in name:
                assert "HMMA.16816.F32.BF16" in code


# ----------------------------------------------------------------------------- emulator

def _padded(rows, cols, dtype, seed, scale=1.0, fill=None):
    """[rows, cols] view of a wider buffer (row stride rounded up to 8, plus 8)."""
    stride = -(-max(cols, 1) // 8) * 8 + 8
    buf = random_tensor(rows, stride, dtype=dtype, seed=seed, scale=scale)
    if fill is not None:
        buf.fill_(fill)
    return buf, buf[:, :cols]


def _emulate(x, w, bias, residual, out, act_code, config):
    m, k = x.shape
    n = w.shape[0]
    cuda_ext._emulate_fused_linear(
        x.data_ptr(), x.stride(0), w.data_ptr(), w.stride(0),
        bias.data_ptr() if bias is not None else 0,
        residual.data_ptr() if residual is not None else 0,
        residual.stride(0) if residual is not None else 0,
        out.data_ptr(), out.stride(0), m, n, k, DTYPE_CODE[x.dtype], act_code, config)


SHAPES = [(1, 40, 64), (3, 70, 136), (17, 33, 200), (130, 150, 96), (64, 8, 8)]
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.mark.parametrize("config", [0, 1, 2], ids=["small", "medium", "large"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
@pytest.mark.parametrize("act_code", range(5), ids=ACT_NAMES)
def test_emulated_kernel_matches_fp64(config, dtype, shape, act_code):
    m, n, k = shape
    seed = hash((config, shape, act_code)) % 1000
    _, x = _padded(m, k, dtype, seed)
    _, w = _padded(n, k, dtype, seed + 1, scale=k ** -0.5)
    bias = random_tensor(n, seed=seed + 2) if act_code != 1 else None
    residual = _padded(m, n, dtype, seed + 3)[1] if act_code % 2 == 0 else None
    out_buf, out = _padded(m, n, dtype, 0, fill=float("nan"))
    _emulate(x, w, bias, residual, out, act_code, config)
    ref = fused_linear_fp64(x, w, bias, residual, ACT_NAMES[act_code])
    assert torch.isfinite(out).all(), "some output elements were never written"
    assert torch.isnan(out_buf[:, n:]).all(), "the kernel wrote past column N"
    err = ((out.double() - ref).norm() / ref.norm()).item()
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"


@pytest.mark.parametrize("config", [0, 1, 2], ids=["small", "medium", "large"])
def test_emulated_zero_k_gives_epilogue_only(config):
    m, n = 5, 24
    bias = random_tensor(n, seed=1)
    residual = random_tensor(m, n, dtype=torch.float16, seed=2)
    out = torch.full((m, n), float("nan"), dtype=torch.float16)
    x = torch.empty((m, 0), dtype=torch.float16)
    w = torch.empty((n, 0), dtype=torch.float16)
    cuda_ext._emulate_fused_linear(0, 0, 0, 0, bias.data_ptr(), residual.data_ptr(), n,
                                   out.data_ptr(), n, m, n, 0, 1, 4, config)
    ref = fused_linear_fp64(x, w, bias, residual, "silu")
    assert ((out.double() - ref).norm() / ref.norm()).item() < 2e-3


def test_emulated_weight_change_moves_only_its_column():
    m, n, k = 9, 40, 72
    x = random_tensor(m, k, dtype=torch.bfloat16, seed=5)
    w = random_tensor(n, k, dtype=torch.bfloat16, seed=6)
    out1 = torch.empty(m, n, dtype=torch.bfloat16)
    out2 = torch.empty(m, n, dtype=torch.bfloat16)
    _emulate(x, w, None, None, out1, 0, 0)
    w2 = w.clone()
    w2[13] += 1.0
    _emulate(x, w2, None, None, out2, 0, 0)
    changed = (out1 != out2).any(dim=0)
    assert changed[13] and changed.sum() == 1


# ----------------------------------------------------------------------------- W8A16 and 2:4 sparse

W8_FN = "bigperf._C_cuda.w8a16_linear"
S24_FN = "bigperf._C_cuda.sparse24_linear"
# Fake but well-aligned addresses: validation happens before anything is dereferenced.
W8_VALID = {"x_ptr": 0x10000, "x_row_stride": 64, "w_ptr": 0x20000, "scale_ptr": 0x30000, "zero_ptr": 0,
            "group_size": 32, "bias_ptr": 0, "out_ptr": 0x40000, "out_row_stride": 32, "workspace_ptr": 0,
            "workspace_bytes": 0, "counters_ptr": 0, "counters_count": 0, "M": 4, "N": 32, "K": 64,
            "dtype_code": 2, "act_code": 0, "stream": 0, "config": -1, "splits": 1}
S24_VALID = {"x_ptr": 0x10000, "x_row_stride": 64, "values_ptr": 0x20000, "values_row_stride": 32,
             "meta_ptr": 0x30000, "bias_ptr": 0, "out_ptr": 0x40000, "out_row_stride": 32, "M": 4, "N": 32, "K": 64,
             "dtype_code": 1, "act_code": 0, "stream": 0}

W8_BAD_ARGS = [
    ({"M": -1}, "M must be"),
    ({"N": 2**31}, "N must be"),
    ({"K": 12}, "K must be a multiple of 8"),
    ({"dtype_code": 0}, "dtype_code"),
    ({"act_code": 7}, "act_code"),
    ({"config": 2}, "config must be"),
    ({"splits": 0}, "splits must be"),
    ({"splits": 17}, "splits must be"),
    ({"group_size": 16}, "group_size must be"),
    ({"group_size": 128, "K": 192}, "group_size 128 must divide K"),
    ({"x_ptr": 0}, "x_ptr is null"),
    ({"x_ptr": 0x10008}, "x_ptr must be 16-byte aligned"),
    ({"x_row_stride": 60}, "x_row_stride (60) must be >= K"),
    ({"x_row_stride": 68}, "x_row_stride must be a multiple of 8"),
    ({"w_ptr": 0}, "w_ptr (packed weight) must be non-null"),
    ({"w_ptr": 0x20004}, "w_ptr (packed weight) must be non-null and 16-byte aligned"),
    ({"scale_ptr": 0}, "scale_ptr (packed scales) must be non-null"),
    ({"zero_ptr": 0x50008}, "zero_ptr (packed zero points) must be 16-byte aligned"),
    ({"out_ptr": 0x40002}, "out_ptr must be 16-byte aligned"),
    ({"out_row_stride": 24}, "out_row_stride (24) must be >= N"),
    ({"bias_ptr": 0x60002}, "bias_ptr must be 4-byte aligned"),
    ({"workspace_ptr": 0x70004}, "workspace_ptr must be 16-byte aligned"),
    ({"counters_ptr": 0x80002}, "counters_ptr must be 4-byte aligned"),
]

S24_BAD_ARGS = [
    ({"M": -2}, "M must be"),
    ({"K": 2**31 - 8}, "K must be"),
    ({"K": 60}, "K must be a multiple of 8"),
    ({"dtype_code": 3}, "dtype_code"),
    ({"act_code": -1}, "act_code"),
    ({"config": 3}, "config must be"),
    ({"x_ptr": 0x10002}, "x_ptr must be 16-byte aligned"),
    ({"values_ptr": 0}, "values_ptr is null"),
    ({"values_row_stride": 24}, "values_row_stride (24) must be >= Kp/2"),
    ({"values_row_stride": 36}, "values_row_stride must be a multiple of 8"),
    ({"K": 72, "x_row_stride": 72, "values_row_stride": 40}, "values_row_stride (40) must be >= Kp/2"),  # K=72 pads to 96
    ({"meta_ptr": 0}, "meta_ptr (packed metadata) must be non-null"),
    ({"meta_ptr": 0x30004}, "meta_ptr (packed metadata) must be non-null and 16-byte aligned"),
    ({"out_ptr": 0}, "out_ptr is null"),
    ({"out_row_stride": 33}, "out_row_stride must be a multiple of 8"),
    ({"bias_ptr": 0x50001}, "bias_ptr must be 4-byte aligned"),
]


@pytest.mark.parametrize("override,message", W8_BAD_ARGS, ids=[m for _, m in W8_BAD_ARGS])
def test_w8a16_bad_arguments_raise_value_error(override, message):
    with pytest.raises(ValueError, match=re.escape(f"{W8_FN}: ") + ".*" + re.escape(message)):
        cuda_ext.w8a16_linear(**{**W8_VALID, **override})


@pytest.mark.parametrize("override,message", S24_BAD_ARGS, ids=[m for _, m in S24_BAD_ARGS])
def test_sparse24_bad_arguments_raise_value_error(override, message):
    with pytest.raises(ValueError, match=re.escape(f"{S24_FN}: ") + ".*" + re.escape(message)):
        cuda_ext.sparse24_linear(**{**S24_VALID, **override})


def test_emulators_validate_like_the_launchers():
    args = {**W8_VALID, "x_ptr": 0x10008}
    del args["stream"]
    with pytest.raises(ValueError, match=r"_emulate_w8a16_linear: x_ptr must be 16-byte aligned"):
        cuda_ext._emulate_w8a16_linear(**{**args, "config": 0})
    args = {**S24_VALID, "meta_ptr": 0}
    del args["stream"]
    with pytest.raises(ValueError, match=r"_emulate_sparse24_linear: meta_ptr"):
        cuda_ext._emulate_sparse24_linear(**{**args, "config": 0})


def test_w8a16_and_sparse24_requirements_are_published():
    from bigperf.cuda_layouts import S24_LAYOUT_VERSION, W8A16_LAYOUT_VERSION

    w8 = cuda_ext.w8a16_requirements()
    assert w8["layout_version"] == W8A16_LAYOUT_VERSION
    assert w8["pack_n"] == 32 and w8["pack_k"] == 16 and tuple(w8["group_sizes"]) == (0, 32, 64, 128, 256)
    assert len(w8["configs"]) == 2 and w8["dtype_codes"] == {"float16": 1, "bfloat16": 2}
    s24 = cuda_ext.sparse24_requirements()
    assert s24["layout_version"] == S24_LAYOUT_VERSION
    assert s24["pack_k"] == 32 and s24["pack_rows"] == 16 and len(s24["configs"]) == 3


def test_w8a16_split_workspace_is_checked_once_the_plan_is_known():
    # splits = 4 needs a workspace; the check comes after validation but before any launch.
    args = {**W8_VALID, "splits": 4}
    with pytest.raises((ValueError, RuntimeError)) as info:
        cuda_ext.w8a16_linear(**args)
    if cuda_ext.device_count() == 0:
        assert isinstance(info.value, RuntimeError) and "no CUDA device" in str(info.value)
    else:
        assert "workspace_ptr must hold" in str(info.value)


def test_w8a16_and_sparse24_empty_problems_are_no_ops():
    assert cuda_ext.w8a16_linear(**{**W8_VALID, "M": 0, "x_ptr": 0, "out_ptr": 0}) is None
    assert cuda_ext.sparse24_linear(**{**S24_VALID, "N": 0, "values_ptr": 0, "out_ptr": 0}) is None


@needs_no_device
def test_w8a16_and_sparse24_without_device_raise_runtime_error():
    with pytest.raises(RuntimeError, match=re.escape(f"{W8_FN}: no CUDA device/driver available (")):
        cuda_ext.w8a16_linear(**W8_VALID)
    with pytest.raises(RuntimeError, match=re.escape(f"{S24_FN}: no CUDA device/driver available (")):
        cuda_ext.sparse24_linear(**S24_VALID)


def test_w8a16_kernels_use_tensor_cores(sass):
    for arch in _expected_archs():
        kernels = {n: s for n, s in sass.get(arch, {}).items() if "w8a16_kernel" in n}
        assert len(kernels) == 4, f"{arch}: W8A16 kernels found: {list(kernels)}"  # 2 configs x {fp16, bf16}
        for name, code in kernels.items():
            assert "HMMA.16816.F32" in code, f"{arch} {name}: no HMMA.16816 (mma.sync m16n8k16)"
            assert "LDGSTS" in code, f"{arch} {name}: no LDGSTS (cp.async)"
            assert "LDSM.16.M88.4" in code, f"{arch} {name}: no LDSM (ldmatrix.x4 of x)"
            assert "LDS.128" in code, f"{arch} {name}: no 16-byte shared loads of the packed weight"
            assert "STL" not in code and "LDL" not in code, f"{arch} {name}: register spills"
            if "bfloat16" in name:
                assert "HMMA.16816.F32.BF16" in code


def test_sparse24_kernels_use_sparse_tensor_cores(sass):
    for arch in _expected_archs():
        kernels = {n: s for n, s in sass.get(arch, {}).items() if "s24_kernel" in n}
        assert len(kernels) == 6, f"{arch}: 2:4 kernels found: {list(kernels)}"  # 3 configs x {fp16, bf16}
        for name, code in kernels.items():
            assert "HMMA.SP.16832.F32" in code, f"{arch} {name}: no HMMA.SP.16832 (mma.sp m16n8k32)"
            assert "HMMA.16816" not in code, f"{arch} {name}: dense HMMA in the sparse kernel"
            assert "LDGSTS" in code and "LDSM.16.M88.4" in code, f"{arch} {name}: no cp.async / ldmatrix"
            assert "STL" not in code and "LDL" not in code, f"{arch} {name}: register spills"
            if "bfloat16" in name:
                assert "HMMA.SP.16832.F32.BF16" in code
