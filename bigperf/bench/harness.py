"""Timing: interleaved rounds, cold weights, the machine's ceilings.

Every variant of a case (our kernel, the torch baselines, the peers) is timed in the same
rounds, one block of calls each, in an order that rotates from round to round. Machine drift
(a neighbour's job, a bandwidth dip) then hits all variants of a round alike, and the ratio
of two variants *within* a round is far steadier than either absolute time: that per-round
ratio is what the suite reports and what comparisons gate on.

On the CPU each call of a block is timed with perf_counter and the block's sample is its
fastest call (see _time_block); the reported figures are the median and quartiles of those
samples over the rounds. On CUDA each round sample is one triton.testing.do_bench median
(CUDA events, L2 flushed between calls).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_LLC_BYTES = 32 << 20  # when the cache size cannot be read


@dataclass(frozen=True)
class TimingPlan:
    """How long to time one case (all of its variants together)."""

    budget_s: float = 3.0       # target time spent in timed rounds
    min_rounds: int = 5          # an IQR needs a handful of samples even for slow calls
    max_rounds: int = 40
    block_s: float = 0.02        # CPU: calls per block chosen so that a block lasts this long
    warmup_calls: int = 2        # first calls pay for allocation, oneDNN primitive creation
    max_call_s: float = 10.0     # a variant slower than this per call is skipped, not timed
    cuda_rep_ms: float = 20.0    # CUDA: do_bench's rep per round sample
    cuda_warmup_ms: float = 5.0


@dataclass
class Timings:
    """Per-round seconds per call for each variant, rounds aligned across variants."""

    samples: dict[str, list[float]]
    calls_per_round: dict[str, int]
    outputs: dict[str, torch.Tensor]      # one output per variant (from warm-up), for accuracy
    skipped: dict[str, str]               # variant -> why it was not timed

    @property
    def rounds(self) -> int:
        return len(next(iter(self.samples.values()))) if self.samples else 0


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3), interpolated as numpy.percentile does."""
    if len(values) == 1:
        return (float(values[0]),) * 3
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def ratio_quartiles(baseline: Sequence[float], variant: Sequence[float]) -> tuple[float, float, float]:
    """Quartiles of the per-round speedup baseline/variant (both timed in the same rounds)."""
    return quartiles([b / v for b, v in zip(baseline, variant)])


# ----------------------------------------------------------------------------- cold weights

def last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or (50 << 20)
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * scale
        if level >= 2 and size > best:
            best = size
    return best or DEFAULT_LLC_BYTES


def copies_for_cold(bytes_per_copy: int, llc_bytes: int, max_copies: int = 64) -> int:
    """Copies to rotate so that, like a model's layers, each call finds its weights evicted.

    Twice the cache: an LRU-like cache that has seen 2x its size since the last touch of a
    copy holds none of it. Never fewer than two, so even a weight larger than the cache is
    not re-read from a partly warm cache by back-to-back calls.
    """
    return max(2, min(max_copies, math.ceil(2 * llc_bytes / max(1, bytes_per_copy))))


def rotating(fn: Callable[..., torch.Tensor], states: Sequence[tuple]) -> Callable[[], torch.Tensor]:
    """A zero-argument step calling fn on the next state (weight copy) each time."""
    cycle = itertools.cycle(states)
    return lambda: fn(*next(cycle))


# ----------------------------------------------------------------------------- timing

def _time_block(step: Callable, calls: int) -> float:
    """Seconds per call over a block: the fastest of the calls' own times.

    On a shared machine a neighbour slows a call down (it takes the core for a time slice,
    or half the memory bandwidth), never speeds it up: the fastest call of a block is the
    one nearest to what the kernel does on its own, and it varies far less from run to run
    than a mean or median, which follow the neighbours' load.
    """
    clock = time.perf_counter
    best = math.inf
    for _ in range(calls):
        start = clock()
        step()
        best = min(best, clock() - start)
    return best


