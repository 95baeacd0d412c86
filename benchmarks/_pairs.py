"""Pair-by-pair timing shared by the CPU benchmark scripts in this folder.

On this shared, noisy machine a claim is the ratio of two measurements taken alternately
(A, B, B, A, ...): report the median of the per-pair ratios with its quartiles.
"""
from __future__ import annotations

import statistics
import time


def quantiles(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired(fa, fb, reps, warmup=1):
    """Alternates fa and fb (the order flips every pair); both time lists in pair order."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for i in range(reps):
        if i % 2:
            tb.append(timed(fb))
            ta.append(timed(fa))
        else:
            ta.append(timed(fa))
            tb.append(timed(fb))
    return ta, tb


def reps_for(seconds_per_call, budget, lo, hi):
    """Repetitions that fit `budget` seconds, clamped to [lo, hi]."""
    return int(max(lo, min(hi, budget / max(seconds_per_call, 1e-6))))
