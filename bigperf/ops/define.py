"""The op-wrapper pattern, written once: `define_op` turns a signature, a validator and an
output shape into a torch.ops.bigperf op with its fake, its backend table and the public
Python entry point that layers call.

What every op gets:
- `torch.ops.bigperf.<name>`: an op (schema from the signature's annotations) whose
  body validates and runs the path OpBackends.select picks, and whose fake validates and
  returns an empty output, so torch.compile and torch.export trace through;
- the public entry (`OpDefinition.__call__`): in plain eager inference it validates and
  runs the chosen path directly, skipping the ~20 µs of the torch dispatcher; while
  torch.onnx.export traces it validates and hands over to the op's ONNX lowering; in plain
  eager calls that need gradients it runs the path inside an autograd.Function with the
  op's backward (`register_autograd`), skipping the dispatcher's ~100 µs autograd wrapper;
  otherwise it calls torch.ops.bigperf.<name> (compile, export, dispatch modes, torch.func).

A call is validated once: the public entry marks the torch.ops call it makes as validated
(a context variable), so the op's body does not check again; a direct call of
torch.ops.bigperf.<name> is validated by the body. Paths never call another public op: a
layout op's paths call the canonical op's paths (bigperf/ops/layout_paths.py).
"""

from __future__ import annotations

import contextvars
from typing import Callable

import torch

from bigperf.ops.autocast import any_autocast_enabled, autocast_args, autocast_off, register_autocast_kernels
from bigperf.ops.onnx_lowering import exporting_to_onnx, lower_to_onnx
from bigperf.ops.registry import EAGER, EAGER_AUTOGRAD, OpBackends, eager_call_kind

# The dispatch keys left below autograd for a call on plain tensors of one device with no
# mode (fake tensors, functionalization, ...) active: the device's kernel, nothing else.
_AFTER_AUTOGRAD = torch._C._after_autograd_keyset
_CPU_KERNEL_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
_CUDA_KERNEL_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)

# Set while the public entry calls torch.ops.bigperf.<op> with arguments it has validated.
_validated_call: contextvars.ContextVar[bool] = contextvars.ContextVar("bigperf_validated_call", default=False)


