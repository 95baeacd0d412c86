import json

import pytest

from bigperf.bench.cli import main as bench_main
from bigperf.bench.compare import compare_files, compare_records
from bigperf.bench.store import BenchFileError, append_history, load_record, save_record
from tests.bench.records import record, result


def _status(comparison, variant="fused_linear[cpu]"):
    return {row.key.rsplit("/", 1)[-1]: row.status for row in comparison.rows}[variant]


def test_a_real_slowdown_is_flagged():
    old = record([result(speedup=2.0, spread=0.1)])
    new = record([result(speedup=1.0, spread=0.1)])
    comparison = compare_records(old, new, threshold_pct=30)
    assert _status(comparison) == "slower"
    assert [r.key for r in comparison.regressions] == ["l.proj/m=1/fp32/fused_linear[cpu]"]
    assert comparison.failed()
    row = comparison.regressions[0]
    assert row.change == pytest.approx(-0.5) and row.noise < 0.1


def test_a_drop_within_the_measured_spread_is_noise():
    # -40% is past the threshold, but the rounds scattered from 0.5x to 3.5x: not evidence.
    old = record([result(speedup=2.0, spread=3.0, rounds=6)])
    new = record([result(speedup=1.2, spread=3.0, rounds=6)])
    comparison = compare_records(old, new, threshold_pct=30)
    assert _status(comparison) == "same" and not comparison.failed()


def test_a_drop_below_the_threshold_is_not_a_regression_however_precise():
    comparison = compare_records(record([result(speedup=2.0, spread=0.01)]),
                                 record([result(speedup=1.7, spread=0.01)]), threshold_pct=30)
    assert _status(comparison) == "same"
    assert _status(compare_records(record([result(speedup=2.0, spread=0.01)]),
                                   record([result(speedup=1.7, spread=0.01)]), threshold_pct=10)) == "slower"


def test_faster_and_new_entries_are_reported_but_pass():
    old = record([result(speedup=1.0)])
    new = record([result(speedup=2.0), result("int8_weight_linear[cpu]", 3.0, family="int8_weight_linear")])
    comparison = compare_records(old, new, 30)
    statuses = {row.key.rsplit("/", 1)[-1]: row.status for row in comparison.rows}
    assert statuses == {"fused_linear[cpu]": "faster", "int8_weight_linear[cpu]": "new"}
    assert not comparison.failed(fail_on_missing=True)


def test_a_missing_entry_is_reported_with_the_new_runs_reason():
    old = record([result(), result("int8_weight_linear[cpu]", family="int8_weight_linear")])
    new = record([result()], skipped=[{"key": "l.proj/m=1/fp32/int8_weight_linear[cpu]",
                                       "reason": "bigperf._C was built without int8_weight_linear"}])
    comparison = compare_records(old, new, 30)
    [missing] = comparison.missing
    assert missing.key.endswith("int8_weight_linear[cpu]") and "built without" in missing.reason
    assert not comparison.failed() and comparison.failed(fail_on_missing=True)


def test_peers_never_gate():
    old = record([result("fbgemm.dynamic_int8", 3.0, role="peer", family="int8_dynamic_linear")])
    new = record([result("fbgemm.dynamic_int8", 1.0, role="peer", family="int8_dynamic_linear")])
    comparison = compare_records(old, new, 30)
    assert _status(comparison, "fbgemm.dynamic_int8") == "slower" and not comparison.failed()


def test_machine_and_torch_differences_warn():
    new = record([result()])
    new["fingerprint"]["machine_kind"] = "cpu-x86_64-avx512-2t"
    new["fingerprint"]["versions"]["torch"] = "2.14.0"
    warnings = compare_records(record([result()]), new).warnings
    assert any("machine kinds" in w for w in warnings) and any("torch versions" in w for w in warnings)


def test_cli_exit_codes_and_table(tmp_path, capsys):
    old, same, slow = tmp_path / "old.json", tmp_path / "same.json", tmp_path / "slow.json"
    save_record(record([result(speedup=2.0)]), old)
    save_record(record([result(speedup=1.95)]), same)
    save_record(record([result(speedup=0.9)]), slow)
    assert bench_main(["compare", str(old), str(same), "--threshold", "30"]) == 0
    assert "OK: no regression" in capsys.readouterr().out
    assert bench_main(["compare", str(old), str(slow), "--threshold", "30"]) == 1
    out = capsys.readouterr().out
    assert "fused_linear[cpu]" in out and "slower" in out and "FAIL: 1 regression" in out


