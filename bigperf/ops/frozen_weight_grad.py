"""Gradients through the ops whose weight is frozen packed data: int8 codes and scales, 2:4
values and metadata, BSR blocks, and their kernel layouts.

They flow to x and to the bias, which is what fine-tuning around a quantised or pruned
model needs (adapters such as LoRA beside a swapped layer, earlier layers, prompts) and
what gradients with respect to the input need. The packed weight itself gets none: its
codes are integers or a sparsity pattern, and a packed tensor that asks for a gradient is
refused by name in the forward rather than left without one.

W8A8 quantises x per token in its forward; its backward passes the gradient straight
through that rounding, as quantisation-aware training does (the straight-through
estimator): d y / d x is taken as the dequantised weight's.

The backward materialises the weight in fp32 once per call (the format's dense_weight), so
a backward holds one layer's N x K x 4 bytes at a time.
"""

from __future__ import annotations

from typing import Callable

import torch

from bigperf.ops.activations import pre_activation_grad


def register_frozen_weight_autograd(op, dense_weight: Callable[..., torch.Tensor], bias_at: int,
                                    activation_at: int) -> None:
    """Gradients for `op` (an OpDefinition whose first argument is x) with respect to x and
    its bias argument (at `bias_at`); `dense_weight(*args)` is the weight the op multiplies
    by, in fp32 [N, K], for the op's arguments; the activation name is at `activation_at`."""

    def setup_context(ctx, inputs, output):
        frozen = [i for i, a in enumerate(inputs)
                  if isinstance(a, torch.Tensor) and i not in (0, bias_at) and a.requires_grad]
        if frozen:
            raise ValueError(f"{op.name}: argument {frozen[0]} asks for a gradient, but the packed weight is "
                             f"frozen: gradients flow to x and the bias only (bigperf/ops/frozen_weight_grad.py)")
        tensor_at = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
        ctx.save_for_backward(*[inputs[i] for i in tensor_at])
        ctx.tensor_at = tensor_at
        ctx.others = [None if isinstance(a, torch.Tensor) else a for a in inputs]

    def backward(ctx, grad):
        args = list(ctx.others)
        for i, t in zip(ctx.tensor_at, ctx.saved_tensors):
            args[i] = t
        x, bias, activation = args[0], args[bias_at], args[activation_at]
        weight = dense_weight(*args)
        n, k = weight.shape
        g = pre_activation_grad(grad.reshape(-1, n), x.reshape(-1, k), weight, bias, activation)
        grads = [None] * len(args)
        if ctx.needs_input_grad[0]:
            grads[0] = (g @ weight).to(x.dtype).reshape(x.shape)
        if bias is not None and ctx.needs_input_grad[bias_at]:
            grads[bias_at] = g.sum(0).to(bias.dtype)
        return tuple(grads)

    op.register_autograd(backward, setup_context)
