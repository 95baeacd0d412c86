"""ONNX export of (swapped) models: standard ONNX that onnxruntime and TensorRT read.

    bigperf.deploy.export_onnx(model, (x,), "m.onnx", dynamic_shapes=({0: Dim("batch", max=64)},))

Every bigperf op lowers itself to standard ONNX while torch.onnx.export traces the model
(bigperf/ops/onnx_lowering.py, which also states the numerics of each lowering), so a plain
`torch.onnx.export(swapped_model, (x,), "m.onnx")` works too. export_onnx adds what a
deployment needs on top of it:
- the opset: 21 when a layer has per-group int8 weights (blocked DequantizeLinear), else
  torch's default; an explicit `opset` is honoured (per-group weights then use an
  equivalent per-row form below 21);
- sparse layers exported as their pruned dense weight held in one initializer (int8 codes +
  DequantizeLinear for int8 values), which TensorRT needs to choose sparse tactics;
- Q/DQ scales and zero points as initializers (TensorRT requires build-time constants;
  torch's optimiser folds the reshape of a scale only below 8192 elements);
- the dynamic dimensions' bounds and example sizes recorded in the file's metadata
  (`bigperf.dims`), from which `bigperf trt build` derives optimisation profiles;
- weights in a `<file>.data` side file when they exceed protobuf's 2 GB limit.
verify_onnx() runs the file in onnxruntime and compares it with the PyTorch model.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bigperf.deploy.profiles import METADATA_DIMS
from bigperf.ops.onnx_lowering import BLOCKED_QUANT_OPSET, DEFAULT_OPSET, target_opset

# protobuf cannot serialise a message over 2 GiB: larger weights must live in a side file.
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3
MIN_OPSET, MAX_OPSET = 18, 23  # torch's exporter writes opset 18+ natively
METADATA_VERSION = "bigperf.version"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops that only move a constant's elements: folded where they feed Q/DQ (a kernel layout's
# weight, e.g. w8a16-cpu panels, reaches DequantizeLinear through Reshape, Transpose, Slice).
_LAYOUT_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Slice")
_UNBOUNDED = 2 ** 31 - 1  # a Dim without max reports int_oo; TensorRT dims are int32 at most


@dataclass
class OnnxExport:
    """What export_onnx wrote."""

    path: Path
    data_path: Path | None  # external weights, when they were written separately
    opset: int
    inputs: dict[str, list]  # name → dims (int, or the dynamic dimension's name)
    dims: dict[str, dict] = field(default_factory=dict)  # dynamic dim name → {"min", "opt", "max"}

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, self.data_path) if p is not None)


def _onnx_modules() -> None:
    try:
        import onnx  # noqa: F401  (only to fail early with the install hint)
        import onnxscript  # noqa: F401  (torch.onnx.export's dynamo path needs it)
    except ImportError as error:
        raise ImportError(f"bigperf.deploy.export_onnx needs onnx and onnxscript ({error}); "
                          f"install them with: pip install 'bigperf[onnx]'") from None


def split_inputs(example_inputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(f"bigperf.deploy.export_onnx: argument 'example_inputs' must be a tensor, a tuple of "
                    f"positional inputs or a dict of keyword inputs, got {type(example_inputs).__name__}")


def example_tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among the inputs in the order the exporter makes them graph inputs."""
    leaves, _ = torch.utils._pytree.tree_flatten((args, kwargs))
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _needs_blocked_quant(model: nn.Module) -> bool:
    from bigperf.nn import Int8Linear

    return any(isinstance(m, Int8Linear) and m.group_size is not None for m in model.modules())


def choose_opset(model: nn.Module, opset: int | None) -> int:
    if opset is None:
        return max(DEFAULT_OPSET, BLOCKED_QUANT_OPSET) if _needs_blocked_quant(model) else DEFAULT_OPSET
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"bigperf.deploy.export_onnx: argument 'opset' must be an int in "
                         f"[{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    return opset


# ----------------------------------------------------------------------------- sparse layers as dense

