"""torch.ops.bigperf.fused_linear: y = act(x @ W^T + bias) + residual.

x and W in fp32, fp16 or bf16 (W may be of lower precision than x), fp32 accumulation,
output in x's dtype. Schema, fake (meta) implementation, autograd, the pure-PyTorch
reference, and the backend table (cpu → bigperf._C, cuda → bigperf._C_cuda,
triton → bigperf.kernels.fused_matmul, reference → PyTorch).
"""

from __future__ import annotations

import torch

from bigperf import _ext
from bigperf.ops.activations import (
    ACTIVATIONS,
    activation_code,
    activation_derivative,
    apply_activation,
)
from bigperf.ops.common import as_rows, cpu_why_not, cuda_why_not, fp32_bias, triton_why_not
from bigperf.ops.define import define_op
from bigperf.ops.torch_paths import copy_rows, register_torch_paths, torch_linear
from bigperf.ops.validation import DTYPE_CODES, check_float_tensor, last_dim_contiguous

OP = "bigperf.fused_linear"


def validate(x, weight, bias, residual, activation) -> None:
    """Every check a backend relies on; raises naming the op and the argument."""
    check_float_tensor(OP, "x", x, min_dim=1)
    check_float_tensor(OP, "weight", weight, dims=2)
    activation_code(activation, OP)
    if weight.device != x.device:
        raise ValueError(f"{OP}: argument 'weight' is on {weight.device} but 'x' is on {x.device}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{OP}: argument 'x' has {x.shape[-1]} features in its last dimension but 'weight' "
            f"has shape {tuple(weight.shape)} (expected [N, {x.shape[-1]}])")
    n = weight.shape[0]
    if bias is not None:
        check_float_tensor(OP, "bias", bias, dims=1)
        if bias.shape[0] != n or bias.device != x.device:
            raise ValueError(f"{OP}: argument 'bias' must have shape [{n}] on {x.device}, "
                             f"got {tuple(bias.shape)} on {bias.device}")
    if residual is not None:
        check_float_tensor(OP, "residual", residual)
        expected = (*x.shape[:-1], n)
        if tuple(residual.shape) != expected or residual.device != x.device:
            raise ValueError(f"{OP}: argument 'residual' must have shape {expected} on {x.device}, "
                             f"got {tuple(residual.shape)} on {residual.device}")
        if residual.dtype != x.dtype:
            raise TypeError(f"{OP}: argument 'residual' must have x's dtype {x.dtype}, got {residual.dtype}")


def _signature(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
               activation: str) -> torch.Tensor: ...


FUSED_LINEAR = define_op(OP, _signature, validate, lambda x, weight, *rest: (*x.shape[:-1], weight.shape[0]))
BACKENDS = FUSED_LINEAR.backends
fused_linear_op = FUSED_LINEAR.custom_op


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
    """y = act(x @ weight^T + bias) + residual, on the best backend for x's device."""
    return FUSED_LINEAR(x, weight, bias, residual, activation)


# ----------------------------------------------------------------------------- reference

def reference(x, weight, bias, residual, activation):
    """fp32 math in PyTorch: the oracle every backend is compared with (besides fp64)."""
    y = x.float() @ weight.float().t()
    if bias is not None:
        y = y + bias.float()
    y = apply_activation(y, activation)
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


# ----------------------------------------------------------------------------- autograd

def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, activation = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.activation = activation
    ctx.has_residual = residual is not None


def _backward(ctx, grad_out):
    x, weight, bias = ctx.saved_tensors
    g = grad_out.float()
    if ctx.activation != "none":
        z = x.float() @ weight.float().t()
        if bias is not None:
            z = z + bias.float()
        g = g * activation_derivative(z, ctx.activation)
    need_x, need_w, need_b, need_r, _ = ctx.needs_input_grad
    grad_x = (g @ weight.float()).to(x.dtype) if need_x else None
    grad_w = None
    if need_w:
        grad_w = (g.reshape(-1, g.shape[-1]).t() @ x.float().reshape(-1, x.shape[-1])).to(weight.dtype)
    grad_b = g.reshape(-1, g.shape[-1]).sum(0).to(bias.dtype) if (need_b and bias is not None) else None
    grad_r = grad_out if (need_r and ctx.has_residual) else None
    return grad_x, grad_w, grad_b, grad_r, None


