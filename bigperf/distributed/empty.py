"""Models built without their weights, for bigperf.distributed.load: no rank should hold the
full model, so the model it loads into is built with its parameters on the meta device
(shapes, no memory), is sharded on meta, and each of its tensors then takes the rank's
tensor read from the checkpoint (load_state_dict's assign).

    with bigperf.distributed.meta_parameters():
        model = LlamaForCausalLM(config)       # parameters on meta, buffers as usual
    bigperf.distributed.load(model, path, mesh, plan)

Buffers are built as usual because a model computes some of its own (a rotary embedding's
inv_freq) and does not save them (non-persistent): nothing could fill those in if they were
built on meta. `torch.device("meta")` puts them on meta too; load refuses such a model
and names the buffers."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def meta_parameters():
    """Within this block, every parameter a module registers lands on the meta device; the
    initialisation that follows (reset_parameters) runs on meta and costs nothing. Buffers
    are untouched. Not thread-safe: it swaps nn.Module.register_parameter for the block."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = type(param)(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def mesh_device(mesh) -> torch.device:
    """The device a rank of `mesh` computes on: the CPU, or its current GPU."""
    if mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(mesh.device_type)
