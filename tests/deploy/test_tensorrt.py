"""build_engine and TRTModule: the install error without TensorRT; real builds where it exists."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bigperf.deploy import TRTModule, TensorRTUnavailable, build_engine

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(
    not HAS_TENSORRT or not torch.cuda.is_available(),
    reason="needs TensorRT and a CUDA GPU; TensorRT's libraries come from NVIDIA's index, which this "
           "project's machines cannot reach (pip install 'bigperf[tensorrt]' where it can)")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed: the missing-TensorRT error cannot occur")
def test_without_tensorrt_both_say_what_to_install(tmp_path):
    calls = (lambda: build_engine(tmp_path / "m.onnx", tmp_path / "m.plan"), lambda: TRTModule(tmp_path / "m.plan"))
    for call in calls:
        with pytest.raises(TensorRTUnavailable, match=r"pip install 'bigperf\[tensorrt\]'.*NVIDIA's package index"):
            call()


@needs_tensorrt
def test_build_and_run_an_int8_mlp_engine(mlp_exports, tmp_path):
    model, export, x = mlp_exports["int8"]
    plan = build_engine(export.path, tmp_path / "m.plan", precision=("fp16", "int8"),
                        timing_cache=tmp_path / "timing.cache")
    assert plan.engine_path.is_file() and plan.versions_path.is_file() and (tmp_path / "timing.cache").is_file()
    engine = TRTModule(plan.engine_path)
    out = engine(x.cuda())
    with torch.no_grad():
        expected = model(x)
    assert ((out.float().cpu() - expected).norm() / expected.norm()).item() < 2e-2


@needs_tensorrt
def test_dynamic_shapes_set_per_call(tmp_path):
    import bigperf
    from bigperf.deploy import export_onnx
    from tests.deploy import models

    model = models.mlp()
    bigperf.swap(model, "int8")
    x = torch.randn(3, 5, models.D_IN)
    batch = torch.export.Dim("batch", min=1, max=16)
    seq = torch.export.Dim("seq", min=1, max=64)
    export = export_onnx(model, (x,), tmp_path / "d.onnx", dynamic_shapes=({0: batch, 1: seq},))
    engine = TRTModule(build_engine(export.path, tmp_path / "d.plan", precision=("fp16",)).engine_path)
    for shape in ((1, 1, models.D_IN), (16, 64, models.D_IN), (5, 7, models.D_IN)):
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x)
        out = engine(x=x.cuda())
        assert out.shape == expected.shape
        assert ((out.float().cpu() - expected).norm() / expected.norm()).item() < 2e-2
    with pytest.raises(ValueError, match="outside the engine's optimisation profile"):
        engine(torch.randn(17, 1, models.D_IN).cuda())


@needs_tensorrt
def test_an_engine_from_another_tensorrt_version_is_refused(mlp_exports, tmp_path):
    import json

    from bigperf.deploy import EngineVersionError

    plan = build_engine(mlp_exports["fp32"][1].path, tmp_path / "m.plan", precision=("fp16",))
    record = json.loads(plan.versions_path.read_text())
    record["tensorrt"] = "0.0.1"
    plan.versions_path.write_text(json.dumps(record))
    with pytest.raises(EngineVersionError, match="built with TensorRT 0.0.1"):
        TRTModule(plan.engine_path)
