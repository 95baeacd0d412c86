"""`bigperf trt lint`: what in an ONNX file TensorRT would reject or handle badly, in words.

Rules (each finding carries an explanation and a suggested fix):
  unsupported-op        an operator outside the ONNX operators TensorRT 10's parser imports
                        (error when known to be unsupported, e.g. DynamicQuantizeLinear,
                        MatMulInteger, MatMulNBits, custom domains; warning when it is merely
                        not on bigperf's list: check onnx-tensorrt's operators.md)
  qdq-dynamic-scale     a Q/DQ scale or zero point that is not a constant: TensorRT needs
                        build-time scales (bigperf's int8-dynamic per-token scales are not)
  qdq-zero-point        a non-zero zero point: TensorRT quantises symmetrically only
  qdq-block-int8        blocked (block_size) DequantizeLinear of 8-bit data: TensorRT's
                        block quantisation is for 4-bit weights
  qdq-placement         a QuantizeLinear not followed by a DequantizeLinear, or a weight
                        DequantizeLinear that does not reach a MatMul/Gemm/Conv through
                        layout-only ops (TensorRT then cannot fuse it into an int8 kernel)
  int8-weight-per-tensor  int8 weights with one scale for the whole tensor, or int8 weights
                        turned into floats by Cast instead of DequantizeLinear
  dynamic-dim-no-profile  an input with a dynamic dimension but no (min, opt, max) for it
                        in the file's bigperf.dims metadata or the profiles given
  fp64-initializer      float64 weights or constants: TensorRT has no float64
The supported-operator list is transcribed from onnx-tensorrt's operators.md (TensorRT 10);
TensorRT's own parser has the last word (`bigperf trt build` reports its errors by node).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from bigperf.deploy.profiles import Profile, dims_from_metadata, is_dynamic

TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
NonMaxSuppression NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RoiAlign Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink
Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

_QDQ_ADVICE = ("express the quantisation as QuantizeLinear/DequantizeLinear pairs around a float MatMul/Gemm "
               "(explicit quantisation), which TensorRT fuses into int8 kernels; bigperf.deploy.export_onnx does")
KNOWN_UNSUPPORTED = {
    "DynamicQuantizeLinear": "computes its scale at run time; TensorRT's int8 needs build-time scales. Export "
                             "W8A16 (--config int8) or calibrate static activation scales",
    "MatMulInteger": _QDQ_ADVICE, "ConvInteger": _QDQ_ADVICE, "QLinearMatMul": _QDQ_ADVICE,
    "QLinearConv": _QDQ_ADVICE,
    "MatMulNBits": "is an onnxruntime contrib op written by onnxruntime's optimiser; lint and build the file "
                   "as exported, not one saved by onnxruntime",
    "Unique": "has a data-dependent output size TensorRT cannot plan; compute it outside the engine",
}
_SEQUENCE_OPS = ("Sequence", "Optional", "SplitToSequence", "ConcatFromSequence", "String", "TfIdf", "Tokenizer")
_WEIGHTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
_LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze")
_EIGHT_BIT = {2, 3}  # TensorProto.UINT8, INT8
_DOUBLE = 11  # TensorProto.DOUBLE


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # "error": TensorRT will refuse the file; "warning": it builds, slower or less accurate
    node: str  # the node or input it concerns
    message: str
    explanation: str
    fix: str

    def __str__(self) -> str:
        return (f"[{self.severity}] {self.rule} at {self.node}: {self.message}\n"
                f"  why: {self.explanation}\n  fix: {self.fix}")


class _Graph:
    """The ONNX graph indexed for the rules: producers, consumers, constants."""

    def __init__(self, model, base_dir: Path):
        self.model, self.graph, self.base_dir = model, model.graph, base_dir
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producer = {out: node for node in self.graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.constants = {n.output[0]: n for n in self.graph.node if n.op_type == "Constant" and n.output}

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constants

    def constant_array(self, name: str):
        from onnx import numpy_helper

        tensor = self._constant_tensor(name)
        return numpy_helper.to_array(tensor, base_dir=str(self.base_dir)) if tensor is not None else None

    def _constant_tensor(self, name: str):
        if name in self.initializers:
            return self.initializers[name]
        for attr in self.constants[name].attribute if name in self.constants else ():
            if attr.name == "value":
                return attr.t
        return None

    def dims(self, name: str) -> list[int] | None:
        tensor = self._constant_tensor(name)
        return list(tensor.dims) if tensor is not None else None

    def elem_type(self, name: str) -> int | None:
        tensor = self._constant_tensor(name)
        return tensor.data_type if tensor is not None else None


def _label(node) -> str:
    """'name (Op)', plus the module it came from when torch's exporter recorded it."""
    label = f"{node.name or '(unnamed)'} ({node.op_type})"
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            module = ".".join(s for s in scopes[:-1] if s)  # the last scope is the traced call itself
            if module:
                label += f" in {module}"
    return label


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else default
    return default


