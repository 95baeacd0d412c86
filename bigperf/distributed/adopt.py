"""Swapping a layer that torch's own parallelize_module already sharded (shard first with
torch's ColwiseParallel / RowwiseParallel, swap after).

torch's styles turn an nn.Linear's weight and bias into DTensor parameters (Shard(0) column-
wise, Shard(1) row-wise, on a 1-D mesh) and hook its input and output onto DTensor. bigperf
swaps such a layer into the shard that swapping first and sharding after gives: the full
weight is gathered for this one layer (an all-gather; no rank ever holds more than one full
layer), swapped whole by the config, then cut by its weight format's shard rules
(layers.shard_layer), so every rank holds what bigperf.distributed.parallelize would give and
the model computes what the unsharded swapped model computes. torch's hooks move to the new
layer and keep doing their part (DTensor inputs in, the plan's output layouts out); the
shard hands its output to them as a DTensor (TensorParallel.dtensor_mesh).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch
from torch import nn

from bigperf.errors import LayerRefused

WHERE = "bigperf.swap"
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


def is_dtensor(t) -> bool:
    """Without importing torch.distributed.tensor (seconds): no DTensor exists before it is."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def torch_sharded_style(name: str, module: nn.Module) -> str:
    """"colwise" or "rowwise" for an nn.Linear torch's styles sharded; LayerRefused (swap
    keeps the layer) naming it for any other DTensor placement."""
    from torch.distributed.tensor import Replicate, Shard

    weight, bias = module.weight, getattr(module, "bias", None)
    mesh = weight.device_mesh
    if mesh.ndim != 1:
        raise LayerRefused(f"{WHERE}: layer {name!r} is sharded over a {mesh.ndim}-D mesh; bigperf swaps layers "
                         f"sharded over one dimension (torch's ColwiseParallel / RowwiseParallel on mesh['tp'])")
    placements = tuple(weight.placements)
    style = {(Shard(0),): "colwise", (Shard(1),): "rowwise"}.get(placements)
    expected_bias = {"colwise": (Shard(0),), "rowwise": (Replicate(),)}.get(style)
    if style is None or (bias is not None and (not is_dtensor(bias) or tuple(bias.placements) != expected_bias)):
        got = placements if style is None else f"bias {getattr(bias, 'placements', 'a plain tensor')}"
        raise LayerRefused(f"{WHERE}: layer {name!r} holds a DTensor weight placed {got}; bigperf swaps the "
                         f"shards of torch's ColwiseParallel (weight and bias Shard(0)) and RowwiseParallel "
                         f"(weight Shard(1), bias Replicate())")
    if type(module) is not nn.Linear:
        raise LayerRefused(f"{WHERE}: layer {name!r} ({type(module).__name__}) holds DTensor weights; bigperf swaps "
                         f"nn.Linear layers sharded by torch's styles")
    return style


def full_linear(module: nn.Module) -> nn.Linear:
    """The unsharded layer, gathered from the ranks (this layer only)."""
    weight = module.weight.detach().full_tensor()
    bias = module.bias.detach().full_tensor() if module.bias is not None else None
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                       dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def adopt(name: str, module: nn.Module, make_layer) -> tuple[nn.Module, object]:
    """(this rank's shard of make_layer(the full layer), the TensorParallel to attach).
    LayerRefused when the layer's placements or the format's shard rules refuse the split."""
    from bigperf.distributed.layers import shard_layer

    style = torch_sharded_style(name, module)
    mesh = module.weight.device_mesh
    whole = make_layer(full_linear(module))
    try:
        shard, tensor_parallel = shard_layer(whole, style, mesh.get_local_rank(), mesh.size(), mesh.get_group())
    except ValueError as error:
        raise LayerRefused(f"{WHERE}: layer {name!r} ({style}, sharded by torch): {error}") from None
    return shard, replace(tensor_parallel, dtensor_mesh=mesh)


def move_torch_hooks(old: nn.Module, new: nn.Module) -> None:
    """new takes old's forward hooks (torch's DTensor input and output hooks among them), in
    their order and under their ids."""
    for attribute in _HOOK_DICTS:
        getattr(new, attribute).update(getattr(old, attribute))
