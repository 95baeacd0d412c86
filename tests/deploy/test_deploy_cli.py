"""bigperf export onnx / trt lint / trt build, in process."""

from __future__ import annotations

import importlib.util

import pytest

onnx = pytest.importorskip("onnx", reason="onnx is in the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="onnxscript is in the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is in the onnx extra: pip install -e '.[onnx]'")
from onnx import TensorProto, helper  # noqa: E402

from bigperf.cli import main


def test_export_lint_build(tmp_path, capsys):
    out = tmp_path / "mlp.onnx"
    assert main(["export", "onnx", "tests.deploy.models:small_mlp", "-o", str(out), "--config", "int8",
                 "--batch", "2", "--seq", "4", "--dynamic", "--max-batch", "8", "--max-seq", "32"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "swapped 3 layers" in text and "matches PyTorch in onnxruntime" in text and out.is_file()
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}

    assert main(["trt", "lint", str(out)]) == 0
    assert "no findings" in capsys.readouterr().out

    status = main(["trt", "build", str(out), "-o", str(tmp_path / "mlp.plan"), "--fp16", "--int8", "--sparse",
                   "--max", "8x32x128"])
    text = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "flags ['FP16', 'INT8', 'SPARSE_WEIGHTS']" in text and "'max': [8, 32, 128]" in text
    if importlib.util.find_spec("tensorrt") is None:
        assert status == 2 and "pip install 'bigperf[tensorrt]'" in text


def test_lint_reports_each_finding_and_fails_on_errors(tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"], name="dql")],
                              "g", [x], [y])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert main(["trt", "lint", str(path)]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "unsupported-op" in text and "dynamic-dim-no-profile" in text and "fix:" in text and "2 error(s)" in text
    assert main(["trt", "lint", str(path), "--min", "1x8", "--max", "4x8"]) == 1  # the profile covers the input
    assert "dynamic-dim-no-profile" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["trt", "lint", "missing.onnx"], "does not exist"),
    (["trt", "build", "missing.onnx", "-o", "m.plan"], "does not exist"),
    (["export", "onnx", "no_such_module:factory", "-o", "m.onnx"], "cannot import"),
    (["export", "onnx", "tests.deploy.models:small_mlp", "-o", "m.onnx", "--config", "int9"], "unknown config"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().out
