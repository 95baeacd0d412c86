"""One layer's tensor-parallel shard: the layer's canonical packed tensors (its state_dict),
cut by its weight format's shard rule (bigperf/formats/<format>.py: shard_columns /
shard_rows), loaded into a fresh layer of the shard's size through the layer's own
constructor and load path (which re-derives the kernel layout it holds: CPU lanes, the CUDA
W8A16 tiles), then moved into the original module object (`transplant`), so references to
the layer, its hooks and torch's parallelize_module (which shards modules in place) all see
the shard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from bigperf.distributed.all_reduce import TensorParallel
from bigperf.formats import bsr, dense, int8_rowmajor, sparse24
from bigperf.nn import FusedLinear, Int8Linear, SparseLinear

SHARDABLE = (nn.Linear, FusedLinear, Int8Linear, SparseLinear)


@dataclass(frozen=True)
class LayerKind:
    format: object  # the bigperf/formats module whose shard rules cut the tensors
    buffers: tuple[str, ...]  # the canonical tensors' state_dict names, in the format's order
    empty: Callable  # (layer, in_features, out_features, bias, activation) -> an empty layer like `layer`
    shard_dims: Callable  # (layer, style) -> the format's shard_dims for this layer (bigperf/distributed/state.py)


def _empty_linear(layer, in_features, out_features, bias, activation):
    return nn.Linear(in_features, out_features, bias, dtype=layer.weight.dtype, device=layer.weight.device)


def _empty_fused(layer, in_features, out_features, bias, activation):
    return FusedLinear(in_features, out_features, bias, activation=activation, weight_dtype=layer.weight.dtype,
                       device=layer.weight.device)


def _device(layer: nn.Module) -> torch.device:
    return next(t for t in list(layer.buffers()) + list(layer.parameters())).device


def _empty_int8(layer, in_features, out_features, bias, activation):
    return Int8Linear(in_features, out_features, bias, weight_only=layer.weight_only, group_size=layer.group_size,
                      symmetric=layer.symmetric, activation=activation, device=_device(layer), act_bits=layer.act_bits)


def _empty_sparse(layer, in_features, out_features, bias, activation):
    values = layer._held()[0]
    values_dtype = torch.bfloat16 if layer.int8 else values.dtype  # int8 2:4 values ignore values_dtype
    return SparseLinear(in_features, out_features, bias, pattern=layer.pattern, block=layer.block or (16, 16),
                        int8=layer.int8, values_dtype=values_dtype, activation=activation, device=values.device)


def _dims(fmt):
    return lambda layer, style: fmt.shard_dims(style)


def _int8_dims(layer, style):
    return int8_rowmajor.shard_dims(style, per_channel=layer.group_size is None)


def layer_kind(layer: nn.Module) -> LayerKind:
    if isinstance(layer, FusedLinear):
        return LayerKind(dense, dense.BUFFERS, _empty_fused, _dims(dense))
    if isinstance(layer, Int8Linear):
        return LayerKind(int8_rowmajor, int8_rowmajor.BUFFERS, _empty_int8, _int8_dims)
    if isinstance(layer, SparseLinear):
        fmt = sparse24 if layer.pattern == "2:4" else bsr
        return LayerKind(fmt, fmt.BUFFERS, _empty_sparse, _dims(fmt))
    if isinstance(layer, nn.Linear):
        return LayerKind(dense, dense.BUFFERS, _empty_linear, _dims(dense))
    raise TypeError(f"bigperf.distributed: cannot shard a {type(layer).__name__}; shardable layers are "
                    f"{', '.join(t.__name__ for t in SHARDABLE)}")


def shard_layer(layer: nn.Module, style: str, mesh: DeviceMesh,
                src_rank: int | None = None) -> tuple[nn.Module, TensorParallel]:
    """A new layer holding this rank's `style` shard of `layer` (which is not changed) over the
    1-D `mesh`, and what to attach to it (`transplant`). Raises the format's ValueError when it
    cannot take the split. With `src_rank` (torch's src_data_rank: a rank of the mesh), every
    rank cuts that rank's copy of the layer (broadcast), not its own."""
    rank, world, group = mesh.get_local_rank(), mesh.size(), mesh.get_group()
    kind = layer_kind(layer)
    state = layer.state_dict()  # the canonical packed form, whatever layout the layer holds
    tensors, bias = tuple(state.get(name) for name in kind.buffers), state.get("bias")
    if src_rank is not None and world > 1 and not any(t is not None and t.is_meta for t in (*tensors, bias)):
        *tensors, bias = _from_rank(src_rank, (*tensors, bias), group)
    n, k = layer.out_features, layer.in_features
    activation = getattr(layer, "activation", "none")
    if style == "colwise":
        tensors, bias = kind.format.shard_columns(tuple(tensors), bias, rank, world)
        local_in, local_out, local_activation, after = k, n // world, activation, "none"
    else:  # the partial sums are reduced first: the activation runs after the all-reduce
        tensors, bias = kind.format.shard_rows(tuple(tensors), bias, k, rank, world)
        local_in, local_out, local_activation, after = k // world, n, "none", activation
    new = kind.empty(layer, local_in, local_out, bias is not None, local_activation)
    shard = {name: t for name, t in zip(kind.buffers, tensors) if t is not None}
    if bias is not None:
        shard["bias"] = bias
    if "_extra_state" in state:
        shard["_extra_state"] = new.get_extra_state()
    with torch.no_grad():
        new.load_state_dict(shard, strict=True)
    if getattr(layer, "keeps_float_copy", False):  # the opt-in fp32 copy (not in the state_dict), of the shard
        new.keep_float_copy()
    for name, param in layer.named_parameters(recurse=False):
        if name in new._parameters and new._parameters[name] is not None:
            new._parameters[name].requires_grad_(param.requires_grad)
    return new, TensorParallel(style, rank, world, group, k, n, after, mesh=mesh)


def _from_rank(src_rank: int, tensors: tuple, group) -> list:
    """Rank `src_rank`'s `tensors` (None stays None) on every rank of `group`: shapes first
    (a BSR layer's block count is data), then each tensor, into fresh memory (the layer's own
    tensors stay as they are until the shard is whole)."""
    source = dist.get_global_rank(group, src_rank)
    meta = [[None if t is None else (tuple(t.shape), t.dtype) for t in tensors]]
    dist.broadcast_object_list(meta, src=source, group=group)
    device = next(t.device for t in tensors if t is not None)
    received = []
    for t, wanted in zip(tensors, meta[0]):
        if wanted is None:
            received.append(None)
            continue
        mine = t is not None and (tuple(t.shape), t.dtype) == wanted
        buffer = t.detach().clone(memory_format=torch.contiguous_format) if mine else \
            torch.empty(wanted[0], dtype=wanted[1], device=device)
        dist.broadcast(buffer, src=source, group=group)
        received.append(buffer)
    return received


# Module attributes a transplant keeps from the original: its hooks and its training flag.
_KEPT = ("training", "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
         "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
         "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
         "_load_state_dict_post_hooks", "_is_full_backward_hook")


def transplant(target: nn.Module, source: nn.Module, tensor_parallel: TensorParallel) -> None:
    """Make `target` (a layer of the same class) hold `source`'s shard in place: its
    parameters, buffers and attributes, keeping target's hooks, training flag and any
    attribute of its own that source lacks (swap_record, a user's); then attach
    `tensor_parallel` (the row-wise all-reduce hook) to it."""
    own = {name: target.__dict__[name] for name in _KEPT if name in target.__dict__}
    named = set(source._parameters) | set(source._buffers) | set(source._modules)
    extra = {name: value for name, value in target.__dict__.items()
             if name not in source.__dict__ and name not in named}
    target.__dict__.clear()
    target.__dict__.update(source.__dict__)
    target.__dict__.update(extra)
    target.__dict__.update(own)
    tensor_parallel.attach(target)