fused_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- backends

def _cpu_why_not(x, weight, bias, residual, activation):
    return cpu_why_not(x, "fused_linear")


def _cpu_run(x, weight, bias, residual, activation):
    """Our skinny kernel, at any M (the dispatcher hands large M to the torch paths where
    they are faster on this machine)."""
    n, k = weight.shape
    x2 = as_rows(x, k)
    m = x2.shape[0]
    w = weight if last_dim_contiguous(weight) else weight.contiguous()
    b = fp32_bias(bias)
    r = as_rows(residual, n) if residual is not None else None
    out = torch.empty((m, n), dtype=x.dtype)
    _ext.cpu_module().fused_linear(
        _ext.cpu_isa(), x2.data_ptr(), x2.stride(0), DTYPE_CODES[x.dtype],
        w.data_ptr(), w.stride(0), DTYPE_CODES[w.dtype],
        b.data_ptr() if b is not None else 0,
        r.data_ptr() if r is not None else 0, r.stride(0) if r is not None else 0,
        out.data_ptr(), n, m, n, k, ACTIVATIONS.index(activation), torch.get_num_threads())
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)


# PyTorch's GEMM in fp32 or in a half dtype the layer already has (x or the weight).
def _torch_run(dtype):
    def run(x, weight, bias, residual, activation):
        n, k = weight.shape
        if weight.dtype == dtype:
            w = weight if last_dim_contiguous(weight) else weight.contiguous()
            return torch_linear(x, n, k, dtype, whole=w, bias=bias, activation=activation, residual=residual)
        return torch_linear(x, n, k, dtype, rows=copy_rows(weight), bias=bias,
                            activation=activation, residual=residual)
    return run


def _cuda_why_not(x, weight, bias, residual, activation):
    reason = cuda_why_not(x, "fused_linear")
    if reason:
        return reason
    if x.dtype not in (torch.float16, torch.bfloat16) or weight.dtype != x.dtype:
        return f"needs fp16 or bf16 x and weight of the same dtype, got {x.dtype} and {weight.dtype}"
    if weight.shape[1] % 8:
        return f"needs K % 8 == 0 for 16-byte loads, got K = {weight.shape[1]}"
    return None


def _cuda_run(x, weight, bias, residual, activation):
    from bigperf.ops.cuda_launch import (
        launch_fused_linear,  # only imported on GPU machines
    )
    return launch_fused_linear(x, weight, fp32_bias(bias), residual, activation_code(activation, OP))


def _triton_why_not(x, weight, bias, residual, activation):
    if weight.dtype != x.dtype and x.dtype != torch.float32:
        return f"needs weight in x's dtype, or fp32 x with a lower-precision weight; got {x.dtype} x, {weight.dtype} weight"
    return triton_why_not(x, "fused_matmul")


def _triton_run(x, weight, bias, residual, activation):
    from bigperf.kernels.fused_matmul import fused_linear as triton_fused_linear
    k, n = weight.shape[1], weight.shape[0]
    r = residual.reshape(-1, n) if residual is not None else None
    out = triton_fused_linear(x.reshape(-1, k), weight, fp32_bias(bias), r, activation)
    return out.reshape(*x.shape[:-1], n)


BACKENDS.register("cpu", _cpu_why_not, _cpu_run)
BACKENDS.register("cuda", _cuda_why_not, _cuda_run)
BACKENDS.register("triton", _triton_why_not, _triton_run)
register_torch_paths(BACKENDS, _torch_run)
BACKENDS.register("reference", lambda *args: None, reference)

__all__ = ["ACTIVATIONS", "BACKENDS", "fused_linear", "reference", "validate"]
