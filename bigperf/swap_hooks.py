"""The user's module hooks across bigperf.swap: a new layer takes over the forward and
backward hooks of the layer it replaces, and swap does not fuse an activation behind a hook
that would then see another output."""

from __future__ import annotations

from torch import nn

from bigperf.distributed.adopt import sharding_hook_ids

# The module hooks a new layer takes over from the one it replaces: they see the same inputs
# and outputs (no activation is fused behind a forward hook). State-dict hooks stay behind:
# they are about the old layer's tensors.
_CALL_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
               "_backward_hooks")


def has_hooks(module: nn.Module, output_only: bool = False) -> bool:
    """Whether the user's hooks (not those that shard it) watch the module's output (or input)."""
    names = ("_forward_hooks",) if output_only else ("_forward_pre_hooks", "_forward_hooks")
    sharding = sharding_hook_ids(module)
    return any(hook_id not in sharding for name in names for hook_id in getattr(module, name))


def carry_hooks(old: nn.Module, new: nn.Module) -> None:
    """new takes old's forward and backward hooks, in their order. It shares old's hook dicts,
    so the handles the user holds still remove them; a shard copies them instead, all but
    the ones that shard it (its new TensorParallel, attached after, replaces those)."""
    sharding = sharding_hook_ids(old)
    for name in _CALL_HOOKS:
        hooks = getattr(old, name)
        if sharding or getattr(new, name):  # (a new layer with hooks of its own keeps them too)
            getattr(new, name).update((k, v) for k, v in hooks.items() if k not in sharding)
        else:
            new.__dict__[name] = hooks
    if old._backward_hooks:
        new._is_full_backward_hook = old._is_full_backward_hook
