import json

import pytest
import torch
from torch import nn

import bigperf


def build(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.Linear(64, 32, bias=False))
    return model.eval()


@pytest.mark.parametrize("config", ["bf16", "int8", "int8-dynamic", "int8-dynamic-7bit",
                                    bigperf.Int8WeightOnly(32, symmetric=False),
                                    {r"0": "int8-g128", r".*": "fp16"}])
def test_round_trip_into_a_fresh_model(tmp_path, config):
    model = build()
    bigperf.swap(model, config)
    x = torch.randn(3, 64)
    with torch.no_grad():
        expected = model(x)
    bigperf.save(model, tmp_path / "ckpt")
    fresh = build(seed=1)  # different random weights: everything must come from the file
    bigperf.load(fresh, tmp_path / "ckpt")
    assert [type(m) for m in fresh] == [type(m) for m in model]
    with torch.no_grad():
        assert torch.equal(fresh(x), expected)


def _layouts(model):
    return [getattr(m, "kernel_layout", None) for m in model.modules()]


@pytest.mark.parametrize("config", ["bf16", "int8", "int8-dynamic", bigperf.Sparse24(prune=True),
                                    bigperf.BlockSparse(block=(16, 16), density=0.5, prune=True)])
def test_round_trip_into_a_model_built_with_meta_parameters(tmp_path, config):
    """Parameters built on meta take the checkpoint's tensors: nothing is allocated twice."""
    model = build()
    bigperf.swap(model, config)
    bigperf.save(model, tmp_path / "ckpt")
    with bigperf.distributed.meta_parameters():
        empty = build(seed=1)
    assert all(p.is_meta for p in empty.parameters())
    loaded = bigperf.load(empty, tmp_path / "ckpt")
    assert not any(t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))
    assert _layouts(loaded) == _layouts(model)  # the same kernel layouts, derived after the load
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


