"""The AVX-512 int8 kernels, checked on CPUs that cannot run them.

The kernel units are compiled against SIMDe (portable implementations of the intrinsics,
Debian package libsimde-dev) and compared with the scalar path on many shapes by
avx512_emulation/check_int8_avx512.cpp. On an AVX-512 machine test_cpu_int8_linear.py
runs the real thing as well.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent / "avx512_emulation"
SIMDE_HEADER = Path("/usr/include/simde/x86/avx512.h")

pytestmark = [
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 kernels"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found"),
    pytest.mark.skipif(not SIMDE_HEADER.exists(),
                       reason="SIMDe headers not installed (apt-get install libsimde-dev) to emulate AVX-512"),
]


def test_avx512_kernels_match_scalar_under_emulation(tmp_path):
    flags = ["g++", "-std=c++17", "-O1", "-DBIGPERF_X86=1", f"-I{ROOT / 'csrc'}", f"-I{HERE}", "-pthread",
             *os.environ.get("BIGPERF_EMULATION_CXXFLAGS", "").split()]  # make test-sanitize
    objects = []
    for unit in ("kernels_weight_only.cpp", "kernels_dynamic.cpp"):
        obj = tmp_path / (unit + ".o")
        subprocess.run([*flags, "-w", "-c", str(HERE / unit), "-o", str(obj)], check=True)
        objects.append(str(obj))
    exe = tmp_path / "check"
    subprocess.run([*flags, str(HERE / "check_int8_avx512.cpp"), *objects, str(ROOT / "csrc/cpu/thread_pool.cpp"),
                    str(ROOT / "csrc/cpu/int8_linear_scalar.cpp"), "-o", str(exe)], check=True)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " 0 failures" in run.stdout, run.stdout[-4000:]
