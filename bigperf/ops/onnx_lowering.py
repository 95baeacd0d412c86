"""How each bigperf op is written in standard ONNX while torch.onnx.export traces a model.

torch.onnx.export (dynamo=True, torch >= 2.8) runs the model's Python code under
torch.export. Each op's Python entry point asks `exporting_to_onnx()` and, if so, returns
`lower_to_onnx(op_name, *args)` instead of calling torch.ops.bigperf.<op>: the graph then
holds ordinary aten ops (which the exporter translates) plus ONNX nodes spelled out with
the public `torch.onnx.ops.symbolic`. That is why a plain `torch.onnx.export(swapped, (x,))`
needs nothing from bigperf: no translation table, no plugin. (torch.onnx's only global
registry of translations is private, and importing it costs seconds, so it is not used.)
The hand-off happens while the Python code runs, so export from the nn.Module: an
ExportedProgram that already holds torch.ops.bigperf nodes has no translation.

This module is the mechanism (the registry, the opset in force, `symbolic` and
`onnx_linear`); each lowering lives with its weight format in bigperf/formats/, under
`@onnx_lowering("bigperf.<op>")`. The hand-off is in the public entry every op gets from
define_op (bigperf/ops/define.py).

Numerics of the lowerings, relative to the ops:
- fused_linear: x @ W^T in x's dtype (a weight of another dtype is Cast to it), then bias,
  activation, residual. For fp32 x this is the op's math up to summation order. For fp16/
  bf16 x the epilogue rounds in that dtype where the op keeps fp32 until the end, which
  is within the dtype's tolerance.
- int8_weight_linear: int8 initializer → DequantizeLinear → the same MatMul. Per channel:
  1-D scale, axis 0 (opset ≥ 13). Per group: blocked DequantizeLinear (axis 1, block_size =
  group size) at opset ≥ 21; below 21 the [N, K] codes are viewed as [N·G, group] rows and
  dequantised per row (axis 0), which is the same arithmetic. (q − z)·s is computed in
  fp32 as in bigperf.quant.dequantize_weight: identical weights.
- int8_dynamic_linear: the per-token symmetric scheme of bigperf.quant, written out:
  scale = max|x_row| / qmax (qmax = 127 for act_bits 8, 63 for 7, a constant in the
  graph; 1 for an all-zero row), QuantizeLinear(x, scale, zero 0, axis 0) →
  DequantizeLinear → MatMul with the dequantised weight. QuantizeLinear rounds half to
  even and saturates like torch.round + clamp, and |x / scale| ≤ qmax by construction
  (so the int8 saturation never applies and no clamp to ±63 is needed), so the int8 codes equal the op's (up to a tie that a runtime computing
  x·(1/scale) instead of x/scale may break differently). The op sums int8 products
  exactly and scales once; Q/DQ multiplies the scales in before an fp32 MatMul: the two
  differ by fp32 rounding only (relative error ~1e-7·√K). DynamicQuantizeLinear is not
  used: it is per tensor, asymmetric and uint8, so its codes differ from ours by up to
  the whole quantisation step and it would fail a 1e-5 comparison.
- sparse24_linear / block_sparse_linear (and their CPU lane layouts, unpacked first): a
  MatMul on the pruned dense weight (TensorRT picks sparse tactics from the zeros of a
  constant weight; int8 2:4 values become int8 codes + DequantizeLinear). Here the dense
  weight is rebuilt in the graph from the packed buffers, which is exact but leaves
  scatter ops on constants for the runtime; bigperf.deploy.export_onnx instead swaps
  sparse layers for their dense equivalents before tracing, so its file holds the dense
  weight as one initializer.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Callable

import torch
import torch.nn.functional as F

from bigperf.ops.activations import apply_activation

ONNX_LOWERINGS: dict[str, Callable[..., torch.Tensor]] = {}

# The opset torch.onnx.export uses when none is given; a plain export cannot tell us its
# opset, so lowerings assume this one unless bigperf.deploy.export_onnx says otherwise.
DEFAULT_OPSET = 20
BLOCKED_QUANT_OPSET = 21  # DequantizeLinear gained block_size in opset 21

_target_opset: contextvars.ContextVar[int | None] = contextvars.ContextVar("bigperf_onnx_opset", default=None)


def onnx_lowering(op_name: str):
    """Register the ONNX lowering of the op `op_name` (e.g. "bigperf.fused_linear")."""
    def register(fn):
        ONNX_LOWERINGS[op_name] = fn
        return fn
    return register


def exporting_to_onnx() -> bool:
    """True while torch.onnx.export (dynamo) traces the model."""
    # torch.onnx is not imported by `import torch`; when it is absent nobody is exporting,
    # and this stays a dictionary lookup on the eager path.
    onnx_module = sys.modules.get("torch.onnx")
    if onnx_module is None or not onnx_module.is_in_onnx_export():
        return False
    # The TorchScript exporter (dynamo=False) cannot record torch.onnx.ops.symbolic.
    return not torch.jit.is_tracing()


def lower_to_onnx(op_name: str, *args) -> torch.Tensor:
    try:
        lowering = ONNX_LOWERINGS[op_name]
    except KeyError:
        raise NotImplementedError(f"{op_name}: no ONNX lowering is registered (see bigperf/formats/)") from None
    return lowering(*args)


@contextlib.contextmanager
def target_opset(opset: int):
    """Tell the lowerings which opset the export inside this block targets."""
    token = _target_opset.set(opset)
    try:
        yield
    finally:
        _target_opset.reset(token)


def current_opset() -> int:
    return _target_opset.get() or DEFAULT_OPSET


def symbolic(op_type: str, inputs, attrs: dict, dtype: torch.dtype, shape) -> torch.Tensor:
    try:
        from torch.onnx.ops import symbolic as onnx_symbolic
    except ImportError:
        raise RuntimeError(f"bigperf: exporting bigperf ops to ONNX needs torch >= 2.8 (torch.onnx.ops.symbolic); "
                           f"this is torch {torch.__version__}") from None
    return onnx_symbolic(op_type, tuple(inputs), attrs, dtype=dtype, shape=tuple(shape))


def onnx_linear(x: torch.Tensor, weight: torch.Tensor, bias, activation: str) -> torch.Tensor:
    """x @ weight^T + bias then the activation, in x's dtype (Gemm or MatMul + Add in ONNX)."""
    w = weight if weight.dtype == x.dtype else weight.to(x.dtype)
    b = bias if bias is None or bias.dtype == x.dtype else bias.to(x.dtype)
    return apply_activation(F.linear(x, w, b), activation)


