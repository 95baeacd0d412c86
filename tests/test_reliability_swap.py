"""Issue #14: load checks what it restores (class 4), swap has no side effects unless it
swaps (class 6), swap refuses what it cannot run (class 7)."""

import dataclasses
import json

import pytest
import torch
from torch import nn

import bigperf


def snapshot(model: nn.Module) -> dict:
    """Everything a dry run or a refused swap/load must leave as it was: tensors bitwise,
    training flags, requires_grad, hooks, module types."""
    state = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        state[("tensor", name)] = (tensor.detach().clone(), tensor.dtype, tensor.requires_grad)
    for name, module in model.named_modules():
        state[("module", name)] = (type(module), module.training, tuple(module._forward_hooks),
                                   tuple(module._forward_pre_hooks))
    return state


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        other = after[key]
        if key[0] == "tensor":
            assert torch.equal(value[0], other[0]) and value[1:] == other[1:], f"{key[1]} changed"
        else:
            assert value == other, f"module {key[1]!r} changed: {value} -> {other}"


# ----------------------------------------------------------------------------- class 4: load

def mlp(activation: type[nn.Module], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), activation(), nn.Linear(64, 16)).eval()


def test_load_refuses_a_model_whose_absorbed_activation_differs(tmp_path):
    saved = mlp(nn.GELU)
    bigperf.swap(saved, "int8")
    bigperf.save(saved, tmp_path / "ckpt")
    other = mlp(nn.ReLU, seed=1)
    before = snapshot(other)
    with pytest.raises(ValueError, match=r"bigperf.load: .*'1'.*gelu"):
        bigperf.load(other, tmp_path / "ckpt")
    assert_same(before, snapshot(other))


def test_load_refuses_an_activation_that_is_not_the_linear_s_consumer(tmp_path):
    saved = mlp(nn.GELU)
    bigperf.swap(saved, "int8")
    bigperf.save(saved, tmp_path / "ckpt")

    class Branchy(nn.Module):  # same names and shapes; the GELU is not applied to 0's output
        def __init__(self):
            super().__init__()
            self.add_module("0", nn.Linear(32, 64))
            self.add_module("1", nn.GELU())
            self.add_module("2", nn.Linear(64, 16))

        def forward(self, x):
            h = getattr(self, "0")(x)
            return getattr(self, "2")(h) + getattr(self, "1")(h).sum()

    other = Branchy().eval()
    before = snapshot(other)
    with pytest.raises(ValueError, match="bigperf.load: .*'1'"):
        bigperf.load(other, tmp_path / "ckpt")
    assert_same(before, snapshot(other))


def test_a_load_that_fails_part_way_leaves_every_tensor_as_it_was(tmp_path):
    saved = mlp(nn.GELU)
    bigperf.swap(saved, {"2": "int8"})  # layer 0 stays an nn.Linear, loaded before layer 2
    directory = bigperf.save(saved, tmp_path / "ckpt")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["extra_states"]["2._extra_state"]["version"] = 99  # refused by the layer's set_extra_state
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "model.safetensors").unlink()  # keep manifest.json authoritative
    bigperf.save(saved, tmp_path / "fresh")
    (tmp_path / "fresh" / "model.safetensors").rename(directory / "model.safetensors")
    # The tensor file carries its own manifest; make manifest.json the one that is read.
    manifest["checkpoint_id"] = json.loads((tmp_path / "fresh" / "manifest.json").read_text())["checkpoint_id"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    other = mlp(nn.GELU, seed=1)
    before = snapshot(other)
    with pytest.raises(ValueError):
        bigperf.load(other, directory)
    assert_same(before, snapshot(other))


def _saved_manifest(tmp_path):
    model = mlp(nn.GELU)
    bigperf.swap(model, "int8")
    directory = bigperf.save(model, tmp_path / "ckpt")
    (directory / "model.safetensors").unlink()
    bigperf.save(model, tmp_path / "pair")
    return directory, json.loads((tmp_path / "pair" / "manifest.json").read_text())


def _set(manifest, path, value):
    target = manifest
    for part in path[:-1]:
        target = target[part]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value


@pytest.mark.parametrize("path,value,field", [
    (("layers",), KeyError, "layers"),
    (("layers",), 5, "layers"),
    (("layers", 0, "name"), KeyError, "name"),
    (("layers", 0, "name"), 3, "name"),
    (("layers", 0, "in_features"), "32", "in_features"),
    (("layers", 0, "bias"), "yes", "bias"),
    (("layers", 0, "absorbed"), 7, "absorbed"),
    (("layers", 0, "config"), KeyError, "config"),
    (("layers", 0, "config", "fields", "group_size"), "big", "group_size"),
    (("layers", 0, "config", "fields", "colour"), "red", "colour"),
    (("layers", 0, "config", "type"), "Int9", "type"),
    (("tensors",), [], "tensors"),
    (("tensors", "0.qweight", "dtype"), "float99", "dtype"),
    (("tensors", "0.qweight", "shape"), "big", "shape"),
    (("aliases",), KeyError, "aliases"),
    (("extra_states",), "x", "extra_states"),
])
def test_crafted_manifests_get_an_error_naming_the_field(tmp_path, path, value, field):
    directory, manifest = _saved_manifest(tmp_path)
    _set(manifest, path, value)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "pair" / "model.safetensors").rename(directory / "model.safetensors")
    other = mlp(nn.GELU, seed=1)
    before = snapshot(other)
    with pytest.raises(ValueError, match=rf"bigperf.load.*{field}"):
        bigperf.load(other, directory)
    assert_same(before, snapshot(other))


