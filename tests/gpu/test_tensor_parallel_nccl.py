"""Tensor parallelism over NCCL (bigperf.distributed): 2 ranks, one GPU each, spawned inside
pytest; the cases are in tests/distributed/cases_cuda.py."""

import pytest
import torch
import torch.distributed as dist

if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
    pytest.skip(f"needs at least 2 CUDA GPUs for NCCL tensor parallelism, found "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}", allow_module_level=True)
if not dist.is_nccl_available():
    pytest.skip("this torch build has no NCCL backend (torch.distributed.is_nccl_available() is False)",
                allow_module_level=True)

from tests.distributed.spawn import check_case, run_ranks  # noqa: E402


def test_two_gpus_layers():
    case = "tests.distributed.cases_cuda:cuda_layers"
    check_case(run_ranks(2, [case], timeout_s=300, backend="nccl"), case, 2)
