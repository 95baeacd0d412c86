"""torch's ColwiseParallel / RowwiseParallel on bigperf's layers, through torch's own entry
point: parallelize_module(model, mesh, {"...q_proj": ColwiseParallel()}).

torch's styles shard nn.Linear / nn.Embedding only (their _apply raises NotImplementedError
for any other module) and only parameters, with distribute_tensor's even split: packed
buffers (int8 codes and scales, 2:4 values and metadata, BSR blocks) and the format's split
rules are out of their reach. So bigperf extends them (extend_style_classes): torch's own
ColwiseParallel / RowwiseParallel, given a bigperf layer, shard it with the weight format's
shard rules; every other module still goes to torch's code, unchanged. The extension is
installed when this module is imported: bigperf.swap and bigperf.load import it once they
have made bigperf layers, at once if torch.distributed.tensor.parallel is imported, else
when it is (bigperf.distributed.extend_torch_styles), so a script needs nothing more.

The subclasses below (bigperf.distributed.ColwiseParallel / RowwiseParallel) do the same for
nn.Linear too, so that one plan shards plain and swapped layers alike by the formats' rules.
Both keep the style's contract (shard the module in place; input_layouts, output_layouts and
use_local_output move activations through DTensor, see layouts.py); like torch's, they shard
one module at a time, while bigperf.distributed.parallelize checks the whole plan first.
(The other order, torch's own styles on the plain model and bigperf.swap after, is adopt.py's.)"""

from __future__ import annotations

import functools
from dataclasses import replace

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel as TorchColwise
from torch.distributed.tensor.parallel import RowwiseParallel as TorchRowwise

from bigperf.distributed.layers import SHARDABLE, shard_layer, transplant
from bigperf.distributed.layouts import style_layouts
from bigperf.distributed.plan import check_layer, check_mesh, style_name

# The modules torch's own styles refuse and bigperf's shard rules take: bigperf's layers.
BIGPERF_LAYERS = tuple(t for t in SHARDABLE if t is not nn.Linear)


def _shard_in_place(style, module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    where = f"{type(style).__module__}.{type(style).__qualname__}"
    name = style_name(style, where)
    check_mesh(mesh, where)
    check_layer(type(module).__name__, module, mesh, where)
    layouts = style_layouts(style, name, mesh, where)
    try:
        # torch's parallelize_module sets src_data_rank (0 by default): every rank cuts that
        # rank's weights, as its distribute_tensor does; None: each rank its own.
        shard, tensor_parallel = shard_layer(module, name, mesh, src_rank=getattr(style, "src_data_rank", None))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    transplant(module, shard, replace(tensor_parallel, layouts=layouts))
    return module


def _extend(torch_style: type) -> None:
    torch_apply = torch_style._apply
    if getattr(torch_apply, "bigperf_extended", False):
        return

    @functools.wraps(torch_apply)
    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if isinstance(module, BIGPERF_LAYERS):  # torch's own code raises NotImplementedError for these
            return _shard_in_place(self, module, device_mesh)
        return torch_apply(self, module, device_mesh)

    _apply.bigperf_extended = True
    torch_style._apply = _apply


def extend_style_classes() -> None:
    """Let torch's own ColwiseParallel / RowwiseParallel shard bigperf's layers (idempotent)."""
    _extend(TorchColwise)
    _extend(TorchRowwise)


extend_style_classes()


class ColwiseParallel(TorchColwise):
    """torch's ColwiseParallel for nn.Linear and bigperf's layers, by the formats' shard rules."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return _shard_in_place(self, module, device_mesh)


class RowwiseParallel(TorchRowwise):
    """torch's RowwiseParallel for nn.Linear and bigperf's layers, by the formats' shard rules."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return _shard_in_place(self, module, device_mesh)
