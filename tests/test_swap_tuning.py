"""swap(..., batch_sizes=...) and `bigperf tune`: paths decided at swap time, reported per
layer and batch size, kept in the tuning cache; nothing of the user's model runs or changes."""
from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch
from torch import nn

import bigperf
from bigperf import tune
from bigperf.cli import main
from bigperf.tune_swap import speed_ratio


pytestmark = pytest.mark.usefixtures("own_cache")  # tests/conftest.py


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 48), nn.Linear(48, 48), nn.Linear(48, 48))


@pytest.mark.parametrize("config", ["int8", "bf16", "int8-dynamic"])
def test_swap_tunes_each_batch_size_and_reports_path_and_speedup(config, own_cache):
    model = _model()
    report = bigperf.swap(model, config, batch_sizes=(1, 5, 33), min_speedup=None)  # small layers: swap them all
    assert len(report.changes) == 4 and report.kept == []
    paths = {c.name: c.by_batch for c in report.changes}
    for by_batch in paths.values():
        assert sorted(by_batch) == [1, 5, 33]
        for result in by_batch.values():
            assert result["path"].split(":")[0] in ("cpu", "torch"), result
            assert result["speedup"] > 0
    # Layers "3" and "4" share a shape: measured once, the same result.
    assert paths["3"] == paths["4"]
    assert report.tuning_seconds is not None and report.tune_cache == str(own_cache / tune.CACHE_FILE)
    cached = json.loads((own_cache / tune.CACHE_FILE).read_text())
    (section,) = cached["machines"].values()
    assert any("M32" in k or ",64," in k for k in section["choices"]), "M = 33 falls in bucket 64"
    assert "M=33" in str(report) and "tuned in" in str(report)
    x = torch.randn(3, 64)
    with torch.inference_mode():
        assert model(x).shape == (3, 48)


def test_tuning_runs_no_user_code_and_a_dry_run_changes_nothing():
    model = _model()
    fired = []
    for module in model:
        module.register_forward_hook(lambda *args: fired.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = bigperf.swap(model, "int8", batch_sizes=(1, 4), dry_run=True)
    assert report.dry_run and all(c.by_batch for c in report.changes)
    assert fired == [], "timing the original layers must not run the user's modules or hooks"
    assert all(type(m) in (nn.Linear, nn.GELU) for m in model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad", [(0,), (1, -2), ("a",), 3, (1.5,), (), (1, 100_000_000)])
def test_bad_batch_sizes_are_refused_naming_the_argument(bad):
    model = _model()
    with pytest.raises((TypeError, ValueError), match="batch_sizes"):
        bigperf.swap(model, "int8", batch_sizes=bad)
    assert all(type(m) in (nn.Linear, nn.GELU) for m in model)


def test_tune_command_fills_the_cache(own_cache, capsys):
    assert main(["tune", "bigperf.demo_model:build_demo_model", "--config", "int8", "--batch", "1,8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tune_cache"] == str(own_cache / tune.CACHE_FILE)
    assert all(set(c["by_batch"]) == {"1", "8"} for c in report["changes"])
    assert json.loads((own_cache / tune.CACHE_FILE).read_text())["machines"]


def test_tune_command_refuses_bad_batch_lists(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "bigperf.demo_model:build_demo_model", "--batch", "1,x"])
    assert exit_info.value.code == 2
    assert "--batch" in capsys.readouterr().err


def test_report_names_the_layers_slower_than_the_original_at_every_batch_size():
    from bigperf.report import LayerChange, SwapReport

    def change(name, speedups):
        return LayerChange(name, "Linear", "Int8Linear", "none", 400, 100, "cpu",
                           by_batch={m: {"path": "cpu", "speedup": s} for m, s in speedups.items()})
    report = SwapReport("int8", False, changes=[
        change("head", {1: 0.40, 16: 0.70}),        # slower everywhere: named
        change("mlp.up", {1: 2.10, 16: 0.80}),      # faster at one size: not named
        change("mlp.down", {1: 0.97, 16: 0.50}),    # within the noise at one size: not named
        change("untuned", {}),                       # nothing measured: not named
    ], tuning_seconds=0.1, tune_cache="/tmp/x")
    assert report.slower_layers == ["head"]
    assert report.to_dict()["slower_layers"] == ["head"]
    text = str(report)
    assert "1 layer(s) ran slower than the original at every batch size tuned (head)" in text
    assert "slower than the original" not in str(SwapReport("int8", False, changes=[change("mlp.up", {1: 2.1})]))


class _Planted(nn.Module):
    """A swapped layer of known cost: at the row counts in `slow_rows` it waits `wait_s`
    before the original's math; at any other it returns at once (zeros), far faster than
    any GEMM. What the speed gate decides about it is therefore known."""

    def __init__(self, linear: nn.Linear, wait_s: float, slow_rows: tuple[int, ...]):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.wait_s, self.slow_rows = wait_s, slow_rows

    def forward(self, x):
        if x.shape[0] in self.slow_rows:
            time.sleep(self.wait_s)
            return torch.nn.functional.linear(x, self.weight)
        return x.new_zeros(x.shape[0], self.weight.shape[0])

    def backend(self) -> str:
        return "planted"


@dataclasses.dataclass
class PlantedConfig:
    wait_s: float = 0.004
    slow_rows: tuple = (1, 64)
    fuse_activations: bool = False

    def make_layer(self, linear, activation):
        return _Planted(linear, self.wait_s, self.slow_rows)

    def describe(self) -> str:
        return f"planted(slow at {self.slow_rows})"


def _wide_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 512, bias=False), nn.ReLU(), nn.Linear(512, 256, bias=False))


