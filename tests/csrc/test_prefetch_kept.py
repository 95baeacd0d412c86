"""The compiled CPU kernels still contain the software prefetches their sources ask for.

GCC counts _mm_prefetch / __builtin_prefetch as free of side effects, finds a helper that
only prefetches 'const' and deletes its calls: the AVX2 M = 1 fused kernels on bf16 and fp16
weights had none, and streamed K = 768 weights at ~6 GB/s instead of ~11 (benchmarks/NOTES.md,
session 26). Kernels prefetch through kernel_util.h's prefetch_l1 / prefetch_l2 now; this
test reads the built extension's machine code so that a change of compiler or of those
helpers cannot silently drop them again.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from bigperf import _ext

# Kernels that stream a weight from memory and prefetch it (the fused dot form: every
# weight dtype, both tiles, every ISA the build has).
STREAMING_KERNELS = re.compile(r"run_columns<.*Vec(Avx2|Avx512)\b")


def _functions_with_prefetches(so_path: str) -> dict[str, int]:
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", so_path], check=True,
                          capture_output=True, text=True).stdout
    counts: dict[str, int] = {}
    name = None
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            name = header.group(1)
            counts.setdefault(name, 0)
        elif name is not None and "prefetch" in line:
            counts[name] += 1
    return counts


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_streaming_kernels_keep_their_prefetches():
    module = _ext.cpu_module()
    counts = _functions_with_prefetches(module.__file__)
    kernels = {name: n for name, n in counts.items() if STREAMING_KERNELS.search(name) and "[clone" not in name}
    assert kernels, "no fused dot-form kernels found in the extension's symbols"
    missing = sorted(name for name, n in kernels.items() if n == 0)
    assert not missing, "kernels compiled without their software prefetches:\n" + "\n".join(missing)
