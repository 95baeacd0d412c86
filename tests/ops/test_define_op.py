"""define_op: the op-wrapper pattern every bigperf op is built from (bigperf/ops/define.py)."""

import pytest
import torch

from bigperf.ops.define import define_op
from bigperf.ops.onnx_lowering import onnx_lowering


def _signature(x: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor: ...


class _Counting:
    def __init__(self):
        self.validations = 0
        self.runs = 0

    def validate(self, x, weight, scale):
        self.validations += 1
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise ValueError("bigperf.toy: argument 'x' must be a 2-D tensor")
        if x.shape[1] != weight.shape[1]:
            raise ValueError("bigperf.toy: argument 'x' does not match 'weight'")

    def run(self, x, weight, scale):
        self.runs += 1
        return (x @ weight.t()) * scale


def _toy_op(name):
    """(op, its counts): (x @ weight^T) * scale on paths that count their validations and runs."""
    counts = _Counting()
    op = define_op(name, _signature, counts.validate, lambda x, weight, scale: (x.shape[0], weight.shape[0]))
    op.backends.register("cpu", lambda *args: None, counts.run)
    op.backends.register("reference", lambda *args: None, counts.run)
    # Every bigperf op has an ONNX lowering (tests/deploy checks it of all registered ops).
    onnx_lowering(op.name)(lambda x, weight, scale: (x @ weight.t()) * scale)
    return op, counts


@pytest.fixture(scope="module")
def toy():
    return _toy_op("bigperf.test_define_op_toy")


def _reset(counts):
    counts.validations = counts.runs = 0


def test_eager_call_validates_once_and_runs_the_selected_path(toy):
    op, counts = toy
    _reset(counts)
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    torch.testing.assert_close(op(x, w, 2.0), (x @ w.t()) * 2)
    assert (counts.validations, counts.runs) == (1, 1)


def test_dispatcher_route_validates_once(toy):
    # requires_grad sends the call through torch.ops.bigperf (not the eager fast path): the
    # entry validates, and the custom_op body must not check the same arguments again.
    op, counts = toy
    _reset(counts)
    x, w = torch.randn(3, 5), torch.randn(4, 5, requires_grad=True)
    with torch.enable_grad():
        out = op(x, w, 1.0)
    assert out.shape == (3, 4)
    assert (counts.validations, counts.runs) == (1, 1)


def test_direct_torch_ops_call_is_validated(toy):
    op, counts = toy
    _reset(counts)
    with pytest.raises(ValueError, match="argument 'x' does not match"):
        torch.ops.bigperf.test_define_op_toy(torch.randn(3, 6), torch.randn(4, 5), 1.0)
    assert counts.runs == 0
    out = torch.ops.bigperf.test_define_op_toy(torch.randn(3, 5), torch.randn(4, 5), 1.0)
    assert out.shape == (3, 4) and counts.validations == 2 and counts.runs == 1


def test_fake_validates_and_gives_the_output_shape(toy):
    op, counts = toy
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        out = torch.ops.bigperf.test_define_op_toy(torch.empty(7, 5), torch.empty(2, 5), 1.0)
        assert out.shape == (7, 2)
        with pytest.raises(ValueError, match="bigperf.toy"):
            torch.ops.bigperf.test_define_op_toy(torch.empty(7, 3), torch.empty(2, 5), 1.0)


def test_bad_name_is_refused():
    with pytest.raises(ValueError, match="define_op: argument 'name'"):
        define_op("other.op", _signature, lambda *a: None, lambda *a: ())


@pytest.fixture(scope="module")
def toy_with_grad():
    op, counts = _toy_op("bigperf.test_define_op_toy_grad")

    def setup_context(ctx, inputs, output):
        x, weight, scale = inputs
        ctx.save_for_backward(x, weight)
        ctx.scale = scale

    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad @ weight * ctx.scale, grad.t() @ x * ctx.scale, None

    op.register_autograd(backward, setup_context)
    return op, counts


def test_eager_call_that_needs_gradients_skips_the_dispatcher(toy_with_grad):
    """Plain eager with a tensor that requires grad: validated once, run once, through an
    autograd.Function with the op's backward (not the custom_op's ~100 µs wrapper), and the
    gradients are those of the math."""
    op, counts = toy_with_grad
    _reset(counts)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    out = op(x, w, 2.0)
    assert (counts.validations, counts.runs) == (1, 1)
    assert "test_define_op_toy_grad_autograd" in out.grad_fn.name()
    out.sum().backward()
    xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    ((xr @ wr.t()) * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(w.grad, wr.grad)
    assert torch.autograd.gradcheck(lambda a, b: op(a, b, 0.5), (x.detach().requires_grad_(True),
                                                                  w.detach().requires_grad_(True)))


def test_torch_func_transforms_still_take_the_dispatcher():
    """Under torch.func (grad, vmap, ...) the call goes to torch.ops.bigperf as before: an
    autograd.Function of the eager route would see functorch's wrapped tensors."""
    from bigperf.ops.registry import EAGER_AUTOGRAD, eager_call_kind

    x, w = torch.randn(3, 5), torch.randn(4, 5, requires_grad=True)
    with torch.enable_grad():
        assert eager_call_kind((x, w, 1.0)) is EAGER_AUTOGRAD
    kinds = []
    torch.func.grad(lambda weight: kinds.append(eager_call_kind((x, weight, 1.0))) or (x @ weight.t()).sum())(w)
    assert kinds == [None]


def test_torch_op_records_the_ops_backward(toy_with_grad):
    """A torch.ops.bigperf call that records a gradient (compiled graphs, export, modes) goes
    through the op's autograd kernel: the same autograd.Function as the eager route around
    the call below autograd, validated by the body."""
    op, counts = toy_with_grad
    _reset(counts)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    out = torch.ops.bigperf.test_define_op_toy_grad(x, w, 2.0)
    assert (counts.validations, counts.runs) == (1, 1)
    assert "test_define_op_toy_grad_autograd" in out.grad_fn.name()
    out.sum().backward()
    torch.testing.assert_close(x.grad, (2.0 * w).sum(0).expand(3, 5).detach())
    torch.testing.assert_close(w.grad, (2.0 * x).sum(0).expand(4, 5).detach())


def test_torch_op_calls_stay_visible_to_dispatch_modes(toy_with_grad):
    """Without a gradient to record, the autograd kernel runs the body itself only when the
    device's kernel is all that is below autograd: a dispatch mode still sees the op."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    op, counts = toy_with_grad
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    with torch.no_grad():
        plain = torch.ops.bigperf.test_define_op_toy_grad(x, w, 2.0)
        with Seen() as seen:
            observed = torch.ops.bigperf.test_define_op_toy_grad(x, w, 2.0)
    assert "bigperf.test_define_op_toy_grad.default" in seen.ops
    torch.testing.assert_close(observed, plain)
    torch.testing.assert_close(plain, (x @ w.t()) * 2.0)


def test_compiled_gradients_match_eager(toy_with_grad):
    op, _ = toy_with_grad
    x = torch.randn(3, 5, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)

    def loss(x, w):
        return (op(x, w, 0.5).sin()).sum()
    grads = []
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        fn(xg, wg).backward()
        grads.append((xg.grad, wg.grad))
    torch.testing.assert_close(grads[1], grads[0])


def _dtype_recording_op(name):
    """(op, the dtypes of x and weight each run saw): x @ weight^T in fp32, returned in x's dtype."""
    seen = []

    def run(x, weight, scale):
        seen.append((x.dtype, weight.dtype))
        return ((x.float() @ weight.float().t()) * scale).to(x.dtype)
    op = define_op(name, _signature, lambda *args: None, lambda x, weight, scale: (x.shape[0], weight.shape[0]))
    op.backends.register("cpu", lambda *args: None, run)
    op.backends.register("reference", lambda *args: None, run)
    onnx_lowering(op.name)(lambda x, weight, scale: (x @ weight.t()) * scale)
    return op, seen


def test_autocast_casts_the_activation_on_every_route():
    """In a torch.autocast region an op computes on x in the region's dtype and returns it, as
    nn.Linear does, whichever way it is called: the public entry, torch.ops directly (its
    Autocast kernel), and a compiled graph; the weight is never converted. Outside the region,
    or for float64 x, nothing is cast."""
    op, seen = _dtype_recording_op("bigperf.test_define_op_autocast")
    x, w = torch.randn(3, 5), torch.randn(4, 5)
    torch_op = torch.ops.bigperf.test_define_op_autocast
    compiled = torch.compile(lambda a, b: op(a, b, 2.0), backend="aot_eager", fullgraph=True)
    for region_dtype in (torch.bfloat16, torch.float16):
        for route in (lambda: op(x, w, 2.0), lambda: torch_op(x, w, 2.0), lambda: compiled(x, w),
                      lambda: op(x.requires_grad_(True), w, 2.0)):
            seen.clear()
            x.requires_grad_(False)
            with torch.autocast("cpu", dtype=region_dtype):
                out = route()
            assert out.dtype == region_dtype
            assert seen == [(region_dtype, torch.float32)]
            torch.testing.assert_close(out, op(x.to(region_dtype), w, 2.0), rtol=0, atol=0)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        double = op(x.double(), w, 2.0), torch_op(x.double(), w, 2.0)
    assert seen == [(torch.float64, torch.float32)] * 2 and {t.dtype for t in double} == {torch.float64}
    seen.clear()
    assert op(x, w, 2.0).dtype == torch.float32 and seen == [(torch.float32, torch.float32)]
