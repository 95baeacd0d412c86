"""bigperf.distributed.save: a sharded model written as the unsharded checkpoint one process
can bigperf.load. Every rank calls it (a collective); rank 0 gathers each sharded layer's
packed tensors, puts them back together by its weight format's unshard rules
(bigperf/formats/<format>.py: unshard_columns / unshard_rows) into a layer of the full size,
and writes the model with those layers in place, then puts its own shards back."""

from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist
from torch import nn

from bigperf.distributed.layers import layer_kind
from bigperf.nn import Int8Linear
from bigperf.serialize import check_save_path
from bigperf.serialize import save as save_unsharded

WHERE = "bigperf.distributed.save"


def _full_layer(module: nn.Module, shards: list[tuple]) -> nn.Module:
    """The unsharded layer of `module`'s shards (every rank's (tensors, bias), in rank order)."""
    info = module.tensor_parallel
    kind = layer_kind(module)
    tensors, biases = [s[0] for s in shards], [s[1] for s in shards]
    if info.style == "colwise":
        whole, bias = kind.format.unshard_columns(tensors, biases)
        activation = getattr(module, "activation", "none")
    else:
        extra = {"group_size": module.group_size} if isinstance(module, Int8Linear) else {}
        whole, bias = kind.format.unshard_rows(tensors, biases, info.in_features, **extra)
        activation = info.activation
    full = kind.empty(module, info.in_features, info.out_features, bias is not None, activation)
    state = {name: t for name, t in zip(kind.buffers, whole) if t is not None}
    if bias is not None:
        state["bias"] = bias
    if "_extra_state" in full.state_dict():
        state["_extra_state"] = full.get_extra_state()
    full.load_state_dict(state, strict=True)
    return full


def save(model: nn.Module, path: str | os.PathLike) -> Path | None:
    """Write `model`, sharded by bigperf.distributed.parallelize, as the unsharded checkpoint
    that bigperf.load reads in one process (safetensors + manifest, as bigperf.save). Call it
    on every rank of the mesh; rank 0 of each layer's group writes, holding the whole model
    while it does. Returns the folder on the writing rank, None elsewhere."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{WHERE}: argument 'model' must be an nn.Module, got {type(model).__name__}")
    check_save_path(path)
    sharded = [(name, m) for name, m in model.named_modules() if "tensor_parallel" in m.__dict__]
    if not sharded:
        raise ValueError(f"{WHERE}: the model has no layer sharded by bigperf.distributed.parallelize; "
                         f"use bigperf.save")
    writer = all(m.tensor_parallel.rank == 0 for _, m in sharded)
    full_layers = []
    for name, module in sharded:  # every rank takes part in every gather, in the same order
        info = module.tensor_parallel
        state = module.state_dict()
        kind = layer_kind(module)
        mine = (tuple(state.get(n) for n in kind.buffers), state.get("bias"))
        shards = [None] * info.world if info.rank == 0 else None
        dist.gather_object(mine, shards, dst=dist.get_global_rank(info.group, 0), group=info.group)
        if writer:
            full_layers.append((module, _full_layer(module, shards)))
    if not writer:
        return None
    held = [(module, dict(module.__dict__)) for module, _ in full_layers]
    try:
        for module, full in full_layers:  # the full layers stand in for the shards while saving
            record = module.__dict__.get("swap_record")
            module.__dict__.clear()
            module.__dict__.update(full.__dict__)
            if record is not None:
                module.__dict__["swap_record"] = record
        return save_unsharded(model, path)
    finally:
        for module, own in held:
            module.__dict__.clear()
            module.__dict__.update(own)