def test_speed_ratio_reads_known_costs():
    def slow(x):
        time.sleep(0.002)

    def fast(x):
        pass
    x = torch.zeros(1)
    assert speed_ratio(slow, fast, x) > 5
    assert speed_ratio(fast, slow, x) < 0.2


def test_swap_keeps_a_layer_slower_than_the_original_at_every_batch_size():
    model = _wide_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = bigperf.swap(model, PlantedConfig(slow_rows=(1, 64)), batch_sizes=(1, 64))
    assert report.changes == []
    assert sorted(name for name, _ in report.kept) == ["0", "2"]
    reason = dict(report.kept)["0"]
    assert "slower than the original at every batch size measured" in reason and "M=64" in reason, reason
    assert "min_speedup=0.95" in reason
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear], "kept layers stay the originals"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # min_speedup=None swaps them anyway, and the report names them slower.
    report = bigperf.swap(model, PlantedConfig(slow_rows=(1, 64)), batch_sizes=(1, 64), min_speedup=None)
    assert [type(m) for m in model] == [_Planted, nn.ReLU, _Planted]
    assert report.slower_layers == ["0", "2"]


def test_swap_keeps_a_layer_faster_at_some_batch_sizes_and_reports_the_others():
    model = _wide_model()
    report = bigperf.swap(model, PlantedConfig(slow_rows=(1,)), batch_sizes=(1, 64))
    assert [c.name for c in report.changes] == ["0", "2"] and report.kept == []
    for change in report.changes:
        assert change.by_batch[1]["speedup"] < 0.5 < 2 < change.by_batch[64]["speedup"], change.by_batch
    assert [type(m) for m in model] == [_Planted, nn.ReLU, _Planted]


def test_a_higher_min_speedup_keeps_layers_that_gain_too_little():
    model = _wide_model()
    report = bigperf.swap(model, PlantedConfig(slow_rows=(1,)), batch_sizes=(1, 64), min_speedup=1e9)
    assert report.changes == [] and len(report.kept) == 2
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "fast", True])
def test_bad_min_speedup_is_refused_naming_the_argument(bad):
    model = _wide_model()
    with pytest.raises(ValueError, match="min_speedup"):
        bigperf.swap(model, "int8", batch_sizes=(1,), min_speedup=bad)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]
