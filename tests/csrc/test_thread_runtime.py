"""Where the CPU kernels run their parallel regions: torch's OpenMP runtime (adopted at
import) or bigperf's own pool (BIGPERF_THREADS=own), with the same results either way."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bigperf import _ext
from bigperf.formats import int8_rowmajor as int8_format
from bigperf.quant import quantize_weight

cpu = _ext.cpu_module()
pytestmark = pytest.mark.skipif(cpu is None, reason=f"bigperf._C not built: {_ext.cpu_unavailable_reason()}")


@pytest.fixture(params=["own", "openmp"])
def runtime(request):
    """Runs the test on each thread runtime, then restores the one chosen at import."""
    chosen = cpu.thread_runtime()
    if request.param == "own":
        cpu.use_own_threads()
    else:
        paths = _ext._loaded_openmp_runtimes()
        if not paths or not cpu.adopt_openmp_runtime(paths[0]):
            pytest.skip("no OpenMP runtime loaded by torch in this process")
    yield request.param
    if chosen == "own":
        cpu.use_own_threads()
    else:
        cpu.adopt_openmp_runtime(chosen)


def test_torch_openmp_runtime_is_adopted_by_default():
    paths = _ext._loaded_openmp_runtimes()
    if os.environ.get("BIGPERF_THREADS", "openmp") == "own" or not paths:
        pytest.skip("BIGPERF_THREADS=own or torch loaded no OpenMP runtime")
    assert _ext.thread_runtime() in paths


def test_a_runtime_that_is_not_loaded_is_refused():
    before = cpu.thread_runtime()
    assert cpu.adopt_openmp_runtime("/nonexistent/libgomp.so.1") is False
    assert cpu.thread_runtime() == before, "a failed adoption changed the runtime"


@pytest.mark.parametrize("n, threads, grain", [(1, 2, 1), (7, 2, 1), (1000, 2, 64), (1000, 8, 1), (5, 16, 2)])
def test_every_index_runs_exactly_once(runtime, n, threads, grain):
    assert cpu._test_parallel_for(n, threads, grain) == [1] * n


def test_an_exception_in_a_chunk_reaches_the_caller(runtime):
    for fail_at in (0, 999):  # the caller's chunk and a worker's chunk
        with pytest.raises(RuntimeError, match=f"index {fail_at} failed"):
            cpu._test_parallel_for(1000, 2, 1, fail_at)
    assert cpu._test_parallel_for(10, 2, 1) == [1] * 10, "the runtime is unusable after an exception"


def test_kernels_give_identical_results_on_both_runtimes():
    torch.manual_seed(0)
    x = torch.randn(3, 512)
    packed = quantize_weight(torch.randn(1000, 512))
    results = {}
    chosen = cpu.thread_runtime()
    try:
        for name in ("own", "openmp"):
            if name == "own":
                cpu.use_own_threads()
            elif not any(cpu.adopt_openmp_runtime(p) for p in _ext._loaded_openmp_runtimes()):
                pytest.skip("no OpenMP runtime loaded by torch in this process")
            results[name] = int8_format._weight_only_cpu_run(x, packed.qweight, packed.scale, None, None, "none")
    finally:
        if chosen == "own":
            cpu.use_own_threads()
        else:
            cpu.adopt_openmp_runtime(chosen)
    assert torch.equal(results["own"], results["openmp"])


def test_environment_selects_the_own_pool():
    code = "import bigperf, bigperf._ext as e; print(e.thread_runtime())"
    env = {**os.environ, "BIGPERF_THREADS": "own"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "own"
