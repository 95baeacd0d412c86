"""swap(..., batch_sizes=...) and `bigperf tune`: paths decided at swap time, reported per
layer and batch size, kept in the tuning cache; nothing of the user's model runs or changes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import bigperf
from bigperf import tune
from bigperf.cli import main


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGPERF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BIGPERF_TUNE", "1")
    tune.forget()
    yield tmp_path
    tune.forget()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 48), nn.Linear(48, 48), nn.Linear(48, 48))


@pytest.mark.parametrize("config", ["int8", "bf16", "int8-dynamic"])
def test_swap_tunes_each_batch_size_and_reports_path_and_speedup(config, own_cache):
    model = _model()
    report = bigperf.swap(model, config, batch_sizes=(1, 5, 33))
    assert len(report.changes) == 4
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