class OpDefinition:
    """One bigperf op: its name, validator, backend table and the registered torch op."""

    def __init__(self, name: str, signature: Callable, validate: Callable[..., None],
                 out_shape: Callable[..., tuple], activations: tuple[int, ...] = (0,)):
        namespace, _, short = name.partition(".")
        if namespace != "bigperf" or not short:
            raise ValueError(f"bigperf.ops.define_op: argument 'name' must be 'bigperf.<op>', got {name!r}")
        self.name = name
        self.validate = validate
        self.out_shape = out_shape
        self.backends = OpBackends(name)
        self.activations = activations  # the arguments torch.autocast casts (ops/autocast.py)
        self._short = short
        self._eager_autograd = None  # the autograd.Function of register_autograd, if any
        # torch.library's lower-level API rather than torch.library.custom_op: a custom_op
        # call routes through Python wrappers for autograd and per-device dispatch even when
        # neither applies, ~13 us a call against ~2.5 for a kernel registered here (measured
        # on Zen 4, 2026-12-06); every compiled graph and every call that is not plain eager
        # pays it. The same pieces: a schema (pt2-compliant, as custom_op tags it), one
        # kernel for every device (the backend table picks the path), a fake, and autograd.
        self._lib = torch.library.Library("bigperf", "FRAGMENT")
        schema = torch.library.infer_schema(signature, mutates_args=())
        self._lib.define(short + schema, tags=(torch.Tag.pt2_compliant_tag,))
        self._lib.impl(short, self._body, "CompositeExplicitAutograd")
        torch.library.register_fake(self.qualname, self._fake, lib=self._lib)
        self.torch_op = getattr(torch.ops.bigperf, short).default
        register_autocast_kernels(self._lib, short, self.torch_op, activations)

    @property
    def qualname(self) -> str:
        return f"bigperf::{self._short}"

    def register_autograd(self, backward: Callable, setup_context: Callable) -> None:
        """Gradients for the op (torch.library's register_autograd contract: setup_context(ctx,
        inputs, output) and backward(ctx, *grads)), through one autograd.Function: in plain
        eager calls (the public entry, prepared calls) and in the torch op's Autograd kernel
        (compile, export, dispatch modes)."""
        self._eager_autograd = _autograd_function(self, backward, setup_context)
        self._lib.impl(self._short, self._autograd_kernel, "Autograd", with_keyset=True)

    def _autograd_kernel(self, keyset, *args):
        """The torch op's Autograd kernel. It does what torch.library.register_autograd's
        does (the Function around a redispatch below autograd when a gradient is recorded,
        else the redispatch), except that a call with nothing below autograd but the
        device's kernel (plain tensors, no mode: what a compiled graph's call has) runs the
        body here: register_autograd's Python kernel and its redispatch cost ~6.5 us a call
        with no gradient to record (Zen 4, 2026-12-07), more than a small layer's kernel."""
        below = keyset & _AFTER_AUTOGRAD
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            torch_op = self.torch_op

            def run_below_autograd(x):
                with torch._C._AutoDispatchBelowAutograd():
                    return torch_op.redispatch(below, x, *args[1:])
            return self._eager_autograd.apply(run_below_autograd, *args)
        with torch._C._AutoDispatchBelowAutograd():
            if below == _CPU_KERNEL_ONLY or below == _CUDA_KERNEL_ONLY:
                return self._body(*args)
            return self.torch_op.redispatch(below, *args)

    def run(self, *args) -> torch.Tensor:
        """Run validated arguments on the path selected for them (no checks here)."""
        return self.backends.select(*args).run(*args)

    def runner(self, args: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
        """For a plain eager call (eager_call_kind: EAGER): validate `args`, select their path,
        and return it as run_x(x) with args[1:] bound (ops/prepared.py keeps it for calls
        whose x has args[0]'s form)."""
        self.validate(*args)
        return self.backends.select(*args).runner(*args[1:])

    @property
    def has_eager_autograd(self) -> bool:
        return self._eager_autograd is not None

    def run_recording_grad(self, run_x: Callable[[torch.Tensor], torch.Tensor], args: tuple) -> torch.Tensor:
        """For a plain eager call that needs gradients (eager_call_kind: EAGER_AUTOGRAD) whose
        arguments were validated and whose path `run_x` (OpDefinition.runner) was selected: its
        output, recorded for the op's backward (register_autograd first)."""
        return self._eager_autograd.apply(run_x, *args)

    def _body(self, *args):
        if not _validated_call.get():
            self.validate(*args)
            return self.run(*args)
        token = _validated_call.set(False)  # only the call the entry made counts as checked
        try:
            return self.run(*args)
        finally:
            _validated_call.reset(token)

    def _fake(self, *args):
        self.validate(*args)
        return args[0].new_empty(self.out_shape(*args))

    def __call__(self, *args) -> torch.Tensor:
        """The public entry: the op on these (positional, complete) arguments."""
        kind = eager_call_kind(args)
        if kind is not None and any_autocast_enabled():  # (through torch.ops: its Autocast kernel)
            return self._call_in_autocast(args)
        if kind is EAGER:  # (self.run inlined: a Python frame is ~1 us on this per-call path)
            self.validate(*args)
            return self.backends.select(*args).run(*args)
        if exporting_to_onnx():  # standard ONNX in place of the custom op (ops/onnx_lowering.py)
            self.validate(*args)
            return lower_to_onnx(self.name, *args)
        if kind is EAGER_AUTOGRAD and self._eager_autograd is not None:
            self.validate(*args)
            return self._eager_autograd.apply(None, *args)
        if torch.compiler.is_compiling():  # the fake validates while tracing, the body at run time
            return self.torch_op(*args)
        self.validate(*args)  # our messages, not the schema parser's
        token = _validated_call.set(True)
        try:
            return self.torch_op(*args)
        finally:
            _validated_call.reset(token)

    def _call_in_autocast(self, args: tuple) -> torch.Tensor:
        """The call inside a torch.autocast region (ops/autocast.py): the activations in the
        region's dtype, then the op with autocast off."""
        args = autocast_args(args, self.activations)
        with autocast_off():
            return self(*args)


def _autograd_function(op: OpDefinition, backward: Callable, setup_context: Callable) -> type:
    """An autograd.Function, applied as (run_x, *args): forward runs `run_x(x)` (a prepared
    call's runner, ops/prepared.py) or, when run_x is None, the path `op` selects (arguments
    validated by the caller), then the op's setup_context; backward is the op's. Both take
    what they take from the torch op: (ctx, inputs, output) and (ctx, *grads)."""

    # forward(ctx, ...) rather than a separate setup_context: with one, Function.apply binds
    # its arguments through inspect.signature on every call (~25 µs).
    def forward(ctx, run_x, *args):
        output = op.run(*args) if run_x is None else run_x(args[0])
        setup_context(ctx, args, output)
        return output

    def backward_of_args(ctx, *grads):  # the op's backward sees its own arguments only
        needs = ctx.needs_input_grad
        ctx.needs_input_grad = needs[1:]
        try:
            grads_in = backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = needs
        return (None, *grads_in) if isinstance(grads_in, tuple) else (None, grads_in)

    # Named after the op: autograd names the node "<name>Backward" (grad_fn, profiles).
    return type(f"{op._short}_autograd", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward_of_args)})


def define_op(name: str, signature: Callable, validate: Callable[..., None],
              out_shape: Callable[..., tuple], activations: tuple[int, ...] = (0,)) -> OpDefinition:
    """Define torch.ops.bigperf.<op>: `signature` is an annotated prototype (its body is
    never run) giving the schema; `validate(*args)` raises naming the op and the argument;
    `out_shape(*args)` is the output's shape; `activations`, the positions torch.autocast
    casts to its dtype (x, and any input of x's dtype). Register paths on `.backends`."""
    return OpDefinition(name, signature, validate, out_shape, activations)
