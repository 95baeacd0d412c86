"""A block-sparse SparseLinear in the BSR CPU lane layout ("cpu-lanes16"): chosen on the CPU
for eligible blocks, exact conversions both ways, canonical state dicts, one copy in memory."""

import copy
import io
import itertools

import pytest
import torch
from torch import nn

import bigperf
from bigperf.nn import SparseLinear
from bigperf.formats.bsr_lanes import cpu_kernel_why_not
from bigperf.sparsity import block_mask, pack_bsr, unpack_bsr
from tests.helpers import TOLERANCE, assert_compile_export_deepcopy, fused_linear_fp64, rel_error

LANES_KERNEL_MISSING = cpu_kernel_why_not(torch.empty(0))
# The layout an eligible block layer settles on on this CPU: the lane layout once bigperf._C reads it.
CPU_LAYOUT = "cpu-lanes16" if LANES_KERNEL_MISSING is None else "canonical"
# (block, values dtype): bn % 16 == 0, and an even bk for bf16.
ELIGIBLE = [((16, 16), torch.bfloat16), ((32, 8), torch.float32), ((16, 32), torch.float16), ((16, 3), torch.float32)]
INELIGIBLE = [((8, 8), torch.float32), ((16, 3), torch.bfloat16), ((8, 16), torch.bfloat16)]


def block_pruned_linear(block=(16, 16), n=64, k=96, density=0.5, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.mul_(block_mask(linear.weight, block, density))
    return linear


def layer_of(block, values_dtype, density=0.5, seed=0, **kwargs):
    linear = block_pruned_linear(block, density=density, seed=seed)
    return linear, SparseLinear.from_linear(linear, "block", block=block, values_dtype=values_dtype, **kwargs)


def buffer_bytes(layer):
    return sum(b.numel() * b.element_size() for b in layer.buffers())


def expected_fp64(layer, x):
    values, col_indices, row_ptr = layer.packed_bsr()
    w = unpack_bsr(values.double(), col_indices, row_ptr, layer.in_features)
    return fused_linear_fp64(x, w, layer.bias, None, layer.activation)


@pytest.mark.parametrize("block,values_dtype", ELIGIBLE + INELIGIBLE)
def test_the_layout_is_chosen_by_block_shape_and_dtype(block, values_dtype):
    _, layer = layer_of(block, values_dtype, activation="silu")
    eligible = (block, values_dtype) in ELIGIBLE
    assert layer.kernel_layout == (CPU_LAYOUT if eligible else "canonical")
    assert layer.backend() == "cpu"
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(1))
    with bigperf.use_backend("cpu"):  # fp32 math (the tuner may pick torch:bf16 for bf16 values)
        assert rel_error(layer(x), expected_fp64(layer, x)) < 1e-5
    if not eligible:
        with pytest.raises(ValueError, match="cannot hold this layer's weight"):
            layer.use_kernel_layout("cpu-lanes16")


@pytest.mark.parametrize("block,values_dtype", ELIGIBLE)
def test_use_kernel_layout_round_trip_is_exact_and_holds_one_copy(block, values_dtype):
    _, layer = layer_of(block, values_dtype, seed=2, activation="gelu")
    layer.use_kernel_layout("canonical")
    canonical = [t.clone() for t in (layer.values, layer.col_indices, layer.row_ptr)]
    col_indices, canonical_bytes = layer.col_indices, buffer_bytes(layer)
    x = torch.randn(5, 96, generator=torch.Generator().manual_seed(3))
    with bigperf.use_backend("reference"):
        expected = layer(x)
    saved = copy.deepcopy(layer.state_dict())

    layer.use_kernel_layout("cpu-lanes16")
    assert layer.kernel_layout == "cpu-lanes16" and layer.values is None
    assert {name for name, _ in layer.named_buffers()} == {"lanes_values", "col_indices", "row_ptr"}
    assert layer.col_indices is col_indices, "the index tensors are shared by both layouts"
    assert buffer_bytes(layer) == canonical_bytes
    assert "held as cpu-lanes16" in repr(layer)
    for got, want in zip(layer.packed_bsr(), canonical):
        assert torch.equal(got, want)
    with bigperf.use_backend("reference"):
        assert torch.equal(layer(x), expected)
    assert rel_error(layer(x), expected) < 1e-5  # the device's backend (the lanes kernel once built)
    state = layer.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved if isinstance(saved[k], torch.Tensor))

    layer.use_kernel_layout("canonical")
    assert layer.kernel_layout == "canonical" and "held as" not in repr(layer)
    assert {name for name, _ in layer.named_buffers()} == {"values", "col_indices", "row_ptr"}
    for got, want in zip((layer.values, layer.col_indices, layer.row_ptr), canonical):
        assert torch.equal(got, want)
    with bigperf.use_backend("reference"):
        assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("source_layout,target_layout", list(itertools.product(("canonical", "cpu-lanes16"), repeat=2)))