def dense_equivalent(layer: nn.Module) -> nn.Module | None:
    """The dense bigperf layer computing what a SparseLinear computes (None for other modules)."""
    from bigperf.nn import FusedLinear, Int8Linear, SparseLinear
    from bigperf.formats.sparse24 import dense_24
    from bigperf.sparsity import unpack_24, unpack_bsr

    if not isinstance(layer, SparseLinear):
        return None
    bias = layer.bias is not None
    with torch.no_grad():
        if layer.pattern == "2:4" and layer.int8:
            values, meta, scale = layer.packed_24()
            dense = Int8Linear(layer.in_features, layer.out_features, bias, weight_only=True,
                               activation=layer.activation, device=values.device)
            dense.qweight.copy_(dense_24(values, meta))
            dense.scale.copy_(scale)
        else:
            if layer.pattern == "2:4":
                values, meta, _ = layer.packed_24()
                weight = unpack_24(values, meta)
            else:
                weight = unpack_bsr(*layer.packed_bsr(), layer.in_features)
            dense = FusedLinear(layer.in_features, layer.out_features, bias, activation=layer.activation,
                                weight_dtype=weight.dtype, device=weight.device)
            dense.weight.copy_(weight)
        if bias:
            dense.bias.copy_(layer.bias)
    return dense


@contextlib.contextmanager
def _dense_sparse_layers(model: nn.Module):
    """Sparse layers replaced by their dense equivalents for the duration of the export."""
    from bigperf.swap import set_submodule

    undo = []
    try:
        for name, module in list(model.named_modules()):
            dense = dense_equivalent(module) if name else None
            if dense is not None:
                set_submodule(model, name, dense)
                undo.append((name, module))
        yield
    finally:
        for name, module in reversed(undo):
            set_submodule(model, name, module)


# ----------------------------------------------------------------------------- dims metadata

def _collect_dims(spec, found: dict) -> None:
    if isinstance(spec, torch.export.Dim):
        found[spec.__name__] = spec
    elif isinstance(spec, dict):
        for value in spec.values():
            _collect_dims(value, found)
    elif isinstance(spec, (tuple, list)):
        for value in spec:
            _collect_dims(value, found)


