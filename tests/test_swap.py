import copy

import pytest
import torch
from torch import nn

import bigperf
from bigperf.nn import FusedLinear
from tests.helpers import rel_error


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(32, 64), nn.GELU(),
        nn.Sequential(nn.Linear(64, 64), nn.ReLU()),
        nn.Linear(64, 16), nn.Tanh(),
    ).eval()


def test_swap_replaces_every_linear_and_fuses_sequential_activations():
    model = small_model()
    reference = copy.deepcopy(model)
    report = bigperf.swap(model, bigperf.FusedMixedPrecision())
    assert [c.name for c in report.changes] == ["0", "2.0", "3"]
    assert [c.activation for c in report.changes] == ["gelu", "relu", "none"]  # Tanh is not fused
    assert isinstance(model[0], FusedLinear) and isinstance(model[1], nn.Identity)
    assert isinstance(model[4], nn.Tanh)
    assert report.bytes_after < 0.6 * report.bytes_before
    x = torch.randn(7, 32)
    with torch.no_grad():
        assert rel_error(model(x), reference(x)) < 1e-2
    assert "FusedLinear" in str(report) and report.to_dict()["changes"][0]["backend"] == "cpu"


def test_dry_run_changes_nothing():
    model = small_model()
    before = copy.deepcopy(model.state_dict())
    report = bigperf.swap(model, bigperf.FusedMixedPrecision(), dry_run=True)
    assert len(report.changes) == 3 and report.dry_run
    assert all(type(m) is not FusedLinear for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_recipe_dict_and_filter():
    model = small_model()
    report = bigperf.swap(model, {r"2\..*": None, r".*": bigperf.FusedMixedPrecision(torch.float16)},
                          filter=lambda module, name: module.out_features != 16)
    assert [c.name for c in report.changes] == ["0"]
    assert {name for name, _ in report.kept} == {"2.0", "3"}
    assert model[0].weight.dtype == torch.float16


def test_failed_swap_leaves_model_untouched():
    model = small_model()
    original_children = list(model.children())

    class Exploding(bigperf.FusedMixedPrecision):
        def make_layer(self, linear, activation):
            if linear.out_features == 16:
                raise RuntimeError("boom")
            return super().make_layer(linear, activation)

    with pytest.raises(RuntimeError, match="boom"):
        bigperf.swap(model, Exploding())
    assert list(model.children()) == original_children
    assert type(model[2][0]) is nn.Linear


def test_failure_while_applying_rolls_back():
    model = small_model()
    inner = model[2]
    original = list(model.children())

    class Frozen(nn.Sequential):
        def __setattr__(self, name, value):
            if isinstance(value, FusedLinear):
                raise RuntimeError("cannot replace")
            super().__setattr__(name, value)

    frozen = Frozen(*inner)
    model[2] = frozen
    with pytest.raises(RuntimeError, match="cannot replace"):
        bigperf.swap(model, bigperf.FusedMixedPrecision())
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.GELU
    assert [type(m) for m in model.children()] == [type(m) for m in [*original[:2], frozen, *original[3:]]]


def test_accuracy_gate_keeps_layers_below_min_sqnr():
    model = small_model()
    batches = [torch.randn(4, 32) for _ in range(3)]
    report = bigperf.swap(model, bigperf.FusedMixedPrecision(torch.bfloat16), calibration=batches, min_sqnr=200)
    assert report.changes == [] and len(report.kept) == 3
    assert all("SQNR" in reason for _, reason in report.kept)
    assert type(model[0]) is nn.Linear
    report = bigperf.swap(model, bigperf.FusedMixedPrecision(torch.bfloat16), calibration=batches, min_sqnr=30)
    assert len(report.changes) == 3 and all(30 < c.sqnr_db < 200 for c in report.changes)


@pytest.mark.parametrize("call,error,word", [
    (lambda m: bigperf.swap("model", bigperf.FusedMixedPrecision()), TypeError, "'model'"),
    (lambda m: bigperf.swap(m, object()), TypeError, "'config'"),
    (lambda m: bigperf.swap(m, "int9"), ValueError, "unknown config name 'int9'"),
    (lambda m: bigperf.swap(m, {"(": bigperf.Int8WeightOnly()}), ValueError, "bad regex"),
    (lambda m: bigperf.swap(m, {".*": "nope"}), ValueError, "unknown config name"),
    (lambda m: bigperf.swap(m, bigperf.FusedMixedPrecision(), min_sqnr=30), ValueError, "'min_sqnr'"),
    (lambda m: bigperf.swap(m, bigperf.FusedMixedPrecision(), calibration=[]), ValueError, "'calibration'"),
])
def test_bad_swap_arguments(call, error, word):
    model = small_model()
    with pytest.raises(error, match=word):
        call(model)
    assert type(model[0]) is nn.Linear


def test_config_a_device_cannot_serve_is_refused_and_model_unchanged():
    model = small_model()
    with bigperf.use_backend("cuda"), pytest.raises(ValueError, match="cannot serve layer '0'"):
        bigperf.swap(model, "bf16")
    assert type(model[0]) is nn.Linear and type(model[1]) is nn.GELU


def test_config_names_are_accepted():
    model = small_model()
    report = bigperf.swap(model, "int8", dry_run=True)
    assert report.config == "Int8WeightOnly(per-channel)" and len(report.changes) == 3


def test_layers_a_config_cannot_take_are_kept_with_the_reason():
    model = small_model()  # in_features 32 and 64: group 128 divides neither
    report = bigperf.swap(model, "int8-g128")
    assert report.changes == [] and all("does not divide" in reason for _, reason in report.kept)
    assert type(model[0]) is nn.Linear


def _hooked_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 8)).eval()