def test_state_dict_is_canonical_and_loads_into_either_layout_whatever_its_block_count(source_layout, target_layout):
    linear, layer = layer_of((32, 8), torch.float32, density=0.5, seed=4)
    layer.use_kernel_layout(source_layout)
    state = layer.state_dict()
    want = pack_bsr(linear.weight.detach(), (32, 8))
    assert set(state) == {"bias", "values", "col_indices", "row_ptr", "_extra_state"}
    for name in ("values", "col_indices", "row_ptr"):
        assert torch.equal(state[name], getattr(want, name))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    # A layer holding another weight, with another number of blocks (and an empty one).
    _, other = layer_of((32, 8), torch.float32, density=0.25, seed=5)
    empty = SparseLinear(96, 64, pattern="block", block=(32, 8), values_dtype=torch.float32)
    assert other.packed_bsr()[0].shape[0] != want.values.shape[0] != 0
    x = torch.randn(3, 96)
    for fresh in (other, empty):
        fresh.use_kernel_layout(target_layout)
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        # A layout chosen by hand stays; a canonical layer settles on the device's layout.
        assert fresh.kernel_layout == (target_layout if target_layout != "canonical" else CPU_LAYOUT)
        for got, name in zip(fresh.packed_bsr(), ("values", "col_indices", "row_ptr")):
            assert torch.equal(got, getattr(want, name))
        with bigperf.use_backend("reference"):
            assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("block,source,target,layout_after", [
    ((16, 16), torch.bfloat16, torch.float16, CPU_LAYOUT),
    ((16, 16), torch.float32, torch.bfloat16, CPU_LAYOUT),
    ((32, 8), torch.float16, torch.float32, CPU_LAYOUT),
    ((16, 3), torch.float32, torch.float16, CPU_LAYOUT),
    ((16, 3), torch.float32, torch.bfloat16, "canonical"),  # bf16 needs an even bk
])
def test_a_dtype_change_keeps_the_lane_layout_right(block, source, target, layout_after):
    """Module.to(dtype) converts the lane values element-wise; the lane order differs between
    bf16 and the other dtypes, so the layer re-orders them (or unpacks them first, for a
    block shape the new dtype cannot hold)."""
    linear, layer = layer_of(block, source, seed=6)
    layer.use_kernel_layout("cpu-lanes16")
    layer.to(target)
    assert layer.kernel_layout == layout_after
    want = pack_bsr(linear.weight.detach().to(source), block)
    values, col_indices, _ = layer.packed_bsr()
    assert values.dtype == target
    assert torch.equal(values, want.values.to(target)) and torch.equal(col_indices, want.col_indices)
    x = torch.randn(4, 96).to(target)
    assert rel_error(layer(x), expected_fp64(layer, x)) < TOLERANCE[target]
    layer.float()  # and back: the odd-bk layer returns to the lane layout
    assert layer.kernel_layout == CPU_LAYOUT
    assert torch.equal(layer.packed_bsr()[0], want.values.to(target).float())


def pruned_model(block=(16, 16)):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    bigperf.prune(model, "block", block=block, density=0.25)
    return model


@pytest.mark.parametrize("block,layout", [((16, 16), CPU_LAYOUT), ((8, 8), "canonical")])
def test_swap_with_block_sparse_holds_the_devices_layout(block, layout):
    model = pruned_model(block)
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = model(x)
    report = bigperf.swap(model, bigperf.BlockSparse(block, values_dtype=torch.float32))
    assert [c.new for c in report.changes] == ["SparseLinear", "SparseLinear"]
    assert [m.kernel_layout for m in (model[0], model[2])] == [layout, layout]
    with torch.no_grad():
        assert rel_error(model(x), expected) < 1e-5


