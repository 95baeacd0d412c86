"""Backend selection shared by every op.

Each op owns an OpBackends table: per backend, a function that says why it cannot serve
a call (or None) and a function that runs it. Selection walks the device's priority
list, or only the forced backend (use_backend / $BIGPERF_BACKEND); when nothing can run
a call, one error lists every backend that was tried and why it was ruled out.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Callable

import torch

BACKEND_NAMES = ("triton", "cuda", "cpu", "reference")
DEVICE_PRIORITY = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}

_forced_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("bigperf_backend", default=None)


class NoBackendError(RuntimeError):
    """No backend can run this call; the message lists each backend and why not."""


def _check_backend_name(name: str, source: str) -> str:
    if name not in BACKEND_NAMES + ("auto",):
        raise ValueError(f"{source}: backend must be one of {BACKEND_NAMES + ('auto',)}, got {name!r}")
    return name


# Read once at import: an environment lookup per op call costs microseconds.
_ENV_BACKEND = os.environ.get("BIGPERF_BACKEND", "").strip() or None
if _ENV_BACKEND is not None:
    _check_backend_name(_ENV_BACKEND, "$BIGPERF_BACKEND")


def forced_backend() -> str | None:
    """The backend forced for this context, or None for automatic selection."""
    name = _forced_backend.get() or _ENV_BACKEND
    return None if name == "auto" else name


def eager_fast_path_ok(*tensors) -> bool:
    """True when an op may skip the torch.ops dispatcher and run its implementation directly.

    The dispatcher (custom_op + autograd wrapper) costs ~40 µs per call, more than a whole
    small GEMV. Its work is only needed when something observes the call: compilation or
    export, a dispatch mode (fake tensors, FlopCounter, ...), tensor subclasses, or
    autograd. In plain eager inference none of these apply and the result is identical.
    """
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return False
        if grad and t.requires_grad:
            return False
    return True


@contextlib.contextmanager
def use_backend(name: str):
    """Run every bigperf op inside the block on one backend ("auto" restores selection).

    A forced backend that cannot serve a call raises NoBackendError; there is no silent
    fallback, so a benchmark or test of one backend measures that backend.
    """
    token = _forced_backend.set(_check_backend_name(name, "bigperf.use_backend"))
    try:
        yield
    finally:
        _forced_backend.reset(token)


@dataclass(frozen=True)
class Backend:
    name: str
    why_not: Callable[..., str | None]
    run: Callable[..., torch.Tensor]


class OpBackends:
    def __init__(self, op_name: str):
        self.op_name = op_name
        self.backends: dict[str, Backend] = {}

    def register(self, name: str, why_not: Callable[..., str | None], run: Callable[..., torch.Tensor]):
        _check_backend_name(name, f"{self.op_name}.register")
        self.backends[name] = Backend(name, why_not, run)

    def candidates(self, device: torch.device) -> tuple[str, ...]:
        forced = forced_backend()
        if forced is not None:
            return (forced,)
        return DEVICE_PRIORITY.get(device.type, ("reference",))

    def select(self, device: torch.device, *args) -> Backend:
        reasons = []
        for name in self.candidates(device):
            backend = self.backends.get(name)
            if backend is None:
                reasons.append(f"  {name}: not implemented for {self.op_name}")
                continue
            why = backend.why_not(*args)
            if why is None:
                return backend
            reasons.append(f"  {name}: {why}")
        forced = forced_backend()
        how = f" (backend forced to '{forced}')" if forced else ""
        raise NoBackendError(f"{self.op_name}: no backend can run this call on {device}{how}:\n" + "\n".join(reasons))

    def why_not_each(self, device: torch.device, *args) -> dict[str, str | None]:
        """Every registered backend's answer for this call (for doctor and reports)."""
        return {name: backend.why_not(*args) for name, backend in self.backends.items()}
