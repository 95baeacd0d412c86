import copy
import io

import pytest
import torch
from torch import nn

import bigperf
from bigperf.nn import FusedLinear
from tests.helpers import rel_error


@pytest.mark.parametrize("weight_dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
@pytest.mark.parametrize("activation,module", [("none", nn.Identity()), ("relu", nn.ReLU()),
                                               ("gelu", nn.GELU()), ("gelu_tanh", nn.GELU("tanh")),
                                               ("silu", nn.SiLU())])
def test_from_linear_matches_linear_then_activation(weight_dtype, tol, activation, module):
    torch.manual_seed(0)
    linear = nn.Linear(48, 40)
    layer = FusedLinear.from_linear(linear, activation=activation, weight_dtype=weight_dtype)
    x = torch.randn(3, 5, 48)
    with torch.no_grad():
        expected = module(linear(x))
        got = layer(x)
    assert got.shape == expected.shape and got.dtype == x.dtype
    assert rel_error(got, expected) < tol


def test_activation_given_as_module_and_residual():
    torch.manual_seed(1)
    linear = nn.Linear(16, 16, bias=False)
    layer = FusedLinear.from_linear(linear, activation=nn.SiLU())
    assert layer.activation == "silu"
    x, r = torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        assert rel_error(layer(x, residual=r), nn.functional.silu(linear(x)) + r) < 1e-5


def test_state_dict_round_trip():
    torch.manual_seed(2)
    layer = FusedLinear.from_linear(nn.Linear(24, 8), activation="gelu", weight_dtype=torch.bfloat16)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = FusedLinear(24, 8, activation="gelu", weight_dtype=torch.bfloat16)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(4, 24)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
    assert fresh.weight.dtype == torch.bfloat16 and fresh.bias.dtype == torch.float32


def test_trains_through_the_fused_op():
    torch.manual_seed(3)
    layer = FusedLinear(8, 4, activation="relu")
    loss = layer(torch.randn(5, 8)).pow(2).sum()
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("call,error,word", [
    (lambda: FusedLinear.from_linear(nn.Conv1d(2, 2, 1)), TypeError, "'linear'"),
    (lambda: FusedLinear(4, 4, weight_dtype=torch.int8), TypeError, "'weight_dtype'"),
    (lambda: FusedLinear(4, 4, activation="tanh"), ValueError, "'activation'"),
    (lambda: FusedLinear(4, 4, activation=nn.Tanh()), ValueError, "'activation'"),
    (lambda: FusedLinear(0, 4), ValueError, "positive"),
])
def test_bad_construction_is_refused(call, error, word):
    with pytest.raises(error, match=word):
        call()


def _swapped_mlp():
    import bigperf

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()
    bigperf.swap(model, bigperf.FusedMixedPrecision())
    return model


def test_swapped_model_under_torch_compile_fullgraph_inductor():
    model = _swapped_mlp()
    x = torch.randn(4, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), rtol=1e-6, atol=1e-6)


def test_swapped_model_exports_with_the_bigperf_op_in_the_graph():
    model = _swapped_mlp()
    x = torch.randn(4, 32)
    exported = torch.export.export(model, (x,))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.bigperf.fused_linear.default) == 2
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), model(x), rtol=1e-6, atol=1e-6)


def test_swapped_under_inference_mode_with_a_float_copy():
    """swap(..., FusedMixedPrecision(float_copy=True)) under torch.inference_mode() used to
    fail ("Inference tensors do not track version counter"): the layer's weight is an
    ordinary tensor now, so its float copy is tied to its version and serves."""
    from bigperf.ops.torch_paths import float_copy_why_not

    model = nn.Sequential(nn.Linear(64, 32))
    with torch.inference_mode():
        bigperf.swap(model, bigperf.FusedMixedPrecision(float_copy=True))
        layer = model[0]
        assert not any(t.is_inference() for t in list(layer.parameters()) + list(layer.buffers()))
        assert float_copy_why_not(layer.weight) is None
        x = torch.randn(5, 64)
        with bigperf.use_backend("torch"):
            out = layer(x)
        # Whichever torch path the timing picks: torch:bf16 (the weight's own precision, x
        # rounded to bf16) is within the layer's tolerance, not within fp32's.
        torch.testing.assert_close(out, x @ layer.weight.float().t() + layer.bias, atol=1e-2, rtol=1e-2)
        moved = layer.to(torch.float16)
        assert not moved.weight.is_inference() and float_copy_why_not(moved.weight) is None


def test_float_copy_of_an_inference_tensor_is_refused_by_name():
    with torch.inference_mode():
        layer = copy.deepcopy(FusedLinear(16, 8, weight_dtype=torch.bfloat16))  # deepcopy here makes inference tensors
        with pytest.raises(ValueError, match=r"FusedLinear.keep_float_copy: the layer's weight is an inference"):
            layer.keep_float_copy()