def test_a_garbage_tensor_file_gets_a_clear_error(tmp_path):
    model = mlp(nn.GELU)
    directory = bigperf.save(model, tmp_path / "ckpt")
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(ValueError, match="bigperf.load: .*model.safetensors"):
        bigperf.load(mlp(nn.GELU), directory)


# ----------------------------------------------------------------------------- class 6: no side effects

class CountingLinear(nn.Module):
    """A leaf module holding a 2-D weight whose forward has side effects (a counter buffer,
    a Python attribute, a training-mode-only update): discovery must not run it."""

    def __init__(self, k=32, n=64):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, k) / k ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))
        self.python_calls = 0

    def forward(self, x):
        self.calls += 1
        self.python_calls += 1
        if self.training:
            with torch.no_grad():
                self.weight.mul_(1.0)  # bumps the version, as an in-place update would
        return nn.functional.linear(x, self.weight, self.bias)


def side_effect_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), CountingLinear(32, 64), nn.ReLU(),
                         nn.Sequential(nn.Linear(64, 16)))  # a nested module: fx traces through it


def with_hooks(model):
    fired = []
    for name, module in model.named_modules():
        module.register_forward_hook(lambda m, a, o, name=name: fired.append(name))
        module.register_forward_pre_hook(lambda m, a, name=name: fired.append(name))
    return fired


@pytest.mark.parametrize("config", ["int8", "bf16"])
@pytest.mark.parametrize("training", [True, False])
def test_a_dry_run_runs_no_user_code_and_changes_nothing(config, training):
    model = side_effect_model().train(training)
    fired = with_hooks(model)
    before = snapshot(model)
    versions = {n: t._version for n, t in model.named_parameters()}
    report = bigperf.swap(model, config, dry_run=True)
    assert {c.name for c in report.changes} >= {"0", "4.0"}
    assert fired == [], "discovery fired user hooks"
    assert model[2].python_calls == 0, "discovery ran a user forward"
    assert versions == {n: t._version for n, t in model.named_parameters()}
    assert_same(before, snapshot(model))


def test_calibration_of_a_training_mode_model_leaves_batchnorm_statistics_alone():
    model = side_effect_model().train()
    before = snapshot(model)
    batches = [torch.randn(8, 32) for _ in range(3)]
    report = bigperf.swap(model, "int8", calibration=batches, min_sqnr=0, dry_run=True)
    assert report.changes and all(c.sqnr_db is not None for c in report.changes)
    assert_same(before, snapshot(model))


