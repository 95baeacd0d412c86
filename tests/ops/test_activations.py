"""The activation names the layers accept and the codes the kernels share."""

import pytest
from torch import nn

from bigperf.ops.activations import ACTIVATIONS, activation_name


@pytest.mark.parametrize("given,name", [
    (None, "none"), ("gelu", "gelu"), (nn.ReLU(), "relu"), (nn.GELU(), "gelu"),
    (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.SiLU(), "silu")])
def test_activation_name_accepts_names_modules_and_none(given, name):
    assert activation_name(given, "caller") == name


@pytest.mark.parametrize("given", ["tanh", nn.Tanh(), 3])
def test_activation_name_refuses_others_naming_the_caller(given):
    with pytest.raises(ValueError, match=r"^some\.layer: argument 'activation'"):
        activation_name(given, "some.layer")


def test_cpu_kernels_know_exactly_the_python_activations():
    C = pytest.importorskip("bigperf._C", reason="bigperf._C is not built")
    if not hasattr(C, "NUM_ACTIVATIONS"):
        pytest.fail("bigperf._C does not export NUM_ACTIVATIONS (rebuild the package)")
    assert C.NUM_ACTIVATIONS == len(ACTIVATIONS)


def test_layers_share_the_activation_check():
    from bigperf.nn import FusedLinear, Int8Linear, SparseLinear

    for build in (lambda: FusedLinear(8, 8, activation="tanh"), lambda: Int8Linear(8, 8, activation="tanh"),
                  lambda: SparseLinear(8, 8, activation="tanh")):
        with pytest.raises(ValueError, match="argument 'activation' must be one of"):
            build()
