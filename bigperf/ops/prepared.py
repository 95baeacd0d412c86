"""Prepared calls: a layer's op call whose arguments other than x stay the same from one
forward to the next (the layer's weights, sizes and activation), validated and dispatched
once per form of x instead of on every call.

Why: a plain eager call of an op pays, besides its kernel, the checks that it is plain
eager, the validation of every argument, the selection of its path and the layer's reads
of its buffers: 10-20 us a call, measured on Zen 4 (2026-12-06), against ~5 us for
nn.Linear's whole call. At decode and on small layers that is most of the layer's time.

What is reused, and when: for one x form (shape, dtype, device) and one context (threads,
use_backend, use_cpu_isa, fp32_compute, the tuner's state) the first call validates the
arguments and selects the path like the op does, and keeps a runner of that path with
the other arguments bound. Later calls run it after checking, per call, that
  - the call is plain eager (registry.eager_call_kind's conditions: no compilation,
    dispatch mode, tensor subclass, torch.func transform), and no record_paths() is
    listening; a call that records a gradient (a weight that requires grad, as a swapped
    FusedLinear's does, outside torch.no_grad()) runs the runner inside the op's
    autograd.Function;
  - the other arguments are the same objects (a layer whose buffer was replaced passes a
    new one), and each tensor among them has the data pointer and version it had (an
    in-place change or `.data =` may change what validation found);
and otherwise the call goes through the op as before. Inside a torch.autocast region x is
first cast to the region's dtype and the call runs with autocast off (ops/autocast.py). Inference tensors keep no version,
so calls holding one always take the op's way.
"""

from __future__ import annotations

import operator

import torch

from bigperf import _ext, tune
from bigperf.ops import common, registry
from bigperf.ops.autocast import any_autocast_enabled, autocast_off, autocast_tensor

# The per-call checks' functions, looked up once (each attribute chain costs ~0.1 us a call).
_dispatch_modes = torch._C._len_torch_dispatch_stack
_func_transform = torch._C._functorch.peek_interpreter_stack
_grad_enabled = torch.is_grad_enabled
_threads = torch.get_num_threads

# Distinct x forms kept per layer (a model with many sequence lengths would otherwise grow
# the table without bound); past it the table starts again.
MAX_FORMS = 64


class PreparedCall:
    """One layer's calls of `op(x, *rest)`, prepared per x form (see the module docstring)."""

    __slots__ = ("_rest", "_tensors", "_stamp", "_runners", "_usable")

    def __init__(self):
        self._rest: tuple | None = None
        self._tensors: tuple = ()
        self._stamp: list | None = None  # [(data pointer, version)] of the tensors among rest
        self._runners: dict = {}
        self._usable = False

    def __call__(self, op, x: torch.Tensor, rest: tuple) -> torch.Tensor:
        """op(x, *rest), as op's public entry would compute it."""
        # (is_compiling first: under torch.compile the rest of the line is not traced)
        if (torch.compiler.is_compiling() or type(x) is not torch.Tensor or _dispatch_modes()
                or _func_transform() is not None or registry._recorder.get() is not None):
            return op(x, *rest)
        if self._rest is None or not all(map(operator.is_, rest, self._rest)) or len(rest) != len(self._rest):
            self._bind_arguments(rest)
        if not self._usable:
            return op(x, *rest)
        if any_autocast_enabled():  # x in the region's dtype, the call with autocast off (ops/autocast.py)
            x = autocast_tensor(x)
            with autocast_off():
                return self(op, x, rest)
        needs_grad = _grad_enabled() and (x.requires_grad or self._any_requires_grad())
        if needs_grad and not op.has_eager_autograd:
            return op(x, *rest)
        try:
            stamp = [(t.data_ptr(), t._version) for t in self._tensors]
        except RuntimeError:  # a tensor without a version counter (.data = an inference tensor)
            self._usable = False
            return op(x, *rest)
        if stamp != self._stamp:
            self._runners.clear()
            self._stamp = stamp
        key = (x.shape, x.dtype, x.get_device(), _threads(), registry._forced_backend.get(),
               _ext._local.cpu_isa, common._fp32_compute.get(), tune.generation)
        runner = self._runners.get(key)
        if runner is None:
            if len(self._runners) >= MAX_FORMS:
                self._runners.clear()
            runner = op.runner((x, *rest))  # validates (raising as the op does) and selects
            self._runners[key] = runner
        if needs_grad:  # the op's autograd.Function around the same runner
            return op.run_recording_grad(runner, (x, *rest))
        return runner(x)

    def _bind_arguments(self, rest: tuple) -> None:
        self._rest = rest
        self._tensors = tuple(a for a in rest if isinstance(a, torch.Tensor))
        self._runners.clear()
        self._stamp = None
        # Tensor subclasses go through the dispatcher (eager_call_kind); inference tensors
        # have no version to watch.
        self._usable = all((type(t) is torch.Tensor or type(t) is torch.nn.Parameter) and not t.is_inference()
                           for t in self._tensors)

    def _any_requires_grad(self) -> bool:
        return any(t.requires_grad for t in self._tensors)

    # A copy of a layer (deepcopy, pickling) starts with nothing prepared: runners hold the
    # original's tensors.
    def __deepcopy__(self, memo):
        return PreparedCall()

    def __reduce__(self):
        return (PreparedCall, ())


def forget_prepared(layer: torch.nn.Module) -> None:
    """Prepare `layer`'s calls again: for a change its tensors' identities and versions do not
    show (a float copy attached or dropped changes which paths are eligible)."""
    layer.__dict__.pop("_prepared_call", None)


def call_prepared(layer: torch.nn.Module, op, x: torch.Tensor, rest: tuple) -> torch.Tensor:
    """op(x, *rest) through `layer`'s PreparedCall (made at its first call: layers built by
    older versions and unpickled have none)."""
    prepared = layer.__dict__.get("_prepared_call")
    if prepared is None:
        prepared = layer.__dict__["_prepared_call"] = PreparedCall()
    return prepared(op, x, rest)
