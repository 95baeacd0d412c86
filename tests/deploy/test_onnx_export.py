"""export_onnx and plain torch.onnx.export of swapped models, checked in onnxruntime (CPU)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is in the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxscript", reason="onnxscript is in the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="onnxruntime is in the onnx extra: pip install -e '.[onnx]'")

import bigperf  # noqa: E402
from bigperf.deploy import export_onnx, verify_onnx
from bigperf.deploy.verify import ort_session, run_onnx
from tests.deploy import models
from tests.helpers import rel_error

# Relative Frobenius error of onnxruntime against the swapped PyTorch model, per branch
# (bigperf/deploy/verify.py says why int8-dynamic gets more room).
BRANCH_TOLERANCE = {name: 1e-5 for name in models.ZOO_CONFIGS} | {"int8_dynamic": 1e-4}


def _ops(model_proto) -> Counter:
    return Counter(n.op_type for n in model_proto.graph.node)


def test_every_config_matches_pytorch_in_onnxruntime_at_new_shapes(zoo_export):
    model, result = zoo_export
    x = torch.randn(4, 9, models.D_IN, generator=torch.Generator().manual_seed(7))  # not the traced shape
    got = run_onnx(ort_session(result.path), (x,))
    # The lowering is held to our kernels' numerics: measured dispatch may pick a PyTorch path
    # that computes a bf16-weight layer in bf16 (x rounded; within the layer's tolerance
    # against float64, not within this comparison's).
    with torch.no_grad(), bigperf.use_backend("cpu"):
        expected = model(x)
    errors = {name: rel_error(g, e) for name, g, e in zip(model.names, got, expected)}
    print("onnxruntime vs PyTorch, relative error per config:", {k: f"{v:.1e}" for k, v in errors.items()})
    for name, error in errors.items():
        assert error <= BRANCH_TOLERANCE[name], (name, error)
    # Negative control: a changed int8 weight must change the ONNX file's output.
    # (qweight, or the kernel layout's weight: in each, element [0, 0] is column 0's code at k = 0)
    held = model.branches["int8"][0]._held_weight()
    held[0, 0] += 1
    with torch.no_grad():
        moved = model(x)[model.names.index("int8")]
    held[0, 0] -= 1
    assert rel_error(got[model.names.index("int8")], moved) > 0


def test_the_graph_is_standard_onnx_with_int8_weights(zoo_export):
    _, result = zoo_export
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto)
    ops = _ops(proto)
    assert all((n.domain or "ai.onnx") == "ai.onnx" for n in proto.graph.node)
    assert result.opset == 21  # per-group weights need blocked DequantizeLinear
    # int8 (3 layers), g64, asymmetric, dynamic, 2:4 int8: one weight DequantizeLinear per layer,
    # plus the dynamic branch's three activation Q/DQ pairs.
    assert ops["DequantizeLinear"] == 5 * 3 + 3 and ops["QuantizeLinear"] == 3
    assert not {"ScatterElements", "ScatterND"} & set(ops)  # sparse weights exported dense
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    blocked = [n for n in dq if any(a.name == "block_size" and a.i == 64 for a in n.attribute)]
    assert len(blocked) == 3
    initializers = {t.name: t for t in proto.graph.initializer}
    int8_weights = [t for t in initializers.values() if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(int8_weights) == 5 * 3
    for node in dq:  # scales and zero points are initializers, as TensorRT requires
        assert all(name in initializers for name in node.input[1:]) or node.input[0] not in initializers


def test_sparse_weights_keep_their_zeros_in_the_file(zoo_export):
    model, result = zoo_export
    proto = onnx.load(str(result.path))
    layer = model.branches["sparse24_int8"][0]
    codes = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer
             if t.data_type == onnx.TensorProto.INT8 and tuple(t.dims) == (layer.out_features, layer.in_features)]
    two_four = [c for c in codes if ((c.reshape(c.shape[0], -1, 4) != 0).sum(-1) <= 2).all()]
    assert two_four, "the 2:4 int8 layer's dense int8 weight (half zeros) is not in the file"


def test_dynamic_dims_are_recorded_for_trt_profiles(zoo_export):
    _, result = zoo_export
    assert result.inputs == {"x": ["batch", "seq", models.D_IN]}
    assert result.dims == {"batch": {"min": 1, "opt": 3, "max": 32}, "seq": {"min": 1, "opt": 5, "max": None}}
    metadata = {p.key: p.value for p in onnx.load(str(result.path), load_external_data=False).metadata_props}
    assert json.loads(metadata["bigperf.dims"]) == result.dims and metadata["bigperf.version"] == bigperf.__version__


def test_int8_file_is_about_a_quarter_of_the_float_file(mlp_exports):
    (fp32_model, fp32, x), (int8_model, int8, _) = mlp_exports["fp32"], mlp_exports["int8"]
    ratio = int8.total_bytes / fp32.total_bytes
    print(f"file sizes: fp32 {fp32.total_bytes} B, int8 {int8.total_bytes} B, ratio {ratio:.3f}")
    assert 0.2 < ratio < 0.3
    for model, export in ((fp32_model, fp32), (int8_model, int8)):
        check = verify_onnx(export.path, model, x)
        assert check.passed and check.tolerance == 1e-5, str(check)


def test_plain_torch_onnx_export_of_a_swapped_model(tmp_path):
    """No bigperf wrapper: the ops lower themselves; per-group weights use the opset-20 form."""
    configs = {name: models.ZOO_CONFIGS[name] for name in ("int8_g64", "sparse24_int8", "block_sparse")}
    model = models.zoo(configs)
    x = torch.randn(2, 3, models.D_IN)
    path = tmp_path / "plain.onnx"
    torch.onnx.export(model, (x,), path, verbose=False)
    proto = onnx.load(str(path))
    assert not [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    assert "DequantizeLinear" in _ops(proto)
    got = run_onnx(ort_session(path), (x,))
    with torch.no_grad():
        expected = model(x)
    for name, g, e in zip(model.names, got, expected):
        assert rel_error(g, e) <= BRANCH_TOLERANCE[name], name


def test_tiny_llama_exports_and_matches(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra")
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=0, eos_token_id=1,
                                      use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    report = bigperf.swap(model, "int8")
    assert len(report.changes) == 8  # q, k, v, o, gate, up, down, lm_head
    ids = torch.randint(0, 96, (2, 11))
    result = export_onnx(model, (ids,), tmp_path / "llama.onnx")
    check = verify_onnx(result.path, model, (ids,))
    print("tiny Llama int8:", check)
    assert check.passed, str(check)
    assert _ops(onnx.load(str(result.path), load_external_data=False))["DequantizeLinear"] == 8


def test_wide_layers_and_external_data(tmp_path, monkeypatch):
    import bigperf.deploy.onnx as deploy_onnx

    monkeypatch.setattr(deploy_onnx, "EXTERNAL_DATA_THRESHOLD", 1024)  # stands in for 2 GB
    wide = 8200  # above torch's 8192-element folding limit: the scale's reshape is ours to fold
    model = torch.nn.Sequential(torch.nn.Linear(64, wide)).eval()
    bigperf.swap(model, "int8")
    x = torch.randn(2, 64)
    result = export_onnx(model, (x,), tmp_path / "big.onnx")
    assert result.data_path is not None and result.data_path.stat().st_size > 64 * wide
    assert result.path.stat().st_size < 64 * 1024
    proto = onnx.load(str(result.path), load_external_data=False)
    initializers = {t.name for t in proto.graph.initializer}
    (dq,) = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert set(dq.input) <= initializers and "Reshape" not in _ops(proto)
    assert verify_onnx(result.path, model, (x,)).passed


def test_bad_arguments_are_named():
    model = models.mlp()
    with pytest.raises(TypeError, match="export_onnx: argument 'example_inputs'"):
        export_onnx(model, "x", "m.onnx")
    with pytest.raises(ValueError, match="argument 'opset'"):
        export_onnx(model, (torch.randn(2, models.D_IN),), "m.onnx", opset=12)
    with pytest.raises(TypeError, match="argument 'model'"):
        export_onnx(lambda x: x, (torch.randn(2, 3),), "m.onnx")


def test_ops_do_not_lower_outside_an_onnx_export():
    from bigperf.ops.onnx_lowering import ONNX_LOWERINGS, exporting_to_onnx

    assert not exporting_to_onnx()
    registered = {name for name in dir(torch.ops.bigperf)
                  if isinstance(getattr(torch.ops.bigperf, name, None), torch._ops.OpOverloadPacket)}
    lowered = {name.removeprefix("bigperf.") for name in ONNX_LOWERINGS}
    assert registered <= lowered, f"bigperf ops without an ONNX lowering: {registered - lowered}"


@pytest.mark.parametrize("act_bits", [8, 7])
def test_dynamic_activation_codes_match_the_op(tmp_path, act_bits):
    """The lowering's per-token scale (absmax / qmax, qmax a constant: 127 or 63) gives
    the op's codes: with identity codes and scale 1 the output is code * x_scale."""
    from bigperf.quant import quantize_activation_per_token

    k = 48
    layer = bigperf.nn.Int8Linear(k, k, bias=False, weight_only=False, act_bits=act_bits)
    with torch.no_grad():
        layer.qweight.copy_(torch.eye(k, dtype=torch.int8))
    model = torch.nn.Sequential(layer).eval()
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(3)) * 3
    path = tmp_path / f"dynamic_a{act_bits}.onnx"
    torch.onnx.export(model, (x,), path, verbose=False)
    (got,) = run_onnx(ort_session(path), (x,))
    q, scale = quantize_activation_per_token(x, act_bits)
    assert torch.equal(torch.round(got / scale[:, None]).to(torch.int8), q)
    assert q.abs().max() == (127 if act_bits == 8 else 63)
    with torch.no_grad():
        assert rel_error(got, model(x)) <= 1e-6


