import platform

from bigperf import _ext


def test_build_metadata_is_recorded():
    info = _ext.build_info()
    assert info["version"] == "0.1.0"
    assert "scalar" in info["cpu_isa_paths"]
    assert isinstance(info["cuda_built"], bool)
    if info["cuda_built"]:
        assert info["cuda_archs"] and info["nvcc"]
    else:
        assert info["cuda_skip_reason"]


def test_cpu_module_detects_isas():
    cpu = _ext.cpu_module()
    assert cpu is not None, _ext.cpu_unavailable_reason()
    runnable = list(cpu.runnable_isas())
    assert runnable[-1] == "scalar" and set(runnable) <= set(cpu.compiled_isas())
    if platform.machine() == "x86_64":
        assert list(cpu.compiled_isas()) == ["avx512", "avx2", "scalar"]
        features = cpu.cpu_features()
        assert ("avx2" in runnable) == bool(features["avx2"] and features["fma"] and features["f16c"])


def _proc_cpuinfo_flags() -> set[str] | None:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def test_cpu_features_agree_with_the_kernel_on_every_flag_it_lists():
    """Our CPUID reading (csrc/cpu/cpu_features.cpp) against Linux's: /proc/cpuinfo lists
    amx_tile only where the kernel enables the tile state, as ours requires (XCR0)."""
    flags = _proc_cpuinfo_flags()
    if platform.machine() != "x86_64" or flags is None:
        import pytest
        pytest.skip("needs Linux /proc/cpuinfo on x86_64")
    features = _ext.cpu_module().cpu_features()
    for ours, linux in (("avx2", "avx2"), ("fma", "fma"), ("f16c", "f16c"), ("avx512f", "avx512f"),
                        ("avx512bw", "avx512bw"), ("avx512vl", "avx512vl"), ("avx512dq", "avx512dq"),
                        ("avx512vnni", "avx512_vnni"), ("avx512bf16", "avx512_bf16"),
                        ("amx_tile", "amx_tile"), ("amx_bf16", "amx_bf16"), ("amx_int8", "amx_int8")):
        assert bool(features[ours]) == (linux in flags), (ours, features[ours], linux in flags)
