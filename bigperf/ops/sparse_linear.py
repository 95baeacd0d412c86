"""The sparse linear ops (formats in bigperf/sparsity.py).

torch.ops.bigperf.sparse24_linear(x, values, meta, scale, bias, activation)
    2:4 compressed weight: values [N, K/2] (float, or int8 with scale [N, 1]), meta
    [N, K/8] uint8. y = act(x @ W^T + bias), output in x's dtype.
torch.ops.bigperf.block_sparse_linear(x, values, col_indices, row_ptr, bias, activation)
    BSR weight: values [nnz, bn, bk], col_indices [nnz] int32, row_ptr [N/bn + 1] int32.

Index data is checked before any kernel runs (corrupt 2:4 metadata, block indices out of
range); the content checks are cached per tensor data, so a layer pays them once
(SparseLinear keeps its index buffers out of inference mode for that reason).
"""

from __future__ import annotations

import torch

from bigperf.formats import bsr, sparse24
from bigperf.ops.activations import ACTIVATIONS, activation_code, reference_activation
from bigperf.ops.common import as_rows
from bigperf.ops.define import define_op
from bigperf.ops.frozen_weight_grad import register_frozen_weight_autograd
from bigperf.ops.tensor_keys import OncePerData
from bigperf.ops.validation import FLOAT_DTYPES, check_finite_once, check_float_tensor, check_tensor, has_no_data
from bigperf.sparsity import bsr_is_valid, meta_is_valid, unpack_24, unpack_bsr

S24_OP = "bigperf.sparse24_linear"
BSR_OP = "bigperf.block_sparse_linear"

# Content checks already passed, once per data (bigperf/ops/tensor_keys.py: the same live
# tensors at the same version, address, shape and strides, so `t.data = other` is checked
# again). A verdict cached here is for the error message only: a write that no key sees
# (a numpy view) cannot make a CPU kernel read out of bounds, as the binding checks its own
# copy of the indices on every call.
_CHECKED = OncePerData()


def _check_once(tensors: tuple, check, extra=None) -> None:
    _CHECKED.get(tensors, lambda: check() or True, extra)


def _check_devices(op, x, named) -> None:
    """Every (name, tensor) on x's device; CPU tensors are told by is_cpu, several times
    cheaper than building and comparing torch.device objects."""
    if x.is_cpu:
        for name, t in named:
            if t is not None and not t.is_cpu:
                break
        else:
            return
    for name, t in named:
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: argument '{name}' is on {t.device} but 'x' is on {x.device}")


def _check_x_bias(op, x, k, n, bias, activation):
    """x, bias and activation against a weight of N = n rows and K = k columns (k None: a
    BSR weight, whose K is not recorded: check_bsr_call tests x against its blocks)."""
    check_float_tensor(op, "x", x, min_dim=1)
    if activation not in ACTIVATIONS:
        activation_code(activation, op)  # raises, naming the op
    if k is not None and x.shape[-1] != k:
        raise ValueError(f"{op}: argument 'x' has {x.shape[-1]} features in its last dimension, the weight has K = {k}")
    if bias is not None:
        check_float_tensor(op, "bias", bias, dims=1)
        if bias.shape[0] != n or (bias.is_cpu != x.is_cpu or (not x.is_cpu and bias.device != x.device)):
            raise ValueError(f"{op}: argument 'bias' must have shape [{n}] on {x.device}, got {tuple(bias.shape)}")