def test_int8_layer_held_in_the_cuda_layout_exports(tmp_path):
    """An Int8Linear holding the W8A16 kernel layout (a GPU layer's form, chosen by hand
    here) lowers to the same standard int8 graph as the row-major layer."""
    from bigperf.nn import Int8Linear

    torch.manual_seed(8)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 40), group_size=32, activation="gelu")
    proto, x, got, expected = _export_held_layout(tmp_path, layer, "w8a16-cuda")
    assert "DequantizeLinear" in _ops(proto)
    assert rel_error(got, expected) < 1e-5


def _export_held_layout(tmp_path, layer, layout: str):
    """Hold `layout`, then export with plain torch.onnx.export: (the ONNX proto, the input,
    what ONNX Runtime computes, what the layer computes on the reference path)."""
    layer.use_kernel_layout(layout)
    x = torch.randn(3, layer.in_features)
    with torch.no_grad(), bigperf.use_backend("reference"):
        expected = layer(x)
    path = tmp_path / f"{layout}.onnx"
    torch.onnx.export(layer, (x,), path, verbose=False)
    (got,) = run_onnx(ort_session(path), (x,))
    return onnx.load(str(path)), x, got, expected


@pytest.mark.parametrize("act_bits", [8, 7])
def test_w8a8_layer_held_in_the_cpu_panels_exports(tmp_path, act_bits):
    """A W8A8 Int8Linear holding the AVX2 kernel's panels (chosen by hand: any CPU) lowers to
    the standard quantise / dequantise graph of the row-major layer, and stays as it was."""
    from bigperf.nn import Int8Linear

    torch.manual_seed(10)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 40), weight_only=False, act_bits=act_bits, activation="relu")
    proto, x, got, expected = _export_held_layout(tmp_path, layer, "w8a8-cpu")
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(_ops(proto))
    assert rel_error(got, expected) < 1e-5
    assert layer.kernel_layout == "w8a8-cpu", "exporting must not change the layer"


