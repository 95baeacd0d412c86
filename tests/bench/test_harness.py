import time

import pytest
import torch

from bigperf.bench.harness import (
    TimingPlan,
    copies_for_cold,
    last_level_cache_bytes,
    measure,
    quartiles,
    ratio_quartiles,
    rotating,
)

CPU = torch.device("cpu")
FAST = TimingPlan(budget_s=0.05, min_rounds=6, max_rounds=6, block_s=0.001, warmup_calls=1)


def test_quartiles_and_per_round_ratios():
    assert quartiles([1, 2, 3, 4, 5]) == (2.0, 3.0, 4.0)
    # Per-round pairing: a drift that scales both variants alike leaves the ratio exact.
    base = [1.0, 2.0, 4.0, 8.0]
    assert ratio_quartiles(base, [b / 2 for b in base]) == (2.0, 2.0, 2.0)


def test_cold_copies_exceed_twice_the_cache():
    llc = last_level_cache_bytes(CPU)
    assert llc >= 1 << 20
    assert copies_for_cold(1 << 20, 32 << 20) == 64
    assert copies_for_cold(100 << 20, 32 << 20) == 2  # never fewer than two
    assert copies_for_cold(10 << 20, 32 << 20) * (10 << 20) >= 2 * (32 << 20)


def test_rotating_cycles_over_the_copies():
    seen = []
    step = rotating(lambda x: seen.append(x), [(1,), (2,), (3,)])
    for _ in range(7):
        step()
    assert seen == [1, 2, 3, 1, 2, 3, 1]


def test_measure_interleaves_rounds_and_rotates_the_order():
    log = []
    steps = {name: (lambda name=name: log.append(name)) for name in "abc"}
    timings = measure(steps, FAST, CPU)
    assert timings.rounds == 6 and set(timings.samples) == {"a", "b", "c"}
    assert all(len(s) == 6 for s in timings.samples.values())
    # The first variant of each round changes, so no variant always runs first (or after the same one).
    calls = timings.calls_per_round
    firsts, i = [], 3 * FAST.warmup_calls + 3  # warm-up and calibration calls come first
    for _ in range(6):
        firsts.append(log[i])
        i += sum(calls.values())
    assert len(set(firsts)) == 3


def test_a_failing_or_too_slow_variant_is_skipped_with_its_reason():
    def broken():
        raise RuntimeError("no kernel for this shape\nmore detail")

    plan = TimingPlan(budget_s=0.01, min_rounds=4, max_rounds=4, block_s=0.001, warmup_calls=1, max_call_s=0.02)
    timings = measure({"ok": lambda: None, "broken": broken, "slow": lambda: time.sleep(0.03)}, plan, CPU)
    assert set(timings.samples) == {"ok"}
    assert timings.skipped["broken"] == "failed: RuntimeError: no kernel for this shape"
    assert "over the 0.02 s limit" in timings.skipped["slow"]


def test_measure_respects_the_deadline_after_min_rounds():
    plan = TimingPlan(budget_s=100, min_rounds=4, max_rounds=1000, block_s=0.001, warmup_calls=1)
    start = time.monotonic()
    timings = measure({"a": lambda: time.sleep(0.001)}, plan, CPU, deadline=time.monotonic())
    assert timings.rounds == 4 and time.monotonic() - start < 5


@pytest.mark.parametrize("variant_id", ["torch.linear", "fused_linear[cpu]"])
def test_case_builders_give_runnable_steps(variant_id):
    from bigperf.bench.cases import build_case
    from bigperf.bench.suites import LAYERS, Point

    _, variants, skips = build_case(Point(LAYERS["tiny.proj"], 3, "fp32"), CPU)
    by_id = {v.id: v for v in variants}
    if variant_id not in by_id:
        pytest.skip(next((s.reason for s in skips if s.id == variant_id), "not built here"))
    with torch.inference_mode():
        out = by_id[variant_id].step()
    assert out.shape == (3, 80)
