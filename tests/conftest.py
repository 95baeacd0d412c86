import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# The measuring dispatcher (bigperf/tune.py) tunes into a cache of this run's own, never the
# user's, and with a small budget: tests check what runs, not how fast.
# The folder goes when the process that made it exits (xdist's workers inherit the variable and
# make none), so runs leave nothing behind in /tmp.
if "BIGPERF_CACHE_DIR" not in os.environ:
    os.environ["BIGPERF_CACHE_DIR"] = tempfile.mkdtemp(prefix="bigperf-test-tune-")
    atexit.register(shutil.rmtree, os.environ["BIGPERF_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("BIGPERF_TUNE_BUDGET_S", "0.005")

# Make `tests.helpers` importable however pytest is invoked.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# `make test-sanitize`: bigperf._C comes from the ASan/UBSan build in this folder (built out
# of tree, so the editable build stays as it is); the module must be that one, or the run
# would prove nothing.
SANITIZED_EXT_DIR = os.environ.get("BIGPERF_SANITIZED_EXT_DIR")
if SANITIZED_EXT_DIR:
    import bigperf

    _sanitized = Path(SANITIZED_EXT_DIR).resolve()
    bigperf.__path__.insert(0, str(_sanitized))
    import bigperf._C

    if Path(bigperf._C.__file__).resolve().parent != _sanitized:
        raise RuntimeError(f"BIGPERF_SANITIZED_EXT_DIR={SANITIZED_EXT_DIR}: bigperf._C was loaded from "
                           f"{bigperf._C.__file__} (imported before tests/conftest.py?)")


@pytest.fixture(autouse=True)
def _fp32_numerics(request):
    """Tests hold fp32 x to fp32's tolerance. Outside bigperf.fp32_compute() the dispatcher may
    pick a path that rounds fp32 x to bf16 where the weight is int8 or bf16 (that precision
    class), and whether it does depends on timings, so every test runs inside it; the tests of
    those paths and of that choice opt out with @pytest.mark.bf16_dispatch."""
    if request.node.get_closest_marker("bf16_dispatch"):
        yield
        return
    from bigperf.ops.common import fp32_compute

    with fp32_compute():
        yield


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A tuning cache of the test's own, with measuring on. Busy neighbours (another job on the
    CI machine, a build beside the run) would keep choices out of the cache (bigperf.tune's
    CPU-pressure rule), and tests that check what is cached would fail by the machine's load:
    the rule is off here; the tests of the rule itself put it back (REAL_BUSY_PRESSURE)."""
    from bigperf import tune

    monkeypatch.setenv("BIGPERF_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BIGPERF_TUNE", "1")
    monkeypatch.setattr(tune, "BUSY_PRESSURE", float("inf"))
    tune.forget()
    yield tmp_path
    tune.forget()
