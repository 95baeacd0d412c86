"""The opt-in float copy: a layer that keeps its weight in fp32 beside the packed one, so the
dispatcher may pick torch:copy (F.linear on the copy) where that is fastest.

The copy is never made unasked, always matches the weight the layer holds (through layout
changes, moves, loads), is refused once the weight changes behind it, and is counted in the
swap report's bytes. torch:copy's math against float64 is checked per op in
tests/ops/test_candidate_paths.py.
"""

import pytest
import torch
from torch import nn

import bigperf
from bigperf.nn import FusedLinear, Int8Linear, SparseLinear
from bigperf.ops.torch_paths import float_copy_of, float_copy_why_not
from bigperf.quant import dequantize_weight
from bigperf.sparsity import unpack_24, unpack_bsr
from tests.helpers import random_tensor


def _linear(n=48, k=64, seed=0):
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.weight.copy_(random_tensor(n, k, seed=seed, scale=0.2))
    return lin


def _expected(layer) -> torch.Tensor:
    """What the copy must hold: the held weight in fp32, computed from the canonical form."""
    if isinstance(layer, FusedLinear):
        return layer.weight.float()
    if isinstance(layer, Int8Linear):
        q, s, z = layer.int8_weight()  # unpacked from whatever layout the layer holds
        return dequantize_weight(q, s, z) if layer.weight_only else q.float()
    if layer.pattern == "2:4":
        return unpack_24(*layer.packed_24(), torch.float32)
    values, col_indices, row_ptr = layer.packed_bsr()
    return unpack_bsr(values.float(), col_indices, row_ptr, layer.in_features)


LAYERS = {
    "fused bf16": lambda: FusedLinear.from_linear(_linear(), weight_dtype=torch.bfloat16),
    "int8 per channel": lambda: Int8Linear.from_linear(_linear()),
    "int8 g32 asymmetric": lambda: Int8Linear.from_linear(_linear(), group_size=32, symmetric=False),
    "w8a8": lambda: Int8Linear.from_linear(_linear(), weight_only=False),
    "2:4 bf16": lambda: SparseLinear.from_linear(_linear(), prune=True),
    "2:4 int8": lambda: SparseLinear.from_linear(_linear(), prune=True, int8=True),
    "block 50%": lambda: SparseLinear.from_linear(_linear(), "block", block=(16, 16), density=0.5, prune=True),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_no_copy_unless_asked_then_one_that_matches_the_weight(name):
    layer = LAYERS[name]()
    assert layer.float_copy is None and "no float copy" in float_copy_why_not(layer._float_copy_key())
    before = sum(t.numel() * t.element_size() for t in layer.buffers())
    assert layer.keep_float_copy() is layer
    key = layer._float_copy_key()
    assert float_copy_why_not(key) is None and float_copy_of(key) is layer.float_copy
    assert layer.float_copy.dtype == torch.float32
    assert torch.equal(layer.float_copy, _expected(layer))
    after = sum(t.numel() * t.element_size() for t in layer.buffers())
    assert after - before == layer.out_features * layer.in_features * 4  # what the report will count
    assert "float_copy" not in layer.state_dict()  # not saved: rebuilt from the packed weight
    layer.keep_float_copy(False)
    assert layer.float_copy is None and "no float copy" in float_copy_why_not(layer._float_copy_key())


@pytest.mark.parametrize("name", ["2:4 bf16", "block 50%"])
def test_a_layout_change_moves_the_copy_to_the_tensor_the_new_op_receives(name):
    layer = LAYERS[name]().keep_float_copy()
    other = "canonical" if layer.kernel_layout == "cpu-lanes16" else "cpu-lanes16"
    try:
        layer.use_kernel_layout(other)
    except ValueError:
        pytest.skip("this build cannot hold the lane layout")
    assert float_copy_why_not(layer._float_copy_key()) is None
    assert torch.equal(layer.float_copy, _expected(layer))


@pytest.mark.parametrize("name", ["fused bf16", "int8 per channel", "2:4 int8"])
def test_moves_and_dtype_changes_rebuild_the_copy(name):
    layer = LAYERS[name]().keep_float_copy()
    layer.to("cpu")
    layer.to(torch.float16)  # packed values / weights convert; the copy is rebuilt from them, in fp32
    assert layer.float_copy.dtype == torch.float32
    assert float_copy_why_not(layer._float_copy_key()) is None
    assert torch.equal(layer.float_copy, _expected(layer))


@pytest.mark.parametrize("name", list(LAYERS))
def test_loading_other_weights_rebuilds_the_copy(name):
    layer, donor = LAYERS[name]().keep_float_copy(), LAYERS[name]()
    donor_state = dict(donor.state_dict())
    for k, v in donor_state.items():  # another weight: every float tensor halved (values, scales)
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            donor_state[k] = v * 0.5
    layer.load_state_dict(donor_state)
    assert float_copy_why_not(layer._float_copy_key()) is None
    assert torch.equal(layer.float_copy, _expected(layer))


def test_a_weight_changed_behind_the_copy_is_refused():
    layer = LAYERS["int8 per channel"]().keep_float_copy()
    held = layer._float_copy_key()  # qweight, or the kernel layout's weight
    held.data = held.data.clone()  # how loaders replace weights
    assert "stale" in float_copy_why_not(layer._float_copy_key())
    x = random_tensor(40, 64, seed=3)
    with bigperf.use_backend("reference"):
        expected = layer(x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)  # another path serves
    layer.keep_float_copy()
    assert float_copy_why_not(layer._float_copy_key()) is None


def test_swap_with_float_copy_counts_the_copy_and_survives_save_and_load(tmp_path):
    model = nn.Sequential(_linear(seed=1), nn.ReLU(), _linear(n=64, k=48, seed=2))
    plain = bigperf.swap(model, bigperf.Int8WeightOnly(), dry_run=True)
    model2 = nn.Sequential(_linear(seed=1), nn.ReLU(), _linear(n=64, k=48, seed=2))
    report = bigperf.swap(model2, bigperf.Int8WeightOnly(float_copy=True))
    copies = 48 * 64 * 4 + 64 * 48 * 4
    assert report.bytes_after == plain.bytes_after + copies
    assert "float copy" in report.changes[0].config
    x = random_tensor(5, 64, seed=4)
    y = model2(x)
    bigperf.save(model2, tmp_path / "ckpt")
    fresh = nn.Sequential(_linear(seed=7), nn.ReLU(), _linear(n=64, k=48, seed=8))
    bigperf.load(fresh, tmp_path / "ckpt")
    assert fresh[0].keeps_float_copy and float_copy_why_not(fresh[0]._float_copy_key()) is None
    assert torch.equal(fresh[0].float_copy, _expected(fresh[0]))
    torch.testing.assert_close(fresh(x), y, rtol=1e-5, atol=1e-6)
