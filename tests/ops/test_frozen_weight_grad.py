"""Gradients through the ops whose weight is frozen packed data (bigperf/ops/frozen_weight_grad.py):
to x and the bias, against float64 autograd of the same layer, on both routes a call can
take (the public entry's autograd.Function and torch.ops' custom_op)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bigperf
from bigperf.nn import Int8Linear, SparseLinear
from bigperf.ops.activations import apply_activation
from bigperf.ops.block_sparse_lanes_linear import BSR_LANES
from bigperf.formats.w8a16_cuda import pack_w8a16
from bigperf.ops.int8_dynamic_layout_linear import W8A8_CPU_LAYOUT
from bigperf.ops.int8_layout_linear import W8A16_LAYOUT
from bigperf.ops.int8_linear import DYNAMIC, WEIGHT_ONLY
from bigperf.ops.int8_weight_cpu_layout_linear import W8A16_CPU_LAYOUT
from bigperf.ops.sparse24_lanes_linear import SPARSE24_LANES
from bigperf.ops.sparse_linear import BLOCK_SPARSE, SPARSE24
from bigperf.quant import dequantize_weight
from bigperf.sparsity import unpack_24
from tests.helpers import TOLERANCE, rel_error
from tests.ops.test_candidate_paths import CASES

OPS = {op.backends: op
       for op in (WEIGHT_ONLY, DYNAMIC, W8A8_CPU_LAYOUT, W8A16_CPU_LAYOUT, W8A16_LAYOUT, SPARSE24, BLOCK_SPARSE,
                  SPARSE24_LANES, BSR_LANES)}
# (bias, activation, act_absmax) argument positions of each op
POSITIONS = {WEIGHT_ONLY: (4, 5, None), DYNAMIC: (3, 4, 6), W8A8_CPU_LAYOUT: (6, 7, 9), W8A16_CPU_LAYOUT: (7, 8, None),
             W8A16_LAYOUT: (7, 8, None),
             SPARSE24: (4, 5, None),
             BLOCK_SPARSE: (4, 5, None), SPARSE24_LANES: (5, 6, None), BSR_LANES: (5, 6, None)}


def _case_w8a16_layout(group_size):
    """The CUDA W8A16 layout's op on the CPU (its torch paths unpack it): the same backward."""
    case = "int8 g32 asymmetric bf16" if group_size else "int8 per channel fp32"
    table, (x, q, s, zp, b, act), ref, tol = CASES[case]()
    layout = pack_w8a16(q, s, zp)
    args = (x, layout.weight, layout.scale, layout.zero, layout.n, layout.k, layout.group_size or 0, b, act)
    return W8A16_LAYOUT.backends, args, ref, tol


GRAD_CASES = {**{name: case for name, case in CASES.items() if not name.startswith("fused")},
              "w8a16 layout per channel": lambda: _case_w8a16_layout(None),
              "w8a16 layout g32 asymmetric": lambda: _case_w8a16_layout(32)}


def _dense_weight(op, args):
    """The weight the op multiplies by, read off the reference path on the identity (W8A8
    quantises the identity's rows exactly): independent of the backward under test."""
    bias_at, act_at, absmax_at = POSITIONS[op]
    eye_args = list(args)
    eye_args[0] = torch.eye(args[0].shape[-1], dtype=torch.float64).float()
    eye_args[bias_at], eye_args[act_at] = None, "none"
    if absmax_at is not None:
        eye_args[absmax_at] = None
    with bigperf.use_backend("reference"):
        return op(*eye_args).double().t()


