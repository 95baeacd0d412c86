"""bigperf._C_cuda without a GPU: import, what it reports (devices, runtime, SASS and PTX
archs), argument checks, the no-device error, configuration choices under a device's
shared-memory limit, and the SASS the build embedded (fused linear, W8A16, 2:4 sparse).

The kernels' index maps run in the host emulators of tests/test_cuda_emulated_kernels.py,
a test-only module: this module also checks that the production build does not carry
them. Races, pipeline ordering and speed need the GPU tests in tests/gpu.
"""
from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BUILD_INFO = ROOT / "bigperf" / "_build_info.json"
FN = "bigperf._C_cuda.fused_linear"


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
    info = re.fullmatch(r"runtime (\d+), driver (\d+)", cuda_ext.runtime_info())
    assert info, cuda_ext.runtime_info()
    runtime, driver = map(int, info.groups())
    # The runtime is linked statically: it is the toolkit the build's nvcc came from.
    major, minor = map(int, re.search(r"cuda_(\d+)\.(\d+)", _build_info()["nvcc"]).groups())
    assert runtime == 1000 * major + 10 * minor, (runtime, _build_info()["nvcc"])
    if torch.cuda.is_available():
        assert count == torch.cuda.device_count()
        assert driver // 1000 >= runtime // 1000, "a driver older than the runtime's major cannot run it"
    elif ctypes.util.find_library("cuda") is None:
        # No driver library at all: the module must see no device and no driver.
        assert count == 0 and driver == 0


def test_compiled_ptx_archs_match_build():
    assert list(cuda_ext.compiled_ptx_archs()) == _build_info()["cuda_ptx_archs"]
    # PTX of the lowest numeric arch, so that GPUs newer than every SASS arch can JIT it.
    numeric = sorted((a for a in _build_info()["cuda_archs"] if a.isdigit()), key=int)
    assert list(cuda_ext.compiled_ptx_archs()) == numeric[:1]


def test_production_module_carries_no_emulators():
    """The host emulators are test code (tests/csrc/cuda_emulation), not shipped."""
    assert not [n for n in dir(cuda_ext) if "emulat" in n]
    text = Path(_module_path()).read_bytes()
    assert b"fused_linear_emulate" not in text and b"s24_emulate" not in text and b"w8a16_emulate" not in text


def test_pointer_checks_are_off_by_default_and_switchable():
    assert cuda_ext.pointer_checks() is (os.environ.get("BIGPERF_CUDA_CHECK_POINTERS") == "1")
    before = cuda_ext.pointer_checks()
    try:
        cuda_ext.set_pointer_checks(True)
        assert cuda_ext.pointer_checks() is True
        cuda_ext.set_pointer_checks(False)
        assert cuda_ext.pointer_checks() is False
    finally:
        cuda_ext.set_pointer_checks(before)


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
    # 4-stage cp.async rings of (BM + BN) x BK halves: small 16+32 rows x 128, medium
    # 64+64 x 64, large 128+128 x 32 (the fp32 epilogue tile of large is larger still).
    assert req["config_smem_bytes"] == [4 * 48 * 128 * 2, 4 * 128 * 64 * 2, 128 * 136 * 4]


def test_config_choice():
    choose = cuda_ext.fused_linear_choose_config
    assert choose(1, 14336, 132) == 0 and choose(16, 4096, 132) == 0
    assert choose(17, 4096, 132) == 1 and choose(64, 4096, 132) == 1
    assert choose(4096, 14336, 132) == 2
    assert choose(256, 1024, 132) == 1  # 2 x 8 large tiles would leave most SMs idle
    # Under a device's shared-memory limit: the preferred tile, else the next that fits.
    smem = cuda_ext.fused_linear_requirements()["config_smem_bytes"]
    assert choose(4096, 14336, 132, 99 * 1024) == 2
    assert choose(4096, 14336, 132, smem[2] - 1) == 1
    assert choose(4096, 14336, 132, smem[1] - 1) == 0
    assert choose(1, 4096, 132, smem[0] - 1) == -1


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
    ({"config": 4}, "config must be"),
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


def test_w8a16_and_sparse24_requirements_are_published():
    from bigperf.formats.sparse24 import CUDA_LAYOUT_VERSION as S24_LAYOUT_VERSION
    from bigperf.formats.w8a16_cuda import VERSION as W8A16_LAYOUT_VERSION

    w8 = cuda_ext.w8a16_requirements()
    assert w8["layout_version"] == W8A16_LAYOUT_VERSION
    assert w8["pack_n"] == 32 and w8["pack_k"] == 16 and tuple(w8["group_sizes"]) == (0, 32, 64, 128, 256)
    assert len(w8["configs"]) == 2 and w8["dtype_codes"] == {"float16": 1, "bfloat16": 2}
    s24 = cuda_ext.sparse24_requirements()
    assert s24["layout_version"] == S24_LAYOUT_VERSION
    assert s24["pack_k"] == 32 and s24["pack_rows"] == 16 and len(s24["configs"]) == 4
    # The large 2:4 tile's 4-stage ring: 128 x 32 values + 128 x 64 x halves + 1 KiB of
    # metadata per stage, 102,400 B: more than the 99 KiB an sm_86 / sm_89 block may have.
    assert s24["config_smem_bytes"][2] == 4 * (128 * 32 * 2 + 128 * 64 * 2 + 1024) == 102400
    assert len(w8["config_smem_bytes"]) == 2 and max(w8["config_smem_bytes"]) <= 99 * 1024


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
        assert len(kernels) == 8, f"{arch}: 2:4 kernels found: {list(kernels)}"  # 4 configs x {fp16, bf16}
        for name, code in kernels.items():
            assert "HMMA.SP.16832.F32" in code, f"{arch} {name}: no HMMA.SP.16832 (mma.sp m16n8k32)"
            assert "HMMA.16816" not in code, f"{arch} {name}: dense HMMA in the sparse kernel"
            assert "LDGSTS" in code and "LDSM.16.M88.4" in code, f"{arch} {name}: no cp.async / ldmatrix"
            assert "STL" not in code and "LDL" not in code, f"{arch} {name}: register spills"
            if "bfloat16" in name:
                assert "HMMA.SP.16832.F32.BF16" in code
