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

from typing import Callable

import torch

# One C call (~0.15 us on Zen 3); the per-device checks run only when it is true.
any_autocast_enabled = torch._C._is_any_autocast_enabled

# What autocast lowers: float64 stays float64, as for torch's own lower-precision ops.
_LOWERED_DTYPES = frozenset((torch.float32, torch.float16, torch.bfloat16))
_AUTOCAST_DEVICES = ("cpu", "cuda")
_AUTOCAST_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.AutocastCUDA)


def autocast_off():
    """A context in which autocast is off on every device this package serves (cheaper than
    torch.autocast(enabled=False): one guard on the dispatch keys)."""
    return torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_KEYS)


def autocast_tensor(t):
    """`t` in its device's autocast dtype where autocast is on there, else `t` itself."""
    if not isinstance(t, torch.Tensor) or t.dtype not in _LOWERED_DTYPES:
        return t
    device = t.device.type
    if device not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(device):
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

    for device in _AUTOCAST_DEVICES:
        key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(device))
        torch_op.py_impl(key)(kernel)  # what the Python dispatcher runs while tracing (compile)
        lib.impl(short, _drop_keyset(kernel), key.name, with_keyset=True)


def _drop_keyset(kernel: Callable) -> Callable:
    return lambda _keyset, *args: kernel(*args)
