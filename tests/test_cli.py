import subprocess
import sys

from bigperf.cli import main


def test_doctor_explains_backends(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for word in ("CPU ISA in use", "torch", "triton", "reference", "bigperf._C_cuda"):
        assert word in out


def test_demo_small_runs_and_prints_table():
    out = subprocess.run([sys.executable, "-m", "bigperf.cli", "demo", "--small", "--repeats", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "FusedMixedPrecision" in out.stdout and "SQNR" in out.stdout


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "bigperf.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "doctor" in out.stdout