def test_a_history_file_compares_its_newest_record(tmp_path):
    history = tmp_path / "history.jsonl"
    append_history(record([result(speedup=1.0)], created="2026-11-01T00:00:00+00:00"), history)
    append_history(record([result(speedup=2.0)], created="2026-11-02T00:00:00+00:00"), history)
    assert load_record(history)["results"][1]["speedup"] == 2.0
    save_record(record([result(speedup=2.0)]), tmp_path / "new.json")
    assert not compare_files(history, tmp_path / "new.json", 30).failed()


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("", "empty"),
    ('{"schema": "something.else", "version": 1}', "not a bigperf benchmark record"),
    ("[1, 2]", "is a JSON object"),
    ('{"schema": "bigperf.bench", "version": 99}', "upgrade bigperf"),
    ('{"schema": "bigperf.bench", "version": 1, "created": "x"}', "missing field 'suite'"),
])
def test_malformed_files_give_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BenchFileError, match=message) as info:
        load_record(path)
    assert str(path) in str(info.value)


def test_malformed_results_name_the_entry_and_field(tmp_path):
    rec = record([result()])
    rec["results"][1]["speedup"] = "fast"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(BenchFileError, match=r"results\[1\]: field 'speedup' must be int or float, got str"):
        load_record(path)
    rec["results"][1] = dict(rec["results"][0])
    path.write_text(json.dumps(rec))
    with pytest.raises(BenchFileError, match="duplicate key"):
        load_record(path)


def test_cli_reports_bad_and_absent_files_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    save_record(record([result()]), tmp_path / "good.json")
    assert bench_main(["compare", str(bad), str(tmp_path / "good.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().out
    assert bench_main(["compare", str(tmp_path / "good.json"), str(tmp_path / "absent.json")]) == 2
    assert "cannot read" in capsys.readouterr().out


def test_history_lines_are_checked_one_by_one(tmp_path):
    history = tmp_path / "h.jsonl"
    append_history(record([result()]), history)
    with history.open("a") as f:
        f.write("{truncated\n")
    with pytest.raises(BenchFileError, match=r"h\.jsonl:2: not valid JSON"):
        load_record(history)


def test_a_rerun_must_confirm_a_regression(tmp_path, capsys):
    from bigperf.bench.compare import merge_records

    old = tmp_path / "old.json"
    save_record(record([result(speedup=2.0)]), old)
    save_record(record([result(speedup=1.0)]), tmp_path / "run1.json")  # an unlucky run
    save_record(record([result(speedup=1.9)]), tmp_path / "run2.json")  # the re-run does not confirm it
    save_record(record([result(speedup=1.1)]), tmp_path / "run3.json")  # this one does
    assert bench_main(["compare", str(old), str(tmp_path / "run1.json"), str(tmp_path / "run2.json")]) == 0
    assert bench_main(["compare", str(old), str(tmp_path / "run1.json"), str(tmp_path / "run3.json")]) == 1
    capsys.readouterr()
    # A baseline from several runs keeps each entry's lower-median run: one lucky run cannot raise it.
    runs = [record([result(speedup=s)]) for s in (1.0, 5.0, 2.0)]
    assert merge_records(runs, "median")["results"][1]["speedup"] == 2.0
    assert merge_records(runs[:2], "median")["results"][1]["speedup"] == 1.0
    assert merge_records(runs, "best")["results"][1]["speedup"] == 5.0


def test_a_baselines_run_to_run_range_counts_as_noise():
    from bigperf.bench.compare import merge_records

    baseline = merge_records([record([result(speedup=s, spread=0.05)]) for s in (3.0, 6.0, 7.0)], "median")
    assert baseline["results"][1]["speedup_runs"] == [3.0, 6.0, 7.0]
    # 6.0 -> 3.5 is -42%, far outside one run's spread, but inside what the baseline's runs spanned.
    assert _status(compare_records(baseline, record([result(speedup=3.5, spread=0.05)]), 30)) == "same"
    assert _status(compare_records(baseline, record([result(speedup=1.5, spread=0.05)]), 30)) == "slower"
