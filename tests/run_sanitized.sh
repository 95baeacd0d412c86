#!/usr/bin/env bash
# `make test-sanitize`: bigperf._C built with ASan + UBSan out of tree (build/sanitize, so the
# editable build stays as it is), then the tests that reach it and the fuzzers run against
# that build (tests/conftest.py puts it first, BIGPERF_SANITIZED_EXT_DIR). Any sanitizer
# report fails the run: UBSan does not recover, ASan halts, and every report is written to
# a file (pytest's output capture would swallow stderr of a process that dies) that this
# script prints before it exits non-zero. UBSan (beside ASan) ignores log_path and writes to
# stderr: pytest captures only Python's sys.stderr here (--capture=sys), so a report that
# ends the process still reaches the log.
#
#   PYTHON=.venv/bin/python tests/run_sanitized.sh [test paths | pytest options...]
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CXX=${CXX:-g++}
OUT=build/sanitize
REPORTS=$OUT/reports

# Every kernel entry point, each ISA path this CPU runs (the csrc tests are parametrised by
# ISA; with SANITIZE_AVX512=1 the AVX-512 units also run built on SIMDe, with the same
# sanitizers through BIGPERF_EMULATION_CXXFLAGS), the op and layer edge, the class-1 concurrency test and the
# fuzzers; the slowest parametrisations of the sparse kernel tests are left to `make test`
# (same code paths, more shapes).
DEFAULT_TESTS=(
  tests/csrc/test_cpu_fused_linear.py
  tests/csrc/test_cpu_int8_linear.py
  tests/csrc/test_cpu_w8a8_panels.py
  tests/csrc/test_cpu_sparse_linear.py
  --deselect tests/csrc/test_cpu_sparse_linear.py::test_sparse24_dtypes_and_activations
  --deselect tests/csrc/test_cpu_sparse_linear.py::test_block_sparse_blocks_and_densities
  --deselect tests/csrc/test_cpu_sparse_linear.py::test_sparse24_shapes
  tests/csrc/test_thread_runtime.py
  tests/test_formats_cpu_lanes.py
  tests/test_reliability_kernels.py::test_bsr_index_written_during_kernel_never_crashes
  # (the racing writer runs ~6 s per case under ASan: the scalar twins of the AVX2 cases go)
  --deselect "tests/test_reliability_kernels.py::test_bsr_index_written_during_kernel_never_crashes[col_indices-lanes-scalar]"
  --deselect "tests/test_reliability_kernels.py::test_bsr_index_written_during_kernel_never_crashes[col_indices-canonical-scalar]"
  --deselect "tests/test_reliability_kernels.py::test_bsr_index_written_during_kernel_never_crashes[row_ptr-lanes-scalar]"
  --deselect "tests/test_reliability_kernels.py::test_bsr_index_written_during_kernel_never_crashes[row_ptr-canonical-scalar]"
  tests/fuzz
)
# The AVX-512 units built on SIMDe under the sanitizers cost ~2 CPU-minutes more (measured on
# Zen 3: compiling SIMDe with ASan dominates), over CI's budget: SANITIZE_AVX512=1 adds them.
if [ "${SANITIZE_AVX512:-0}" = 1 ]; then
  DEFAULT_TESTS+=(tests/csrc/test_cpu_int8_avx512_emulated.py)
else
  DEFAULT_TESTS+=(--deselect tests/csrc/test_cpu_fused_linear.py::test_avx512_path_under_simde_emulation
                  --deselect tests/csrc/test_cpu_sparse_linear.py::test_avx512_path_under_simde_emulation)
fi
# Arguments that start with a test path replace the subset; others (e.g. --durations=20) are
# added to it.
if [ $# -gt 0 ] && [ -e "${1%%::*}" ]; then TESTS=("$@"); else TESTS=("${DEFAULT_TESTS[@]}" "$@"); fi

# Skip the build with SANITIZE_SKIP_BUILD=1 (re-running tests against the last build).
start=$(date +%s)
mkdir -p "$OUT"
echo "sanitize: building bigperf._C with -fsanitize=address,undefined into $OUT"
if [ "${SANITIZE_SKIP_BUILD:-0}" != 1 ] && ! flock /tmp/bigperf-build.lock env BIGPERF_SANITIZE=address,undefined BIGPERF_CUDA=0 \
    "$PYTHON" setup.py -q build_ext -j 2 --build-lib "$OUT/lib" --build-temp "$OUT/tmp" > "$OUT.log" 2>&1; then
  tail -40 "$OUT.log"; echo "sanitize: build failed (log: $OUT.log)"; exit 1
fi
built=$(date +%s)
echo "sanitize: built in $((built - start)) s"

ASAN_LIB=$("$CXX" -print-file-name=libasan.so)
STDCXX_LIB=$("$CXX" -print-file-name=libstdc++.so.6)
if [ ! -e "$ASAN_LIB" ]; then echo "sanitize: $CXX has no libasan.so"; exit 1; fi
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
# libstdc++ is preloaded beside libasan: Python loads it late (with torch), and ASan's
# __cxa_throw interceptor then has no real function to call, so the first C++ exception
# (a binding refusing an argument) would kill the process.
# Leaks are not checked: CPython and torch keep allocations until exit by design.
env LD_PRELOAD="$ASAN_LIB $STDCXX_LIB" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$PWD/$REPORTS/asan" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$PWD/$REPORTS/ubsan" \
    BIGPERF_SANITIZED_EXT_DIR="$OUT/lib/bigperf" \
    BIGPERF_EMULATION_CXXFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
    "$PYTHON" -m pytest -q -p no:cacheprovider --capture=sys "${TESTS[@]}"
status=$?
echo "sanitize: tests ran in $(( $(date +%s) - built )) s (pytest exit $status)"
if compgen -G "$REPORTS/*" > /dev/null; then
  for report in "$REPORTS"/*; do echo "===== $report"; head -80 "$report"; done
  echo "sanitize: FAILED, sanitizer reports above"
  exit 1
fi
exit $status