def _warm_up(steps: dict[str, Callable], plan: TimingPlan, device: torch.device) -> tuple[Timings, dict]:
    """Runs each step (keeping one output), drops those that fail or are too slow, and
    returns the time of one warm call of each (to size the blocks and rounds)."""
    timings = Timings(samples={}, calls_per_round={}, outputs={}, skipped={})
    single = {}
    for name, step in steps.items():
        try:
            call_s, out = _timed_call(step, device)
            # A call of seconds has paid its one-off costs within itself: no more warm-up.
            for _ in range(max(0, plan.warmup_calls - 1) if call_s < 0.25 else 0):
                call_s, out = _timed_call(step, device)
        except Exception as error:  # noqa: BLE001  (a peer or backend that cannot run this call is skipped)
            timings.skipped[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            continue
        if call_s > plan.max_call_s:
            timings.skipped[name] = f"one call takes {call_s:.1f} s, over the {plan.max_call_s:g} s limit"
            continue
        timings.outputs[name] = out
        single[name] = call_s
    return timings, single


def _timed_call(step: Callable, device: torch.device) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def measure(steps: dict[str, Callable[[], torch.Tensor]], plan: TimingPlan, device: torch.device,
            deadline: float | None = None) -> Timings:
    """Times every step in interleaved rounds; see the module docstring."""
    timings, single = _warm_up(steps, plan, device)
    live = {name: steps[name] for name in timings.outputs}
    if not live:
        return timings
    if device.type == "cuda":  # a host-side clock says little about a GPU kernel's time
        single = {name: _cuda_sample(step, plan, device) for name, step in live.items()}
    if device.type == "cuda":
        calls = {name: 1 for name in live}
        per_round = sum(max(single[name], 1e-3) + (plan.cuda_rep_ms + plan.cuda_warmup_ms) / 1e3 for name in live)
    else:
        calls = {name: max(1, math.ceil(plan.block_s / max(single[name], 1e-9))) for name in live}
        per_round = sum(calls[name] * single[name] for name in live)
    rounds = int(min(plan.max_rounds, max(plan.min_rounds, plan.budget_s // max(per_round, 1e-9))))
    timings.calls_per_round = calls
    timings.samples = {name: [] for name in live}
    names = list(live)
    # The planned rounds assume the machine stays as fast as during calibration; on a shared
    # machine it may not, so the time budget (and the run's deadline) also ends the rounds.
    started = time.monotonic()
    for r in range(rounds):
        now = time.monotonic()
        if r >= plan.min_rounds and (now - started > plan.budget_s or (deadline is not None and now > deadline)):
            break
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if device.type == "cuda":
                sample = _cuda_sample(live[name], plan, device)
            else:
                sample = _time_block(live[name], calls[name])
            timings.samples[name].append(sample)
    return timings


def _cuda_sample(step: Callable, plan: TimingPlan, device: torch.device) -> float:
    from triton.testing import do_bench

    with torch.cuda.device(device):
        return do_bench(step, warmup=plan.cuda_warmup_ms, rep=plan.cuda_rep_ms, return_mode="median") / 1e3


# ----------------------------------------------------------------------------- ceilings

def measure_ceilings(device: torch.device, repeats: int = 7) -> dict[str, float]:
    """This machine's limits, measured now (best of several runs: a ceiling, not a typical)."""
    with torch.inference_mode():
        if device.type == "cuda":
            return _cuda_ceilings(device, repeats)
        return _cpu_ceilings(repeats)


def _best_time(fn: Callable, repeats: int) -> float:
    fn()
    return min(_time_block(fn, 1) for _ in range(repeats))


def _cpu_ceilings(repeats: int) -> dict[str, float]:
    # 4x the cache (at least 256 MB): a sum over it streams from DRAM on any CPU we meet.
    elements = max(4 * last_level_cache_bytes(torch.device("cpu")), 256 << 20) // 4
    buffer = torch.rand(elements)
    read_s = _best_time(buffer.sum, repeats)
    del buffer
    size = 1024  # large enough for oneDNN/MKL to reach its peak on a few cores, yet ~50 ms here
    a, b = torch.randn(size, size), torch.randn(size, size)
    mm_s = _best_time(lambda: a @ b, repeats)
    return {"read_gbps": elements * 4 / read_s / 1e9, "matmul_gflops": 2 * size ** 3 / mm_s / 1e9,
            "matmul_dtype": "fp32"}


def _cuda_ceilings(device: torch.device, repeats: int) -> dict[str, float]:
    from triton.testing import do_bench

    rep = 15 * repeats  # ms; do_bench repeats within that time
    with torch.cuda.device(device):
        copy_ms, read_ms = _cuda_bandwidth(device, rep)
        size = 8192
        a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        mm_ms = do_bench(lambda: a @ b, warmup=25, rep=2 * rep, return_mode="min")
    return {"read_gbps": (1 << 30) / read_ms / 1e6, "copy_gbps": 2 * (1 << 30) / copy_ms / 1e6,
            "matmul_gflops": 2 * size ** 3 / mm_ms / 1e6, "matmul_dtype": "bf16"}


def _cuda_bandwidth(device: torch.device, rep: float) -> tuple[float, float]:
    """(copy, read) milliseconds for 1 GiB; the 2 GiB of buffers are freed on return."""
    from triton.testing import do_bench

    src = torch.empty(1 << 28, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src), warmup=10, rep=rep, return_mode="min")
    read_ms = do_bench(src.sum, warmup=10, rep=rep, return_mode="min")
    return copy_ms, read_ms
