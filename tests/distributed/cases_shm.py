"""Cases run on every gloo rank (tests/distributed/spawn.py): the shared-memory all-reduce
(bigperf/distributed/shm.py) against exact sums, on every rank the same bits."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from bigperf.distributed import shm


def _gathered(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def case_shm(rank: int, world: int) -> None:
    group = dist.group.WORLD
    # Small slots: a tensor of 1000 values is reduced in 4 pieces, over both banks, many calls.
    segment = shm.SharedSegment(group, capacity=1024)
    assert segment.usable, "the ranks of one host must share a segment"
    for call in range(25):
        n = (0, 1, 7, 256, 1000)[call % 5]
        mine = torch.arange(n, dtype=torch.float32) * (rank + 1) + call  # integers: the sums are exact
        got = mine.clone()
        segment.all_reduce(got)
        want = torch.arange(n, dtype=torch.float32) * (world * (world + 1) // 2) + call * world
        assert torch.equal(got, want), (call, n)
    # max, with a NaN on one rank: NaN wins wherever it is.
    mine = torch.tensor([float(rank), -float(rank), float("nan") if rank == world - 1 else 0.0])
    segment.all_reduce(mine, "max")
    assert mine[0] == world - 1 and mine[1] == 0 and torch.isnan(mine[2]), mine
    # Sums of rounding values: every rank holds the same bits (each adds in rank order).
    values = torch.randn(3000, generator=torch.Generator().manual_seed(rank))
    shm.all_reduce(values, group)  # the group's own segment, full-size slots
    assert all(torch.equal(values, other) for other in _gathered(values))
    exact = sum(torch.randn(3000, generator=torch.Generator().manual_seed(r)).double() for r in range(world))
    assert torch.allclose(values.double(), exact, rtol=0, atol=1e-5)
    # What it cannot take goes to torch.distributed: a bf16 tensor, a strided one.
    for t in (torch.full((5,), rank + 1.0, dtype=torch.bfloat16), torch.full((4, 2), rank + 1.0)[:, 0]):
        shm.all_reduce(t, group)
        assert (t == world * (world + 1) // 2).all(), t
    os.environ["BIGPERF_SHM_ALL_REDUCE"] = "0"  # turned off: gloo
    try:
        t = torch.full((3,), float(rank))
        shm.all_reduce(t, group)
        assert (t == world * (world - 1) // 2).all()
    finally:
        del os.environ["BIGPERF_SHM_ALL_REDUCE"]
    # No segment to be had (a full or missing /dev/shm on rank 0): every rank agrees it is unusable.
    create = shm._create
    shm._create = lambda *args: [None, None]
    try:
        assert not shm.SharedSegment(group).usable
    finally:
        shm._create = create
    # A rank that never comes: the others raise after the timeout instead of hanging.
    lonely = shm.SharedSegment(group, capacity=64, timeout_s=0.5)
    if rank == 0:
        try:
            lonely.all_reduce(torch.ones(4))
        except RuntimeError as error:
            assert "waited 0.5" in str(error) and "call 1" in str(error), str(error)
        else:
            raise AssertionError("an all-reduce without the other ranks returned")
    dist.barrier()


CASES = {"shm": case_shm}
