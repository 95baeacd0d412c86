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
