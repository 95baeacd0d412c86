"""Prepared calls (bigperf/ops/prepared.py): a layer's op call validated and dispatched once
per form of x, and prepared again whenever anything it relied on changes."""

import copy
import pickle

import pytest
import torch
from torch import nn

import bigperf
from bigperf import _ext, tune
from bigperf.nn import FusedLinear, Int8Linear, SparseLinear
from bigperf.ops.define import define_op
from bigperf.ops.fused_linear import fused_linear
from bigperf.ops.onnx_lowering import onnx_lowering
from bigperf.ops.prepared import MAX_FORMS, PreparedCall
from bigperf.ops.registry import record_paths, use_backend
from bigperf.ops.validation import check_finite_once


def _signature(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor: ...


class _Counting:
    """A toy op, (x @ weight^T) * scale, counting validations, bindings and runs per path."""

    def __init__(self):
        self.validations = 0
        self.binds = 0
        self.bound_runs = 0
        self.runs = {"cpu": 0, "torch": 0}

    def validate(self, x, weight, scale):
        self.validations += 1
        if x.shape[-1] != weight.shape[1]:
            raise ValueError("bigperf.test_prepared_toy: argument 'x' does not match 'weight'")
        check_finite_once("bigperf.test_prepared_toy", "scale", scale)

    def runner(self, name):
        def run(x, weight, scale):
            self.runs[name] += 1
            return (x @ weight.t()) * scale
        return run

    def bind(self, weight, scale):
        self.binds += 1
        run = self.runner("cpu")

        def bound(x):
            self.bound_runs += 1
            return run(x, weight, scale)
        return bound


@pytest.fixture(scope="module")
def toy():
    counts = _Counting()
    op = define_op("bigperf.test_prepared_toy", _signature, counts.validate,
                   lambda x, weight, scale: (*x.shape[:-1], weight.shape[0]))
    op.backends.register("cpu", lambda *args: None, counts.runner("cpu"), bind=counts.bind)
    onnx_lowering(op.name)(lambda x, weight, scale: (x @ weight.t()) * scale)

    def setup_context(ctx, inputs, output):
        ctx.weight_scaled = inputs[1] * inputs[2]

    op.register_autograd(lambda ctx, grad: (grad @ ctx.weight_scaled, None, None), setup_context)
    return op, counts


class _ToyLayer(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.weight = nn.Parameter(torch.randn(4, 6), requires_grad=False)
        self.register_buffer("scale", torch.tensor(2.0))
        self.prepared = PreparedCall()

    def forward(self, x):
        return self.prepared(self.op, x, (self.weight, self.scale))


def _expected(layer, x):
    return (x @ layer.weight.t()) * layer.scale


def test_one_validation_per_form_of_x(toy):
    op, counts = toy
    layer = _ToyLayer(op)
    x = torch.randn(3, 6)
    before = counts.validations, counts.binds, counts.runs["cpu"]
    for _ in range(5):
        torch.testing.assert_close(layer(x), _expected(layer, x))
    assert (counts.validations, counts.binds, counts.runs["cpu"]) == (before[0] + 1, before[1] + 1, before[2] + 5)
    layer(torch.randn(2, 7, 6))  # a new form of x: validated and bound once more
    layer(torch.randn(2, 7, 6))
    assert counts.validations == before[0] + 2 and counts.binds == before[1] + 2


def test_bad_x_raises_as_the_op_does_every_time(toy):
    op, _ = toy
    layer = _ToyLayer(op)
    for _ in range(2):  # nothing is kept from a failed validation
        with pytest.raises(ValueError, match="bigperf.test_prepared_toy: argument 'x'"):
            layer(torch.randn(3, 5))


def test_in_place_change_validates_again(toy):
    op, counts = toy
    layer = _ToyLayer(op)
    x = torch.randn(3, 6)
    layer(x)
    with torch.no_grad():
        layer.weight.mul_(3.0)  # a new version: the result must follow it
    validations = counts.validations
    torch.testing.assert_close(layer(x), _expected(layer, x))
    assert counts.validations == validations + 1
    with torch.no_grad():
        layer.scale.fill_(float("inf"))  # what validation found before is no longer true
    with pytest.raises(ValueError, match="scale"):
        layer(x)


def test_replaced_or_reassigned_tensors_are_seen(toy):
    op, _ = toy
    layer = _ToyLayer(op)
    x = torch.randn(3, 6)
    layer(x)
    layer.weight = nn.Parameter(torch.randn(4, 6), requires_grad=False)  # a new object
    torch.testing.assert_close(layer(x), _expected(layer, x))
    layer.weight.data = torch.randn(4, 6)  # the same object, new storage
    torch.testing.assert_close(layer(x), _expected(layer, x))
    layer.weight.data = torch.randn(4, 5)  # and a shape the op refuses
    with pytest.raises(ValueError, match="argument 'x' does not match 'weight'"):
        layer(x)


def test_context_changes_select_again(toy):
    op, counts = toy
    layer = _ToyLayer(op)
    x = torch.randn(3, 6)
    layer(x)
    binds = counts.binds
    with use_backend("reference"):  # no reference path: the forced backend must be honoured
        with pytest.raises(bigperf.ops.registry.NoBackendError):
            layer(x)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        layer(x)
    finally:
        torch.set_num_threads(threads)
    tune.forget()
    layer(x)
    assert counts.binds == binds + 2  # another thread count, and a tuner that forgot


def test_observed_calls_take_the_op(toy):
    op, counts = toy
    layer = _ToyLayer(op)
    x = torch.randn(3, 6)
    layer(x)
    binds, runs = counts.binds, counts.runs["cpu"]
    with record_paths() as paths:
        layer(x)
    assert counts.binds == binds and counts.runs["cpu"] == runs + 1  # run by the op, not the kept runner
    bound_runs = counts.bound_runs
    batched = torch.randn(2, 3, 6)
    with torch.no_grad():  # a torch.func transform (its x is a batched view, no storage): the op's way
        torch.testing.assert_close(torch.func.vmap(layer)(batched), _expected(layer, batched))
    assert counts.bound_runs == bound_runs


@pytest.mark.parametrize("make", [
    lambda linear: FusedLinear.from_linear(linear, weight_dtype=torch.bfloat16),
    lambda linear: Int8Linear.from_linear(linear, group_size=32)], ids=["fused-bf16", "int8-weight-only"])
def test_vmap_over_a_layer_runs_our_kernel_per_sample(make):
    torch.manual_seed(0)
    layer = make(nn.Linear(32, 8))
    x = torch.randn(3, 2, 32)
    with torch.no_grad(), use_backend("cpu"):  # our kernel reads x's storage, which a batched x lacks
        layer(x[0])
        batched = torch.func.vmap(layer)(x)
        torch.testing.assert_close(batched, torch.stack([layer(sample) for sample in x]), rtol=0, atol=0)


def test_recorded_gradients_use_the_kept_runner(toy):
    op, counts = toy
    layer = _ToyLayer(op)
    x = torch.randn(3, 6)
    layer(x)
    validations, binds, runs = counts.validations, counts.binds, counts.runs["cpu"]
    for step in range(2):
        x_grad = x.clone().requires_grad_()
        y = layer(x_grad)
        assert y.grad_fn is not None and type(y.grad_fn).__name__.startswith("test_prepared_toy")
        y.sum().backward()  # the op's backward, through the kept runner's output
        torch.testing.assert_close(x_grad.grad, (layer.weight * layer.scale).sum(0).expand(3, 6))
    assert (counts.validations, counts.binds, counts.runs["cpu"]) == (validations, binds, runs + 2)
    with pytest.raises(ValueError, match="argument 'x'"):  # validated as before when x's form is new
        layer(torch.randn(3, 5, requires_grad=True))


def test_layer_gradients_match_the_ops():
    torch.manual_seed(0)
    layer = FusedLinear.from_linear(nn.Linear(32, 16), activation="gelu", weight_dtype=torch.bfloat16)
    x = torch.randn(5, 32)
    grads = []
    for call in (layer, lambda x: fused_linear(x, layer.weight, layer.bias, None, "gelu")):
        for _ in range(2):  # the second layer call runs the kept runner
            layer.zero_grad()
            x_grad = x.clone().requires_grad_()
            out = call(x_grad)
            out.square().sum().backward()
        grads.append((out.detach(), x_grad.grad, layer.weight.grad, layer.bias.grad))
    for prepared, op in zip(*grads):
        torch.testing.assert_close(prepared, op, rtol=0, atol=0)
    layer.zero_grad()
    with torch.no_grad():  # an optimizer step: a new version of the weight, which the next call uses
        layer.weight.add_(1.0)
    out = layer(x)
    torch.testing.assert_close(out, fused_linear(x, layer.weight, layer.bias, None, "gelu"), rtol=0, atol=0)


def test_forms_are_bounded(toy):
    op, _ = toy
    layer = _ToyLayer(op)
    for m in range(1, MAX_FORMS + 10):
        layer(torch.randn(m, 6))
    assert len(layer.prepared._runners) <= MAX_FORMS


# ----------------------------------------------------------------------------- the layers

def _linear(n, k):
    torch.manual_seed(0)
    return nn.Linear(k, n)


_LAYERS = {
    "fused-bf16": lambda: FusedLinear.from_linear(_linear(40, 64), weight_dtype=torch.bfloat16),
    "fused-fp32-gelu": lambda: FusedLinear.from_linear(_linear(40, 64), activation="gelu"),
    "int8-weight-only": lambda: Int8Linear.from_linear(_linear(40, 64), weight_only=True),
    "int8-weight-only-group": lambda: Int8Linear.from_linear(_linear(40, 64), weight_only=True, group_size=32),
    "int8-dynamic": lambda: Int8Linear.from_linear(_linear(40, 64), weight_only=False),
    "int8-weight-only-rowmajor": lambda: Int8Linear.from_linear(_linear(40, 64)).use_kernel_layout("rowmajor"),
    "int8-dynamic-rowmajor": lambda: Int8Linear.from_linear(_linear(40, 64),
                                                            weight_only=False).use_kernel_layout("rowmajor"),
    "2:4": lambda: SparseLinear.from_linear(_linear(64, 64), pattern="2:4", prune=True),
    "2:4-int8": lambda: SparseLinear.from_linear(_linear(64, 64), pattern="2:4", prune=True, int8=True),
    "2:4-canonical": lambda: SparseLinear.from_linear(_linear(64, 64), pattern="2:4",
                                                      prune=True).use_kernel_layout("canonical"),
    "bsr": lambda: SparseLinear.from_linear(_linear(64, 64), pattern="block", density=0.5, prune=True),
    "bsr-canonical": lambda: SparseLinear.from_linear(_linear(64, 64), pattern="block", density=0.5,
                                                      prune=True).use_kernel_layout("canonical"),
}


@pytest.mark.parametrize("name", list(_LAYERS))
def test_layers_compute_what_their_op_computes(name):
    """Every layer form: its prepared call's kept runner against its first call and against
    the same layer with nothing prepared, bit for bit (its accuracy is the op's tests')."""
    layer = _LAYERS[name]().eval()
    for shape in ((1, layer.in_features), (16, layer.in_features), (2, 5, layer.in_features)):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(shape).to(dtype)
            with torch.no_grad():
                first, second = layer(x), layer(x)  # the second runs the kept runner
                layer.__dict__.pop("_prepared_call", None)
                fresh = layer(x)
            assert first.shape == (*shape[:-1], layer.out_features) and first.dtype == dtype
            torch.testing.assert_close(second, first, rtol=0, atol=0)
            torch.testing.assert_close(fresh, first, rtol=0, atol=0)


def test_layer_copies_compute_with_their_own_weights():
    torch.manual_seed(1)
    layer = FusedLinear.from_linear(nn.Linear(32, 16), weight_dtype=torch.bfloat16).eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        y = layer(x)
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            clone.weight.mul_(2.0)
            clone.bias.mul_(2.0)
            torch.testing.assert_close(clone(x), 2 * y, rtol=2e-2, atol=2e-2)
            torch.testing.assert_close(layer(x), y, rtol=0, atol=0)  # the original is untouched


def test_layer_moved_or_loaded_computes_with_the_new_weights():
    torch.manual_seed(2)
    layer = Int8Linear.from_linear(nn.Linear(32, 16), weight_only=True).eval()
    other = Int8Linear.from_linear(nn.Linear(32, 16), weight_only=True).eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        layer(x)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
        y = layer(x)
        layer.to(torch.bfloat16)  # the layout's buffers are rebuilt
        torch.testing.assert_close(layer(x.bfloat16()).float(), y, rtol=2e-2, atol=2e-2)


def test_forced_cpu_isa_is_honoured():
    if "avx2" not in _ext.runnable_cpu_isas():
        pytest.skip("needs the AVX2 kernels")
    torch.manual_seed(3)
    layer = FusedLinear.from_linear(nn.Linear(512, 16)).eval()
    x = torch.randn(1, 512)
    with torch.no_grad(), use_backend("cpu"):
        best = layer(x)
        with _ext.use_cpu_isa("scalar"):
            scalar = layer(x)  # must be the scalar ISA's runner, not the one kept for the best ISA
            expected = fused_linear(x, layer.weight, layer.bias)
    if torch.equal(best, expected):
        pytest.skip("the ISAs' sums happened to agree bit for bit")
    torch.testing.assert_close(scalar, expected, rtol=0, atol=0)


def test_float_copy_kept_or_dropped_changes_the_paths():
    torch.manual_seed(4)
    layer = Int8Linear.from_linear(nn.Linear(32, 16), weight_only=True).eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        with use_backend("torch:copy"), pytest.raises(bigperf.ops.registry.NoBackendError):
            layer(x)
        layer.keep_float_copy()
        with use_backend("torch:copy"):
            y = layer(x)  # the copy is there now: the path serves
        torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)
        layer.keep_float_copy(False)
        with use_backend("torch:copy"), pytest.raises(bigperf.ops.registry.NoBackendError):
            layer(x)  # and gone again: not a runner kept from before


def test_a_parametrized_weight_is_read_as_its_parametrization_gives_it():
    # torch.nn.utils.parametrize moves the parameter out of _parameters behind a property:
    # the layer's per-call read (nn/_held.py) must still see the parametrized weight.
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, weight):
            return weight * 2

    torch.manual_seed(0)
    layer = FusedLinear.from_linear(nn.Linear(16, 8), weight_dtype=torch.bfloat16)
    x = torch.randn(3, 16)
    with torch.no_grad():
        plain = layer(x)
        parametrize.register_parametrization(layer, "weight", Doubled())
        doubled = layer(x)
        torch.testing.assert_close(doubled, fused_linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    assert not torch.allclose(doubled, plain)
