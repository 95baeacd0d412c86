"""Kernel micro-benchmarks for pytest-benchmark users.

    pytest benchmarks/ --benchmark-only [--benchmark-autosave | --benchmark-compare ...]

One test per (quick-suite point, variant): our ops on every backend that can run here, the
torch baselines and the peers, built by the same case builders as `bigperf bench` and
called on cold weight copies. Grouped by point, so pytest-benchmark's table shows each
kernel beside torch. Not collected by `pytest tests`; the ratio-based CI gate is
`bigperf bench` (benchmarks/ci_check.sh).
"""

from __future__ import annotations

import gc

import pytest
import torch

from bigperf.bench.cases import build_case
from bigperf.bench.suites import LAYERS, SUITES, Point

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
POINTS = SUITES["quick"].points_for(DEVICE)


def _variant_ids(point: Point) -> list[str]:
    # Which variants exist depends on device, dtype and M, not on the layer's size: a toy
    # layer answers at collection without allocating hundreds of MB of weights.
    probe = Point(LAYERS["tiny.proj"], point.m, point.dtype)
    _, variants, _ = build_case(probe, DEVICE)
    return [v.id for v in variants]


PARAMS = [pytest.param(point, vid, id=f"{point.id}:{vid}") for point in POINTS for vid in _variant_ids(point)]

_current: dict = {}


def _variants(point: Point) -> dict:
    """The point's variants, kept while consecutive tests use the same point (and the
    layer's weight copies while they use the same layer)."""
    if _current.get("point") != point:
        shared = _current.get("shared", {}) if _current.get("layer") == point.layer.name else {}
        _current.clear()
        gc.collect()
        _, variants, skips = build_case(point, DEVICE, shared=shared)
        _current.update(point=point, layer=point.layer.name, shared=shared, variants={v.id: v for v in variants},
                        skips={s.id: s.reason for s in skips})
    return _current


@pytest.mark.parametrize(("point", "variant_id"), PARAMS)
def test_kernel(benchmark, point, variant_id):
    case = _variants(point)
    variant = case["variants"].get(variant_id)
    if variant is None:
        pytest.skip(case["skips"].get(variant_id, f"{variant_id} cannot run {point.id}"))
    benchmark.group = point.id
    benchmark.extra_info.update(role=variant.role, family=variant.family, backend=variant.backend,
                                m=point.m, n=point.layer.n, k=point.layer.k, dtype=point.dtype)
    step = variant.step
    if DEVICE.type == "cuda":
        def step():
            variant.step()
            torch.cuda.synchronize()
    with torch.inference_mode():
        benchmark.pedantic(step, warmup_rounds=2, rounds=_rounds(step), iterations=1)


def _rounds(step) -> int:
    """About a second per test, at least 5 rounds: the slow CPU points take 100 ms a call."""
    import time

    start = time.perf_counter()
    step()
    return max(5, min(200, int(1.0 / max(time.perf_counter() - start, 1e-6))))
