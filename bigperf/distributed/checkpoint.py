"""Checkpoints of sharded models.

bigperf.distributed.load: a whole-model checkpoint read into a freshly built model sharded
by a plan, one layer at a time: each rank cuts every sharded layer with the format's shard
rules and keeps only its shard, then bigperf.load's own checks and swaps take over.

bigperf.distributed.save: every rank calls it (a collective); rank 0 gathers each sharded
layer's packed tensors, puts them back together by its weight format's unshard rules
(bigperf/formats/<format>.py: unshard_columns / unshard_rows) into a layer of the full size,
and writes the model with those layers in place, then puts its own shards back."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn

from bigperf.configs import config_from_dict
from bigperf.distributed.all_reduce import TensorParallel
from bigperf.distributed.empty import mesh_device
from bigperf.distributed.layers import layer_kind, shard_layer
from bigperf.distributed.plan import match_plan, parallelize
from bigperf.distributed.state import local_state_dicts
from bigperf.nn import Int8Linear
from bigperf.serialize import TENSORS, check_save_path, load_planned, refuse_unsaved_meta
from bigperf.serialize import _check_manifest as check_manifest
from bigperf.serialize import _plan_from_manifest as plan_from_manifest
from bigperf.serialize import _read_manifest as read_manifest
from bigperf.serialize import save as save_unsharded

WHERE = "bigperf.distributed.save"
LOAD = "bigperf.distributed.load"


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
        with local_state_dicts():
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


def _sharded_checkpoint(manifest: dict, tensor_file: Path, chosen: dict, mesh,
                        device: torch.device) -> tuple[dict, dict]:
    """(manifest, tensors) of this rank: the checkpoint with every layer the plan shards cut
    to the rank's shard, read and cut one layer at a time on `device`."""
    manifest = copy.deepcopy(manifest)
    entries = {entry["name"]: entry for entry in manifest["layers"]}
    owned = {name: name + "." for name in chosen}

    def owner(key: str) -> str | None:
        return next((name for name, prefix in owned.items() if key.startswith(prefix)), None)

    tied = [alias for alias, target in manifest["aliases"].items() if owner(alias) or owner(target)]
    if tied:
        raise ValueError(f"{LOAD}: tensors {tied[:3]} of a sharded layer are tied to others; tied weights are "
                         f"not sharded")
    tensors = {}
    with safe_open(str(tensor_file), framework="pt") as f:
        names = set(f.keys())
        if names != set(manifest["tensors"]):
            raise ValueError(f"{LOAD}: {tensor_file} does not hold the tensors its manifest lists")
        for key in names:
            if owner(key) is None:
                tensors[key] = f.get_tensor(key)
        for name, (style, module, _) in chosen.items():
            prefix = owned[name]
            state = {key[len(prefix):]: f.get_tensor(key) for key in names if key.startswith(prefix)}
            extra_key = prefix + "_extra_state"
            if extra_key in manifest["extra_states"]:
                state["_extra_state"] = manifest["extra_states"][extra_key]
            entry = entries.get(name)
            if entry is not None:  # a swapped layer: its config builds it, full size, for this layer only
                config = config_from_dict(entry["config"], f"{LOAD}: layer {name!r}")
                full = config.empty_layer(entry["in_features"], entry["out_features"], entry["bias"],
                                          entry["activation"], device)
            else:  # a linear saved as it was
                weight = state.get("weight")
                if weight is None or weight.dim() != 2:
                    raise ValueError(f"{LOAD}: the checkpoint holds no [N, K] weight for {name!r}")
                full = nn.Linear(weight.shape[1], weight.shape[0], "bias" in state, dtype=weight.dtype,
                                 device=device)
            try:
                full.load_state_dict(state, strict=True)
                shard, _ = shard_layer(full, style, mesh)
            except (RuntimeError, ValueError) as error:
                raise ValueError(f"{LOAD}: layer {name!r} ({style}): {error}") from None
            for key in [k for k in manifest["tensors"] if k.startswith(prefix)]:
                del manifest["tensors"][key]
            for key, value in shard.state_dict().items():
                if isinstance(value, torch.Tensor):
                    tensors[prefix + key] = value
                    manifest["tensors"][prefix + key] = {"shape": list(value.shape),
                                                         "dtype": str(value.dtype).replace("torch.", "")}
                else:  # a row-wise shard's activation runs after the sum, not in the layer
                    manifest["extra_states"][prefix + key] = value
            if entry is not None:
                entry["in_features"], entry["out_features"] = shard.in_features, shard.out_features
                entry["bias"] = shard.bias is not None
            del full, shard  # one layer's full tensors at a time
    return manifest, tensors


def load(model: nn.Module, path: str | os.PathLike, mesh, plan: dict) -> nn.Module:
    """Load a whole-model checkpoint (bigperf.save, or bigperf.distributed.save) into a
    freshly built `model`, sharded by `plan` as bigperf.distributed.parallelize would: each
    rank reads the checkpoint one layer at a time and keeps only its shard of every layer the
    plan shards. Swaps the model as the saved one was; in place, returns the model. Every rank
    calls it. A refused load leaves the model as it was.

    Build `model` under bigperf.distributed.meta_parameters() and no rank ever holds the full
    model: it is sharded on meta and each of its tensors takes the rank's tensor read from the
    checkpoint; the largest transient is one layer read whole before it is cut."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{LOAD}: argument 'model' must be an nn.Module, got {type(model).__name__}")
    chosen = match_plan(model, mesh, plan, LOAD)  # (checks the mesh too)
    refuse_unsaved_meta(model, LOAD)
    directory = Path(path)
    manifest, tensors = _sharded_checkpoint(read_manifest(directory), directory / TENSORS, chosen, mesh,
                                            mesh_device(mesh))
    held = [(module, dict(module.__dict__)) for _, module, _ in chosen.values()]
    try:
        parallelize(model, mesh, plan)  # the fresh model's linears become shards the checkpoint's fit
        check_manifest(manifest)
        planned = plan_from_manifest(model, manifest["layers"])
        with local_state_dicts():  # the checkpoint holds this rank's plain shards
            return load_planned(model, manifest, planned, tensors)
    except BaseException:
        for module, own in held:  # as it was: attributes, and the hooks parallelize added
            TensorParallel.detach(module)
            module.__dict__.clear()
            module.__dict__.update(own)
        raise
