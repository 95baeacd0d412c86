"""Issue #14 class 11: the `bigperf` command answers a user's mistake with a message and
exit code 2, never a traceback. Each case below was seen giving a traceback (or a wrong OK)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bigperf.cli import main
from tests.bench.records import auto, record, result

ROOT = Path(__file__).resolve().parent.parent


class Untraceable(nn.Module):
    """A model torch.export cannot trace: control flow on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def untraceable() -> nn.Module:
    return Untraceable().eval()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def factory_with_markup():
    raise ValueError("a [/red] message [bold]with[/bold] rich markup")


def run_cli(argv, capsys) -> tuple[int, str]:
    """(exit code, everything printed): a traceback escaping main fails the test."""
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def assert_message(status: int, text: str, *words: str) -> None:
    assert status == 2, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) <= 3, f"not a short message:\n{text}"
    for word in words:
        assert word in " ".join(text.split()), f"{word!r} not in:\n{text}"


# ----------------------------------------------------------------------------- bench compare

def _regressed_pair(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(record([result(speedup=2.0)])))
    new.write_text(json.dumps(record([result(speedup=1.0)])))  # the kernel lost half its speedup
    return str(old), str(new)


@pytest.mark.parametrize("threshold", ["100", "150", "-5", "nan", "inf"])
def test_compare_refuses_a_threshold_that_disables_the_gate(tmp_path, capsys, threshold):
    old, new = _regressed_pair(tmp_path)
    status, text = run_cli(["bench", "compare", old, new, "--threshold", threshold], capsys)
    assert_message(status, text, "--threshold")
    assert "OK" not in text


def test_compare_still_fails_a_50_percent_regression(tmp_path, capsys):
    old, new = _regressed_pair(tmp_path)
    status, text = run_cli(["bench", "compare", old, new, "--threshold", "30"], capsys)
    assert status == 1 and "FAIL" in text


@pytest.mark.parametrize("where,value", [
    (("fingerprint", "versions"), None),
    (("fingerprint", "git"), "x"),
    (("fingerprint", "git", "commit"), -1),
    (("fingerprint", "machine_kind"), None),
    (("results", 1, "speedup"), float("inf")),
    (("results", 1, "speedup_q1"), float("inf")),
    (("results", 1, "speedup_q3"), -1),
    (("results", 1, "rounds"), -3),
    (("skipped",), [5]),
])
@pytest.mark.parametrize("command", ["compare", "floor", "plot"])
def test_malformed_record_fields_are_a_message(tmp_path, capsys, where, value, command):
    rec = record([result(), auto()])
    target = rec
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rec))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(record([result(), auto()])))
    argv = {"compare": ["compare", str(good), str(bad)], "floor": ["floor", str(bad)],
            "plot": ["plot", str(bad), "-o", str(tmp_path / "plots")]}[command]
    status, text = run_cli(["bench", *argv], capsys)
    assert_message(status, text, "bad.json")


def test_plot_onto_a_file_is_a_message(tmp_path, capsys):
    rec = tmp_path / "rec.json"
    rec.write_text(json.dumps(record([result()])))
    (tmp_path / "file").write_text("")
    status, text = run_cli(["bench", "plot", str(rec), "-o", str(tmp_path / "file")], capsys)
    assert_message(status, text, "file")


# ----------------------------------------------------------------------------- swap

def test_rich_markup_in_an_error_is_printed_as_text(capsys):
    status, text = run_cli(["swap", "tests.test_reliability_cli:factory_with_markup"], capsys)
    assert_message(status, text, "a [/red] message [bold]with[/bold] rich markup")


