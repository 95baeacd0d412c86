"""Tensor parallelism on CPU with gloo: 2 ranks (and a 4-rank smoke test), spawned inside
pytest. One spawn runs many cases (a start costs seconds); each test reports its own case."""

import pytest

from tests.distributed.spawn import check_case, run_ranks

LAYER_CASES = ["layers", "layer_state", "torch_entry_point", "bad_plans"]


@pytest.fixture(scope="module")
def two_ranks():
    return run_ranks(2, "tests.distributed.cases_layers", LAYER_CASES, timeout_s=240)


@pytest.mark.parametrize("case", LAYER_CASES)
def test_two_ranks(two_ranks, case):
    check_case(two_ranks, case, 2)