def validate_24(x, values, meta, scale, bias, activation):
    check_tensor(S24_OP, "values", values, dtypes=FLOAT_DTYPES + (torch.int8,), dims=2)
    check_tensor(S24_OP, "meta", meta, dtypes=(torch.uint8,), dims=2)
    n, half = values.shape
    k = 2 * half
    _check_x_bias(S24_OP, x, k, n, bias, activation)
    if k % 8 or meta.shape != (n, k // 8):
        raise ValueError(f"{S24_OP}: argument 'meta' must have shape [N, K/8] = [{n}, {k // 8}] with K % 8 == 0, "
                         f"got {tuple(meta.shape)} for values {tuple(values.shape)}")
    if (values.dtype == torch.int8) != (scale is not None):
        raise ValueError(f"{S24_OP}: argument 'scale' is required exactly when 'values' is int8")
    if scale is not None:
        check_tensor(S24_OP, "scale", scale, dtypes=(torch.float32,), dims=2)
        if tuple(scale.shape) != (n, 1):
            raise ValueError(f"{S24_OP}: argument 'scale' must have shape [{n}, 1], got {tuple(scale.shape)}")
    _check_devices(S24_OP, x, (("values", values), ("meta", meta), ("scale", scale)))
    if scale is not None:
        check_finite_once(S24_OP, "scale", scale)
    check_meta_once(S24_OP, meta, "bigperf.sparsity.pack_24")


def check_meta_once(op: str, meta, writer: str) -> None:
    """Refuse corrupt 2:4 metadata (any 2-D arrangement of the canonical bytes), checking
    each tensor version once; `writer` is the function that should have written it."""
    if not has_no_data(meta):
        def check():
            if not meta_is_valid(meta):
                raise ValueError(f"{op}: argument 'meta' is corrupt: a group's kept positions are not two "
                                 f"distinct ascending indices (was it written by {writer}?)")
        _check_once((meta,), check)


def validate_bsr(x, values, col_indices, row_ptr, bias, activation):
    check_tensor(BSR_OP, "values", values, dtypes=FLOAT_DTYPES, dims=3)
    nnz, bn, bk = values.shape
    check_bsr_call(BSR_OP, x, values, col_indices, row_ptr, nnz, bn, bk, bias, activation)


def check_bsr_call(op: str, x, values, col_indices, row_ptr, nnz: int, bn: int, bk: int, bias, activation) -> None:
    """The checks of a BSR call once `values` (any layout) is known to hold nnz (bn, bk) blocks:
    index tensors, x, bias, devices, then the index content, checked once per tensor version
    (the layouts share their index tensors, so they share that verdict too)."""
    check_tensor(op, "col_indices", col_indices, dtypes=(torch.int32,), dims=1)
    check_tensor(op, "row_ptr", row_ptr, dtypes=(torch.int32,), dims=1)
    n = (row_ptr.shape[0] - 1) * bn
    _check_x_bias(op, x, None, n, bias, activation)
    # A BSR weight does not record K: the call takes it from x, which must hold whole
    # blocks and (checked with the index content below) reach the weight's last block column.
    k = x.shape[-1]
    if row_ptr.shape[0] < 2:
        raise ValueError(f"{op}: argument 'row_ptr' needs N/bn + 1 >= 2 entries, got {row_ptr.shape[0]}")
    if k % bk:
        raise ValueError(f"{op}: argument 'x' has {k} features in its last dimension, not a multiple of the "
                         f"weight's block width {bk}")
    _check_devices(op, x, (("values", values), ("col_indices", col_indices), ("row_ptr", row_ptr)))
    if col_indices.shape[0] != nnz:
        raise ValueError(f"{op}: argument 'col_indices' has {col_indices.shape[0]} entries for {nnz} blocks")
    if not has_no_data(row_ptr):
        def check():
            last_column = int(col_indices.max()) if nnz else -1
            if last_column >= k // bk:
                raise ValueError(f"{op}: argument 'x' has {k} features in its last dimension, but the weight has "
                                 f"blocks up to K = {(last_column + 1) * bk} (block column {last_column}, width "
                                 f"{bk}): 'x' does not fit this weight, or 'col_indices' is corrupt")
            problem = bsr_is_valid(col_indices, row_ptr, nnz, k // bk)
            if problem:
                raise ValueError(f"{op}: arguments 'col_indices'/'row_ptr' are corrupt: {problem}")
        _check_once((col_indices, row_ptr), check, extra=(nnz, k // bk))


def _finish(y, x, bias, activation, n):
    if bias is not None:
        y = y + bias.float()
    return reference_activation(y, activation).to(x.dtype).reshape(*x.shape[:-1], n)


# ----------------------------------------------------------------------------- 2:4

def _sparse24_signature(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor | None,
                        bias: torch.Tensor | None, activation: str) -> torch.Tensor: ...


SPARSE24 = define_op(S24_OP, _sparse24_signature, validate_24,
                     lambda x, values, *rest: (*x.shape[:-1], values.shape[0]))
S24_BACKENDS = SPARSE24.backends
register_frozen_weight_autograd(SPARSE24, sparse24.dense_weight, bias_at=4, activation_at=5)
sparse24_linear_op = SPARSE24.torch_op


def sparse24_linear(x, values, meta, scale=None, bias=None, activation="none"):
    """act(x @ W^T + bias) with W in the 2:4 compressed format."""
    return SPARSE24(x, values, meta, scale, bias, activation)


def sparse24_reference(x, values, meta, scale, bias, activation):
    w = unpack_24(values, meta, scale, torch.float32)
    return _finish(as_rows(x, w.shape[1]).float() @ w.t(), x, bias, activation, w.shape[0])


sparse24.register_paths(S24_BACKENDS)
S24_BACKENDS.register("reference", lambda *args: None, sparse24_reference)


# ----------------------------------------------------------------------------- block sparse

def _bsr_signature(x: torch.Tensor, values: torch.Tensor, col_indices: torch.Tensor, row_ptr: torch.Tensor,
                   bias: torch.Tensor | None, activation: str) -> torch.Tensor: ...


BLOCK_SPARSE = define_op(BSR_OP, _bsr_signature, validate_bsr,
                         lambda x, values, col_indices, row_ptr, *rest: (*x.shape[:-1],
                                                                          (row_ptr.shape[0] - 1) * values.shape[1]))
BSR_BACKENDS = BLOCK_SPARSE.backends
register_frozen_weight_autograd(BLOCK_SPARSE, bsr.dense_weight, bias_at=4, activation_at=5)
block_sparse_linear_op = BLOCK_SPARSE.torch_op


def block_sparse_linear(x, values, col_indices, row_ptr, bias=None, activation="none"):
    """act(x @ W^T + bias) with W in BSR form; only the stored blocks are read."""
    return BLOCK_SPARSE(x, values, col_indices, row_ptr, bias, activation)


def block_sparse_reference(x, values, col_indices, row_ptr, bias, activation):
    k = x.shape[-1]
    w = unpack_bsr(values.float(), col_indices, row_ptr, k)
    return _finish(as_rows(x, k).float() @ w.t(), x, bias, activation, w.shape[0])


bsr.register_paths(BSR_BACKENDS)
BSR_BACKENDS.register("reference", lambda *args: None, block_sparse_reference)
