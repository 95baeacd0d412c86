"""The absolute gate: an op dispatched automatically must not be slower than the fastest
PyTorch path timed beside it (bigperf/bench/floor.py, `bigperf bench floor`, ci_check.sh)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bigperf.bench.cli import main as bench_main
from bigperf.bench.compare import compare_records
from bigperf.bench.floor import check_record, check_runs, tolerance
from bigperf.bench.store import save_record
from tests.bench.records import auto, record, result

ROOT = Path(__file__).resolve().parents[2]


def _status(check, variant="fused_linear[auto]"):
    return {row.variant: row.status for row in check.rows}[variant]


def test_an_auto_variant_20_percent_slower_than_the_fastest_torch_path_fails():
    check = check_runs([record([auto(vs_fastest=0.8, spread=0.04)])])
    assert _status(check) == "slower" and check.failed()
    [row] = check.failures
    assert row.fastest == "torch.linear" and row.speedup == pytest.approx(0.8)
    assert row.tolerance == pytest.approx(0.05)  # the floor: 1.57 * 0.04 / sqrt(20) is less


def test_within_the_floor_or_within_the_measured_noise_passes():
    assert _status(check_runs([record([auto(vs_fastest=0.97, spread=0.02)])])) == "ok"
    # 0.8x, but the rounds scattered from 0.3x to 1.3x over 6 rounds: no evidence of a slowdown.
    noisy = check_runs([record([auto(vs_fastest=0.8, spread=1.0, rounds=6)])])
    assert _status(noisy) == "ok" and not noisy.failed()
    assert noisy.rows[0].tolerance == pytest.approx(tolerance(0.3, 1.3, 6, 5.0)) and noisy.rows[0].tolerance > 0.2
    # Faster than torch passes, whatever the spread.
    assert _status(check_runs([record([auto(vs_fastest=3.0, spread=0.1)])])) == "ok"


def test_only_auto_variants_are_held_to_the_floor():
    # Our per-backend kernel and a peer slower than torch are context here (compare.py gates kernels).
    rec = record([result("fused_linear[cpu]", speedup=0.5), result("fbgemm.dynamic_int8", 0.5, role="peer"),
                  auto(vs_fastest=1.1)])
    check = check_runs([rec])
    assert [r.variant for r in check.rows] == ["fused_linear[auto]"] and not check.failed()


def test_the_fastest_baseline_is_found_in_records_without_the_per_round_figures():
    # An older record: only speedups over torch.linear (x's dtype). The bf16 path is 1.25x
    # faster than that, so an auto variant at 1.0x of torch.linear is at 0.8x of the fastest.
    old_style = result("fused_linear[auto]", speedup=1.0, spread=0.02, role="auto")
    bf16 = result("torch.linear bf16", speedup=1.25, spread=0.02, role="baseline", family="torch")
    [row] = check_record(record([bf16, old_style]))
    assert row.fastest == "torch.linear bf16" and row.speedup == pytest.approx(0.8) and row.status == "slower"


def test_a_point_without_a_torch_baseline_is_reported_not_judged():
    rec = record([result("fused_linear[auto]", speedup=0.5, role="auto", layer="other")])
    rec["results"] = [r for r in rec["results"] if r["role"] != "baseline"]
    check = check_runs([rec])
    assert _status(check) == "no baseline" and not check.failed()
    assert check.warnings and "nothing was checked" in check.warnings[0]


def test_an_auto_call_that_raised_fails_and_one_not_timed_is_reported():
    rec = record([auto(vs_fastest=1.2)], skipped=[
        {"key": "l.proj/m=1/fp32/int8_dynamic_linear[auto]", "reason": "failed: NoBackendError: nothing can run"},
        {"key": "l.proj/m=1/fp32/sparse24_linear[auto] lanes", "reason": "time limit of 60 s reached"},
        {"key": "l.proj/m=1/fp32/sparse24_linear[triton]", "reason": "Triton on CPU runs in the interpreter"},
    ])
    check = check_runs([rec])
    statuses = {r.variant: r.status for r in check.rows}
    assert statuses == {"fused_linear[auto]": "ok", "int8_dynamic_linear[auto]": "failed",
                        "sparse24_linear[auto] lanes": "not measured"}
    assert [r.variant for r in check.failures] == ["int8_dynamic_linear[auto]"]


def test_a_rerun_must_confirm_a_failure():
    slow, fine = record([auto(vs_fastest=0.8)]), record([auto(vs_fastest=0.99)])
    assert not check_runs([slow, fine]).failed()
    both = check_runs([slow, record([auto(vs_fastest=0.85)])])
    assert both.failed() and both.rows[0].runs == [pytest.approx(0.8), pytest.approx(0.85)]


def test_auto_variants_gate_the_regression_check_too():
    # 2.0x -> 1.0x of torch.linear: the dispatcher stopped choosing the fast kernel.
    comparison = compare_records(record([auto(speedup=2.0)]), record([auto(speedup=1.0)]), 30)
    assert [r.key.rsplit("/", 1)[-1] for r in comparison.regressions] == ["fused_linear[auto]"]


def test_cli_floor_exit_codes_and_table(tmp_path, capsys):
    slow, fine, none = tmp_path / "slow.json", tmp_path / "fine.json", tmp_path / "none.json"
    save_record(record([auto(vs_fastest=0.8, fastest="torch.linear fp32")]), slow)
    save_record(record([auto(vs_fastest=1.0)]), fine)
    save_record(record([result()]), none)
    assert bench_main(["floor", str(fine)]) == 0
    assert "OK" in capsys.readouterr().out
    assert bench_main(["floor", str(slow)]) == 1
    out = capsys.readouterr().out
    assert "fused_linear[auto]" in out and "torch.linear fp32" in out and "0.80x" in out and "FAIL: 1" in out
    assert bench_main(["floor", str(slow), str(fine)]) == 0  # the re-run did not confirm it
    assert bench_main(["floor", str(slow), "--floor", "25"]) == 0
    capsys.readouterr()
    assert bench_main(["floor", str(none)]) == 2  # nothing to check is a broken run, not a pass
    assert "nothing to check" in capsys.readouterr().out


def test_the_smoke_suite_times_auto_variants_against_every_torch_path():
    from bigperf.bench.runner import run_suite

    rec = run_suite("smoke", "cpu", ops=["fused_linear", "int8_weight_linear"])
    autos = [r for r in rec["results"] if r["role"] == "auto"]
    import torch

    from bigperf.formats import w8a16_cpu

    held = {"int8_weight_linear[auto] w8a16-cpu"} if w8a16_cpu.why_not_hold(torch.device("cpu"), True) is None else set()
    assert {r["variant"] for r in autos} == {"fused_linear[auto]", "fused_linear[auto] w=bf16",
                                             "int8_weight_linear[auto]"} | held
    baselines = {r["variant"] for r in rec["results"] if r["role"] == "baseline"}
    assert baselines == {"torch.linear", "torch.linear bf16"}  # fp32 points: x's dtype and bf16
    for r in autos:
        assert r["backend"] == "auto" and r["prepare_s"] is not None and r["prepare_s"] >= 0
        assert r["fastest_baseline"] in baselines and r["speedup_vs_fastest"] > 0
        assert r["rel_err"] < 5e-2
    # A layer that keeps fp32 weights is held to the fp32 path only, not to a less precise bf16 one.
    assert {r["fastest_baseline"] for r in autos if r["variant"] == "fused_linear[auto]"} == {"torch.linear"}
    assert check_runs([rec]).judged


def test_a_preparation_that_raises_is_recorded_as_failed():
    import torch

    from bigperf.bench.cases import Variant
    from bigperf.bench.runner import _prepare

    calls = []

    def broken():
        raise RuntimeError("no backend can run this call")

    good = Variant("a[auto]", "auto", "a", lambda: torch.zeros(1), 1, prepare=lambda: calls.append(1))
    bad = Variant("b[auto]", "auto", "b", lambda: torch.zeros(1), 1, prepare=broken)
    plain = Variant("torch.linear", "baseline", "torch", lambda: torch.zeros(1), 1)
    kept, seconds, failed = _prepare([good, bad, plain], torch.device("cpu"))
    assert [v.id for v in kept] == ["a[auto]", "torch.linear"] and calls == [1] and list(seconds) == ["a[auto]"]
    assert failed[0].id == "b[auto]" and failed[0].reason.startswith("failed: RuntimeError: no backend")


@pytest.mark.skipif(sys.platform == "win32", reason="ci_check.sh is a bash script")
def test_ci_check_gates_on_the_floor_without_a_committed_baseline(tmp_path):
    """ci_check.sh on a machine kind with no baseline: the floor check still fails the gate,
    after one re-measurement; a run within the floor passes. The suite run is planted: a
    stand-in PYTHON writes a prepared record where the suite would."""
    def planted(vs_fastest):
        rec = record([auto(vs_fastest=vs_fastest)])
        rec["fingerprint"]["machine_kind"] = "cpu-test-kind-without-baseline-1t"
        path = tmp_path / f"planted-{vs_fastest}.json"
        save_record(rec, path)
        return path

    wrapper = tmp_path / "python"
    wrapper.write_text(f"""#!/usr/bin/env bash
