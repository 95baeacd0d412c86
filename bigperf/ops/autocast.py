"""torch.autocast for bigperf's ops, as for nn.Linear: inside a region where autocast is on
for x's device, an op computes on x (and a fused residual) in the region's dtype and returns
that dtype, so a swapped layer's output has the dtype the original layer's had and the
dispatcher serves the dtype the model really runs in. Weights stay in their format (never
converted per call) and sums stay fp32, so the result is at least as precise as nn.Linear's.

Three places apply it: the public entry of each op (ops/define.py) and a layer's prepared
call (ops/prepared.py), which skip the torch dispatcher, and the torch op's Autocast kernels
(compile, export, dispatch modes, direct torch.ops calls), registered here. Each runs the op
itself with autocast off, as torch.library.register_autocast does: the op's paths use torch
ops too (PyTorch's GEMM paths, conversions), and torch:fp32 must stay fp32.
"""

from __future__ import annotations

import functools
import operator

import torch

# One C call (~0.15 us on Zen 3); the per-device checks run only when it is true.
any_autocast_enabled = torch._C._is_any_autocast_enabled

# What autocast lowers: float64 stays float64, as for torch's own lower-precision ops.
_LOWERED_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16))
# The devices this package serves, and each one's autocast dispatch key.
_AUTOCAST_KEY_OF_DEVICE = {"cpu": torch._C.DispatchKey.AutocastCPU, "cuda": torch._C.DispatchKey.AutocastCUDA}
_AUTOCAST_KEYS = functools.reduce(operator.or_, map(torch._C.DispatchKeySet, _AUTOCAST_KEY_OF_DEVICE.values()))


def autocast_off():
    """A context in which autocast is off on every device this package serves (cheaper than
    torch.autocast(enabled=False): one guard on the dispatch keys)."""
    return torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_KEYS)


def autocast_tensor(t):
    """`t` in its device's autocast dtype where autocast is on there, else `t` itself."""
    if not isinstance(t, torch.Tensor) or t.dtype not in _LOWERED_DTYPES:
        return t
    device = t.device.type
    if device not in _AUTOCAST_KEY_OF_DEVICE or not torch.is_autocast_enabled(device):
        return t
    dtype = torch.get_autocast_dtype(device)
    return t if t.dtype == dtype else t.to(dtype)


def autocast_args(args: tuple, positions: tuple[int, ...]) -> tuple:
    """args with those at `positions` (the activations) through autocast_tensor."""
    return tuple(autocast_tensor(a) if i in positions else a for i, a in enumerate(args))


def register_autocast_kernels(lib: torch.library.Library, short: str, torch_op, positions: tuple[int, ...]) -> None:
    """The torch op's AutocastCPU / AutocastCUDA kernels: cast the activations, then run the
    op below autocast (torch.library.register_autocast's pattern, with the region's dtype read
    per call instead of fixed, and only the activations cast: a bias or an int8 weight's
    scales keep their precision)."""
    def kernel(*args):
        args = autocast_args(args, positions)  # (outside the guard: autocast reads as off inside it)
        with autocast_off():
            return torch_op(*args)

    for key in _AUTOCAST_KEY_OF_DEVICE.values():
        torch_op.py_impl(key)(kernel)  # what the Python dispatcher runs while tracing (compile)
        lib.impl(short, kernel, key.name)
