import copy
import io

import pytest
import torch
from torch import nn

import bigperf
from bigperf.nn import SparseLinear
from bigperf.nn.sparse_linear import LayerRefused
from tests.helpers import rel_error


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
    assert layer.values.shape == (32, 32)
    with pytest.raises(LayerRefused, match="density"):
        SparseLinear.from_linear(linear, "block", density=0.5)
    assert SparseLinear.from_linear(linear, "block", density=0.5, prune=True).values.shape[0] == 4


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