# The suite run (python -m bigperf.bench.cli --suite ...) copies the planted record to --out;
# everything else runs the real interpreter.
if [ "$3" = "--suite" ]; then
  while [ $# -gt 0 ]; do [ "$1" = "--out" ] && cp "$PLANTED" "$2"; shift; done
  echo run >> "{tmp_path}/runs.log"; exit 0
fi
exec {sys.executable} "$@"
""")
    wrapper.chmod(0o755)
    env = {**os.environ, "PYTHON": str(wrapper), "PYTHONPATH": str(ROOT)}

    def gate(vs_fastest):
        (tmp_path / "runs.log").unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "ci_check.sh")],
                              env={**env, "PLANTED": str(planted(vs_fastest))},
                              capture_output=True, text=True, timeout=300, check=False)
        return proc.returncode, proc.stdout + proc.stderr, len((tmp_path / "runs.log").read_text().split())

    rc, out, runs = gate(0.8)
    assert rc == 1, out
    assert "no regression check: no baseline" in out and "fused_linear[auto]" in out and runs == 2
    rc, out, runs = gate(0.99)
    assert rc == 0 and runs == 1, out


def test_per_backend_variants_leave_the_torch_paths_to_the_baselines():
    """The dispatcher's PyTorch paths ("torch:fp32", "torch:bf16") are what the baselines time:
    not ours to gate per backend; asked for by name they are one peer variant."""
    import torch

    from bigperf.bench.cases import CaseContext
    from bigperf.bench.suites import LAYERS, Point

    class Path:
        def __init__(self, name, why=None):
            self.name, self._why = name, why

        def why_not(self, *args):
            return self._why

    class Table:
        backends = {"cpu": Path("cpu"), "torch:fp32": Path("torch"), "torch:bf16": Path("torch"),
                    "cuda": Path("cuda", "tensors are on cpu"), "reference": Path("reference")}

    point = Point(LAYERS["tiny.proj"], 1, "fp32")

    def ids(backends):
        ctx = CaseContext(point, torch.device("cpu"), backends)
        out = ctx.backend_variants(Table(), "f", lambda x: x, (1,), [(1,)], 4)
        return {getattr(v, "name", v.id): getattr(v, "role", "skip") for v in out}

    assert ids(None) == {"f[cpu]": "ours", "f[cuda]": "skip"}
    assert ids(("cpu", "torch")) == {"f[cpu]": "ours", "f[torch]": "peer"}
