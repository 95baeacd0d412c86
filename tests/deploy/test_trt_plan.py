"""The pure-Python side of the TensorRT build: profiles, the build plan, files, version checks, binding."""

from __future__ import annotations

import io
import json

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="onnx is in the onnx extra: pip install -e '.[onnx]'")
from onnx import TensorProto, helper  # noqa: E402

from bigperf.deploy.profiles import Profile, ProfileError, check_profile, derive_profile, parse_shapes
from bigperf.deploy.trt_plan import (
    BuildProgress,
    EngineVersionError,
    bind_inputs,
    check_binding,
    check_engine_versions,
    choose_profile,
    format_parse_errors,
    make_build_plan,
    precision_flags,
    torch_dtype,
    versions_path,
    versions_record,
    write_atomic,
    write_versions,
)

INPUTS = {"input_ids": ["batch", "seq"], "mask": ["batch", "seq"], "scale": [1]}
DIMS = {"batch": {"min": 1, "opt": 4, "max": 32}, "seq": {"min": 1, "opt": 128, "max": 512}}


def test_profile_from_dynamic_shapes_metadata():
    profile = derive_profile(INPUTS, DIMS)
    assert profile.shapes == {"input_ids": ((1, 1), (4, 128), (32, 512)), "mask": ((1, 1), (4, 128), (32, 512))}
    assert derive_profile({"x": [2, 8]}, {}) is None  # static inputs need no profile


def test_explicit_shapes_override_the_metadata():
    shapes = parse_shapes("input_ids:2x64,mask:2x64", INPUTS)
    profile = derive_profile(INPUTS, DIMS, min_shapes=shapes)
    assert profile.shapes["input_ids"] == ((2, 64), (4, 128), (32, 512))
    # Without metadata: opt defaults to max.
    profile = derive_profile({"x": ["b", 16]}, {}, min_shapes={"x": (1, 16)}, max_shapes={"x": (8, 16)})
    assert profile.shapes == {"x": ((1, 16), (8, 16), (8, 16))}


def test_missing_bounds_are_reported_by_input_and_axis():
    with pytest.raises(ProfileError, match=r"input_ids\[1\] \(dimension 'seq'\) has no max.*torch.export.Dim"):
        derive_profile(INPUTS, {"batch": DIMS["batch"], "seq": {"min": 1, "opt": 8, "max": None}})


@pytest.mark.parametrize("text, error", [
    ("input_ids:2xa", "not of the form"),
    ("nosuch:2x3", "not an input"),
    ("2x3", "has no input name"),  # two dynamic inputs: the name is needed
])
def test_bad_shape_strings(text, error):
    with pytest.raises(ProfileError, match=error):
        parse_shapes(text, INPUTS)


def test_a_bare_shape_names_the_only_dynamic_input():
    assert parse_shapes("4x16", {"x": ["b", 16], "w": [3]}) == {"x": (4, 16)}


@pytest.mark.parametrize("shapes, error", [
    ({"x": ((1, 16), (4, 16), (2, 16))}, "min <= opt <= max"),
    ({"x": ((1, 8), (4, 8), (8, 8))}, "fixed at 16"),
    ({"x": ((1,), (4,), (8,))}, "rank 1"),
    ({}, "gives no shapes"),
])
def test_check_profile_rejects_what_tensorrt_would(shapes, error):
    with pytest.raises(ProfileError, match=error):
        check_profile(Profile(shapes), {"x": ["b", 16]})


def test_profile_json_round_trip():
    profile = derive_profile(INPUTS, DIMS)
    assert Profile.from_json(json.loads(json.dumps(profile.to_json()))) == profile


def _onnx_file(tmp_path, dims, metadata=None, qdq=False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("DequantizeLinear" if qdq else "Relu", ["x"] + (["s"] if qdq else []), ["y"])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [1.0])] if qdq else []
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], initializer=inits))
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_build_plan_as_data(tmp_path):
    path = _onnx_file(tmp_path, ["batch", 16], {"bigperf.dims": json.dumps({"batch": {"min": 1, "opt": 8, "max": 64}})},
                      qdq=True)
    plan = make_build_plan(path, tmp_path / "m.plan", precision=("fp16", "bf16", "fp16"), sparse_weights=True,
                           workspace_gb=1.5, timing_cache=tmp_path / "cache")
    assert plan.flags == ("FP16", "BF16", "SPARSE_WEIGHTS")
    assert plan.workspace_bytes == int(1.5 * 1024 ** 3)
    assert plan.profiles == [Profile({"x": ((1, 16), (8, 16), (64, 16))})]
    assert any("--int8" in note for note in plan.notes)  # Q/DQ in the file but no int8 precision
    assert plan.versions_path.name == "m.plan.json"
    explicit = make_build_plan(path, tmp_path / "m.plan", precision="int8",
                               profiles=[{"x": ((2, 16), (2, 16), (4, 16))}])
    assert explicit.flags == ("INT8",) and explicit.profiles[0].shapes["x"][2] == (4, 16) and not explicit.notes


