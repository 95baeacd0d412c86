"""Run an exported ONNX file in onnxruntime (CPU) and compare it with the PyTorch model.

The comparison uses ORT_ENABLE_BASIC: at its default level onnxruntime rewrites
DequantizeLinear(int8 with a zero point) → MatMul into MatMulNBits, which computes with
lower accuracy than the graph says, so the file would be blamed for the runtime's shortcut.

Tolerances, as relative Frobenius error per output (‖onnx − torch‖ / ‖torch‖):
- fp32 outputs 1e-5, fp16 2e-3, bf16 1e-2 (the tests' per-dtype tolerances, docs/ARCHITECTURE.md): the
  lowerings compute what the ops compute, differing in summation order only (the model runs
  under fp32_compute(): no path rounds fp32 x to bf16);
- 1e-4 when the model has int8-dynamic layers: the activation codes match the op's except
  where a runtime breaks a rounding tie differently (x·(1/s) against x/s), and each such
  code moves one activation by one quantisation step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bigperf.deploy.onnx import split_inputs, example_tensors
from bigperf.ops.common import fp32_compute

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DYNAMIC_INT8_TOLERANCE = 1e-4


@dataclass
class OutputCheck:
    name: str
    rel_error: float
    max_abs_error: float
    shape: tuple


@dataclass
class OnnxCheck:
    """verify_onnx's result: per-output errors against PyTorch and the tolerance applied."""

    path: Path
    tolerance: float
    outputs: list[OutputCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.rel_error <= self.tolerance for o in self.outputs)

    @property
    def rel_error(self) -> float:
        return max((o.rel_error for o in self.outputs), default=0.0)

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    def __str__(self) -> str:
        verdict = "matches" if self.passed else "DOES NOT match"
        return (f"{self.path.name} {verdict} PyTorch in onnxruntime (CPU): relative error {self.rel_error:.2e} "
                f"(tolerance {self.tolerance:.0e}), max abs error {self.max_abs_error:.2e} over "
                f"{len(self.outputs)} output(s)")


def default_tolerance(model: nn.Module, outputs: list[torch.Tensor]) -> float:
    from bigperf.nn import Int8Linear

    floats = [o.dtype for o in outputs if o.is_floating_point()]
    tolerance = max((TOLERANCE.get(d, TOLERANCE[torch.float32]) for d in floats), default=TOLERANCE[torch.float32])
    if any(isinstance(m, Int8Linear) and not m.weight_only for m in model.modules()):
        tolerance = max(tolerance, DYNAMIC_INT8_TOLERANCE)
    return tolerance


def ort_session(path, *, basic: bool = True):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("bigperf.deploy.verify_onnx needs onnxruntime: pip install 'bigperf[onnx]'") from None
    options = ort.SessionOptions()
    if basic:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3  # keep onnxruntime's warnings about unused initializers off the console
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _to_numpy(t: torch.Tensor, where: str):
    if t.dtype == torch.bfloat16:
        raise TypeError(f"{where}: onnxruntime's Python API takes no bfloat16 arrays; verify with fp32 or fp16 inputs")
    return t.detach().cpu().numpy()


def run_onnx(session, example_inputs) -> list[torch.Tensor]:
    """Run an onnxruntime session on the same inputs a PyTorch forward takes."""
    args, kwargs = split_inputs(example_inputs)
    tensors = example_tensors(args, kwargs)
    names = [i.name for i in session.get_inputs()]
    where = "bigperf.deploy.verify_onnx"
    if kwargs and set(names) <= set(kwargs):
        feeds = {name: _to_numpy(kwargs[name], where) for name in names}
    elif len(tensors) == len(names):
        feeds = {name: _to_numpy(t, where) for name, t in zip(names, tensors)}
    else:
        raise ValueError(f"{where}: the ONNX file takes inputs {names}, the example inputs hold {len(tensors)} tensors")
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


def verify_onnx(path, model: nn.Module, example_inputs, *, tolerance: float | None = None) -> OnnxCheck:
    """Compare the ONNX file at `path` (onnxruntime, CPU) with `model` on `example_inputs`.

    example_inputs may differ from the export's (other sizes along dynamic dimensions).
    Returns an OnnxCheck; `.passed` says whether every output is within the tolerance
    (default: see this module's docstring).
    """
    args, kwargs = split_inputs(example_inputs)
    # In fp32 where the inputs are: the graph computes in fp32, and measured dispatch could
    # otherwise pick a path that rounds fp32 x to bf16 (an int8 or bf16 weight's layer).
    with torch.no_grad(), fp32_compute():
        expected = model(*args, **kwargs)
    expected = [t for t in torch.utils._pytree.tree_flatten(expected)[0] if isinstance(t, torch.Tensor)]
    session = ort_session(path)
    got = run_onnx(session, example_inputs)
    if len(got) != len(expected):
        raise ValueError(f"bigperf.deploy.verify_onnx: the ONNX file has {len(got)} outputs, the model returns "
                         f"{len(expected)} tensors")
    check = OnnxCheck(Path(path), tolerance if tolerance is not None else default_tolerance(model, expected))
    for meta, out, ref in zip(session.get_outputs(), got, expected):
        if tuple(out.shape) != tuple(ref.shape):
            raise ValueError(f"bigperf.deploy.verify_onnx: output {meta.name!r} has shape {tuple(out.shape)} in "
                             f"onnxruntime and {tuple(ref.shape)} in PyTorch")
        diff = out.double() - ref.double()
        norm = ref.double().norm().item()
        rel = diff.norm().item() / norm if norm > 0 else diff.norm().item()
        check.outputs.append(OutputCheck(meta.name, rel, diff.abs().max().item() if diff.numel() else 0.0,
                                         tuple(ref.shape)))
    return check
