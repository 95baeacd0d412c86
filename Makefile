# Two commands for a newcomer: `make demo` and `make test`. Both set up .venv, install
# torch and the package (building the C++/CUDA extensions) on first use.
VENV ?= .venv
PYTHON ?= python3
# The CPU wheel of torch lies on this project's machines' disk; elsewhere pick your own,
# e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.bigperf-installed
SOURCES := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' 2>/dev/null)

.PHONY: demo test test-unit test-interpreter bench bench-check doctor clean

demo: $(STAMP)
	$(VENV)/bin/bigperf demo

test: $(STAMP) test-unit test-interpreter bench-check

test-unit: $(STAMP)
	$(PY) -m pytest -q tests

# Triton kernels on the CPU: TRITON_INTERPRET must be set before triton is imported,
# so these run in a pytest process of their own.
test-interpreter: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -m interpreter tests/kernels

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
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf build *.egg-info bigperf/*.so bigperf/_build_info.json
