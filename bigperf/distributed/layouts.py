"""How a sharded layer's input and output cross to and from torch's DTensor.

A shard computes on local tensors: a column-wise shard takes the whole input (Replicate)
and gives its slice of the output features (Shard(-1)); a row-wise shard takes its slice
of the input features (Shard(-1)) and gives a partial sum (Partial). torch's styles let a
plan say how activations arrive and leave instead (input_layouts, output_layouts,
use_local_output: a sequence-sharded Shard(1) input, a reduce-scatter to Shard(1), a
DTensor handed to the next module). `Layouts` records that for one layer; DTensor's own
redistribute moves the data (all-gather, all-reduce, reduce-scatter), so a bigperf layer
sits in a DTensor model like torch's sharded nn.Linear.

Without Layouts (torch's default layouts, or a "colwise"/"rowwise" string in a plan) the
layer takes and gives plain local tensors with no DTensor in the way (decode pays for
every microsecond); a DTensor input is still taken, redistributed to what the shard needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard

# What a shard computes on, and what it gives, as placements on the 1-D mesh.
SHARD_INPUT = {"colwise": (Replicate(),), "rowwise": (Shard(-1),)}
SHARD_OUTPUT = {"colwise": (Shard(-1),), "rowwise": (Partial(),)}
# torch's styles' defaults: with these, a layer needs no Layouts.
DEFAULT_LAYOUTS = {"colwise": ((Replicate(),), (Shard(-1),)), "rowwise": ((Shard(-1),), (Replicate(),))}


@dataclass(frozen=True)
class Layouts:
    mesh: DeviceMesh
    input_layouts: tuple[Placement, ...]  # of a plain tensor input, as it arrives
    output_layouts: tuple[Placement, ...]  # of the output, as it leaves
    use_local_output: bool  # give the output as this rank's local tensor, else as a DTensor


def style_layouts(style, name: str, mesh: DeviceMesh, where: str) -> Layouts | None:
    """The Layouts a torch ColwiseParallel / RowwiseParallel object asks for, None for its
    defaults (and for a plan's "colwise" / "rowwise" strings)."""
    if isinstance(style, str):
        return None
    return layouts_of(style.input_layouts, style.output_layouts, style.use_local_output, name, mesh, where)


def layouts_of(input_layouts, output_layouts, use_local_output: bool, name: str, mesh: DeviceMesh,
               where: str) -> Layouts | None:
    """Layouts for a `name` ("colwise" / "rowwise") shard, None for torch's defaults."""
    inputs, outputs = tuple(input_layouts), tuple(output_layouts)
    for what, placements in (("input_layouts", inputs), ("output_layouts", outputs)):
        if len(placements) != mesh.ndim or not all(isinstance(p, Placement) for p in placements):
            raise ValueError(f"{where}: the {name} style's {what} {placements} must be one placement "
                             f"for the 1-D mesh")
    if (inputs, outputs) == DEFAULT_LAYOUTS[name] and use_local_output:
        return None
    return Layouts(mesh, inputs, outputs, use_local_output)


def local_input(x, style: str, layouts: Layouts | None):
    """x as the local tensor the shard computes on: a plain tensor with no Layouts as it is;
    otherwise through DTensor, redistributed to SHARD_INPUT."""
    if not isinstance(x, DTensor):
        if layouts is None or not isinstance(x, torch.Tensor):
            return x
        # As torch's styles do: a sharded input is taken to split evenly.
        x = DTensor.from_local(x, layouts.mesh, layouts.input_layouts, run_check=False)
    if tuple(x.placements) != normalized(SHARD_INPUT[style], x.ndim):
        x = x.redistribute(placements=SHARD_INPUT[style])
    return x.to_local()


def normalized(placements: tuple[Placement, ...], ndim: int) -> tuple[Placement, ...]:
    """`placements` as DTensor keeps them: Shard(-1) is Shard(ndim - 1)."""
    return tuple(Shard(p.dim + ndim) if isinstance(p, Shard) and p.dim < 0 else p for p in placements)


def contiguous_stride(shape: torch.Size) -> tuple[int, ...]:
    """A contiguous tensor's strides for `shape` (a DTensor's global view), no memory."""
    return torch.empty(shape, device="meta").stride()


def leave(local: torch.Tensor, placements: tuple, global_shape: torch.Size, layouts: Layouts,
          after=None) -> torch.Tensor:
    """The shard's output (`local`, with `placements` and `global_shape`) redistributed to
    layouts.output_layouts; `after(local)` (the activation a row-wise shard runs after the
    sum, and the cast back to the output dtype) applied to the result's local tensor.
    Returns the local tensor, or the DTensor if the plan wants one."""
    shape = torch.Size(global_shape)
    out = DTensor.from_local(local, layouts.mesh, placements, run_check=False, shape=shape,
                             stride=contiguous_stride(shape))
    out = out.redistribute(placements=layouts.output_layouts)
    if after is not None:
        out = DTensor.from_local(after(out.to_local()), layouts.mesh, out.placements, run_check=False,
                                 shape=out.shape, stride=out.stride())
    return out.to_local() if layouts.use_local_output else out
