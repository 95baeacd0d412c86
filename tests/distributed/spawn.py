"""Run test cases on several gloo ranks, started as users start them (torch.multiprocessing
spawn, with torchrun's environment variables), with a deadline: a hang fails, never blocks."""

from __future__ import annotations

import importlib
import json
import os
import socket
import tempfile
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, cases: list[str], out: str, backend: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=45))
    results = {}
    try:
        for case in cases:
            try:
                module, _, name = case.partition(":")
                importlib.import_module(module).CASES[name](rank, world)
                results[case] = "ok"
            except Exception:  # noqa: BLE001 - reported per case to the test in the parent
                results[case] = traceback.format_exc()
            Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, cases: list[str], timeout_s: float, backend: str = "gloo") -> dict[str, dict[int, str]]:
    """{case: {rank: "ok" or the traceback}}: `cases` ("package.module:name", a function in
    that module's CASES) run in order on `world` ranks of `backend` (nccl: rank r on GPU r),
    in one start (a start costs seconds). A rank that dies or a run past `timeout_s` raises
    with what is known."""
    with tempfile.TemporaryDirectory(prefix="bigperf-tp-") as out:
        return _run_ranks_into(out, world, cases, timeout_s, backend)


def _run_ranks_into(out: str, world: int, cases: list[str], timeout_s: float, backend: str) -> dict[str, dict[int, str]]:
    context = mp.start_processes(_rank_main, args=(world, free_port(), cases, out, backend), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        # join() returns after any one rank exits; the deadline is for all of them.
        while not context.join(timeout=max(0.1, deadline - time.monotonic())) and time.monotonic() < deadline:
            pass
    except ProcessException as error:  # a rank raised outside the cases, or was killed
        raise AssertionError(f"a rank failed: {error}\n{_read(out, world)}") from None
    finally:
        alive = [p for p in context.processes if p.is_alive()]
        for p in alive:
            p.kill()
    if alive:
        raise AssertionError(f"ranks {[context.processes.index(p) for p in alive]} still running after "
                             f"{timeout_s} s (a hang); results so far:\n{_read(out, world)}")
    results = {}
    for rank in range(world):
        for case, outcome in json.loads(Path(out, f"rank{rank}.json").read_text()).items():
            results.setdefault(case, {})[rank] = outcome
    return results


def _read(out: str, world: int) -> str:
    files = [Path(out, f"rank{r}.json") for r in range(world)]
    return "\n".join(f.read_text() for f in files if f.exists())


def check_case(results: dict, case: str, world: int) -> None:
    outcomes = results.get(case, {})
    failed = {rank: outcome for rank, outcome in outcomes.items() if outcome != "ok"}
    assert not failed and len(outcomes) == world, (
        f"case {case!r}: " + ("\n".join(f"rank {r}:\n{o}" for r, o in failed.items()) or f"ran on {sorted(outcomes)}"))
