# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv from the
# committed lock (requirements/lock.txt: exact versions, transitive ones included) and
# install the package (building the C++/CUDA extensions) on first use.
VENV ?= .venv
PYTHON ?= python3
LOCK := requirements/lock.txt
# What `make lock` resolves torch from: the CPU wheel of torch lies on this project's
# machines' disk; elsewhere pick your own, e.g. TORCH_SPEC="torch==2.13.0".
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bigperf-installed
SOURCES := setup.py pyproject.toml $(LOCK) $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' 2>/dev/null)

.PHONY: demo test test-unit test-interpreter test-sanitize fuzz bench bench-check doctor clean lock

demo: $(STAMP)
	$(VENV)/bin/bigperf demo

test: $(STAMP) test-unit test-interpreter bench-check

test-unit: $(STAMP)
	$(PY) -m pytest -q tests

# Triton kernels on the CPU: TRITON_INTERPRET must be set before triton is imported,
# so these run in a pytest process of their own.
test-interpreter: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m interpreter tests/kernels

# bigperf._C built with ASan + UBSan in build/sanitize (the editable build is left alone),
# then the C++-facing tests and the fuzzers against it; any sanitizer report fails.
test-sanitize: $(STAMP)
	PYTHON=$(PY) tests/run_sanitized.sh

# The property-based fuzzers with a long budget and a fresh seed each run (`make test`
# runs them with a small fixed-seed budget); BIGPERF_FUZZ_EXAMPLES sets the count.
fuzz: $(STAMP)
	BIGPERF_FUZZ=long $(PY) -m pytest -q -p no:cacheprovider tests/fuzz

# Throughput gate: the quick benchmark suite vs the committed baseline of this machine
# kind (ratios to PyTorch measured in the same run; fails on a >30% drop beyond noise).
bench-check: $(STAMP)
	PYTHON=$(PY) benchmarks/ci_check.sh

doctor: $(STAMP)
	$(VENV)/bin/bigperf doctor

bench: $(STAMP)
	$(VENV)/bin/bigperf bench --suite quick

$(PY):
	$(PYTHON) -m venv $(VENV)

# Everything from the lock (pip, the build tools, torch, the test extra), then the package
# itself with no dependency resolution and no build isolation: nothing unpinned gets in.
$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve on purpose (newer releases of everything within pyproject.toml's ranges),
# reinstall from the new lock and run the tests: commit the lock only if they pass.
lock: $(PY)
	$(PY) -m pip install -q $(shell grep -E '^pip==' $(LOCK))
	$(PY) requirements/make_lock.py "$(TORCH_SPEC)"
	rm -f $(STAMP)
	$(MAKE) test

clean:
	rm -rf build *.egg-info bigperf/*.so bigperf/_build_info.json
