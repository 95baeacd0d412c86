import copy
import io
import itertools

import pytest
import torch
from torch import nn

import bigperf
from bigperf.nn import SparseLinear
from bigperf.errors import LayerRefused
from bigperf.formats import sparse24_lanes
from bigperf.formats.sparse24_lanes import cpu_kernel_why_not
from bigperf.sparsity import nm_mask, pack_24, pack_24_int8
from tests.helpers import assert_compile_export_deepcopy, rel_error

LANES_KERNEL_MISSING = cpu_kernel_why_not(torch.empty(0))
# The layout a 2:4 layer settles on on this CPU: the lane layout once bigperf._C reads it.
CPU_LAYOUT = "cpu-lanes16" if LANES_KERNEL_MISSING is None else "canonical"


def pruned_model(pattern="2:4", **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    bigperf.prune(model, pattern, **kwargs)
    return model


BLOCK_PRUNING = {"pattern": "block", "density": 0.25, "block": (16, 16)}


@pytest.mark.parametrize("config,pruning,tol", [
    ("sparse24", {}, 1e-2), (bigperf.Sparse24(torch.float32), {}, 1e-5), ("sparse24-int8", {}, 2e-2),
    (bigperf.BlockSparse((16, 16), values_dtype=torch.float32), BLOCK_PRUNING, 1e-5)])
def test_swap_matches_the_pruned_dense_model(config, pruning, tol):
    model = pruned_model(**pruning)
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = model(x)
    swapped = copy.deepcopy(model)
    report = bigperf.swap(swapped, config)
    assert [c.new for c in report.changes] == ["SparseLinear", "SparseLinear"]
    assert report.bytes_after < report.bytes_before
    with torch.no_grad():
        assert rel_error(swapped(x), expected) < tol


def test_dense_weights_are_refused_unless_pruning_is_asked_for():
    linear = nn.Linear(64, 32)
    with pytest.raises(LayerRefused, match="not 2:4"):
        SparseLinear.from_linear(linear)
    layer = SparseLinear.from_linear(linear, prune=True)
    assert layer.packed_24()[0].shape == (32, 32)
    with pytest.raises(LayerRefused, match="density"):
        SparseLinear.from_linear(linear, "block", density=0.5)
    assert SparseLinear.from_linear(linear, "block", density=0.5, prune=True).packed_bsr()[0].shape[0] == 4


@pytest.mark.parametrize("kwargs", [{}, {"int8": True}, {"pattern": "block", "block": (16, 32)}])
def test_state_dict_round_trip(kwargs):
    torch.manual_seed(1)
    linear = nn.Linear(64, 32)
    layer = SparseLinear.from_linear(linear, prune=True, density=0.5, **kwargs)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = SparseLinear(64, 32, **kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


def test_save_load_of_a_block_sparse_model(tmp_path):
    model = pruned_model("block", density=0.25, block=(16, 16))
    bigperf.swap(model, bigperf.BlockSparse((16, 16)))
    bigperf.save(model, tmp_path / "bsr")
    fresh = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()
    bigperf.load(fresh, tmp_path / "bsr")
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_layer_refused_is_still_importable_from_its_first_home():
    from bigperf.nn.sparse_linear import LayerRefused as from_the_layer_module

    assert from_the_layer_module is LayerRefused and issubclass(LayerRefused, ValueError)


@pytest.mark.parametrize("call,error,word", [
    (lambda: SparseLinear(60, 8), LayerRefused, "multiple of 8"),
    (lambda: SparseLinear(64, 8, pattern="block", block=(16, 16)), LayerRefused, "blocks"),
    (lambda: SparseLinear(64, 16, pattern="4:8"), ValueError, "'pattern'"),
    (lambda: SparseLinear(64, 16, pattern="block", int8=True), ValueError, "int8"),
    (lambda: SparseLinear.from_linear(nn.Conv1d(2, 2, 1)), TypeError, "'linear'"),
])
def test_bad_construction_is_refused(call, error, word):
    with pytest.raises(error, match=word):
        call()


@pytest.mark.parametrize("kwargs", [dict(pattern="2:4"), dict(pattern="block", block=(16, 16), density=0.5)])
def test_layer_built_under_inference_mode_checks_its_indices_once(kwargs, monkeypatch):
    """A model swapped and loaded under torch.inference_mode() must not re-check its 2:4
    metadata / block indices on every call: its index buffers stay ordinary tensors, with
    the version counter the ops' check cache keys on."""
    import bigperf.ops.sparse_linear as ops

    calls = []
    for name in ("meta_is_valid", "bsr_is_valid"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    with torch.inference_mode():
        linear = nn.Linear(64, 32)
        layer = SparseLinear.from_linear(linear, prune=True, **kwargs)
        fresh = SparseLinear(64, 32, **{k: v for k, v in kwargs.items() if k != "density"})
        fresh.load_state_dict(layer.state_dict())
        x = torch.randn(2, 64)
        for model in (layer, fresh):
            outs = [model(x) for _ in range(3)]
            assert all(torch.equal(o, outs[0]) for o in outs)
        assert not any(b.is_inference() for b in fresh.buffers())
    assert len(calls) == 2, f"one content check per layer expected, got {len(calls)}"


# ----------------------------------------------------------------------------- kernel layouts

LAYOUT_KINDS = [{}, {"int8": True}, {"values_dtype": torch.float32}, {"values_dtype": torch.float16}]


def pruned_linear(n=40, k=64, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.mul_(nm_mask(linear.weight))
    return linear


def buffer_bytes(layer):
    return sum(b.numel() * b.element_size() for b in layer.buffers())


def canonical_of(linear, int8=False, values_dtype=torch.bfloat16):
    return pack_24_int8(linear.weight.detach()) if int8 else pack_24(linear.weight.detach().to(values_dtype))


@pytest.mark.parametrize("kwargs", LAYOUT_KINDS)
def test_a_2_4_layer_on_the_cpu_holds_the_lane_layout_once_the_kernel_is_built(kwargs):
    linear = pruned_linear()
    layer = SparseLinear.from_linear(linear, **kwargs)
    assert layer.kernel_layout == CPU_LAYOUT
    assert layer.backend() == "cpu"
    # (8x8 blocks are not 16 rows high: no lane layout; tests/nn/test_sparse_linear_block_layout.py)
    assert SparseLinear.from_linear(pruned_linear(n=32, k=32), "block", block=(8, 8),
                                    density=1.0).kernel_layout == "canonical"
    model = nn.Sequential(pruned_linear(), nn.ReLU())
    bigperf.swap(model, "sparse24-int8" if kwargs.get("int8") else "sparse24")
    assert model[0].kernel_layout == CPU_LAYOUT


@pytest.mark.parametrize("kwargs", LAYOUT_KINDS)
def test_use_kernel_layout_round_trip_is_exact_and_holds_one_copy(kwargs):
    linear = pruned_linear(n=40, k=64, seed=2)
    layer = SparseLinear.from_linear(linear, activation="gelu", **kwargs).use_kernel_layout("canonical")
    canonical = [t.clone() if t is not None else None for t in (layer.values, layer.meta, layer.scale)]
    canonical_bytes = buffer_bytes(layer)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    with bigperf.use_backend("reference"):
        expected = layer(x)
    saved = copy.deepcopy(layer.state_dict())

    layer.use_kernel_layout("cpu-lanes16")
    assert layer.kernel_layout == "cpu-lanes16" and layer.values is None and layer.meta is None
    assert layer.scale is None
    assert {name for name, _ in layer.named_buffers()} == (
        {"lanes_values", "lanes_meta"} | ({"lanes_scale"} if kwargs.get("int8") else set()))
    padding = (48 - 40) / 40  # 40 rows are held as 48
    assert buffer_bytes(layer) <= canonical_bytes * (1 + padding) + 48 * 4
    assert "held as cpu-lanes16" in repr(layer)
    for got, want in zip(layer.packed_24(), canonical):
        assert (got is None and want is None) or torch.equal(got, want)
    with bigperf.use_backend("reference"):
        assert torch.equal(layer(x), expected)
    assert rel_error(layer(x), expected) < 1e-2  # the device's backend (the lanes kernel once built)
    state = layer.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved if isinstance(saved[k], torch.Tensor))

    layer.use_kernel_layout("canonical")
    assert layer.kernel_layout == "canonical" and "held as" not in repr(layer)
    assert {name for name, _ in layer.named_buffers()} == {"values", "meta"} | ({"scale"} if kwargs.get("int8") else set())
    for got, want in zip((layer.values, layer.meta, layer.scale), canonical):
        assert (got is None and want is None) or torch.equal(got, want)
    with bigperf.use_backend("reference"):
        assert torch.equal(layer(x), expected)


def test_memory_is_not_doubled_by_the_layout():
    model = nn.Sequential(*(pruned_linear(n=64, k=128, seed=i) for i in range(3)))
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in model)
    bigperf.swap(model, "sparse24")
    held = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    # bf16 values of half the weights (1/4 of fp32) + 2-bit positions of those (1/32), + fp32 bias.
    assert held == weight_bytes * (1 / 4 + 1 / 32) + 3 * 64 * 4
    assert all(m.kernel_layout == CPU_LAYOUT for m in model)


@pytest.mark.parametrize("kwargs", LAYOUT_KINDS)
@pytest.mark.parametrize("source_layout,target_layout", list(itertools.product(("canonical", "cpu-lanes16"), repeat=2)))
def test_state_dict_is_canonical_and_loads_into_either_layout(kwargs, source_layout, target_layout):
    linear = pruned_linear(n=40, k=64, seed=4)
    layer = SparseLinear.from_linear(linear, **kwargs).use_kernel_layout(source_layout)
    state = layer.state_dict()
    want = canonical_of(linear, **kwargs)
    assert torch.equal(state["values"], want.values) and torch.equal(state["meta"], want.meta)
    assert ("scale" in state) == bool(kwargs.get("int8")) and ("scale" not in state or torch.equal(state["scale"],
                                                                                                    want.scale))
    assert not any(name.startswith("lanes_") for name in state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = SparseLinear(64, 40, **kwargs).use_kernel_layout(target_layout)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    # A layout chosen by hand stays; a canonical layer settles on the device's layout.
    assert fresh.kernel_layout == (target_layout if target_layout != "canonical" else CPU_LAYOUT)
    x = torch.randn(3, 64)
    with bigperf.use_backend("reference"):
        assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("config", ["sparse24", "sparse24-int8", bigperf.Sparse24(torch.float16)])
def test_bigperf_save_and_load_round_trip(tmp_path, config):
    def build(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 40), nn.GELU(), nn.Linear(40, 24)).eval()

    model = build(0)
    bigperf.prune(model, "2:4")
    bigperf.swap(model, config)
    bigperf.save(model, tmp_path / "s24")
    manifest = (tmp_path / "s24" / "manifest.json").read_text()
    assert "lanes" not in manifest, "checkpoints hold the canonical format only"
    fresh = build(1)
    bigperf.load(fresh, tmp_path / "s24")
    assert fresh[0].kernel_layout == CPU_LAYOUT
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_moving_a_layer_settles_its_layout(monkeypatch):

    layer = SparseLinear.from_linear(pruned_linear(), int8=True).use_kernel_layout("cpu-lanes16")
    x = torch.randn(2, 64)
    with bigperf.use_backend("reference"):
        expected = layer(x)
    layer.to("meta")  # no kernel reads the lane layout there
    assert layer.kernel_layout == "canonical" and layer.values.device.type == "meta"
    assert layer.values.shape == (40, 32) and layer.scale.shape == (40, 1)

    layer = SparseLinear.from_linear(pruned_linear(), int8=True).use_kernel_layout("cpu-lanes16")
    monkeypatch.setattr(sparse24_lanes, "cpu_kernel_why_not", lambda x: "an older bigperf._C")
    layer.to("cpu")
    assert layer.kernel_layout == "canonical"
    monkeypatch.setattr(sparse24_lanes, "cpu_kernel_why_not", lambda x: None)
    layer.to("cpu")
    assert layer.kernel_layout == "cpu-lanes16"
    with bigperf.use_backend("reference"):
        assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("source,target", [(torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16),
                                           (torch.float16, torch.float32)])
def test_a_dtype_change_keeps_the_lane_layout_right(source, target):
    """Module.to(dtype) converts the lane values element-wise; the lane order differs between
    bf16 and the other dtypes, so the layer re-orders them."""
    linear = pruned_linear(seed=5)
    layer = SparseLinear.from_linear(linear, values_dtype=source).use_kernel_layout("cpu-lanes16")
    layer.to(target)  # re-ordered, then settled (unpacked too where the CPU kernel is missing)
    assert layer.kernel_layout == CPU_LAYOUT
    want = canonical_of(linear, values_dtype=source)
    values, meta, _ = layer.packed_24()
    assert values.dtype == target
    assert torch.equal(values, want.values.to(target)) and torch.equal(meta, want.meta)


def test_compile_export_and_deepcopy_in_the_lane_layout():
    torch.manual_seed(6)
    model = nn.Sequential(pruned_linear(n=40, k=64), nn.ReLU(), pruned_linear(n=24, k=40, seed=7)).eval()
    bigperf.swap(model, "sparse24")
    for m in (model[0], model[2]):
        m.use_kernel_layout("cpu-lanes16")
    assert_compile_export_deepcopy(model, torch.randn(4, 64))


def test_layers_built_under_inference_mode_keep_ordinary_lane_buffers():
    with torch.inference_mode():
        layer = SparseLinear.from_linear(pruned_linear(), int8=True).use_kernel_layout("cpu-lanes16")
        fresh = SparseLinear(64, 40, int8=True)
        fresh.load_state_dict(layer.state_dict())
        fresh.use_kernel_layout("cpu-lanes16").to(torch.float32)
        x = torch.randn(2, 64)
        assert torch.equal(fresh(x), layer(x))
        assert not any(b.is_inference() for m in (layer, fresh) for b in m.buffers())
        fresh.use_kernel_layout("canonical")
        assert not any(b.is_inference() for b in fresh.buffers())


def test_kernel_layout_refusals():
    with pytest.raises(ValueError, match=r"use_kernel_layout: argument 'layout'"):
        SparseLinear(64, 32).use_kernel_layout("lanes")
    block = SparseLinear(64, 32, pattern="block", block=(8, 8))
    with pytest.raises(ValueError, match=r"use_kernel_layout: layout 'cpu-lanes16' cannot hold this layer's weight: "
                                         r"the block height bn = 8 is not a multiple of 16"):
        block.use_kernel_layout("cpu-lanes16")
    with pytest.raises(ValueError, match=r"packed_24: this layer's pattern is 'block', not '2:4'"):
        block.packed_24()
    with pytest.raises(ValueError, match=r"packed_bsr: this layer's pattern is '2:4', not 'block'"):
        SparseLinear(64, 32).packed_bsr()


@pytest.mark.parametrize("layout", ["canonical", "cpu-lanes16"])
@pytest.mark.parametrize("target", [torch.float16, torch.bfloat16])
def test_half_keeps_the_int8_scale_fp32(layout, target):
    """model.half() must not turn the int8 scales to fp16: the ops take fp32 scales (they
    refused the call before) and an fp16 round trip would lose precision."""
    linear = pruned_linear(seed=8)
    layer = SparseLinear.from_linear(linear, int8=True).use_kernel_layout(layout)
    x = torch.randn(3, linear.in_features)
    want = layer(x)
    scale_before = layer.packed_24()[2].clone()
    layer.to(target)  # (a move settles the layout the device prefers)
    values, _, scale = layer.packed_24()
    assert values.dtype == torch.int8 and scale.dtype == torch.float32 and torch.equal(scale, scale_before)
    got = layer(x.to(target))
    assert got.dtype == target
    assert torch.allclose(got.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())
