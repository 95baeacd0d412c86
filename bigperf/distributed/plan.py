"""bigperf.distributed.parallelize: tensor parallelism for bigperf layers and nn.Linear,
planned whole before any module changes (like bigperf.swap)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import NamedTuple

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel as TorchColwise
from torch.distributed.tensor.parallel import RowwiseParallel as TorchRowwise

from bigperf.distributed.adopt import is_dtensor
from bigperf.distributed.layers import SHARDABLE, layer_kind, shard_layer, transplant
from bigperf.distributed.layouts import Layouts, style_layouts
from bigperf.formats._shard import STYLES

WHERE = "bigperf.distributed.parallelize"


def style_name(style, where: str = WHERE, key: str | None = None) -> str:
    """"colwise" or "rowwise" for a plan value: that string, or torch's ColwiseParallel() /
    RowwiseParallel() (and bigperf's subclasses), whose layouts layouts.style_layouts reads."""
    entry = f" for {key!r}" if key is not None else ""
    if isinstance(style, str):
        if style not in STYLES:
            raise ValueError(f"{where}: plan value{entry} must be one of {STYLES} or torch's ColwiseParallel() / "
                             f"RowwiseParallel(), got {style!r}")
        return style
    name = "colwise" if isinstance(style, TorchColwise) else "rowwise" if isinstance(style, TorchRowwise) else None
    if name is None:
        raise TypeError(f"{where}: plan value{entry} must be one of {STYLES} or torch's ColwiseParallel() / "
                        f"RowwiseParallel(), got {type(style).__name__}")
    return name


def check_mesh(mesh, where: str = WHERE) -> None:
    """`mesh` is a 1-D device mesh (what the shard rules split over)."""
    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"{where}: argument 'mesh' must be a torch.distributed DeviceMesh "
                        f"(init_device_mesh('cpu', (world,))), got {type(mesh).__name__}")
    if mesh.ndim != 1:
        raise ValueError(f"{where}: argument 'mesh' must be 1-D (tensor parallelism over one dimension), "
                         f"got {mesh.ndim} dimensions; pass mesh['tp'] of a larger mesh")


def check_layer(name: str, module: nn.Module, mesh: DeviceMesh, where: str = WHERE) -> None:
    """A layer this mesh can shard: one of SHARDABLE, on the mesh's device type (or on meta,
    an empty model for bigperf.distributed.load), not sharded yet."""
    if not isinstance(module, SHARDABLE):
        raise TypeError(f"{where}: plan entry matches {name!r} ({type(module).__name__}); shardable layers are "
                        f"{', '.join(t.__name__ for t in SHARDABLE)}")
    layer_kind(module)
    if "tensor_parallel" in module.__dict__:
        raise ValueError(f"{where}: layer {name!r} is already sharded ({module.tensor_parallel.style})")
    tensors = list(module.parameters()) + list(module.buffers())
    if any(is_dtensor(t) for t in tensors):
        raise ValueError(f"{where}: layer {name!r} is already sharded by torch's parallelize_module (its "
                         f"weight is a DTensor); bigperf.swap takes it as it is, or shard the unsharded model")
    device = tensors[0].device
    if device.type not in (mesh.device_type, "meta"):  # meta: built empty, for bigperf.distributed.load
        raise ValueError(f"{where}: layer {name!r} is on {device}, the mesh on {mesh.device_type}")


class Choice(NamedTuple):
    style: str  # "colwise" or "rowwise"
    module: nn.Module
    layouts: Layouts | None  # the plan's layouts, if not torch's defaults (layouts.py)


def _compile_plan(plan, where: str) -> list[tuple[re.Pattern, str, object]]:
    if not isinstance(plan, dict) or not plan:
        raise TypeError(f"{where}: argument 'plan' must be a non-empty {{fqn regex: 'colwise' | 'rowwise' | "
                        f"ColwiseParallel() | RowwiseParallel()}} dict, got {plan!r}")
    compiled = []
    for key, style in plan.items():
        try:
            pattern = re.compile(key)
        except (re.error, TypeError) as error:
            raise ValueError(f"{where}: argument 'plan' has a bad regex {key!r}: {error}") from None
        style_name(style, where, key)
        compiled.append((pattern, key, style))
    return compiled


def match_plan(model: nn.Module, mesh: DeviceMesh, plan: dict, where: str = WHERE) -> dict[str, Choice]:
    """{module name: Choice} for every module a plan entry matches (the first entry that
    fully matches its name), each checked by check_layer; an entry that matches nothing
    is refused (a typo would leave a layer whole and the model computing nonsense)."""
    compiled = _compile_plan(plan, where)
    check_mesh(mesh, where)
    chosen: dict[str, Choice] = {}
    used = set()
    for name, module in model.named_modules():
        for pattern, key, style in compiled:
            if pattern.fullmatch(name):
                used.add(key)
                check_layer(name, module, mesh, where)
                kind = style_name(style, where, key)
                chosen[name] = Choice(kind, module, style_layouts(style, kind, mesh, where))
                break
    unused = [key for _, key, _ in compiled if key not in used]
    if unused:
        raise ValueError(f"{where}: plan entries {unused} match no module of the model")
    return chosen


def parallelize(model: nn.Module, mesh: DeviceMesh, plan: dict) -> nn.Module:
    """Shard `model`'s layers over a 1-D device mesh, in place; returns the model.

    plan: {fqn regex: "colwise" | "rowwise"} (torch's ColwiseParallel() / RowwiseParallel()
    with default layouts are taken too); each module whose name fully matches a key (the
    first that matches) takes that style. Layers: nn.Linear, FusedLinear, Int8Linear,
    SparseLinear, before or after bigperf.swap. Column-wise splits the output features (the
    layer returns its rank's slice of them); row-wise splits the input features (the layer
    takes such a slice) and all-reduces. Every shard is built first: a plan that matches
    nothing, a layer that cannot be sharded, or a split a weight format cannot take raises
    before any module changes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{WHERE}: argument 'model' must be an nn.Module, got {type(model).__name__}")
    chosen = match_plan(model, mesh, plan)
    shards = []
    for name, (style, module, layouts) in chosen.items():
        try:
            shard, tensor_parallel = shard_layer(module, style, mesh)
        except ValueError as error:
            raise ValueError(f"{WHERE}: layer {name!r} ({style}): {error}") from None
        shards.append((module, shard, replace(tensor_parallel, layouts=layouts)))
    for module, shard, tensor_parallel in shards:  # nothing below can fail: dict updates only
        transplant(module, shard, tensor_parallel)
    return model