def _rule_unsupported_ops(g: _Graph, findings: list) -> None:
    for node in g.graph.node:
        domain = node.domain or "ai.onnx"
        if domain != "ai.onnx":
            fix = KNOWN_UNSUPPORTED.get(node.op_type, f"provide a TensorRT plugin for {domain}::{node.op_type}, or "
                                                      f"export the model without custom ops")
            findings.append(Finding("unsupported-op", "error", _label(node), f"operator {domain}::{node.op_type}",
                                    "TensorRT's ONNX parser imports standard ONNX operators only; other domains "
                                    "need a plugin registered under that name", fix))
        elif node.op_type in KNOWN_UNSUPPORTED or node.op_type.startswith(_SEQUENCE_OPS):
            findings.append(Finding("unsupported-op", "error", _label(node), f"operator {node.op_type}",
                                    "TensorRT has no layer for this operator",
                                    KNOWN_UNSUPPORTED.get(node.op_type, "keep sequences, optionals and strings "
                                                                        "outside the exported graph")))
        elif node.op_type not in TRT_SUPPORTED_OPS:
            findings.append(Finding("unsupported-op", "warning", _label(node), f"operator {node.op_type}",
                                    "it is not on the list of operators TensorRT 10's ONNX parser imports "
                                    "(onnx-tensorrt operators.md)", "check that list for your TensorRT version, "
                                    "or rewrite the operation with supported operators"))


def _rule_qdq(g: _Graph, findings: list) -> None:
    for node in g.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or (node.domain or "ai.onnx") != "ai.onnx":
            continue
        params = [name for name in node.input[1:3] if name]
        dynamic = [name for name in params if not g.is_constant(name)]
        if dynamic and all(_constant_behind_layout(g, name) for name in dynamic):
            findings.append(Finding(
                "qdq-dynamic-scale", "error", _label(node), f"scale/zero point {dynamic} is a constant behind a "
                f"Reshape/Squeeze", "TensorRT's parser takes Q/DQ scales and zero points only as initializers; "
                "torch's exporter folds such reshapes only below 8192 elements",
                "fold the constants: export with bigperf.deploy.export_onnx, or run polygraphy surgeon sanitize "
                "--fold-constants"))
        elif dynamic:
            findings.append(Finding(
                "qdq-dynamic-scale", "error", _label(node), f"scale/zero point {dynamic} computed in the graph",
                "TensorRT takes Q/DQ scales and zero points as build-time constants (initializers); a scale "
                "computed at run time, such as the per-token activation scale of bigperf's int8-dynamic layers, "
                "has no TensorRT int8 equivalent",
                "for int8-dynamic layers export W8A16 instead (--config int8) or calibrate static activation "
                "scales"))
        if len(node.input) > 2 and node.input[2] and g.is_constant(node.input[2]):
            zero = g.constant_array(node.input[2])
            if zero is not None and zero.size and (zero != 0).any():
                findings.append(Finding(
                    "qdq-zero-point", "error", _label(node), "non-zero zero point",
                    "TensorRT implements symmetric quantisation only: zero points must be 0",
                    "quantise symmetrically (bigperf.Int8WeightOnly(symmetric=True), the default)"))
        if node.op_type == "DequantizeLinear" and _attr(node, "block_size", 0) and \
                g.elem_type(node.input[0]) in _EIGHT_BIT:
            findings.append(Finding(
                "qdq-block-int8", "error", _label(node), f"blocked dequantisation (block_size "
                f"{_attr(node, 'block_size')}) of 8-bit data",
                "TensorRT supports block quantisation for 4-bit weights only; 8-bit weights take per-tensor or "
                "per-channel scales", "use per-channel int8 (--config int8) for TensorRT"))
        _check_placement(g, node, findings)


def _constant_behind_layout(g: _Graph, name: str, depth: int = 4) -> bool:
    node = g.producer.get(name)
    if node is None or node.op_type not in _LAYOUT_OPS or depth == 0:
        return False
    data = node.input[0]
    return g.is_constant(data) or _constant_behind_layout(g, data, depth - 1)


def _reaches(g: _Graph, name: str, through: tuple, depth: int = 6) -> list[str]:
    """Op types of the consumers reached from `name`, looking past `through` ops."""
    reached = []
    for consumer in g.consumers.get(name, []):
        if consumer.op_type in through and depth > 0:
            reached += _reaches(g, consumer.output[0], through, depth - 1)
        else:
            reached.append(consumer.op_type)
    return reached


def _check_placement(g: _Graph, node, findings: list) -> None:
    if node.op_type == "QuantizeLinear":
        after = [c.op_type for c in g.consumers.get(node.output[0], [])]
        if any(op != "DequantizeLinear" for op in after):
            findings.append(Finding(
                "qdq-placement", "error", _label(node), f"QuantizeLinear feeds {sorted(set(after))}",
                "TensorRT reads quantisation as Q/DQ pairs: every QuantizeLinear must be followed by a "
                "DequantizeLinear", "insert the DequantizeLinear after the QuantizeLinear"))
        return
    if not g.is_constant(node.input[0]) or g.elem_type(node.input[0]) not in _EIGHT_BIT:
        return  # activations: DQ placement is free
    reached = _reaches(g, node.output[0], _LAYOUT_OPS)
    odd = sorted({op for op in reached if op not in _WEIGHTED_OPS})
    if odd:
        findings.append(Finding(
            "qdq-placement", "warning", _label(node), f"weight DequantizeLinear feeds {odd}",
            "TensorRT fuses a weight DequantizeLinear into the MatMul/Gemm/Conv it feeds (through layout-only "
            "ops); anything else in between makes it dequantise the weight and run in float",
            "feed the DequantizeLinear to the MatMul directly; for fp16/bf16 models export in fp32 and let "
            "--fp16/--bf16 choose the precision instead of a Cast after the DequantizeLinear"))


