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

Adding an op: write its lowering here under `@onnx_lowering("bigperf.<op>")` and put the
two-line hook in the op's Python entry point (see ops/fused_linear.py).

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
from bigperf.quant import activation_qmax

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
        raise NotImplementedError(f"{op_name}: no ONNX lowering is registered (bigperf/ops/onnx_lowering.py)") from None
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


def _symbolic(op_type: str, inputs, attrs: dict, dtype: torch.dtype, shape) -> torch.Tensor:
    try:
        from torch.onnx.ops import symbolic
    except ImportError:
        raise RuntimeError(f"bigperf: exporting bigperf ops to ONNX needs torch >= 2.8 (torch.onnx.ops.symbolic); "
                           f"this is torch {torch.__version__}") from None
    return symbolic(op_type, tuple(inputs), attrs, dtype=dtype, shape=tuple(shape))


def _linear(x: torch.Tensor, weight: torch.Tensor, bias, activation: str) -> torch.Tensor:
    """x @ weight^T + bias then the activation, in x's dtype (Gemm or MatMul + Add in ONNX)."""
    w = weight if weight.dtype == x.dtype else weight.to(x.dtype)
    b = bias if bias is None or bias.dtype == x.dtype else bias.to(x.dtype)
    return apply_activation(F.linear(x, w, b), activation)


def dequantize_linear(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
    """DequantizeLinear of [N, K] int8 codes with [N, G] scales: an fp32 [N, K] weight."""
    n, k = qweight.shape
    groups = scale.shape[1]
    if groups == 1:
        inputs = [qweight, scale.reshape(n)] + ([zero_point.reshape(n)] if zero_point is not None else [])
        return _symbolic("DequantizeLinear", inputs, {"axis": 0}, torch.float32, (n, k))
    group = k // groups
    if current_opset() >= BLOCKED_QUANT_OPSET:
        inputs = [qweight, scale] + ([zero_point] if zero_point is not None else [])
        return _symbolic("DequantizeLinear", inputs, {"axis": 1, "block_size": group}, torch.float32, (n, k))
    rows = n * groups
    inputs = [qweight.reshape(rows, group), scale.reshape(rows)]
    if zero_point is not None:
        inputs.append(zero_point.reshape(rows))
    return _symbolic("DequantizeLinear", inputs, {"axis": 0}, torch.float32, (rows, group)).reshape(n, k)


@onnx_lowering("bigperf.fused_linear")
def _fused_linear(x, weight, bias, residual, activation):
    y = _linear(x, weight, bias, activation)
    return y if residual is None else y + residual


@onnx_lowering("bigperf.int8_weight_linear")
def _int8_weight_linear(x, qweight, scale, zero_point, bias, activation):
    return _linear(x, dequantize_linear(qweight, scale, zero_point), bias, activation)


@onnx_lowering("bigperf.int8_weight_linear_w8a16")
def _int8_weight_linear_w8a16(x, weight, scale, zero, n, k, group_size, bias, activation):
    # The CUDA layout of an Int8Linear on a GPU, back in row-major order (constant folded).
    from bigperf.cuda_layouts import W8A16Layout, unpack_w8a16

    qweight, q_scale, zero_point = unpack_w8a16(W8A16Layout(weight, scale, zero, n, k, group_size or None))
    return _int8_weight_linear(x, qweight, q_scale, zero_point, bias, activation)


@onnx_lowering("bigperf.int8_dynamic_linear")
def _int8_dynamic_linear(x, qweight, scale, bias, activation, act_bits=8):
    n, k = qweight.shape
    qmax = float(activation_qmax(act_bits, "bigperf.int8_dynamic_linear", "act_bits"))
    rows = x.reshape(-1, k).float()
    absmax = rows.abs().amax(dim=1)
    # Same expression as bigperf.quant.quantize_activation_per_token: the codes must match.
    x_scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    # An explicit int8 zero point: without one QuantizeLinear produces uint8 (before opset 21).
    zero = torch.zeros_like(x_scale, dtype=torch.int8)
    codes = _symbolic("QuantizeLinear", [rows, x_scale, zero], {"axis": 0}, torch.int8, rows.shape)
    x_dq = _symbolic("DequantizeLinear", [codes, x_scale, zero], {"axis": 0}, torch.float32, rows.shape)
    y = _linear(x_dq, dequantize_linear(qweight, scale, None), bias, activation)
    return y.reshape(*x.shape[:-1], n).to(x.dtype)


def dense_24(values: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
    """The dense [N, K] weight of 2:4 values/meta, in the values' dtype (int8 codes stay int8)."""
    n, half = values.shape
    k = 2 * half
    m = meta.to(torch.int64)
    nibbles = torch.stack((torch.remainder(m, 16), torch.div(m, 16, rounding_mode="floor")), dim=2).reshape(n, -1)
    # Arithmetic rather than bit operations: ONNX BitShift has no int64 form.
    positions = torch.stack((torch.remainder(nibbles, 4), torch.div(nibbles, 4, rounding_mode="floor")), dim=2)
    dense = torch.zeros(n, k // 4, 4, dtype=values.dtype, device=values.device)
    return dense.scatter(2, positions, values.reshape(n, k // 4, 2)).reshape(n, k)


@onnx_lowering("bigperf.sparse24_linear")
def _sparse24_linear(x, values, meta, scale, bias, activation):
    dense = dense_24(values, meta)
    if scale is not None:
        dense = dequantize_linear(dense, scale, None)
    return _linear(x, dense, bias, activation)


@onnx_lowering("bigperf.sparse24_lanes_linear")
def _sparse24_lanes_linear(x, values, meta, scale, n, bias, activation):
    # The CPU lane layout of a SparseLinear on the CPU, back in canonical order (constant folded).
    from bigperf.cpu_layouts import Sparse24Lanes, unpack_24_lanes

    canonical = unpack_24_lanes(Sparse24Lanes(values, meta, scale, n, meta.shape[1] // 2))
    return _sparse24_linear(x, *canonical, bias, activation)


@onnx_lowering("bigperf.block_sparse_linear")
def _block_sparse_linear(x, values, col_indices, row_ptr, bias, activation):
    nnz, bn, bk = values.shape
    block_rows, k = row_ptr.shape[0] - 1, x.shape[-1]
    # Block i lies in the row whose [row_ptr[r], row_ptr[r + 1]) holds i: a static-shape
    # count instead of repeat_interleave, whose output size would depend on the data.
    rows = (torch.arange(nnz, device=values.device)[:, None] >= row_ptr[None, 1:].long()).sum(dim=1)
    dense = torch.zeros(block_rows, k // bk, bn, bk, dtype=values.dtype, device=values.device)
    dense = dense.index_put((rows, col_indices.long()), values)
    return _linear(x, dense.transpose(1, 2).reshape(block_rows * bn, k), bias, activation)


@onnx_lowering("bigperf.block_sparse_lanes_linear")
def _block_sparse_lanes_linear(x, values, col_indices, row_ptr, bk, bias, activation):
    # The CPU lane layout of a block-sparse SparseLinear on the CPU, back in canonical order.
    from bigperf.cpu_layouts import BsrLanes, unpack_bsr_lanes

    canonical = unpack_bsr_lanes(BsrLanes(values, col_indices, row_ptr, 16 * values.shape[1], bk, x.shape[-1]))
    return _block_sparse_linear(x, *canonical, bias, activation)