class WithComputedBuffer(nn.Module):
    """A module that computes a buffer it does not save (as a rotary embedding's inv_freq)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.register_buffer("inv_freq", torch.arange(4.0), persistent=False)

    def forward(self, x):
        return self.linear(x) + self.inv_freq.sum()


def test_meta_buffers_no_checkpoint_holds_are_refused(tmp_path):
    bigperf.save(WithComputedBuffer(), tmp_path / "ckpt")
    with torch.device("meta"):
        all_meta = WithComputedBuffer()
    with pytest.raises(ValueError, match=r"bigperf.load: the model's tensors \['inv_freq'\] are on the meta device"):
        bigperf.load(all_meta, tmp_path / "ckpt")
    assert all(t.is_meta for t in list(all_meta.parameters()) + list(all_meta.buffers()))
    with bigperf.distributed.meta_parameters():
        empty = WithComputedBuffer()
    assert torch.equal(empty.inv_freq, torch.arange(4.0))  # buffers are built as usual
    x = torch.randn(2, 8)
    assert torch.equal(bigperf.load(empty, tmp_path / "ckpt")(x), bigperf.load(WithComputedBuffer(), tmp_path / "ckpt")(x))


def test_tied_meta_parameters_share_the_loaded_tensor(tmp_path):
    tied = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8)})
    tied.b.weight = tied.a.weight
    bigperf.save(tied, tmp_path / "tied")
    with bigperf.distributed.meta_parameters():
        fresh = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8)})
    fresh.b.weight = fresh.a.weight
    bigperf.load(fresh, tmp_path / "tied")
    assert torch.equal(fresh.b.weight, tied.a.weight)
    assert fresh.a.weight.data_ptr() == fresh.b.weight.data_ptr()


def test_files_are_safetensors_and_json_without_pickle(tmp_path):
    model = build()
    bigperf.swap(model, "int8")
    directory = bigperf.save(model, tmp_path / "ckpt")
    assert sorted(p.name for p in directory.iterdir()) == ["manifest.json", "model.safetensors"]
    manifest = json.loads((directory / "manifest.json").read_text())
    first = manifest["layers"][0]
    assert first["config"]["type"] == "Int8WeightOnly" and first["activation"] == "gelu" and first["absorbed"] == "1"
    assert manifest["tensors"]["0.qweight"] == {"shape": [128, 64], "dtype": "int8"}
    assert manifest["extra_states"]["0._extra_state"]["format"] == "int8-rowmajor"
    assert b"pickle" not in (directory / "model.safetensors").read_bytes()[:200]


def test_act_bits_is_recorded_and_restored(tmp_path):
    model = build()
    bigperf.swap(model, bigperf.Int8Dynamic(act_bits=7))
    directory = bigperf.save(model, tmp_path / "ckpt")
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["layers"][0]["config"] == {"type": "Int8Dynamic",
                                               "fields": {"act_bits": 7, "fuse_activations": True,
                                                          "float_copy": False}}
    assert manifest["extra_states"]["0._extra_state"]["act_bits"] == 7
    fresh = bigperf.load(build(seed=1), directory)
    assert fresh[0].act_bits == 7
    # A manifest written before act_bits existed loads as 8-bit.
    for entry in manifest["layers"]:
        entry["config"]["fields"].pop("act_bits", None)
    for state in manifest["extra_states"].values():
        state.pop("act_bits", None)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    assert bigperf.load(build(seed=1), directory)[0].act_bits == 8


def test_tied_weights_are_stored_once(tmp_path):
    tied = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8)})
    tied.b.weight = tied.a.weight
    bigperf.save(tied, tmp_path / "tied")
    manifest = json.loads((tmp_path / "tied" / "manifest.json").read_text())
    assert manifest["aliases"] == {"b.weight": "a.weight"}
    fresh = nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8)})
    bigperf.load(fresh, tmp_path / "tied")
    assert torch.equal(fresh.b.weight, tied.a.weight)


def test_mismatches_are_refused_and_the_model_is_left_as_it_was(tmp_path):
    model = build()
    bigperf.swap(model, "int8")
    bigperf.save(model, tmp_path / "ckpt")

    wrong_shape = nn.Sequential(nn.Linear(64, 100), nn.GELU(), nn.Linear(100, 64), nn.Linear(64, 32, bias=False))
    before = [type(m) for m in wrong_shape]
    with pytest.raises(ValueError, match="64→128"):
        bigperf.load(wrong_shape, tmp_path / "ckpt")
    assert [type(m) for m in wrong_shape] == before

    manifest_path = tmp_path / "ckpt" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tensors"]["2.bias"]["dtype"] = "float16"
    manifest_path.write_text(json.dumps(manifest))
    fresh = build(seed=3)
    original_weight = fresh[0].weight.clone()
    with pytest.raises(ValueError, match="'2.bias'"):
        bigperf.load(fresh, tmp_path / "ckpt")
    assert type(fresh[0]) is nn.Linear and type(fresh[1]) is nn.GELU and torch.equal(fresh[0].weight, original_weight)

    manifest["version"] = 7
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="v7"):
        bigperf.load(build(), tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        bigperf.load(build(), tmp_path / "nowhere")


@pytest.mark.parametrize("damage", [None, {"weight_only": None}, {"format": None}])
def test_a_damaged_extra_state_is_refused_by_load_by_name(tmp_path, damage):
    """Found by make fuzz: a layer's extra state replaced by null gave AttributeError, and a
    refused field a ValueError naming only the layer, not bigperf.load."""
    model = build()
    bigperf.swap(model, "int8")
    bigperf.save(model, tmp_path / "ckpt")
    manifest_path = tmp_path / "ckpt" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    state = manifest["extra_states"]["0._extra_state"]
    manifest["extra_states"]["0._extra_state"] = None if damage is None else {**state, **damage}
    manifest_path.write_text(json.dumps(manifest))
    fresh = build(seed=3)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=r"bigperf.load: module '0' refused its saved state"):
        bigperf.load(fresh, tmp_path / "ckpt")
    assert type(fresh[0]) is nn.Linear
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


# ----------------------------------------------------------------------------- atomic save (issue #14 class 3)

def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fail_in", ["tensors", "manifest"])
def test_a_failed_save_leaves_a_loadable_checkpoint(tmp_path, monkeypatch, fail_in):
    """Before the tensor file's rename the old checkpoint stays; after it, the new one is
    complete (its manifest rides in the tensor file) even though manifest.json is stale."""
    import bigperf.serialize as serialize

    first, second = build(seed=0), build(seed=5)
    bigperf.swap(first, "int8")
    bigperf.swap(second, "int8")
    bigperf.save(first, tmp_path / "ckpt")
    real = serialize._write_atomically

    def failing(path, write):
        target = serialize.TENSORS if fail_in == "tensors" else serialize.MANIFEST
        if path.name == target:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the save
        return real(path, write)

    monkeypatch.setattr(serialize, "_write_atomically", failing)
    with pytest.raises(KeyboardInterrupt):
        bigperf.save(second, tmp_path / "ckpt")
    monkeypatch.setattr(serialize, "_write_atomically", real)
    fresh = build(seed=9)
    bigperf.load(fresh, tmp_path / "ckpt")
    expected = first if fail_in == "tensors" else second
    assert _same(_weights(fresh), _weights(expected))
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith(".")], "temp files left behind"


def test_a_save_that_cannot_serialise_changes_nothing(tmp_path):
    model = build()
    bigperf.swap(model, "int8")
    bigperf.save(model, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    class NotJson(nn.Module):
        def get_extra_state(self):
            return {"bad": object()}

        def set_extra_state(self, state):
            pass

    model.append(NotJson())
    with pytest.raises(ValueError, match="JSON"):
        bigperf.save(model, tmp_path / "ckpt")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before


def test_saved_files_get_the_users_umask(tmp_path):
    import os

    model = build()
    old = os.umask(0o022)
    try:
        directory = bigperf.save(model, tmp_path / "ckpt")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()} == {
        "manifest.json": 0o644, "model.safetensors": 0o644}
