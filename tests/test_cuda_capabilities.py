"""The CUDA backends' why-not answers on GPUs this machine does not have.

bigperf/ops/cuda_launch.py reads a device's properties once (torch.cuda.get_device_properties,
faked here) and compares them with what bigperf._C_cuda carries: SASS / PTX archs and the
shared memory of each tile configuration (from the tests' emulator module, which binds
the launchers' own planning code). A device the binary cannot serve must get a reason, so
that the next backend runs; one it can serve must not.
"""
from __future__ import annotations

import types

import pytest
import torch

from bigperf import _ext
from bigperf.ops import common, cuda_launch
from bigperf.ops.cuda_launch import DeviceCaps, arch_why_not, smem_why_not
from tests import cuda_emulators


def fake_gpu(name, capability, sm_count, smem_optin=None):
    props = types.SimpleNamespace(name=name, major=capability[0], minor=capability[1], multi_processor_count=sm_count)
    if smem_optin is not None:
        props.shared_memory_per_block_optin = smem_optin
    return props


GPUS = {
    "sm_90": fake_gpu("NVIDIA H100 80GB HBM3", (9, 0), 132, 227 * 1024),
    "sm_86": fake_gpu("NVIDIA GeForce RTX 3090", (8, 6), 82, 99 * 1024),
    "sm_89": fake_gpu("NVIDIA L4", (8, 9), 58, 99 * 1024),
    "sm_80": fake_gpu("NVIDIA A100-SXM4-80GB", (8, 0), 108, 163 * 1024),
    "sm_75": fake_gpu("Tesla T4", (7, 5), 40, 64 * 1024),
    "sm_120": fake_gpu("NVIDIA GeForce RTX 5090", (12, 0), 170, 99 * 1024),
    "sm_86_old_torch": fake_gpu("NVIDIA GeForce RTX 3090", (8, 6), 82),  # no shared_memory_per_block_optin
    "unknown_48k": fake_gpu("a GPU of a capability bigperf has no table entry for", (8, 8), 16),
}
KERNELS = ("fused_linear", "w8a16_linear", "sparse24_linear")


# ----------------------------------------------------------------------------- pure rules

@pytest.mark.parametrize("capability,runs", [
    ((8, 0), True), ((8, 6), True), ((8, 9), True),  # sm_80 SASS runs on every 8.x
    ((9, 0), True),  # sm_90a SASS
    ((10, 0), True), ((12, 0), True),  # no SASS: the driver JITs the compute_80 PTX
    ((7, 5), False), ((7, 0), False),  # older than every arch: nothing runs
])
def test_arch_rules_with_the_default_build(capability, runs):
    reason = arch_why_not(capability, ["80", "90a"], ["80"])
    assert (reason is None) is runs, reason


def test_arch_rules_without_ptx():
    assert arch_why_not((9, 0), ["90a"], []) is None
    assert "nothing runs on compute capability 9.1" in arch_why_not((9, 1), ["90a"], [])  # 90a is 9.0 only
    assert arch_why_not((8, 9), ["86"], []) is None and arch_why_not((8, 0), ["86"], []) is not None
    assert arch_why_not((10, 3), ["100f"], []) is None  # family-specific: any 10.x from 10.0
    reason = arch_why_not((12, 0), ["80", "90a"], [])
    assert "BIGPERF_CUDA_ARCHS including 120" in reason and "sm_80, sm_90a" in reason


def test_smem_rule():
    caps = DeviceCaps(0, "x", (8, 6), 82, 99 * 1024)
    assert smem_why_not("sparse24_linear", [53248, 51200, 102400, 34816], caps) is None  # some config fits
    reason = smem_why_not("k", [102400, 110000], caps)
    assert "at least 102400 B, the device allows 101376 B" in reason


# ----------------------------------------------------------------------------- per device

try:
    emu, EMU_MISSING = cuda_emulators.load(), None
except cuda_emulators.Unavailable as error:
    emu, EMU_MISSING = None, str(error)
needs_emulators = pytest.mark.skipif(emu is None, reason=f"needs the emulator module's host API: {EMU_MISSING}")


