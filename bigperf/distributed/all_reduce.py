"""What a sharded layer records about its shard (`layer.tensor_parallel`), and the row-wise
all-reduce: each rank's layer computes a partial sum over its slice of the input features
(the bias on rank 0 only), a forward hook sums the partials over the mesh's process group
(in fp32, whatever the output dtype; through shared memory between ranks on one host,
shm.py) and then applies the layer's activation, which cannot run before the sum.

A row-wise W8A8 layer quantises each token against the whole token's absmax, not its
slice's: a pre-hook all-reduces (MAX) the slices' absmax first and hands it to the layer
(Int8Linear's act_absmax), so every rank's codes are those of the unsharded layer.

With `layouts` (a torch style's input_layouts / output_layouts / use_local_output; see
layouts.py) the same hooks take the input through DTensor and give the output through
DTensor's redistribute: the row-wise sum is then DTensor's (an all-reduce, or a
reduce-scatter to a sequence-sharded output), still in fp32 with the activation after it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate

from bigperf.distributed import shm
from bigperf.distributed.layouts import SHARD_OUTPUT, Layouts, leave, local_input, normalized
from bigperf.distributed.state import attach_state_hooks, detach_state_hooks
from bigperf.ops.activations import apply_activation


@dataclass(frozen=True)
class TensorParallel:
    style: str  # "colwise" or "rowwise"
    rank: int
    world: int
    group: object  # the torch.distributed process group the row-wise partial sums are reduced over
    in_features: int  # of the unsharded layer
    out_features: int
    activation: str = "none"  # row-wise: applied after the all-reduce
    layouts: Layouts | None = None  # how activations arrive and leave, if not as plain local tensors
    mesh: DeviceMesh | None = None  # the 1-D mesh, for the DTensors of its state_dict (state.py)

    def attach(self, module: nn.Module) -> None:
        """Record this shard on `module` and hook its input and output onto it (the row-wise
        all-reduce, DTensor inputs, the plan's layouts; any hooks an earlier attach added
        are removed first). A row-wise layer that computes a fused activation itself (swap
        fused one after the model was sharded) hands it over, to run after the sum."""
        # Hook ids, not handles: a deep copy of the module copies its hook dicts with the same
        # ids, and its copied handles would still point at the original's dicts.
        self.detach(module)
        info = self
        if self.style == "rowwise":
            fused = getattr(module, "activation", "none")
            if fused != "none":
                if self.activation != "none":
                    raise ValueError(f"bigperf.distributed: a row-wise {type(module).__name__} computes "
                                     f"activation {fused!r} and its shard already applies {self.activation!r} "
                                     f"after the all-reduce")
                info = replace(self, activation=fused)
                module.activation = "none"
        ids = (module.register_forward_pre_hook(info.before, with_kwargs=True).id,
               module.register_forward_hook(info.after).id)
        module.__dict__["tensor_parallel"] = info
        module.__dict__["_tensor_parallel_hook_ids"] = ids
        if info.mesh is not None:
            attach_state_hooks(module)

    @staticmethod
    def detach(module: nn.Module) -> None:
        """Remove what attach added to `module` (its hooks and record)."""
        pre_id, post_id = module.__dict__.pop("_tensor_parallel_hook_ids", (None, None))
        module._forward_pre_hooks.pop(pre_id, None)
        module._forward_pre_hooks_with_kwargs.pop(pre_id, None)
        module._forward_hooks.pop(post_id, None)
        detach_state_hooks(module)
        module.__dict__.pop("tensor_parallel", None)

    def __deepcopy__(self, memo) -> "TensorParallel":
        return self  # a copied module shares the process group (and this holds nothing else that changes)

    def before(self, module: nn.Module, args, kwargs):
        """The input as the local tensor the shard computes on; row-wise, the checks and
        W8A8's all-reduced absmax."""
        x = args[0] if args else None
        local = local_input(x, self.style, self.layouts)
        changed = local is not x
        if changed:
            args = (local, *args[1:])
        if self.style == "colwise":
            return (args, kwargs) if changed else None
        # FusedLinear's residual would be added once per rank before the sum.
        if (len(args) > 1 and args[1] is not None) or kwargs.get("residual") is not None:
            raise ValueError(f"bigperf.distributed: a row-wise sharded {type(module).__name__} takes no 'residual' "
                             f"argument (each rank would add it); add it to the layer's output instead")
        if getattr(module, "weight_only", True) or not args:  # W8A8 only (Int8Linear, weight_only=False)
            return (args, kwargs) if changed else None
        x = args[0]
        absmax = x.detach().abs().amax(dim=-1).float() if x.shape[-1] else x.new_zeros(x.shape[:-1], dtype=torch.float32)
        shm.all_reduce(absmax, self.group, "max")
        return args, {**kwargs, "act_absmax": absmax}

    def after(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor | None:
        """Column-wise: the output slice as it is, or to the plan's layouts. Row-wise: the
        partial sums added over the mesh in fp32, then the activation."""
        if self.style == "colwise":
            if self.layouts is None:
                return None
            if self._gathers_on_cpu(output):
                return self._gather(output)
            return leave(output, SHARD_OUTPUT["colwise"], (*output.shape[:-1], self.out_features), self.layouts)
        total = output.to(torch.float32, copy=True)
        if self.layouts is None:
            shm.all_reduce(total, self.group)
            return apply_activation(total, self.activation).to(output.dtype)
        return leave(total, SHARD_OUTPUT["rowwise"], total.shape, self.layouts,
                     after=lambda local: apply_activation(local, self.activation).to(output.dtype))

    def _gathers_on_cpu(self, output: torch.Tensor) -> bool:
        """A column-wise output the plan wants whole (Replicate), split evenly, on the CPU."""
        return (output.device.type == "cpu" and output.shape[-1] * self.world == self.out_features
                and normalized(self.layouts.output_layouts, output.ndim) == (Replicate(),))

    def _gather(self, output: torch.Tensor) -> torch.Tensor:
        """The all-gather of the column slices as a sum of zero-padded slices in fp32 (exact,
        the same bits on every rank), through the shared segment like the row-wise sums:
        gloo's all-gather, through DTensor, cost a decode step ~0.6 ms per call."""
        n = output.shape[-1]
        whole = output.new_zeros((*output.shape[:-1], self.out_features), dtype=torch.float32)
        whole[..., self.rank * n:(self.rank + 1) * n] = output
        shm.all_reduce(whole, self.group)
        whole = whole.to(output.dtype)
        if self.layouts.use_local_output:
            return whole
        return DTensor.from_local(whole, self.layouts.mesh, (Replicate(),), run_check=False)