def _rule_int8_weights(g: _Graph, findings: list) -> None:
    dq_inputs = {n.input[0]: n for n in g.graph.node if n.op_type == "DequantizeLinear"}
    for name, tensor in g.initializers.items():
        if tensor.data_type not in _EIGHT_BIT or len(tensor.dims) < 2:
            continue
        dq = dq_inputs.get(name)
        if dq is not None:
            scale_dims = g.dims(dq.input[1])
            if scale_dims is not None and _numel(scale_dims) == 1:
                findings.append(Finding(
                    "int8-weight-per-tensor", "warning", _label(dq), f"int8 weight {name!r} {list(tensor.dims)} "
                    f"has one scale for the whole tensor",
                    "a single scale lets the channel with the largest weights set the step for all channels; "
                    "per-channel scales keep small channels accurate at no cost in TensorRT",
                    "quantise per output channel: DequantizeLinear with a 1-D scale along axis 0 (what bigperf's "
                    "Int8WeightOnly exports)"))
            continue
        users = sorted({c.op_type for c in g.consumers.get(name, [])})
        if "Cast" in users:
            findings.append(Finding(
                "int8-weight-per-tensor", "warning", name, f"int8 weight {list(tensor.dims)} is converted by "
                f"{users} instead of DequantizeLinear",
                "TensorRT sees an int8 constant and a float conversion, not a quantised weight: no per-channel "
                "scales reach its int8 kernels and the weight runs in float",
                "dequantise with DequantizeLinear and per-channel scales (bigperf.deploy.export_onnx does)"))


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _rule_dynamic_dims(g: _Graph, profiles: list[Profile] | None, findings: list) -> None:
    from bigperf.deploy.onnx import graph_inputs

    dims = dims_from_metadata({p.key: p.value for p in g.model.metadata_props})
    covered = {name for p in (profiles or []) for name in p.shapes}
    for name, input_dims in graph_inputs(g.model).items():
        if not is_dynamic(input_dims) or name in covered:
            continue
        missing = [d if isinstance(d, str) else f"axis {axis}" for axis, d in enumerate(input_dims)
                   if not (isinstance(d, int) and d >= 1)
                   and (not isinstance(d, str) or dims.get(d, {}).get("min") is None
                        or dims.get(d, {}).get("max") is None)]
        if missing:
            findings.append(Finding(
                "dynamic-dim-no-profile", "error", f"input {name!r}", f"dynamic dimensions {missing} of "
                f"{input_dims} have no min/max",
                "TensorRT compiles for the range of shapes an optimisation profile gives (min, opt, max) for "
                "every dynamic input; without one the build stops",
                f"give the shapes: bigperf trt build FILE --min {name}:... --opt {name}:... --max {name}:..., or "
                f"export with dynamic_shapes using torch.export.Dim(name, min=..., max=...)"))


def _rule_fp64(g: _Graph, findings: list) -> None:
    doubles = [name for name, t in g.initializers.items() if t.data_type == _DOUBLE]
    doubles += [name for name in g.constants if g.elem_type(name) == _DOUBLE]
    casts = [n for n in g.graph.node if n.op_type == "Cast" and _attr(n, "to") == _DOUBLE]
    for name in doubles:
        findings.append(Finding("fp64-initializer", "error", name, "float64 constant",
                                "TensorRT has no float64 tensors or kernels",
                                "convert the model to float32 before export (model.float()) and create "
                                "constants without dtype=torch.float64"))
    for node in casts:
        findings.append(Finding("fp64-initializer", "error", _label(node), "Cast to float64",
                                "TensorRT has no float64 tensors or kernels",
                                "remove the .double() / .to(torch.float64) from the model code"))


def lint(onnx_path, *, profiles: list[Profile] | None = None) -> list[Finding]:
    """Findings for the ONNX file at `onnx_path`, errors first (an empty list: nothing found).

    profiles: optimisation profiles you will build with (then their inputs need no metadata).
    """
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"bigperf.deploy.lint: ONNX file {path} does not exist")
    g = _Graph(onnx.load(str(path), load_external_data=False), path.parent)
    findings: list[Finding] = []
    _rule_unsupported_ops(g, findings)
    _rule_qdq(g, findings)
    _rule_int8_weights(g, findings)
    _rule_dynamic_dims(g, profiles, findings)
    _rule_fp64(g, findings)
    return sorted(findings, key=lambda f: f.severity != "error")
