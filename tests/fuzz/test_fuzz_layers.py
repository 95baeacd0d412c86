"""Property-based fuzzing of the layers: FusedLinear / Int8Linear / SparseLinear, built by
from_linear with drawn options (dtypes, group sizes, patterns, blocks, densities) and called
on drawn inputs. A layer is either refused with a clear error naming the layer and the
argument, or computes x @ W^T + b for the weight it holds, within the tolerance of x's dtype.

The weight a layer holds is read back through the reference backend (the layer applied to
the identity, minus the bias: exact in fp32), so one oracle serves every weight format.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, event, given
from hypothesis import strategies as st
from torch import nn

import bigperf
from bigperf.nn import FusedLinear, Int8Linear, SparseLinear
from tests.fuzz.support import (
    FLOATS,
    activations_x,
    assert_matches_reference,
    fill,
    name_check,
    seeds,
    tolerance,
)

features = st.sampled_from([1, 3, 8, 16, 17, 32, 48, 64, 136])
LAYER_ERRORS = (ValueError, TypeError, RuntimeError)


@st.composite
def layers(draw, k: int, n: int):
    """(factory name, a callable building the layer from a linear, whether x is quantised)."""
    kind = draw(st.sampled_from(("fused", "int8", "int8-dynamic", "sparse24", "sparse24-int8", "block")))
    if kind == "fused":
        weight_dtype = draw(st.sampled_from((None, *FLOATS, torch.float64)))
        return "bigperf.nn.FusedLinear", lambda lin: FusedLinear.from_linear(lin, weight_dtype=weight_dtype), False
    if kind in ("int8", "int8-dynamic"):
        dynamic = kind == "int8-dynamic"
        # (group_size=0: ZeroDivisionError today, pinned by test_int8_group_size_zero)
        group = None if dynamic else draw(st.sampled_from((None, 32, 64, 128, 7, 48)))
        symmetric = True if dynamic else draw(st.booleans())
        return ("bigperf.nn.Int8Linear",
                lambda lin: Int8Linear.from_linear(lin, weight_only=not dynamic, group_size=group, symmetric=symmetric),
                dynamic)
    if kind in ("sparse24", "sparse24-int8"):
        int8 = kind == "sparse24-int8"
        values_dtype = draw(st.sampled_from(FLOATS))
        return ("bigperf.nn.SparseLinear",
                lambda lin: SparseLinear.from_linear(lin, "2:4", int8=int8, values_dtype=values_dtype, prune=True),
                False)
    block = draw(st.sampled_from(((16, 16), (8, 8), (16, 32), (3, 3))))
    density = draw(st.sampled_from((0.25, 0.5, 1.0, 0.0, 1.5)))
    values_dtype = draw(st.sampled_from(FLOATS))
    return ("bigperf.nn.SparseLinear",
            lambda lin: SparseLinear.from_linear(lin, "block", block=block, density=density, values_dtype=values_dtype,
                                                 prune=True),
            False)


def held_weight(layer: nn.Module, k: int) -> torch.Tensor:
    """The [N, K] weight the layer computes with, in fp64 (see the module docstring)."""
    with torch.no_grad(), bigperf.use_backend("reference"):
        rows = layer(torch.eye(k, dtype=torch.float32)).double()
    if layer.bias is not None:
        rows = rows - layer.bias.double()
    return rows.t()


@given(data=st.data(), k=features, n=features, with_bias=st.booleans(),
       linear_dtype=st.sampled_from((torch.float32, torch.bfloat16, torch.float16)))
def test_layer_from_linear_and_forward(data, k, n, with_bias, linear_dtype):
    linear = nn.Linear(k, n, bias=with_bias)
    with torch.no_grad():
        linear.weight.copy_(fill((n, k), torch.float32, data.draw(seeds), scale=1 / math.sqrt(k)))
    linear = linear.to(linear_dtype)
    name, build, quantises_x = data.draw(layers(k, n))
    try:
        layer = build(linear)
    except LAYER_ERRORS as error:
        name_check(error, (name, "bigperf.sparsity.", "bigperf.quant."), ("linear", "weight_dtype", "group_size", "block", "density", "in_features",
                                 "out_features", "values_dtype", "pattern"))
        event(f"refused: {type(error).__name__}")
        return
    x_dtypes = FLOATS if not quantises_x else (torch.float32, torch.bfloat16)
    x, kind = data.draw(activations_x(k, x_dtypes))
    if quantises_x:
        assume(kind in ("normal", "zero"))  # an outlier in a row zeroes its other codes (W8A8 by design)
    with torch.no_grad():
        try:
            out = layer(x)
        except LAYER_ERRORS as error:
            name_check(error, "bigperf.", ("x",))
            raise AssertionError(f"{name} refused an input nn.Linear takes: {error}") from error
    weight = held_weight(layer, k)
    ref = x.reshape(math.prod(x.shape[:-1]), k).double() @ weight.t()
    if layer.bias is not None:
        ref = ref + layer.bias.double()
    ref = ref.reshape(*x.shape[:-1], n)
    assert out.dtype == x.dtype
    event(f"compared: {type(layer).__name__}")
    held_dtype = next((b.dtype for b in layer.buffers() if b.is_floating_point() and b.dim() >= 2),
                      getattr(getattr(layer, "weight", None), "dtype", torch.float32))
    tol = tolerance(x.dtype, held_dtype) if not quantises_x else 3e-2
    magnitude = (x.reshape(-1, k).double().abs().nan_to_num(0.0, 0.0, 0.0) @ weight.abs().t()
                 / math.sqrt(k)).reshape(ref.shape) if x.numel() else None
    assert_matches_reference(out, ref, tol, f"{name} {type(layer).__name__}", magnitude)


@given(k=st.sampled_from([8, 16]), n=st.sampled_from([16, 32]), x_dtype=st.sampled_from((torch.float64, torch.int8)),
       device=st.sampled_from(("cpu", "meta")), kind=st.sampled_from(("fused", "int8", "sparse24")))
def test_layer_refuses_foreign_inputs(k, n, x_dtype, device, kind):
    """x of a dtype or device the layer cannot take: a clear error naming the op and 'x'."""
    linear = nn.Linear(k, n)
    layer = {"fused": lambda: FusedLinear.from_linear(linear),
             "int8": lambda: Int8Linear.from_linear(linear),
             "sparse24": lambda: SparseLinear.from_linear(linear, "2:4", prune=True)}[kind]()
    x = torch.ones(3, k, dtype=x_dtype, device=device)
    if x_dtype in FLOATS and device == "cpu":
        return
    try:
        with torch.no_grad():
            layer(x)
    except LAYER_ERRORS as error:
        name_check(error, "bigperf.", ("x",))
        return
    raise AssertionError(f"{kind}: accepted x of {x_dtype} on {device}")


def test_int8_group_size_zero():
    with pytest.raises(ValueError, match="bigperf.nn.Int8Linear.*'group_size'"):
        Int8Linear.from_linear(nn.Linear(64, 8), group_size=0)