def test_swap_save_onto_an_existing_file_is_a_message_and_swaps_nothing_first(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    status, text = run_cli(["swap", "tests.test_reliability_cli:mlp", "--save", str(target)], capsys)
    assert_message(status, text, "taken")
    assert target.read_text() == "mine"


def test_a_transformers_folder_without_weights_is_a_message(tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="transformers is a test extra")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    config.save_pretrained(tmp_path / "tiny")  # config.json, no weights
    status, text = run_cli(["swap", str(tmp_path / "tiny")], capsys)
    assert_message(status, text, "tiny")


def test_readme_says_a_factory_target_runs_code():
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "package.module:factory" in text and "imports and runs" in text


# ----------------------------------------------------------------------------- export, trt

def test_a_model_torch_export_cannot_trace_is_a_short_message(tmp_path, capsys):
    pytest.importorskip("onnx", reason="onnx is a test extra")
    status, text = run_cli(["export", "onnx", "tests.test_reliability_cli:untraceable", "-o",
                            str(tmp_path / "m.onnx"), "--no-verify"], capsys)
    assert_message(status, text, "torch.export")


def test_export_onto_a_folder_is_a_message(tmp_path, capsys):
    pytest.importorskip("onnx", reason="onnx is a test extra")
    status, text = run_cli(["export", "onnx", "tests.test_reliability_cli:mlp", "-o", str(tmp_path),
                            "--no-verify"], capsys)
    assert_message(status, text, str(tmp_path))


@pytest.mark.parametrize("command", [["trt", "lint"], ["trt", "build"]])
def test_a_garbage_onnx_file_is_a_message(tmp_path, capsys, command):
    pytest.importorskip("onnx", reason="onnx is a test extra")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage, not a protobuf \xff\xfe" * 10)
    extra = ["-o", str(tmp_path / "m.plan")] if command[1] == "build" else []
    status, text = run_cli([*command, str(garbage), *extra], capsys)
    assert_message(status, text, "garbage.onnx")


def test_the_installed_command_prints_no_traceback(tmp_path):
    """The same through the console entry point (python -m bigperf.cli), exit code included."""
    (tmp_path / "file").write_text("")
    out = subprocess.run([sys.executable, "-m", "bigperf.cli", "swap", "tests.test_reliability_cli:mlp",
                          "--save", str(tmp_path / "file")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout, out.stderr


@pytest.mark.parametrize("option", ["--out", "--history"])
def test_bench_output_onto_a_folder_is_refused_before_the_run(tmp_path, capsys, monkeypatch, option):
    import bigperf.bench.runner as runner

    def never(*args, **kwargs):
        raise AssertionError("the suite ran before its output path was checked")

    monkeypatch.setattr(runner, "run_suite", never)
    status, text = run_cli(["bench", "--suite", "smoke", option, str(tmp_path)], capsys)
    assert_message(status, text, str(tmp_path))


@pytest.mark.parametrize("where,value", [
    (("results", 2, "speedup_vs_fastest"), "x"),
    (("results", 2, "speedup_vs_fastest_q1"), None),
    (("results", 2, "fastest_baseline"), 3),
    (("results", 2, "speedup_runs"), "fast"),
    (("skipped", 0, "key"), None),
    (("skipped", 0, "key"), []),
    (("skipped", 0, "reason"), {}),
])
@pytest.mark.parametrize("command", ["compare", "floor"])
def test_malformed_optional_fields_are_a_message(tmp_path, capsys, where, value, command):
    skipped = [{"key": "l.proj/m=1/fp32/fused_linear[cuda]", "reason": "no GPU"}]
    rec = record([result(), auto()], skipped=skipped)
    target = rec
    for part in where[:-1]:
        target = target[part]
    target[where[-1]] = value
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rec))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(record([result(), auto()], skipped=skipped)))
    argv = ["compare", str(good), str(bad)] if command == "compare" else ["floor", str(bad)]
    status, text = run_cli(["bench", *argv], capsys)
    assert_message(status, text, "bad.json")


def test_the_swap_report_prints_brackets_as_text(capsys):
    import bigperf

    model = mlp()
    report = bigperf.swap(model, {r"[/a]?0": "int8", r"[/b]?2": None})
    text = " ".join(str(report).split())
    assert "[/a]?0" in text and "[/b]?2" in text
    status, out = run_cli(["swap", "tests.test_reliability_cli:mlp", "--config", "int8", "--dry-run"], capsys)
    assert status == 0 and "Traceback" not in out


@pytest.mark.parametrize("floor", ["100", "1e9", "-1", "nan"])
def test_floor_refuses_a_tolerance_that_disables_the_check(tmp_path, capsys, floor):
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(record([auto(vs_fastest=0.5)])))  # half the speed of PyTorch
    status, text = run_cli(["bench", "floor", str(slow), "--floor", floor], capsys)
    assert_message(status, text, "--floor")


def test_bench_on_an_unknown_device_is_a_message(capsys, monkeypatch):
    import bigperf.bench.runner as runner

    monkeypatch.setattr(runner, "run_suite", lambda *a, **k: pytest.fail("ran on an unknown device"))
    status, text = run_cli(["bench", "--suite", "smoke", "--device", "xyz", "--no-history"], capsys)
    assert_message(status, text, "xyz")


@pytest.mark.parametrize("option", ["--max-batch", "--max-seq"])
@pytest.mark.parametrize("value", ["0", "1"])
def test_export_refuses_dynamic_bounds_that_leave_nothing_dynamic(tmp_path, capsys, option, value):
    pytest.importorskip("onnx", reason="onnx is a test extra")
    status, text = run_cli(["export", "onnx", "tests.test_reliability_cli:mlp", "-o", str(tmp_path / "m.onnx"),
                            "--dynamic", option, value, "--no-verify"], capsys)
    assert_message(status, text, option)


def test_an_empty_onnx_file_is_not_linted_as_clean(tmp_path, capsys):
    pytest.importorskip("onnx", reason="onnx is a test extra")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    status, text = run_cli(["trt", "lint", str(empty)], capsys)
    assert_message(status, text, "empty.onnx")