@pytest.fixture
def fake_device(monkeypatch):
    """Make device 0 the given fake GPU, bigperf._C_cuda a default build (80;90a + PTX 80)."""
    module = types.SimpleNamespace(
        compiled_archs=lambda: ["80", "90a"], compiled_ptx_archs=lambda: ["80"],
        fused_linear=None, w8a16_linear=None, sparse24_linear=None,
        fused_linear_requirements=emu.fused_linear_requirements, w8a16_requirements=emu.w8a16_requirements,
        sparse24_requirements=emu.sparse24_requirements)
    monkeypatch.setattr(_ext, "cuda_module", lambda: module)
    monkeypatch.setattr(_ext, "cuda_unavailable_reason", lambda: None)

    def use(props):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: props)
        cuda_launch.device_caps.cache_clear()
        cuda_launch.device_why_not.cache_clear()

    yield use
    cuda_launch.device_caps.cache_clear()
    cuda_launch.device_why_not.cache_clear()


@needs_emulators
@pytest.mark.parametrize("gpu", ["sm_90", "sm_86", "sm_89", "sm_80", "sm_120", "sm_86_old_torch"])
def test_supported_gpus_get_no_reason(fake_device, gpu):
    fake_device(GPUS[gpu])
    for kernel in KERNELS:
        assert cuda_launch.device_why_not(0, kernel) is None, kernel
    # The op-level check (every CUDA candidate's why-not goes through it) agrees.
    x = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    assert common.cuda_why_not(x, "sparse24_linear") is None


@needs_emulators
def test_device_properties_are_read_once(fake_device, monkeypatch):
    calls = []
    fake_device(GPUS["sm_86"])
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: calls.append(index) or GPUS["sm_86"])
    x = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))
    for _ in range(5):
        for kernel in KERNELS:
            common.cuda_why_not(x, kernel)
    assert calls == [0]
    caps = cuda_launch.device_caps(0)
    assert caps == DeviceCaps(0, "NVIDIA GeForce RTX 3090", (8, 6), 82, 99 * 1024)


@needs_emulators
def test_old_torch_properties_fall_back_to_the_capability_table(fake_device):
    fake_device(GPUS["sm_86_old_torch"])
    assert cuda_launch.device_caps(0).smem_per_block_optin == 99 * 1024
    fake_device(GPUS["unknown_48k"])
    assert cuda_launch.device_caps(0).smem_per_block_optin == 48 * 1024


@needs_emulators
def test_turing_is_refused_with_the_reason(fake_device):
    fake_device(GPUS["sm_75"])
    for kernel in KERNELS:
        reason = cuda_launch.device_why_not(0, kernel)
        assert reason.startswith("Tesla T4: bigperf._C_cuda carries SASS for sm_80, sm_90a and PTX for compute_80")
        assert "compute capability 7.5" in reason


@needs_emulators
def test_a_48k_device_refuses_only_the_kernels_that_cannot_fit(fake_device):
    """With 48 KiB per block, W8A16 (57,344 B at least) cannot launch; fused linear's small
    tile (exactly 48 KiB) and the 2:4 kernel's narrow tile (34,816 B) can, and their
    launchers pick them whatever the shape."""
    fake_device(GPUS["unknown_48k"])
    reason = cuda_launch.device_why_not(0, "w8a16_linear")
    assert reason.startswith("w8a16_linear: every tile configuration needs more shared memory per block than")
    assert "at least 57344 B, the device allows 49152 B" in reason
    assert cuda_launch.device_why_not(0, "fused_linear") is None
    assert cuda_launch.device_why_not(0, "sparse24_linear") is None
    assert emu.fused_linear_choose_config(4096, 14336, 16, 48 * 1024) == 0
    assert emu.sparse24_choose_config(4096, 14336, 16, 48 * 1024) == 3


@needs_emulators
def test_a_stale_build_is_refused_with_the_remedy(fake_device, monkeypatch):
    """A bigperf._C_cuda built before it reported its PTX archs: rebuild, not a crash."""
    fake_device(GPUS["sm_90"])
    monkeypatch.setattr(_ext, "cuda_module", lambda: types.SimpleNamespace(fused_linear=None))
    assert "rebuild the package" in cuda_launch.device_why_not(0, "fused_linear")


def test_cpu_tensors_are_refused_before_any_device_query(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: pytest.fail("queried a device"))
    assert "not a CUDA device" in common.cuda_why_not(torch.empty(1), "fused_linear")
