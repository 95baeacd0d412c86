#!/usr/bin/env bash
# The GPU benchmark suite in under 8 minutes (H200): builds bigperf if its CUDA extension is
# not importable yet, then runs the full suite on cuda (bf16 first, then fp16) under a time
# limit. Points not started in time are recorded as skipped; the record is saved after every
# point, so even a hard kill leaves what was measured.
#
#   benchmarks/gpu_suite.sh OUT_DIR [SUITE]      (SUITE: full (default) or quick)
#
# Writes OUT_DIR/bench-<machine kind>.json (a bigperf bench record) and OUT_DIR/gpu_suite.log.
# Commit the record as benchmarks/baselines/<machine kind>.json (e.g. cuda-nvidia-h200.json).
# Works without rich (plain progress lines) so that a bare GPU image suffices.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:?usage: benchmarks/gpu_suite.sh OUT_DIR [SUITE]}"
SUITE="${2:-full}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python}"
LIMIT_S="${BIGPERF_GPU_SUITE_SECONDS:-470}"  # whole script, build included; 8 min minus a margin
START=$(date +%s)
cd "$ROOT"
exec > >(tee -a "$OUT_DIR/gpu_suite.log") 2>&1

echo "bigperf GPU suite: $(date -Is), suite $SUITE, limit ${LIMIT_S}s -> $OUT_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

if ! "$PY" -c "import bigperf._C_cuda as c; assert c.device_count() > 0" 2>/dev/null; then
  echo "building bigperf (CUDA extension not importable yet)"
  export BIGPERF_CUDA=1
  timeout 240 "$PY" -m pip install --no-build-isolation --no-deps -e . -q \
    || timeout 200 "$PY" setup.py build_ext --inplace \
    || { echo "BUILD FAILED: timing torch and the Triton backend only"; }
fi

LEFT=$(( LIMIT_S - ($(date +%s) - START) ))
# Stop starting points a minute before the limit: one point (Triton autotuning) may take that long.
BUDGET=$(( LEFT - 60 ))
if [ "$BUDGET" -lt 30 ]; then
  echo "no time left for the suite ($(( $(date +%s) - START ))s spent)"; exit 1
fi

timeout --kill-after=10 "$LEFT" env -u TRITON_INTERPRET "$PY" - "$OUT_DIR" "$SUITE" "$BUDGET" <<'EOF'
import sys
import time

import torch

from bigperf.bench import store
from bigperf.bench.runner import run_suite
from bigperf.bench.suites import SUITES

out_dir, suite, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
kind = store.fingerprint(torch.device("cuda"))["machine_kind"]
path = f"{out_dir}/bench-{kind}.json"
points = SUITES[suite].points_for(torch.device("cuda"))
started = time.monotonic()
record = run_suite(
    suite, "cuda", max_seconds=budget,
    on_ceilings=lambda c: print("ceilings:", {k: round(v, 1) if isinstance(v, float) else v for k, v in c.items()}),
    on_start=lambda i, p: print(f"[{i + 1}/{len(points)}] {p.id} ({time.monotonic() - started:.0f} s)", flush=True),
    on_point_done=lambda partial: store.save_record(partial, path))
store.save_record(record, path)
try:
    from rich.console import Console

    from bigperf.bench.cli import print_results
    print_results(record, Console(width=170))
except ImportError:
    for r in record["results"]:
        print(f"{r['key']:70s} {r['median_s'] * 1e6:10.1f} us  {r['speedup']:6.2f}x")
print(f"{len(record['results'])} results, {len(record['skipped'])} skipped, {record['duration_s']} s -> {path}")
EOF
rc=$?
echo "done in $(( $(date +%s) - START ))s (exit $rc)"
exit $rc
