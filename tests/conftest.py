import os
import sys
import tempfile
from pathlib import Path

# The measuring dispatcher (bigperf/tune.py) tunes into a cache of this run's own, never the
# user's, and with a small budget: tests check what runs, not how fast.
os.environ.setdefault("BIGPERF_CACHE_DIR", tempfile.mkdtemp(prefix="bigperf-test-tune-"))
os.environ.setdefault("BIGPERF_TUNE_BUDGET_S", "0.005")

# Make `tests.helpers` importable however pytest is invoked.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
