"""Tensor parallelism on CPU with gloo: 2 ranks and a 4-rank smoke test, spawned inside pytest
as users start them. One start runs many cases (a start costs seconds: torch, bigperf and
transformers imports per rank); each test reports its own case."""

import importlib.util

import pytest

from tests.distributed.spawn import check_case, run_ranks

LAYERS = "tests.distributed.cases_layers"
LLAMA = "tests.distributed.cases_llama"
SHM = "tests.distributed.cases_shm:shm"
TWO_RANK_CASES = [SHM] + [f"{LAYERS}:{case}" for case in ("layers", "layer_state", "torch_entry_point", "bad_plans",
                                                          "save", "layouts", "torch_shards_first",
                                                          "state_dict")]
if importlib.util.find_spec("transformers") is not None:  # else the Llama tests skip, with the reason
    TWO_RANK_CASES += [f"{LLAMA}:{case}" for case in ("llama", "llama_orders")]
FOUR_RANK_CASES = [SHM, f"{LAYERS}:smoke", f"{LAYERS}:layouts", f"{LAYERS}:torch_shards_first"]


@pytest.fixture(scope="module")
def two_ranks():
    return run_ranks(2, TWO_RANK_CASES, timeout_s=240)


def test_two_ranks_shared_memory_all_reduce(two_ranks):
    check_case(two_ranks, SHM, 2)


@pytest.mark.parametrize("case", ["layers", "layer_state", "torch_entry_point", "bad_plans", "save", "layouts",
                                  "torch_shards_first", "state_dict"])
def test_two_ranks(two_ranks, case):
    check_case(two_ranks, f"{LAYERS}:{case}", 2)


@pytest.mark.parametrize("case", ["llama", "llama_orders"])
def test_two_ranks_llama(two_ranks, case):
    pytest.importorskip("transformers", reason="transformers is a test extra: pip install -e '.[test]'")
    check_case(two_ranks, f"{LLAMA}:{case}", 2)


@pytest.fixture(scope="module")
def four_ranks():
    return run_ranks(4, FOUR_RANK_CASES, timeout_s=240)


@pytest.mark.parametrize("case", FOUR_RANK_CASES)
def test_four_ranks(four_ranks, case):
    check_case(four_ranks, case, 4)
