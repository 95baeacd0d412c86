"""torch.ops.bigperf.fused_linear: y = act(x @ W^T + bias) + residual.

x and W in fp32, fp16 or bf16 (W may be of lower precision than x), fp32 accumulation,
output in x's dtype. Schema, fake (meta) implementation, autograd and the pure-PyTorch
reference; the candidate paths (cpu → bigperf._C, cuda → bigperf._C_cuda, triton →
bigperf.kernels.fused_matmul, torch → PyTorch's GEMM) are the dense format's
(bigperf/formats/dense.py).
"""

from __future__ import annotations

import torch

from bigperf.formats import dense
from bigperf.ops.activations import (
    ACTIVATIONS,
    activation_code,
    reference_activation,
    pre_activation_grad,
)
from bigperf.ops.define import define_op
from bigperf.ops.validation import FLOAT_DTYPE_SET, PLAIN_TENSORS, check_float_tensor

OP = "bigperf.fused_linear"


def validate(x, weight, bias, residual, activation) -> None:
    """Every check a backend relies on; raises naming the op and the argument."""
    # The common call (no residual, bias in shape) in one expression: every step here is paid
    # on each call, on top of the GEMM. It accepts a subset of what the checks below accept;
    # everything else, and every error, goes through them.
    if (residual is None and type(x) in PLAIN_TENSORS and type(weight) in PLAIN_TENSORS
            and x.dtype in FLOAT_DTYPE_SET and weight.dtype in FLOAT_DTYPE_SET and weight.dim() == 2 and x.dim() >= 1
            and x.shape[-1] == weight.shape[1] and activation in ACTIVATIONS and x.device == weight.device
            and (bias is None or (type(bias) in PLAIN_TENSORS and bias.dtype in FLOAT_DTYPE_SET
                                  and bias.shape == weight.shape[:1] and bias.device == x.device))):
        return
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


FUSED_LINEAR = define_op(OP, _signature, validate, lambda x, weight, *rest: (*x.shape[:-1], weight.shape[0]),
                         activations=(0, 3))  # x, residual
BACKENDS = FUSED_LINEAR.backends
fused_linear_op = FUSED_LINEAR.torch_op


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
    y = reference_activation(y, activation)
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
    g = pre_activation_grad(grad_out, x, weight, bias, ctx.activation)
    need_x, need_w, need_b, need_r, _ = ctx.needs_input_grad
    grad_x = (g @ weight.float()).to(x.dtype) if need_x else None
    grad_w = None
    if need_w:
        grad_w = (g.reshape(-1, g.shape[-1]).t() @ x.float().reshape(-1, x.shape[-1])).to(weight.dtype)
    grad_b = g.reshape(-1, g.shape[-1]).sum(0).to(bias.dtype) if (need_b and bias is not None) else None
    grad_r = grad_out if (need_r and ctx.has_residual) else None
    return grad_x, grad_w, grad_b, grad_r, None


FUSED_LINEAR.register_autograd(_backward, _setup_context)


# ----------------------------------------------------------------------------- backends


dense.register_paths(BACKENDS)
BACKENDS.register("reference", lambda *args: None, reference)

__all__ = ["ACTIVATIONS", "BACKENDS", "fused_linear", "reference", "validate"]