def _bound(value, default):
    try:
        value = int(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return default if value >= _UNBOUNDED else value


def dims_metadata(dynamic_shapes, inputs: dict[str, list], examples: list[torch.Tensor]) -> dict[str, dict]:
    """{dim name: {"min", "opt", "max"}} for the graph inputs' named dynamic dimensions.

    min/max come from torch.export.Dim bounds (None when unbounded or given as a string),
    opt from the example inputs' sizes (the shape the model was traced with).
    """
    declared: dict = {}
    _collect_dims(dynamic_shapes, declared)
    dims: dict[str, dict] = {}
    aligned = len(examples) == len(inputs)
    for position, dim_list in enumerate(inputs.values()):
        for axis, dim in enumerate(dim_list):
            if not isinstance(dim, str) or dim in dims:
                continue
            decl = declared.get(dim)
            opt = int(examples[position].shape[axis]) if aligned and axis < examples[position].dim() else None
            dims[dim] = {"min": max(1, _bound(getattr(decl, "min", 1), 1)),
                         "opt": opt, "max": _bound(getattr(decl, "max", None), None)}
    return dims


def graph_inputs(model_proto) -> dict[str, list]:
    """{input name: [int | dim name | None per axis]} of an onnx.ModelProto."""
    initializers = {t.name for t in model_proto.graph.initializer}
    inputs = {}
    for value in model_proto.graph.input:
        if value.name in initializers:
            continue
        dims = []
        for d in value.type.tensor_type.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        inputs[value.name] = dims
    return inputs


# ----------------------------------------------------------------------------- export

def _fold_quant_params(ir_model) -> None:
    """Fold layout ops (reshapes, transposes, slices) of constants that feed Q/DQ nodes into
    initializers.

    TensorRT's parser takes Q/DQ scales and zero points only as initializers; torch's own
    folding stops at 8192 elements (a per-channel scale of an 11008-wide layer stays a Reshape,
    a layer held in a CPU kernel layout keeps the unpacking of its weight).
    """
    from onnxscript import optimizer

    def should_fold(node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _LAYOUT_OPS:
            return False
        uses = [use for out in node.outputs for use in out.uses()]
        return bool(uses) and all(use.node.op_type in QDQ_OPS + _LAYOUT_OPS for use in uses)

    optimizer.fold_constants(ir_model, input_size_limit=2 ** 62, output_size_limit=2 ** 62, should_fold=should_fold)
    optimizer.remove_unused_nodes(ir_model)


def _set_metadata(ir_model, dims: dict) -> None:
    import bigperf

    ir_model.metadata_props[METADATA_VERSION] = bigperf.__version__
    if dims:
        ir_model.metadata_props[METADATA_DIMS] = json.dumps(dims, sort_keys=True)


def _initializer_bytes(ir_model) -> int:
    return sum(v.const_value.nbytes for v in ir_model.graph.initializers.values() if v.const_value is not None)


def check_output_path(path) -> Path:
    """The .onnx file to write; a folder there is refused (before any export work)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"bigperf.deploy.export_onnx: argument 'path' {str(path)!r} is a folder; give the "
                                f".onnx file to write, e.g. {str(path / 'model.onnx')!r}")
    return path


class UntraceableModel(ValueError):
    """torch.export could not capture the model: a property of the user's model (e.g. Python
    control flow on a tensor's value), told in a few lines instead of torch's pages."""

    def __init__(self, error: Exception):
        cause = error
        while cause.__cause__ is not None:  # torch's report wraps the first failure's exception
            cause = cause.__cause__
        first = next((line.strip() for line in str(cause).splitlines() if line.strip()), type(cause).__name__)
        first = first if len(first) <= 120 else first[:117] + "..."
        super().__init__(f"bigperf.deploy.export_onnx: torch.export cannot trace this model ({type(cause).__name__}: "
                         f"{first}); e.g. Python control flow on a tensor's value needs torch.cond")


def export_onnx(model: nn.Module, example_inputs, path, *, dynamic_shapes=None, opset: int | None = None,
                external_data: bool | None = None) -> OnnxExport:
    """Write `model` as a standard ONNX file at `path`; returns an OnnxExport.

    example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs.
    dynamic_shapes: as torch.onnx.export / torch.export take them (torch.export.Dim with
    min/max bounds lets `bigperf trt build` derive optimisation profiles; plain strings
    name a dimension without bounds). opset: None picks 20, or 21 when per-group int8
    weights need blocked DequantizeLinear. external_data: None writes weights to
    `<path>.data` only above 2 GB; True/False force it.
    """
    _onnx_modules()
    if not isinstance(model, nn.Module):
        raise TypeError(f"bigperf.deploy.export_onnx: argument 'model' must be an nn.Module, "
                        f"got {type(model).__name__}")
    path = check_output_path(path)
    args, kwargs = split_inputs(example_inputs)
    opset = choose_opset(model, opset)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), target_opset(opset), _dense_sparse_layers(model):
        try:
            program = torch.onnx.export(model, args, kwargs=kwargs or None, dynamic_shapes=dynamic_shapes,
                                        opset_version=opset, dynamo=True, verbose=False)
        except torch.onnx.OnnxExporterError as error:
            raise UntraceableModel(error) from error
    ir_model = program.model
    _fold_quant_params(ir_model)
    inputs = _ir_inputs(ir_model)
    dims = dims_metadata(dynamic_shapes, inputs, example_tensors(args, kwargs))
    _set_metadata(ir_model, dims)
    if external_data is None:
        external_data = _initializer_bytes(ir_model) > EXTERNAL_DATA_THRESHOLD
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()  # a stale side file from an earlier export would be misleading
    program.save(path, external_data=external_data)
    return OnnxExport(path, data_path if data_path.exists() else None, opset, inputs, dims)


def _ir_inputs(ir_model) -> dict[str, list]:
    inputs = {}
    for value in ir_model.graph.inputs:
        dims = []
        for d in (value.shape.dims if value.shape is not None else ()):
            dims.append(d if isinstance(d, int) else (d.value if getattr(d, "value", None) else None))
        inputs[value.name] = dims
    return inputs
