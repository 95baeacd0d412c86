"""The default path table tests/gpu/check.sh records (tests/gpu/bench_gpu.py, suite "paths"),
run here on CPU tensors with a wall-clock timer in place of CUDA events, so that the script
a lent GPU runs once in a while does not rot in between: every eligible path of each op is
timed, the fastest is named under the dispatcher's own key, and the JSON is the tuning
cache's terms."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from bigperf import tune

BENCH = Path(__file__).resolve().parent / "gpu" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wall_clock(fn, warmup_ms, rep_ms):
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1e3
    return {"median_ms": ms, "p20_ms": ms, "p80_ms": ms}


def test_path_entries_and_default_table(bench_gpu, monkeypatch):
    monkeypatch.setattr(bench_gpu, "bench", wall_clock)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    timing = type("Args", (), {"warmup_ms": 1, "rep_ms": 1})()
    rows = []
    calls = list(bench_gpu.path_calls(16, 64, 128, torch.device("cpu")))
    assert {op for _, op, _, _ in calls} == {"bigperf.fused_linear", "bigperf.int8_weight_linear",
                                             "bigperf.sparse24_linear"}
    for table, op_name, fmt, args in calls:
        with torch.inference_mode():
            row = bench_gpu.run_path_entry(table, op_name, fmt, args, 16, 64, 128, timing)
        eligible, _ = table.eligible(args[0].device, *args)
        ids = tuple(b.id for b in eligible if b.name != "reference")
        assert set(row["paths"]) == set(ids) and not row["failed"], row
        assert row["key"] == tune.key_text(tune.call_key(op_name, ids, args))
        assert row["choice"] == min(row["paths"], key=lambda p: row["paths"][p]["median_ms"])
        rows.append(row)
    report = {"device": "cpu", "capability": [0, 0], "sm_count": 0, "torch": torch.__version__, "torch_cuda": None,
              "triton": None, "compiled_archs": [], "method": "wall clock (test)"}
    table = json.loads(json.dumps(bench_gpu.default_table(report, rows, False, [{"M": 4096}])))
    assert table["complete"] is False and table["not_reached"] == [{"M": 4096}]
    assert set(table["choices"]) == {r["key"] for r in rows}
    for row in rows:
        entry = table["choices"][row["key"]]
        assert entry["choice"] == row["choice"] and set(entry["times_s"]) == set(row["paths"])
        assert entry["times_s"][row["choice"]] == min(entry["times_s"].values())
