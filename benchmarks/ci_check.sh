#!/usr/bin/env bash
# CI throughput gate on the CPU: the quick suite, checked two ways.
#
#   benchmarks/ci_check.sh                  gate (exit 1 on a failure, 2 on a broken run)
#   benchmarks/ci_check.sh --update         re-measure (3 runs, per entry the lower-median run) and
#                                           overwrite this machine kind's baseline
#
# 1. Floor (any machine, no baseline needed): every op of the suite as dispatched automatically
#    (the "auto" variants: no backend forced, as a swapped layer calls it) must not be slower
#    than the fastest PyTorch path timed beside it at the same point (F.linear in x's dtype, fp32,
#    bf16) by more than max(BIGPERF_BENCH_FLOOR %, the measured noise) (bigperf/bench/floor.py).
# 2. Regression (where benchmarks/baselines/<kind>.json exists, e.g. cpu-x86_64-avx2-1t.json):
#    no op, per backend or auto, lost more than BIGPERF_BENCH_THRESHOLD % of its speedup over
#    torch against that committed baseline (bigperf/bench/compare.py).
# Each run tunes the dispatcher afresh (its own BIGPERF_CACHE_DIR): the gate judges the choice the
# dispatcher makes on this machine now, not one a developer's cache holds from before.
#
# Why it does not flake on a shared 2-core VM:
# - it gates on speedups (kernel time / torch time measured in the same interleaved rounds),
#   not on absolute times, which drift by tens of percent from minute to minute;
# - a regression is a speedup that fell by more than 30% AND more than the measured noise;
# - it runs single-threaded: with two threads on two busy cores, an OpenMP barrier in torch
#   waits for a descheduled thread (a 4 ms time slice), so millisecond-scale torch calls jump
#   several-fold while our own thread pool does not, and ratios swing by 5x; one thread has
#   no barrier and the ratios repeat within ~15% here;
# - a failed check is re-measured once, and an entry fails only if it fails in both runs (on a
#   machine four times oversubscribed, one run in ~30 shows a -30% outlier).
# Env: PYTHON (default python), BIGPERF_BENCH_THRESHOLD (default 30), BIGPERF_BENCH_FLOOR (default 8),
#      BIGPERF_BENCH_THREADS (1).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
THRESHOLD="${BIGPERF_BENCH_THRESHOLD:-30}"
# 8 %: on this project's shared 2-core machines two identical paths (fused_linear[auto] with
# fp32 weights runs F.linear itself) measured 0.93x [0.92-0.95] in one run and 1.00x in the
# next (benchmarks/NOTES.md); at 5 % the gate failed on noise alone.
FLOOR="${BIGPERF_BENCH_FLOOR:-8}"
THREADS="${BIGPERF_BENCH_THREADS:-1}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

run_quick() {  # OUT_FILE [more options]
  local out="$1"; shift
  BIGPERF_CACHE_DIR="$out.tune-cache" \
    "$PY" -m bigperf.bench.cli --suite quick --device cpu --threads "$THREADS" --no-history --out "$out" "$@"
}

kind_of() {
  "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["fingerprint"]["machine_kind"])' "$1"
}

floor_check() {  # RUN...
  "$PY" -m bigperf.bench.cli floor "$@" --floor "$FLOOR"
}

compare_check() {  # RUN...
  "$PY" -m bigperf.bench.cli compare "$BASELINE" "$@" --threshold "$THRESHOLD" --fail-on-missing
}

if [ "${1:-}" = "--update" ]; then
  run_quick "$WORK/baseline.json" --repeat 3 || { echo "ci_check: the quick suite failed to run"; exit 2; }
  BASELINE="benchmarks/baselines/$(kind_of "$WORK/baseline.json").json"
  mkdir -p benchmarks/baselines
  cp "$WORK/baseline.json" "$BASELINE"
  echo "ci_check: wrote $BASELINE"
  exit 0
fi

run_quick "$WORK/run1.json" || { echo "ci_check: the quick suite failed to run"; exit 2; }
KIND="$(kind_of "$WORK/run1.json")"
BASELINE="benchmarks/baselines/$KIND.json"

echo "ci_check: floor: ops dispatched automatically vs the fastest PyTorch path (no baseline needed)"
floor_check "$WORK/run1.json"
floor_rc=$?
compare_rc=0
if [ -f "$BASELINE" ]; then
  echo "ci_check: regression: speedups vs the committed baseline $BASELINE"
  compare_check "$WORK/run1.json"
  compare_rc=$?
else
  echo "ci_check: no regression check: no baseline for machine kind '$KIND' (expected $BASELINE);"
  echo "ci_check: the floor check above still gates. To add one on such a machine: benchmarks/ci_check.sh --update"
fi
if [ "$floor_rc" -eq 2 ] || [ "$compare_rc" -eq 2 ]; then
  echo "ci_check: a check could not read the run"
  exit 2
fi

if [ "$floor_rc" -eq 1 ] || [ "$compare_rc" -eq 1 ]; then
  echo "ci_check: a check failed; measuring again to rule out noise (an entry fails only if it fails in both runs)"
  run_quick "$WORK/run2.json" || { echo "ci_check: the quick suite failed to run"; exit 2; }
  if [ "$floor_rc" -eq 1 ]; then
    floor_check "$WORK/run1.json" "$WORK/run2.json"
    floor_rc=$?
  fi
  if [ "$compare_rc" -eq 1 ]; then
    compare_check "$WORK/run1.json" "$WORK/run2.json"
    compare_rc=$?
  fi
fi

if [ "$floor_rc" -eq 2 ] || [ "$compare_rc" -eq 2 ]; then
  exit 2
fi
if [ "$floor_rc" -ne 0 ] || [ "$compare_rc" -ne 0 ]; then
  [ "$floor_rc" -ne 0 ] && echo "ci_check: FAIL: an op dispatched automatically is slower than PyTorch on this machine"
  [ "$compare_rc" -ne 0 ] && echo "ci_check: FAIL: a regression against $BASELINE"
  exit 1
fi
echo "ci_check: OK"
exit 0
