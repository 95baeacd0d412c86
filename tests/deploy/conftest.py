"""Exports shared by the deployment tests: each torch.onnx.export takes seconds here."""

from __future__ import annotations

import pytest
import torch

from tests.deploy import models

ONNX_EXTRA = ("onnx", "onnxscript", "onnxruntime")


def require_onnx_extra() -> None:
    for name in ONNX_EXTRA:
        pytest.importorskip(name, reason=f"{name} is in the onnx extra: pip install -e '.[onnx]'")

BATCH = torch.export.Dim("batch", min=1, max=32)


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory):
    """Every config's MLP in one model, exported with a dynamic batch and sequence."""
    require_onnx_extra()
    from bigperf.deploy import export_onnx

    model = models.zoo()
    x = torch.randn(3, 5, models.D_IN, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("zoo") / "zoo.onnx"
    result = export_onnx(model, (x,), path, dynamic_shapes=({0: BATCH, 1: "seq"},))
    return model, result


@pytest.fixture(scope="session")
def mlp_exports(tmp_path_factory):
    """The same wide MLP exported as fp32 and as int8 (static shapes): {name: (model, OnnxExport)}."""
    require_onnx_extra()
    import bigperf
    from bigperf.deploy import export_onnx

    out = tmp_path_factory.mktemp("mlp")
    x = torch.randn(2, 4, 256, generator=torch.Generator().manual_seed(2))
    exports = {}
    for name, config in (("fp32", None), ("int8", "int8")):
        model = models.mlp(d_in=256, d_hid=512, d_out=256)
        if config:
            bigperf.swap(model, config)
        exports[name] = (model, export_onnx(model, (x,), out / f"{name}.onnx"), x)
    return exports