@pytest.mark.parametrize("route", ["entry", "torch.ops"])
@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradients_to_x_and_bias_match_float64(case, route):
    table, args, _, _ = GRAD_CASES[case]()
    op = OPS[table]
    bias_at, act_at, _ = POSITIONS[op]
    weight = _dense_weight(op, args)
    x = args[0].detach().clone().requires_grad_(True)
    bias = args[bias_at].detach().clone().requires_grad_(True)
    call = list(args)
    call[0], call[bias_at] = x, bias
    grad_out = torch.randn(x.shape[0], weight.shape[0], generator=torch.Generator().manual_seed(3))
    run = op if route == "entry" else getattr(torch.ops.bigperf, op.name.partition(".")[2])
    out = run(*call)
    assert out.grad_fn is not None
    (out.float() * grad_out).sum().backward()

    x64, b64 = args[0].double().requires_grad_(True), args[bias_at].double().requires_grad_(True)
    y64 = apply_activation(F.linear(x64, weight, b64), call[act_at])
    (y64 * grad_out.double()).sum().backward()
    tol = max(TOLERANCE[x.dtype], 1e-4)
    assert x.grad.dtype == x.dtype and rel_error(x.grad, x64.grad) < tol, f"{case}: d/dx off"
    assert rel_error(bias.grad, b64.grad) < tol, f"{case}: d/dbias off"


def test_a_packed_weight_that_asks_for_a_gradient_is_refused_by_name():
    table, args, _, _ = CASES["2:4 fp32"]()
    values = args[1].detach().clone().requires_grad_(True)  # float 2:4 values
    with pytest.raises(ValueError, match="bigperf.sparse24_linear: argument 1 asks for a gradient"):
        SPARSE24(args[0], values, *args[2:])


@pytest.mark.parametrize("make", [lambda lin: Int8Linear.from_linear(lin, activation="gelu"),
                                  lambda lin: Int8Linear.from_linear(lin, weight_only=False),
                                  lambda lin: SparseLinear.from_linear(lin, prune=True)],
                         ids=["int8 weight-only", "int8 dynamic", "2:4"])
def test_an_adapter_beside_a_swapped_layer_trains(make):
    """LoRA's shape: a frozen swapped layer plus a trainable low-rank adapter; the adapter and
    the layer before get the gradients a dense layer with the same (dequantised) weight gives."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = make(linear)
    first = nn.Linear(32, 64)
    down, up = nn.Linear(64, 4, bias=False), nn.Linear(4, 48, bias=False)
    x = torch.randn(6, 32)

    def loss(base):
        h = first(x)
        return (base(h) + up(down(h))).square().mean()

    loss(layer).backward()
    got = [p.grad.clone() for p in (first.weight, down.weight, up.weight)]
    for p in (first.weight, down.weight, up.weight):
        p.grad = None
    if isinstance(layer, Int8Linear):
        weight = dequantize_weight(*layer.int8_weight()).float()
    else:
        weight = unpack_24(*layer.packed_24(), torch.float32)
    dense = nn.Linear(64, 48)
    with torch.no_grad():
        dense.weight.copy_(weight)
        dense.bias.copy_(layer.bias)
    activation = getattr(layer, "activation", "none")
    loss(lambda h: apply_activation(dense(h), activation)).backward()
    want = [first.weight.grad, down.weight.grad, up.weight.grad]
    # W8A8's forward quantises x: the loss, and so every gradient, moves by that rounding
    tol = 2e-2 if isinstance(layer, Int8Linear) and not layer.weight_only else 1e-4
    for g, w in zip(got, want):
        assert rel_error(g, w) < tol


def test_compiled_gradients_through_a_frozen_layer_match_eager():
    """torch.compile traces the op's own Autograd kernel (define.py) with fake tensors: the
    gradients to x and an adapter are eager's."""
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(nn.Linear(64, 48), activation="gelu")
    down, up = nn.Linear(64, 4, bias=False), nn.Linear(4, 48, bias=False)
    x = torch.randn(6, 64)

    def loss(h):
        return (layer(h) + up(down(h))).square().mean()
    grads = []
    for fn in (loss, torch.compile(loss, backend="aot_eager", fullgraph=True)):
        for p in (down.weight, up.weight):
            p.grad = None
        h = x.clone().requires_grad_(True)
        fn(h).backward()
        grads.append((h.grad, down.weight.grad.clone(), up.weight.grad.clone()))
    for compiled, eager in zip(grads[1], grads[0]):
        torch.testing.assert_close(compiled, eager)
