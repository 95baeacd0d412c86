import json
import subprocess
import sys

import torch

from bigperf.bench.runner import run_suite
from bigperf.bench.store import load_records, validate_record
from bigperf.bench.suites import BATCH_SIZES, LAYERS, SUITES


def test_suites_cover_the_real_model_shapes():
    shapes = {(layer.k, layer.n) for layer in LAYERS.values()}
    for k, n in ((4096, 4096), (4096, 1024), (4096, 14336), (14336, 4096), (768, 3072), (3072, 768)):
        assert (k, n) in shapes
    assert any("ViT-B" in layer.models for layer in LAYERS.values())
    assert BATCH_SIZES == (1, 16, 128, 2048)
    for device in ("cpu", "cuda"):
        full = SUITES["full"].points_for(torch.device(device))
        assert {p.m for p in full} == set(BATCH_SIZES)
        assert {p.layer.name for p in full} == {n for n in LAYERS if not n.startswith("tiny.")}
        quick = SUITES["quick"].points_for(torch.device(device))
        assert 0 < len(quick) < len(full)


def test_smoke_suite_end_to_end_record():
    rec = validate_record(run_suite("smoke", "cpu"), "smoke run")
    assert rec["ceilings"]["read_gbps"] > 0 and rec["ceilings"]["matmul_gflops"] > 0
    by_variant = {}
    for r in rec["results"]:
        by_variant.setdefault(r["variant"], []).append(r)
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"] and r["speedup_q1"] <= r["speedup"] <= r["speedup_q3"]
        assert r["rounds"] >= 4 and r["gbps"] > 0 and r["frac_bw"] > 0
    assert [r["speedup"] for r in by_variant["torch.linear"]] == [1.0, 1.0]
    ours = [r for r in rec["results"] if r["role"] == "ours"]
    assert ours and all(r["rel_err"] < 5e-2 for r in ours)  # int8 W8A8 included
    # Every variant that did not run says why.
    assert all(s["reason"] for s in rec["skipped"])
    assert any("Triton on CPU" in s["reason"] for s in rec["skipped"])


def test_cli_run_writes_the_record_and_appends_history(tmp_path, capsys):
    from bigperf.bench.cli import main as bench_main

    out, history = tmp_path / "run.json", tmp_path / "h.jsonl"
    args = ["--suite", "smoke", "--device", "cpu", "--ops", "fused_linear", "--out", str(out), "--history", str(history)]
    assert bench_main(args) == 0
    printed = capsys.readouterr().out
    assert "tiny.proj/m=1/fp32" in printed and "speedup" in printed and "not measured" in printed
    rec = json.loads(out.read_text())
    assert {r["family"] for r in rec["results"]} == {"torch", "fused_linear"}
    assert len(load_records(history)) == 1
    assert bench_main(["--ops", "no_such_op", "--no-history"]) == 2
    assert bench_main(["--suite", "huge", "--no-history"]) == 2
    assert "unknown op" in capsys.readouterr().out


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "bigperf.bench.cli", "compare", "--help"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--threshold" in proc.stdout
