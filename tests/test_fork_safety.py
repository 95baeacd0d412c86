"""Fork safety (issue 14, class 2): a process that ran a bigperf op and then forks (DataLoader
workers, multiprocessing) gets a child whose ops run, on either thread runtime, and the
parent keeps working. Each case runs in a subprocess with a timeout: a hang fails the test."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bigperf import _ext

pytestmark = pytest.mark.skipif(_ext.cpu_module() is None,
                                reason=f"bigperf._C not built: {_ext.cpu_unavailable_reason()}")

_PREAMBLE = """
import os, sys
import torch
import bigperf
from bigperf import _ext
from bigperf.ops.int8_linear import int8_weight_linear
from bigperf.quant import quantize_weight

torch.set_num_threads(2)
torch.manual_seed(0)
w = quantize_weight(torch.randn(512, 1024))
x = torch.randn(8, 1024)

def op():  # large enough (M N K >= 2^18) to run a parallel region on 2 threads
    # Our kernel, not a torch path the tuner may pick: torch's own parallel ops hang in such
    # a child (libgomp), unless it sets one thread as DataLoader workers do.
    with bigperf.use_backend("cpu"), _ext.use_cpu_isa(_ext.runnable_cpu_isas()[-1]):
        return int8_weight_linear(x, w.qweight, w.scale)

expected = op()
print("runtime", _ext.thread_runtime(), flush=True)
"""

_OS_FORK = _PREAMBLE + """
pid = os.fork()
if pid == 0:
    ok = torch.equal(op(), expected) and torch.equal(op(), expected)
    os._exit(0 if ok else 3)
assert torch.equal(op(), expected)  # the parent, while the child runs
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
assert torch.equal(op(), expected)
print("done")
"""

_MULTIPROCESSING_FORK = _PREAMBLE + """
import multiprocessing

def work(_):
    return torch.equal(op(), expected)

with multiprocessing.get_context("fork").Pool(2) as pool:
    assert all(pool.map(work, range(4), chunksize=1))
assert torch.equal(op(), expected)
print("done")
"""


@pytest.mark.parametrize("threads", ["openmp", "own"])
@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_child_of_a_fork_runs_ops(threads, how):
    script = _OS_FORK if how == "os.fork" else _MULTIPROCESSING_FORK
    env = {**os.environ, "BIGPERF_THREADS": threads}
    try:
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired as hang:
        pytest.fail(f"hung after fork with BIGPERF_THREADS={threads} ({how}): {hang.stdout!r}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "done" in run.stdout
    if threads == "own":
        assert "runtime own" in run.stdout
