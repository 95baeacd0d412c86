"""torch's ColwiseParallel / RowwiseParallel, taking bigperf's layers too, for torch's own
entry point: parallelize_module(model, mesh, {"...q_proj": bigperf.distributed.ColwiseParallel()}).

torch's styles shard nn.Linear / nn.Embedding only (their _apply raises NotImplementedError
for other modules) and only parameters, with distribute_tensor's even split: packed buffers
(int8 codes and scales, 2:4 values and metadata, BSR blocks) and the format's split rules are
out of their reach. These subclasses keep the style's contract (shard the module in place;
input_layouts, output_layouts and use_local_output move activations through DTensor, see
layouts.py) and do it with the weight format's shard rules; like torch's, they shard one
module at a time, while bigperf.distributed.parallelize checks the whole plan first. (The
other order, torch's own styles on the plain model and bigperf.swap after, is adopt.py's.)"""

from __future__ import annotations

from dataclasses import replace

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel as TorchColwise
from torch.distributed.tensor.parallel import RowwiseParallel as TorchRowwise

from bigperf.distributed.layers import shard_layer, transplant
from bigperf.distributed.layouts import style_layouts
from bigperf.distributed.plan import check_layer, mesh_group, style_name


def _shard_in_place(style, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    where = f"bigperf.distributed.{type(style).__name__}"
    name = style_name(style, where)
    rank, world, group = mesh_group(mesh, where)
    check_layer(type(module).__name__, module, mesh, where)
    layouts = style_layouts(style, name, mesh, where)
    try:
        shard, tensor_parallel = shard_layer(module, name, rank, world, group)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    transplant(module, shard, replace(tensor_parallel, layouts=layouts))
    return module


class ColwiseParallel(TorchColwise):
    """torch's ColwiseParallel for nn.Linear and bigperf's layers, by the formats' shard rules."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return _shard_in_place(self, module, device_mesh)


class RowwiseParallel(TorchRowwise):
    """torch's RowwiseParallel for nn.Linear and bigperf's layers, by the formats' shard rules."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return _shard_in_place(self, module, device_mesh)
