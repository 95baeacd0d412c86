"""A sharded layer's state_dict in DTensor's terms, so that torch's tools see its shards.

A shard computes on its rank's plain local tensors. Its state_dict gives each canonical
tensor of its weight format as a DTensor, placed as the format's shard rule cut it
(bigperf/formats/<format>.py: shard_dims): Shard(d) of the unsharded tensor, or Replicate
where every rank holds it whole (per-channel scales, row-wise). A column-wise bias is
Shard(0); a row-wise bias is rank 0's alone (it adds it once) and stays a plain tensor there.
torch.distributed.checkpoint then saves every rank's piece once, under the unsharded layer's
names and shapes, and loads them into a model sharded over any number of ranks the format
takes; `.full_tensor()` gives the unsharded tensor. (Plain local tensors under the unsharded
names let DCP keep one rank's piece and load it into every rank, silently.)

BSR shards keep a different number of blocks per rank, at offsets no placement describes:
their tensors are named by the rank ("values@rank1of2"), which DCP saves side by side and
loads back over the same number of ranks.

load_state_dict takes back those DTensors (redistributed first if placed otherwise) and this
rank's plain shards. bigperf's own checkpoint code cuts and joins shards itself and reads
plain shards by their own names: within `local_state_dicts()`."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard

from bigperf.distributed.layouts import contiguous_stride

_LOCAL = ContextVar("bigperf_distributed_local_state_dicts", default=False)


@contextmanager
def local_state_dicts():
    """Within it, sharded layers' state_dicts give and take plain local shards by their own names."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def attach_state_hooks(module: nn.Module) -> None:
    """Hook `module`'s state_dict and load_state_dict (replacing hooks an earlier attach
    added). The load hook runs first: the layer's own (SparseLinear's block count) then read
    the names and tensors it gives."""
    detach_state_hooks(module)
    save_id = module.register_state_dict_post_hook(_give).id
    load_id = module.register_load_state_dict_pre_hook(_take).id
    module._load_state_dict_pre_hooks.move_to_end(load_id, last=False)
    module.__dict__["_tensor_parallel_state_hook_ids"] = (save_id, load_id)


def detach_state_hooks(module: nn.Module) -> None:
    save_id, load_id = module.__dict__.pop("_tensor_parallel_state_hook_ids", (None, None))
    module._state_dict_hooks.pop(save_id, None)
    module._load_state_dict_pre_hooks.pop(load_id, None)


def _placements(module: nn.Module) -> tuple[dict[str, Placement], tuple[str, ...]]:
    """({state_dict name: placement} of the shard's tensors given as DTensors, the names
    given per rank instead (where no placement describes the format's tensors))."""
    from bigperf.distributed.layers import layer_kind  # (layers.py attaches these hooks)

    info = module.__dict__["tensor_parallel"]
    kind = layer_kind(module)
    dims = kind.shard_dims(module, info.style)
    bias = {"bias": Shard(0)} if info.style == "colwise" else {}
    if dims is None:
        return bias, kind.buffers
    return {**{name: Replicate() if dim is None else Shard(dim) for name, dim in zip(kind.buffers, dims)}, **bias}, ()


def _rank_name(name: str, info) -> str:
    return f"{name}@rank{info.rank}of{info.world}"


def _give(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    if _LOCAL.get():
        return
    info = module.__dict__["tensor_parallel"]
    placed, by_rank = _placements(module)
    for name, placement in placed.items():
        local = state_dict.get(prefix + name)
        if isinstance(local, torch.Tensor) and not isinstance(local, DTensor):
            shape = list(local.shape)
            if isinstance(placement, Shard):  # every format's shards are even (formats/_shard.py)
                shape[placement.dim] *= info.world
            shape = torch.Size(shape)
            state_dict[prefix + name] = DTensor.from_local(local, info.mesh, (placement,), run_check=False,
                                                           shape=shape, stride=contiguous_stride(shape))
    renamed = {prefix + name: prefix + _rank_name(name, info) for name in by_rank if prefix + name in state_dict}
    if renamed:  # in place and in order (the dict is the whole model's)
        items = [(renamed.get(key, key), value) for key, value in state_dict.items()]
        state_dict.clear()
        state_dict.update(items)


def _take(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    if _LOCAL.get():
        return
    info = module.__dict__["tensor_parallel"]
    placed, by_rank = _placements(module)
    for name in by_rank:
        if prefix + name in state_dict and info.world > 1:  # no cut of the unsharded blocks is known here
            raise ValueError(f"bigperf.distributed: load_state_dict of {prefix + name!r}: a BSR shard takes its "
                             f"rank's own tensors ({prefix + _rank_name(name, info)!r}, as its state_dict gives "
                             f"them); read an unsharded checkpoint with bigperf.distributed.load")
        if prefix + _rank_name(name, info) in state_dict:
            state_dict[prefix + name] = state_dict.pop(prefix + _rank_name(name, info))
    for name, placement in placed.items():
        value = state_dict.get(prefix + name)
        if isinstance(value, DTensor):
            if tuple(value.placements) != (placement,):
                value = value.redistribute(info.mesh, (placement,))
            state_dict[prefix + name] = value.to_local()
