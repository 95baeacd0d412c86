"""Shared by the layers that hold their weight in one of several layouts (Int8Linear,
SparseLinear): swapping one set of buffers for another, so only one copy is ever held."""

from __future__ import annotations

import torch
from torch import nn


def replace_buffers(module: nn.Module, old: tuple[str, ...], new: dict[str, torch.Tensor | None],
                    persistent: bool = True) -> None:
    """Drop the buffers named `old`, then register `new` (a None value stays a plain None
    attribute). Dropped names are deleted as buffers, since torch.export miscounts a root
    module's None buffers (torch 2.13), and left as plain None attributes, which read at no
    cost on the forward path."""
    for name in old:
        module._buffers.pop(name, None)
        module.__dict__[name] = None
    for name, t in new.items():
        module.__dict__.pop(name, None)  # register_buffer refuses a plain attribute
        if t is None:
            module.__dict__[name] = None
        else:
            module.register_buffer(name, t, persistent=persistent)


def keeping_dtype(fn, tensors) -> callable:
    """`fn` of Module._apply, except that `tensors` keep their dtype: quantisation scales stay
    fp32 through .half() or .to(torch.bfloat16) (the kernels read fp32 scales, and an fp16
    round trip would lose their precision); device moves still apply to them."""
    keep = {id(t) for t in tensors if t is not None}

    def apply(t):
        out = fn(t)
        if id(t) in keep and out.dtype != t.dtype:
            return t.to(out.device)
        return out
    return apply
