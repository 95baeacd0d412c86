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