def test_w8a16_layer_held_in_the_cpu_panels_exports(tmp_path):
    """A W8A16 Int8Linear holding the AVX2 kernels' panels (chosen by hand: any CPU) lowers to
    the dequantise graph of the row-major layer, and stays as it was."""
    from bigperf.nn import Int8Linear

    torch.manual_seed(11)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 40), activation="gelu")
    proto, x, got, expected = _export_held_layout(tmp_path, layer, "w8a16-cpu")
    assert "DequantizeLinear" in _ops(proto)
    assert rel_error(got, expected) < 1e-5
    assert layer.kernel_layout == "w8a16-cpu", "exporting must not change the layer"


@pytest.mark.parametrize("out_features,kwargs", [(40, {}), (40, {"int8": True}),
                                                 (48, {"pattern": "block", "block": (16, 8), "density": 0.5})])
def test_sparse_layer_held_in_the_cpu_lane_layout_exports(tmp_path, out_features, kwargs):
    """A SparseLinear (2:4, 2:4 int8, block) holding the CPU lane layout (a CPU layer's form
    once bigperf._C reads it, chosen by hand here) lowers to the same standard graph as the
    canonical layer, both through plain torch.onnx.export (the op's lowering) and export_onnx
    (dense equivalents)."""
    from bigperf.nn import SparseLinear

    torch.manual_seed(9)
    layer = SparseLinear.from_linear(torch.nn.Linear(64, out_features), prune=True, values_dtype=torch.float32,
                                     activation="gelu", **kwargs).eval()
    proto, x, got, expected = _export_held_layout(tmp_path, layer, "cpu-lanes16")
    assert not [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    assert rel_error(got, expected) < 1e-5
    result = export_onnx(layer, (x,), tmp_path / "lanes_dense.onnx")
    assert not {"ScatterElements", "ScatterND"} & set(_ops(onnx.load(str(result.path))))
    (got,) = run_onnx(ort_session(result.path), (x,))
    assert rel_error(got, expected) < 1e-5
    assert layer.kernel_layout == "cpu-lanes16", "exporting must not change the layer"
