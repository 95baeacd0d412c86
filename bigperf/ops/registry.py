"""Backend selection shared by every op.

Each op owns an OpBackends table of candidate paths: per path, a function that says why
it cannot serve a call (or None) and a function that runs it. A path belongs to a backend
("cpu", "cuda", "triton": our kernels; "torch": PyTorch's own GEMMs for the same math;
"reference": the oracle) and may be one of several variants of it ("torch:fp32").

Selection takes the paths of the device's backends (or of the forced one: use_backend /
$BIGPERF_BACKEND) that can serve the call; when several can, the measuring dispatcher
(bigperf/tune.py) picks the fastest on this machine. The reference path only runs when
nothing else can (or when forced). When nothing can run a call, one error lists every
path and why it was ruled out.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from bigperf import _ext, tune
from bigperf.ops.common import fp32_compute_active
BACKEND_NAMES = ("triton", "cuda", "cpu", "torch", "reference")
# Order matters only where measuring is off (BIGPERF_TUNE=0: the first path for one row)
# and in reports; with measuring on, every eligible path of these backends competes.
DEVICE_PRIORITY = {
    "cuda": ("cuda", "triton", "torch", "reference"),
    "cpu": ("cpu", "torch", "reference"),
}

_forced_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("bigperf_backend", default=None)
# While record_paths() is active: the (op, path id) of every selection, for reports.
_recorder: contextvars.ContextVar[list | None] = contextvars.ContextVar("bigperf_paths", default=None)


class NoBackendError(RuntimeError):
    """No backend can run this call; the message lists each backend and why not."""


def _check_backend_name(name: str, source: str) -> str:
    """A backend ("torch"), "auto", or one path of a backend by its id ("torch:fp32")."""
    if not isinstance(name, str) or (name != "auto" and name.split(":", 1)[0] not in BACKEND_NAMES):
        raise ValueError(f"{source}: backend must be one of {BACKEND_NAMES + ('auto',)} or a path id such as "
                         f"'torch:fp32', got {name!r}")
    return name


# Read once at import: an environment lookup per op call costs microseconds.
_ENV_BACKEND = os.environ.get("BIGPERF_BACKEND", "").strip() or None
if _ENV_BACKEND is not None:
    _check_backend_name(_ENV_BACKEND, "$BIGPERF_BACKEND")


def forced_backend() -> str | None:
    """The backend forced for this context, or None for automatic selection."""
    name = _forced_backend.get() or _ENV_BACKEND
    return None if name == "auto" else name


# What an op call needs besides its implementation (eager_call_kind).
EAGER = "eager"  # nothing: run the implementation directly
EAGER_AUTOGRAD = "eager-autograd"  # autograd only: a torch.autograd.Function around it serves


def eager_call_kind(args: tuple) -> str | None:
    """How an op may skip the torch.ops dispatcher for a call with these arguments: EAGER,
    EAGER_AUTOGRAD, or None when it must go through torch.ops.

    The dispatcher (custom_op + its autograd wrapper) costs ~20 µs per call, ~100 µs when
    gradients are needed, more than a whole small GEMV. Its work is only needed when
    something observes the call: compilation or export, a dispatch mode (fake tensors,
    FlopCounter, ...), a torch.func transform, tensor subclasses. In plain eager mode none
    of these apply; autograd alone (grad enabled and a tensor that requires grad) is served
    by an autograd.Function with the op's own backward (OpDefinition.register_autograd).
    """
    # ops/prepared.PreparedCall checks the same conditions in its own order (a layer's other
    # arguments are checked once, not per call): a condition added here belongs there too.
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._functorch.peek_interpreter_stack() is not None):  # torch.func: vmap, grad, jvp
        return None
    needs_grad = False
    grad = torch.is_grad_enabled()
    for t in args:
        if not isinstance(t, torch.Tensor):
            continue
        if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
            return None
        if grad and t.requires_grad:
            needs_grad = True
    return EAGER_AUTOGRAD if needs_grad else EAGER


@contextlib.contextmanager
def use_backend(name: str):
    """Run every bigperf op inside the block on one backend ("auto" restores selection), or
    on one path of it by id ("torch:fp32": PyTorch's GEMM in fp32, never measured against
    torch:bf16, so two layers compare bit for bit).

    A forced backend that cannot serve a call raises NoBackendError; there is no silent
    fallback, so a benchmark or test of one backend measures that backend.
    """
    token = _forced_backend.set(_check_backend_name(name, "bigperf.use_backend"))
    try:
        yield
    finally:
        _forced_backend.reset(token)


def _weak(obj) -> Callable:
    """A callable giving obj back while it lives; for None (or an object that takes no weak
    reference) one that gives None, which matches only a call without a weight."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: None


@contextlib.contextmanager
def record_paths():
    """Collects (op name, path id) for every op call inside the block: what really ran."""
    paths: list[tuple[str, str]] = []
    token = _recorder.set(paths)
    try:
        yield paths
    finally:
        _recorder.reset(token)


