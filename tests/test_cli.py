import subprocess
import sys

import pytest
import torch

from bigperf.cli import main


def test_doctor_explains_backends(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for word in ("CPU ISA in use", "torch", "triton", "reference", "bigperf._C_cuda", "W8A8 layers on cpu",
                 "W8A16 layers on cuda", f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}",
                 "CPU pressure"):
        assert word in out
    from bigperf.formats import w8a8_cpu

    held = "hold w8a8-cpu" if w8a8_cpu.why_not_hold(torch.device("cpu"), False) is None else "hold int8-rowmajor"
    assert held in out, "the doctor must say which layout a W8A8 layer holds on this machine"
    from bigperf.formats import w8a16_cpu

    avx2 = w8a16_cpu.why_not_hold(torch.device("cpu"), True) is None
    assert "W8A16 layers on cpu" in out and ("hold w8a16-cpu" in out) == avx2


def test_demo_small_runs_and_prints_table():
    out = subprocess.run([sys.executable, "-m", "bigperf.cli", "demo", "--small", "--repeats", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "FusedMixedPrecision" in out.stdout and "SQNR" in out.stdout


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "bigperf.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "doctor" in out.stdout


def test_swap_command_with_a_factory_target(capsys):
    assert main(["swap", "bigperf.demo_model:build_demo_model", "--config", "int8", "--dry-run", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and len(report["changes"]) == 25
    assert report["bytes_after"] < 0.27 * report["bytes_before"]


def test_swap_command_float_copy_keeps_fp32_weights_and_says_so(capsys):
    import json

    assert main(["swap", "bigperf.demo_model:build_demo_model", "--config", "int8", "--dry-run", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["swap", "bigperf.demo_model:build_demo_model", "--config", "int8", "--float-copy", "--dry-run",
                 "--json"]) == 0
    copied = json.loads(capsys.readouterr().out)
    assert "float copy" in copied["config"]
    # every swapped weight again in fp32: exactly the original fp32 weights' bytes more (biases aside)
    weights = sum(c["bytes_before"] for c in plain["changes"])
    assert weights * 0.95 < copied["bytes_after"] - plain["bytes_after"] <= weights


def test_swap_command_on_a_local_transformers_directory(tmp_path, capsys):
    import pytest

    transformers = pytest.importorskip("transformers", reason="transformers is a test extra")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=0, eos_token_id=1)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    assert main(["swap", str(tmp_path / "tiny"), "--config", "bf16", "--save", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "gate_proj" in out and "silu" in out and (tmp_path / "out" / "manifest.json").exists()


def test_swap_command_reports_bad_targets_and_configs(capsys):
    assert main(["swap", "no_such_module:factory"]) == 2
    assert main(["swap", "bigperf.demo_model:build_demo_model", "--config", "int9"]) == 2
    assert "unknown config name" in capsys.readouterr().out


def test_swap_command_batch_keeps_the_layers_it_would_slow(tmp_path, monkeypatch, capsys):
    """--batch tunes and times every layer; --min-speedup decides what is kept (a huge one
    keeps every layer, 'none' none of them)."""
    import json

    monkeypatch.setenv("BIGPERF_CACHE_DIR", str(tmp_path))
    target = "bigperf.demo_model:build_demo_model"
    assert main(["swap", target, "--config", "bf16", "--dry-run", "--json", "--batch", "1",
                 "--min-speedup", "1e9"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["changes"] == [] and len(report["kept"]) == 25
    assert all("slower than the original" in k["reason"] for k in report["kept"])
    assert main(["swap", target, "--config", "bf16", "--dry-run", "--json", "--batch", "1",
                 "--min-speedup", "none"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["changes"]) == 25 and all(set(c["by_batch"]) == {"1"} for c in report["changes"])


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "inf"])
def test_min_speedup_flag_refuses_bad_values(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["swap", "bigperf.demo_model:build_demo_model", "--min-speedup", bad])
    assert exit_info.value.code == 2 and "--min-speedup" in capsys.readouterr().err
