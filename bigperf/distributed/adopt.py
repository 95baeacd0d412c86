"""Swapping a layer that torch's own parallelize_module already sharded (shard first with
torch's ColwiseParallel / RowwiseParallel, swap after).

torch's styles turn an nn.Linear's weight and bias into DTensor parameters (Shard(0) column-
wise, Shard(1) row-wise, on a 1-D mesh) and hook its input and output onto DTensor. bigperf
swaps such a layer into the shard that swapping first and sharding after gives: the full
weight is gathered for this one layer (an all-gather; no rank ever holds more than one full
layer), swapped whole by the config, then cut by its weight format's shard rules
(layers.shard_layer), so every rank holds what bigperf.distributed.parallelize would give and
the model computes what the unsharded swapped model computes. The style's layouts are read
from torch's hooks on the layer (style_hooks), so the shard moves activations as
bigperf.distributed's styles do; a layer whose hooks are not torch's is kept.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import nn

from bigperf.errors import LayerRefused

WHERE = "bigperf.swap"


def is_dtensor(t) -> bool:
    """Without importing torch.distributed.tensor (seconds): no DTensor exists before it is."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (what this rank holds), else t itself."""
    return t.to_local() if is_dtensor(t) else t


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


@dataclass(frozen=True)
class TorchStyleHooks:
    """What torch's ColwiseParallel / RowwiseParallel put on a layer: its two hooks' ids and
    the layouts they were made with."""
    style: str  # "colwise" or "rowwise"
    input_layouts: tuple
    output_layouts: tuple
    use_local_output: bool
    ids: frozenset[int]


def style_hooks(module: nn.Module) -> TorchStyleHooks | None:
    """The hooks torch's ColwiseParallel or RowwiseParallel registered on `module` and their
    layouts, or None if they cannot be told apart. Read from the hooks themselves (torch keeps
    no other record): distribute_module's hooks close over functools.partial objects of the
    style's static _prepare_input_fn (input_layouts, desired_input_layouts) and
    _prepare_output_fn (output_layouts, use_local_output). A subclass that replaces those
    functions is not recognised."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    functions = {}
    for style, cls in (("colwise", ColwiseParallel), ("rowwise", RowwiseParallel)):
        functions[cls._prepare_input_fn] = (style, "input")
        functions[cls._prepare_output_fn] = (style, "output")
    found = {}  # (style, "input" | "output") -> (hook id, the partial's bound arguments)
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for hook_id, hook in hooks.items():
            for cell in getattr(hook, "__closure__", None) or ():
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                if isinstance(value, partial) and value.func in functions and len(value.args) == 2:
                    found[functions[value.func]] = (hook_id, value.args)
    styles = {style for style, _ in found}
    if len(found) != 2 or len(styles) != 1:
        return None
    style = styles.pop()
    (in_id, (inputs, _desired)), (out_id, (outputs, use_local)) = found[(style, "input")], found[(style, "output")]
    return TorchStyleHooks(style, tuple(inputs), tuple(outputs), bool(use_local), frozenset((in_id, out_id)))


def sharding_hook_ids(module: nn.Module) -> frozenset[int]:
    """The ids of the hooks that shard `module`: a bigperf TensorParallel's, or those of the
    torch style that made its weight a DTensor. A swap replaces them rather than carrying them."""
    ids = set(module.__dict__.get("_tensor_parallel_hook_ids", ()))
    if is_dtensor(getattr(module, "weight", None)):
        hooks = style_hooks(module)
        if hooks is not None:
            ids |= hooks.ids
    return frozenset(ids)


def adopt(name: str, module: nn.Module, make_layer) -> tuple[nn.Module, object]:
    """(this rank's shard of make_layer(the full layer), the TensorParallel to attach: the
    layouts torch's style was given, read from its hooks, so the shard moves activations as
    bigperf.distributed's styles do; plain local tensors for the defaults, where a decode
    step then pays no DTensor cost per layer). torch's two hooks are not carried over
    (sharding_hook_ids).

    LayerRefused when the placements, the hooks or the format's shard rules refuse: a layer
    sharded some other way (a subclass of torch's styles with its own hooks) moves its
    activations in ways bigperf cannot tell, so it is kept as it is. (One whose forward is
    replaced, as transformers' tensor parallelism does, swap keeps before asking.)"""
    from bigperf.distributed.layers import shard_layer
    from bigperf.distributed.layouts import layouts_of

    style = torch_sharded_style(name, module)
    hooks = style_hooks(module)
    if hooks is None or hooks.style != style:
        raise LayerRefused(f"{WHERE}: layer {name!r} holds DTensor weights ({style}) but not the hooks torch's "
                           f"{'ColwiseParallel' if style == 'colwise' else 'RowwiseParallel'} puts on a layer "
                           f"(another library's, or changed): bigperf cannot tell how its activations move, so it "
                           f"keeps the layer")
    mesh = module.weight.device_mesh
    try:
        layouts = layouts_of(hooks.input_layouts, hooks.output_layouts, hooks.use_local_output, style, mesh, WHERE)
    except ValueError as error:
        raise LayerRefused(f"{WHERE}: layer {name!r}: {error}") from None
    whole = make_layer(full_linear(module))
    try:
        shard, tensor_parallel = shard_layer(whole, style, mesh)
    except ValueError as error:
        raise LayerRefused(f"{WHERE}: layer {name!r} ({style}, sharded by torch): {error}") from None
    return shard, replace(tensor_parallel, layouts=layouts)