@dataclass(frozen=True)
class Backend:
    name: str                       # the backend: cpu, cuda, triton, torch, reference
    why_not: Callable[..., str | None]
    run: Callable[..., torch.Tensor]
    variant: str = ""               # one of a backend's several paths, e.g. "fp32"
    # For a torch path: whether it runs F.linear on the weight as the layer holds it (the
    # user's original layer itself, or the opted-in float copy) rather than on one converted
    # per call; the dispatcher then asks our kernels for a clear win (tune.tie_margin).
    as_held: Callable[..., bool] | None = None
    # Optional: bind(*args[1:]) -> run_x(x), the path with every argument but x fixed, for
    # prepared calls (ops/prepared.py); it may do once what run does per call for those.
    bind: Callable[..., Callable[[torch.Tensor], torch.Tensor]] | None = None

    @property
    def id(self) -> str:
        return f"{self.name}:{self.variant}" if self.variant else self.name

    def runner(self, *rest) -> Callable[[torch.Tensor], torch.Tensor]:
        """run_x(x): this path with every argument but x fixed (through `bind` where the path
        has one): what a prepared call keeps and what the tuner times."""
        if self.bind is not None:
            return self.bind(*rest)
        run = self.run
        return lambda x: run(x, *rest)


class OpBackends:
    def __init__(self, op_name: str):
        self.op_name = op_name
        self.backends: dict[str, Backend] = {}  # by id, in registration order
        # call signature -> (weak ref to the weight, path): the hot path asks one why_not,
        # not all (tune.forget clears it)
        self._chosen: dict[tuple, tuple[Callable, Backend]] = tune.register_memo({})

    def register(self, name: str, why_not: Callable[..., str | None], run: Callable[..., torch.Tensor],
                 variant: str = "", as_held: Callable[..., bool] | None = None,
                 bind: Callable[..., Callable[[torch.Tensor], torch.Tensor]] | None = None):
        _check_backend_name(name, f"{self.op_name}.register")
        backend = Backend(name, why_not, run, variant, as_held, bind)
        self.backends[backend.id] = backend

    def paths(self, device: torch.device) -> list[Backend]:
        """The registered paths this device may use, forced backend first, in priority order."""
        forced = forced_backend()
        if forced is not None and ":" in forced:  # one path by its id
            return [b for b in self.backends.values() if b.id == forced]
        names = (forced,) if forced is not None else DEVICE_PRIORITY.get(device.type, ("reference",))
        return [b for name in names for b in self.backends.values() if b.name == name]

    def eligible(self, device: torch.device, *args) -> tuple[list[Backend], list[str]]:
        """(paths that can serve this call, the reasons of those that cannot)."""
        ok, reasons = [], []
        paths = self.paths(device)
        forced = forced_backend()
        if forced is not None and not paths:
            reasons.append(f"  {forced}: not implemented for {self.op_name}")
        for backend in paths:
            why = backend.why_not(*args)
            if why is None:
                ok.append(backend)
            else:
                reasons.append(f"  {backend.id}: {why}")
        return ok, reasons

    def select(self, *args) -> Backend:
        """The path for this call (validated arguments; tensors on x's device)."""
        # Every op call comes through here: the memo key is a few attribute reads (the
        # tuning key hashes shapes, microseconds per call). The weight object stands for
        # its dtype and shape — held by a weak reference and compared, because a freed
        # tensor's id() is reused by the next one — the M bucket is log2, and the chosen
        # path's why_not is asked again, so a stale entry can never run a path that
        # cannot serve the call.
        x = args[0]
        shape = x.shape
        k = shape[-1] if shape else 0
        m = x.numel() // k if k else 1
        weight = args[1] if len(args) > 1 else None
        # The weight's dtype and shape too: `w.data = other` keeps the object (and its id) but
        # can change both, and the path was timed for the old ones.
        weight_form = (weight.dtype, weight.shape) if isinstance(weight, torch.Tensor) else None
        # The forced CPU ISA too: a path chosen inside use_cpu_isa("scalar") (where our AVX2
        # kernels refuse) would otherwise stay chosen for the same weight after the block.
        # And fp32_compute(), under which the half-precision paths refuse fp32 x.
        memo_key = (_forced_backend.get() or _ENV_BACKEND, x.dtype, k, (m - 1).bit_length() if m > 1 else 0,
                    id(weight), torch.get_num_threads(), weight_form, _ext.forced_cpu_isa(), fp32_compute_active())
        memo = self._chosen.get(memo_key)
        if memo is not None and memo[0]() is weight and memo[1].why_not(*args) is None:
            chosen = memo[1]
        else:
            chosen = self._select_uncached(args)
            self._chosen[memo_key] = (_weak(weight), chosen)
        recording = _recorder.get()
        if recording is not None:
            recording.append((self.op_name, chosen.id))
        return chosen

    def _select_uncached(self, args: tuple) -> Backend:
        device = args[0].device
        ok, reasons = self.eligible(device, *args)
        if not ok:
            forced = forced_backend()
            how = f" (backend forced to '{forced}')" if forced else ""
            raise NoBackendError(f"{self.op_name}: no backend can run this call on {device}{how}:\n"
                                 + "\n".join(reasons))
        fast = [b for b in ok if b.name != "reference"] or ok  # the oracle is a last resort
        if len(fast) == 1:
            return fast[0]
        choice = tune.TUNER.decide(self.op_name, fast, args).choice
        return self.backends[choice]

    def why_not_each(self, device: torch.device, *args) -> dict[str, str | None]:
        """Every registered path's answer for this call (for doctor and reports)."""
        return {bid: backend.why_not(*args) for bid, backend in self.backends.items()}
