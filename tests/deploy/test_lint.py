"""bigperf.deploy.lint on crafted ONNX graphs: each rule fires on its defect, a clean graph gives none."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is in the onnx extra: pip install -e '.[onnx]'")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bigperf.deploy import Profile, lint

K, N = 8, 4


def _save(tmp_path, nodes, initializers=(), *, inputs=None, metadata=None, name="m.onnx"):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _int8_weight(scale=None, zero=None, name="w"):
    inits = [numpy_helper.from_array(np.arange(N * K, dtype=np.int8).reshape(N, K) - 16, name)]
    inits.append(numpy_helper.from_array(np.full(N, 0.01, np.float32) if scale is None else scale, name + "_scale"))
    if zero is not None:
        inits.append(numpy_helper.from_array(zero, name + "_zero"))
    return inits


def _weight_dq(zero=False, **attrs):
    inputs = ["w", "w_scale"] + (["w_zero"] if zero else [])
    return helper.make_node("DequantizeLinear", inputs, ["w_f"], name="dq_w", axis=0, **attrs)


def _matmul_tail():
    return [helper.make_node("Transpose", ["w_f"], ["w_t"], name="t", perm=[1, 0]),
            helper.make_node("MatMul", ["x", "w_t"], ["y"], name="mm")]


def _rules(path, **kwargs):
    return sorted({f.rule for f in lint(path, **kwargs)})


def test_a_clean_int8_graph_gives_no_findings(tmp_path):
    path = _save(tmp_path, [_weight_dq()] + _matmul_tail(), _int8_weight())
    assert lint(path) == []


def test_unsupported_ops(tmp_path):
    nodes = [helper.make_node("MatMulInteger", ["x", "x"], ["a"], name="mmi"),
             helper.make_node("fused_linear", ["x"], ["b"], name="custom", domain="bigperf"),
             helper.make_node("Compress", ["x", "x"], ["y"], name="rare")]
    findings = lint(_save(tmp_path, nodes))
    by_node = {f.node.split(" ")[0]: f for f in findings}
    assert {f.rule for f in findings} == {"unsupported-op"}
    assert by_node["mmi"].severity == "error" and "QuantizeLinear/DequantizeLinear" in by_node["mmi"].fix
    assert by_node["custom"].severity == "error" and "plugin" in by_node["custom"].fix
    assert by_node["rare"].severity == "warning"


def test_a_scale_computed_at_run_time(tmp_path):
    nodes = [helper.make_node("ReduceMax", ["x"], ["amax"], name="amax", keepdims=0),
             helper.make_node("QuantizeLinear", ["x", "amax"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "amax"], ["y"], name="dq")]
    findings = lint(_save(tmp_path, nodes))
    assert [f.rule for f in findings] == ["qdq-dynamic-scale", "qdq-dynamic-scale"]
    assert "int8-dynamic" in findings[0].explanation and "--config int8" in findings[0].fix


def test_a_constant_scale_behind_a_reshape(tmp_path):
    shape = numpy_helper.from_array(np.array([N], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["w_scale", "shape"], ["s1"], name="reshape"),
             helper.make_node("DequantizeLinear", ["w", "s1"], ["w_f"], name="dq_w", axis=0)] + _matmul_tail()
    findings = lint(_save(tmp_path, nodes, _int8_weight(scale=np.full((N, 1), 0.01, np.float32)) + [shape]))
    assert [f.rule for f in findings] == ["qdq-dynamic-scale"] and "fold" in findings[0].fix


def test_a_non_zero_zero_point(tmp_path):
    path = _save(tmp_path, [_weight_dq(zero=True)] + _matmul_tail(),
                 _int8_weight(zero=np.array([0, 3, 0, 0], np.int8)))
    assert _rules(path) == ["qdq-zero-point"]
    zeros = _save(tmp_path, [_weight_dq(zero=True)] + _matmul_tail(), _int8_weight(zero=np.zeros(N, np.int8)),
                  name="zeros.onnx")
    assert lint(zeros) == []


def test_blocked_int8_dequantisation(tmp_path):
    scale = np.full((N, 2), 0.01, np.float32)
    node = helper.make_node("DequantizeLinear", ["w", "w_scale"], ["w_f"], name="dq_w", axis=1, block_size=K // 2)
    assert _rules(_save(tmp_path, [node] + _matmul_tail(), _int8_weight(scale=scale))) == ["qdq-block-int8"]


def test_qdq_placements_tensorrt_rejects(tmp_path):
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    lone_q = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], name="q"),
              helper.make_node("Relu", ["q"], ["y"], name="relu")]
    findings = lint(_save(tmp_path, lone_q, [scale]))
    assert [(f.rule, f.severity) for f in findings] == [("qdq-placement", "error")]
    into_add = [_weight_dq(), helper.make_node("Add", ["w_f", "w_f"], ["y"], name="add")]
    findings = lint(_save(tmp_path, into_add, _int8_weight(), name="add.onnx"))
    assert [(f.rule, f.severity) for f in findings] == [("qdq-placement", "warning")]


def test_int8_weights_without_per_channel_scales(tmp_path):
    per_tensor = _int8_weight(scale=np.array(0.01, np.float32))
    assert _rules(_save(tmp_path, [_weight_dq()] + _matmul_tail(), per_tensor)) == ["int8-weight-per-tensor"]
    cast = [helper.make_node("Cast", ["w"], ["w_f"], name="cast", to=TensorProto.FLOAT)] + _matmul_tail()
    findings = lint(_save(tmp_path, cast, _int8_weight()[:1], name="cast.onnx"))
    assert [f.rule for f in findings] == ["int8-weight-per-tensor"] and "Cast" in findings[0].message


def test_dynamic_dims_need_a_profile(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])]
    nodes = [_weight_dq()] + _matmul_tail()
    bare = _save(tmp_path, nodes, _int8_weight(), inputs=inputs)
    findings = lint(bare)
    assert [f.rule for f in findings] == ["dynamic-dim-no-profile"] and "--min x:" in findings[0].fix
    bounded = {"bigperf.dims": json.dumps({"batch": {"min": 1, "opt": 4, "max": 16}})}
    assert lint(_save(tmp_path, nodes, _int8_weight(), inputs=inputs, metadata=bounded, name="b.onnx")) == []
    no_max = {"bigperf.dims": json.dumps({"batch": {"min": 1, "opt": 4, "max": None}})}
    assert _rules(_save(tmp_path, nodes, _int8_weight(), inputs=inputs, metadata=no_max, name="c.onnx")) == \
        ["dynamic-dim-no-profile"]
    assert lint(bare, profiles=[Profile({"x": ((1, K), (4, K), (16, K))})]) == []


def test_float64_initializers_and_casts(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=TensorProto.DOUBLE),
             helper.make_node("Add", ["xd", "c"], ["y"], name="add")]
    findings = lint(_save(tmp_path, nodes, [numpy_helper.from_array(np.ones(K), "c")]))
    assert [f.rule for f in findings] == ["fp64-initializer", "fp64-initializer"]
    assert all(f.severity == "error" and "no float64" in f.explanation for f in findings)


def test_findings_read_as_sentences(tmp_path):
    finding = lint(_save(tmp_path, [helper.make_node("MatMulInteger", ["x", "x"], ["y"], name="mmi")]))[0]
    text = str(finding)
    assert text.startswith("[error] unsupported-op at mmi (MatMulInteger)") and "why:" in text and "fix:" in text


def test_exported_models(mlp_exports, zoo_export):
    assert lint(mlp_exports["int8"][1].path) == []  # what export_onnx writes for W8A16 is clean
    findings = lint(zoo_export[1].path)
    assert {f.rule for f in findings} == {"qdq-dynamic-scale", "qdq-zero-point", "qdq-block-int8",
                                          "dynamic-dim-no-profile"}
    assert any(" in branches.int8_dynamic." in f.node for f in findings)  # findings name the layer


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lint(tmp_path / "nope.onnx")