def test_memory_is_not_doubled_by_the_layout():
    model = pruned_model()
    bigperf.swap(model, bigperf.BlockSparse((16, 16)))
    held = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    canonical = 0
    for m in (model[0], model[2]):
        values, col_indices, row_ptr = m.packed_bsr()
        canonical += values.numel() * 2 + col_indices.numel() * 4 + row_ptr.numel() * 4 + m.bias.numel() * 4
        assert m.kernel_layout == CPU_LAYOUT
    # bf16 values of a quarter of two 64x128 weights (8 blocks each), int32 indices, fp32 biases.
    assert held == canonical == 2 * (64 * 128 // 4 * 2 + 8 * 4) + (4 + 1) * 4 + (8 + 1) * 4 + (128 + 64) * 4


def test_bigperf_save_and_load_round_trip(tmp_path):
    model = pruned_model()
    bigperf.swap(model, bigperf.BlockSparse((16, 16)))
    bigperf.save(model, tmp_path / "bsr")
    assert "lanes" not in (tmp_path / "bsr" / "manifest.json").read_text(), "checkpoints hold the canonical format only"
    fresh = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    bigperf.load(fresh, tmp_path / "bsr")
    assert fresh[0].kernel_layout == fresh[2].kernel_layout == CPU_LAYOUT
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_moving_a_layer_settles_its_layout(monkeypatch):
    from bigperf.formats import bsr_lanes

    _, layer = layer_of((32, 16), torch.bfloat16, seed=8)
    layer.use_kernel_layout("cpu-lanes16")
    x = torch.randn(2, 96)
    with bigperf.use_backend("reference"):
        expected = layer(x)
    nnz = layer.packed_bsr()[0].shape[0]
    layer.to("meta")  # no kernel reads the lane layout there
    assert layer.kernel_layout == "canonical" and layer.values.device.type == "meta"
    assert layer.values.shape == (nnz, 32, 16) and layer.row_ptr.shape == (3,)

    _, layer = layer_of((32, 16), torch.bfloat16, seed=8)
    layer.use_kernel_layout("cpu-lanes16")
    monkeypatch.setattr(bsr_lanes, "cpu_kernel_why_not", lambda x: "an older bigperf._C")
    layer.to("cpu")
    assert layer.kernel_layout == "canonical"
    monkeypatch.setattr(bsr_lanes, "cpu_kernel_why_not", lambda x: None)
    layer.to("cpu")
    assert layer.kernel_layout == "cpu-lanes16"
    with bigperf.use_backend("reference"):
        assert torch.equal(layer(x), expected)


def test_compile_export_and_deepcopy_in_the_lane_layout():
    model = pruned_model()
    bigperf.swap(model, bigperf.BlockSparse((16, 16), values_dtype=torch.float32))
    for m in (model[0], model[2]):
        m.use_kernel_layout("cpu-lanes16")
    assert_compile_export_deepcopy(model, torch.randn(4, 64))


def test_layers_built_under_inference_mode_keep_ordinary_lane_buffers():
    with torch.inference_mode():
        _, layer = layer_of((16, 16), torch.float32, seed=9)
        layer.use_kernel_layout("cpu-lanes16")
        fresh = SparseLinear(96, 64, pattern="block", block=(16, 16), values_dtype=torch.float32)
        fresh.load_state_dict(layer.state_dict())
        fresh.use_kernel_layout("cpu-lanes16").to(torch.bfloat16)
        x = torch.randn(2, 96)
        assert rel_error(fresh(x), layer(x)) < TOLERANCE[torch.bfloat16]
        assert not any(b.is_inference() for m in (layer, fresh) for b in m.buffers())
        fresh.use_kernel_layout("canonical")
        assert not any(b.is_inference() for b in fresh.buffers())


@pytest.mark.parametrize("layout", ["canonical", CPU_LAYOUT])
@pytest.mark.parametrize("width", [80, 112])
def test_x_of_another_width_is_refused_in_either_layout(layout, width):
    """The canonical BSR op takes K from x (the format does not record it): the layer checks
    x against its in_features, so a wider x is refused as it is in the lane layout."""
    _, layer = layer_of((16, 16), torch.float32)
    layer.use_kernel_layout(layout)
    with torch.no_grad(), pytest.raises(ValueError, match=f"argument 'x' has {width} features|"
                                                          f"argument 'x' has shape \\(2, {width}\\)"):
        layer(torch.randn(2, width))