def test_the_new_layer_takes_over_the_users_hooks():
    """Hooks on a swapped layer keep firing, on the same inputs and outputs: a layer whose
    output a hook watches keeps its activation unfused; a hook's handle still removes it."""
    model = _hooked_mlp()
    x = torch.randn(5, 32)
    seen = {}
    handle = model[0].register_forward_hook(lambda m, a, out: seen.__setitem__("out0", out.detach().clone()))
    model[2].register_forward_pre_hook(lambda m, a: seen.__setitem__("in2", a[0].detach().clone()))
    model[3].register_forward_hook(lambda m, a, out: seen.__setitem__("gelu", out.detach().clone()))
    with torch.no_grad():
        expected_out0 = model[0](x)
    report = bigperf.swap(model, bigperf.FusedMixedPrecision(torch.float32))
    activations = {c.name: c.activation for c in report.changes}
    # 0: its output hook must see the pre-ReLU output, so ReLU stays a module; 2: a pre-hook
    # only, but the GELU after it has a hook of its own, so it stays too; 4: nothing to fuse.
    assert activations == {"0": "none", "2": "none", "4": "none"}, activations
    assert isinstance(model[1], nn.ReLU) and isinstance(model[3], nn.GELU)
    with torch.no_grad():
        model(x)
    assert rel_error(seen["out0"], expected_out0) < 1e-5 and (seen["out0"] < 0).any(), "saw the pre-activation output"
    assert torch.equal(seen["in2"], torch.relu(seen["out0"]))
    assert "gelu" in seen
    handle.remove()
    seen.clear()
    with torch.no_grad():
        model(x)
    assert "out0" not in seen and "in2" in seen


def test_a_pre_hook_alone_leaves_fusion_on():
    model = _hooked_mlp()
    model[0].register_forward_pre_hook(lambda m, a: None)
    report = bigperf.swap(model, bigperf.FusedMixedPrecision(torch.float32))
    assert {c.name: c.activation for c in report.changes}["0"] == "relu"
    assert len(model[0]._forward_pre_hooks) == 1


def test_a_layer_whose_forward_is_replaced_is_kept():
    """accelerate's offload hooks and some tensor-parallel wrappers replace module.forward; a
    new layer could not run that code, so the layer stays as it is."""
    model = _hooked_mlp()
    original = model[2].forward
    model[2].forward = lambda x: original(x) * 2
    x = torch.randn(3, 32)
    with torch.no_grad():
        before = model(x)
    report = bigperf.swap(model, "bf16")
    assert "forward is replaced" in dict(report.kept)["2"]
    assert type(model[2]) is nn.Linear and {c.name for c in report.changes} == {"0", "4"}
    with torch.no_grad():
        assert rel_error(model(x), before) < 2e-2