def test_calibration_of_a_model_loaded_under_inference_mode_leaves_its_buffers_alone():
    """A model built or loaded under torch.inference_mode() holds inference tensors, which keep
    no version counter: calibration used to fail reading one ("Inference tensors do not track
    version counter"); their content is compared and written back instead."""
    class CountsCalls(nn.Module):  # a buffer a forward writes even in eval mode
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return x

    with torch.inference_mode():
        model = nn.Sequential(side_effect_model(), CountsCalls()).train()
        before = snapshot(model)
        batches = [torch.randn(8, 32) for _ in range(3)]
        report = bigperf.swap(model, "int8", calibration=batches, min_sqnr=0, dry_run=True)
        assert model[1].calls.is_inference() and model[0][1].running_mean.is_inference()
        assert report.changes and all(c.sqnr_db is not None for c in report.changes)
        assert float(model[1].calls) == 0, "calibration left a forward's buffer write behind"
        assert_same(before, snapshot(model))


def test_a_failed_swap_changes_nothing_either():
    model = side_effect_model().train()
    fired = with_hooks(model)
    before = snapshot(model)

    class Exploding(bigperf.FusedMixedPrecision):
        def make_layer(self, linear, activation):
            if linear.out_features == 16:
                raise RuntimeError("boom")
            return super().make_layer(linear, activation)

    with pytest.raises(RuntimeError, match="boom"):
        bigperf.swap(model, Exploding(), calibration=[torch.randn(4, 32)])
    assert_same(before, snapshot(model))
    assert all(name != "2" for name in fired)  # only calibration ran the model, never discovery's probe


@pytest.mark.parametrize("training", [True, False])
def test_inserted_layers_follow_the_model_s_training_flag(training):
    model = side_effect_model().train(training)
    bigperf.swap(model, "int8")
    assert all(m.training is training for m in model.modules())


# ----------------------------------------------------------------------------- class 7: refuse what cannot run

@pytest.mark.parametrize("config", ["int8", "int8-dynamic", "bf16", "fused",
                                    bigperf.BlockSparse(density=0.5, prune=True)])