def test_build_plan_errors(tmp_path):
    static = _onnx_file(tmp_path, [2, 16])
    with pytest.raises(ValueError, match="argument 'precision'"):
        make_build_plan(static, tmp_path / "p", precision=("fp4",))
    with pytest.raises(ValueError, match="argument 'workspace_gb'"):
        make_build_plan(static, tmp_path / "p", workspace_gb=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_build_plan(tmp_path / "missing.onnx", tmp_path / "p")
    with pytest.raises(ProfileError, match="no min"):
        make_build_plan(_onnx_file(tmp_path, ["batch", 16]), tmp_path / "p")
    assert precision_flags("fp32") == ()


def test_engine_written_atomically_with_its_versions(tmp_path):
    path = _onnx_file(tmp_path, [2, 16])
    plan = make_build_plan(path, tmp_path / "out" / "m.plan")
    write_atomic(plan.engine_path, b"engine bytes")
    record = versions_record(plan, tensorrt_version="10.3.0", device_name="NVIDIA H200", compute_capability="9.0")
    write_versions(plan, record)
    assert plan.engine_path.read_bytes() == b"engine bytes"
    assert sorted(p.name for p in plan.engine_path.parent.iterdir()) == ["m.plan", "m.plan.json"]  # no temp left
    saved = json.loads(versions_path(plan.engine_path).read_text())
    assert saved["tensorrt"] == "10.3.0" and saved["torch"] == torch.__version__ and len(saved["onnx_sha256"]) == 64
    assert check_engine_versions(plan.engine_path, tensorrt_version="10.3.0", compute_capability="9.0") == saved
    with pytest.raises(EngineVersionError, match="built with TensorRT 10.3.0, this is TensorRT 10.7.0.*rebuild"):
        check_engine_versions(plan.engine_path, tensorrt_version="10.7.0", compute_capability="9.0")
    with pytest.raises(EngineVersionError, match="compute capability 9.0 .*this GPU is 8.0"):
        check_engine_versions(plan.engine_path, tensorrt_version="10.3.0", compute_capability="8.0")
    versions_path(plan.engine_path).unlink()  # no record: TensorRT's own check decides
    assert check_engine_versions(plan.engine_path, tensorrt_version="10.7.0", compute_capability=None) is None


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = write_atomic(tmp_path / "m.plan", b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("bigperf.deploy.trt_plan.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.plan"]


def test_binding_call_arguments_to_engine_inputs():
    a, b = torch.zeros(2), torch.ones(2)
    assert bind_inputs(["x", "mask"], (a,), {"mask": b}) == {"x": a, "mask": b}
    with pytest.raises(TypeError, match="missing engine inputs \\['mask'\\]"):
        bind_inputs(["x", "mask"], (a,), {})
    with pytest.raises(TypeError, match="no input 'y'"):
        bind_inputs(["x"], (), {"x": a, "y": b})
    with pytest.raises(TypeError, match="both by position and by name"):
        bind_inputs(["x"], (a,), {"x": a})
    with pytest.raises(TypeError, match="takes 1 inputs"):
        bind_inputs(["x"], (a, b), {})


def test_binding_checks_device_dtype_and_profile():
    profile = Profile({"x": ((1, 4), (2, 4), (8, 4))})
    with pytest.raises(ValueError, match="is on cpu; TensorRT runs on CUDA tensors"):
        check_binding("x", torch.zeros(2, 4), torch.float32, [profile])
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        check_binding("x", [1, 2], torch.float32, [profile])
    if torch.cuda.is_available():
        with pytest.raises(TypeError, match="must be torch.float16"):
            check_binding("x", torch.zeros(2, 4, device="cuda"), torch.float16, [profile])
        with pytest.raises(ValueError, match="outside the engine's optimisation profile"):
            check_binding("x", torch.zeros(9, 4, device="cuda"), torch.float32, [profile])
    assert torch_dtype("HALF") is torch.float16
    with pytest.raises(TypeError, match="no torch dtype"):
        torch_dtype("INT4")


def test_the_profile_holding_the_shapes_is_chosen():
    small = Profile({"x": ((1, 4), (2, 4), (8, 4))})
    large = Profile({"x": ((8, 4), (32, 4), (64, 4))})
    assert choose_profile([small, large], {"x": (4, 4)}) == 0
    assert choose_profile([small, large], {"x": (40, 4)}) == 1
    assert choose_profile([], {"x": (40, 4)}) == 0


def test_parse_errors_name_the_nodes(tmp_path):
    path = _onnx_file(tmp_path, [2, 16])
    text = format_parse_errors(path, [{"node": 0, "desc": "Unsupported operator Relu", "code": "UNSUPPORTED_NODE"},
                                      {"node": -1, "desc": "bad model", "code": "INVALID_GRAPH"}])
    assert "node 0 '' (Relu): Unsupported operator Relu [UNSUPPORTED_NODE]" in text
    assert "model: bad model" in text and "bigperf trt lint" in text


def test_progress_display_follows_the_phases():
    from rich.console import Console

    out = io.StringIO()
    with BuildProgress(Console(file=out, width=100, force_terminal=False)) as progress:
        progress.phase_start("Building engine", None, 3)
        progress.phase_start("Tactic selection", "Building engine", 2)
        assert progress.step_complete("Tactic selection", 0) is True
        progress.phase_finish("Tactic selection")
        progress.step_complete("Building engine", 2)
        progress.phase_finish("Building engine")
        progress.phase_finish("never started")
    text = out.getvalue()
    assert "Building engine" in text and "3/3" in text