def test_a_layer_swap_accepts_runs_at_the_model_s_own_dtype(config):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).double().eval()
    x = torch.randn(3, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    report = bigperf.swap(model, config)
    with torch.no_grad():
        out = model(x)  # whatever was swapped must run
    assert out.dtype == torch.float64 and out.shape == expected.shape
    for name, reason in report.kept:
        assert "float64" in reason, (name, reason)
    assert report.changes == [] and len(report.kept) == 2


def test_a_layer_that_fails_its_probe_forward_is_kept_with_the_reason():
    class FailsAtForward(nn.Module):
        def __init__(self, k, n):
            super().__init__()
            self.in_features, self.out_features = k, n

        def forward(self, x):
            raise RuntimeError(f"K = {x.shape[-1]} is beyond this kernel's limit")

        def backend(self):
            return "cpu"

    @dataclasses.dataclass(frozen=True)
    class Config:
        fuse_activations: bool = True

        def make_layer(self, linear, activation):
            return FailsAtForward(linear.in_features, linear.out_features)

        def describe(self):
            return "Config()"

    model = mlp(nn.ReLU)
    report = bigperf.swap(model, Config())
    assert report.changes == [] and len(report.kept) == 2
    assert all("beyond this kernel's limit" in reason for _, reason in report.kept)
    assert type(model[0]) is nn.Linear


@pytest.mark.parametrize("make,config,field", [
    (lambda: bigperf.Int8WeightOnly(group_size=7), "Int8WeightOnly", "group_size"),
    (lambda: bigperf.Int8WeightOnly(group_size=0), "Int8WeightOnly", "group_size"),
    (lambda: bigperf.Int8WeightOnly(group_size=True), "Int8WeightOnly", "group_size"),
    (lambda: bigperf.Int8WeightOnly(symmetric="no"), "Int8WeightOnly", "symmetric"),
    (lambda: bigperf.Int8WeightOnly(fuse_activations=None), "Int8WeightOnly", "fuse_activations"),
    (lambda: bigperf.FusedMixedPrecision(weight_dtype=torch.int8), "FusedMixedPrecision", "weight_dtype"),
    (lambda: bigperf.FusedMixedPrecision(weight_dtype="bf16"), "FusedMixedPrecision", "weight_dtype"),
    (lambda: bigperf.Int8Dynamic(act_bits=9), "Int8Dynamic", "act_bits"),
    (lambda: bigperf.Int8Dynamic(fuse_activations=1), "Int8Dynamic", "fuse_activations"),
    (lambda: bigperf.Sparse24(values_dtype=torch.float64), "Sparse24", "values_dtype"),
    (lambda: bigperf.Sparse24(prune="yes"), "Sparse24", "prune"),
    (lambda: bigperf.Sparse24Int8(prune=None), "Sparse24Int8", "prune"),
    (lambda: bigperf.BlockSparse(block=(16,)), "BlockSparse", "block"),
    (lambda: bigperf.BlockSparse(block=(0, 16)), "BlockSparse", "block"),
    (lambda: bigperf.BlockSparse(block=(16.0, 16)), "BlockSparse", "block"),
    (lambda: bigperf.BlockSparse(density=0), "BlockSparse", "density"),
    (lambda: bigperf.BlockSparse(density=1.5), "BlockSparse", "density"),
    (lambda: bigperf.BlockSparse(density="half"), "BlockSparse", "density"),
    (lambda: bigperf.BlockSparse(values_dtype=torch.int8), "BlockSparse", "values_dtype"),
])
def test_configs_validate_their_fields_when_constructed(make, config, field):
    with pytest.raises(ValueError, match=rf"bigperf\.{config}: (field|argument) '{field}'"):
        make()


def test_valid_configs_still_construct_and_round_trip():
    from bigperf.configs import config_from_dict, config_to_dict

    for config in (bigperf.Int8WeightOnly(group_size=32), bigperf.BlockSparse(block=[8, 8], density=1),
                   bigperf.Sparse24(torch.float16), bigperf.FusedMixedPrecision(torch.float32)):
        assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config


@pytest.mark.parametrize("fields", [{"weight_dtype": ["bfloat16"]}, {"weight_dtype": {"a": 1}},
                                    {"weight_dtype": "bfloat16", "float_copy": [1]}])
def test_a_config_record_of_the_wrong_json_types_is_refused_naming_the_reader(fields):
    # Found by make fuzz (a damaged checkpoint manifest): a list where a dtype name belongs
    # raised TypeError("unhashable type: 'list'") from the dtype lookup, naming no reader.
    from bigperf.configs import config_from_dict

    with pytest.raises(ValueError, match="^bigperf.load: "):
        config_from_dict({"type": "FusedMixedPrecision", "fields": fields}, "bigperf.load")


@pytest.mark.parametrize("density", [0.5, 0.3, 0.75])
def test_prune_then_sparse_layer_agree_on_the_block_count(density):
    from bigperf.nn import SparseLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 7 * 16))  # 7 blocks of 16x16: density x 7 is never whole
    bigperf.prune(model, "block", density=density, block=(16, 16))
    layer = SparseLinear.from_linear(model[0], "block", block=(16, 16), density=density)
    assert layer.out_features == 112
    report = bigperf.swap(model, bigperf.BlockSparse(density=density))
    assert [c.name for c in report.changes] == ["0"]


def test_save_onto_a_file_names_the_argument(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(NotADirectoryError, match="bigperf.save: argument 'path'"):
        bigperf.save(mlp(nn.ReLU), tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"


def test_a_manifest_that_swaps_one_module_twice_is_refused(tmp_path):
    directory, manifest = _saved_manifest(tmp_path)
    manifest["layers"].append(dict(manifest["layers"][0]))
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "pair" / "model.safetensors").rename(directory / "model.safetensors")
    other = mlp(nn.GELU, seed=1)
    before = snapshot(other)
    with pytest.raises(ValueError, match=r"bigperf.load: .*'0'.*twice"):
        bigperf.load(other, directory)
    assert_same(before, snapshot(other))


def test_a_k_beyond_a_kernel_s_limit_is_refused_or_runs(monkeypatch):
    """int8 dynamic's CPU kernel stops at K = 131071 (int32 accumulator); without measuring,
    one row goes to that kernel. Whatever swap accepts must run."""
    monkeypatch.setenv("BIGPERF_TUNE", "0")
    k = 131072 + 64
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(k, 8)).eval()
    report = bigperf.swap(model, "int8-dynamic")
    with torch.no_grad():
        assert model(torch.randn(1, k)).shape == (1, 8)
    assert [c.name for c in report.changes] == ["0"] or "131071" in report.kept[0][1]
