"""Runs a suite: ceilings first, then each point's variants timed together, into a record."""

from __future__ import annotations

import dataclasses
import gc
import time
from typing import Callable, Iterable

import torch

from bigperf.bench import store
from bigperf.bench.cases import BASELINE, FLOAT_BASELINE, build_case
from bigperf.bench.harness import Timings, TimingPlan, measure, measure_ceilings, quartiles, ratio_quartiles
from bigperf.bench.suites import SUITES, Point, Suite


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float | None:
    if out.shape != ref.shape:
        return None
    ref = ref.float()
    return float(torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def point_results(point: Point, variants, timings: Timings, ceilings: dict) -> list[dict]:
    """One result per timed variant: absolute quartiles, speedup quartiles vs the in-run baseline."""
    base = timings.samples.get(BASELINE)
    if not base:
        return []
    float_base = timings.samples.get(FLOAT_BASELINE)
    ref = timings.outputs.get(FLOAT_BASELINE, timings.outputs.get(BASELINE))
    layer, m = point.layer, point.m
    flops = 2.0 * m * layer.n * layer.k
    results = []
    for variant in variants:
        samples = timings.samples.get(variant.id)
        if not samples:
            continue
        q1, med, q3 = quartiles(samples)
        s1, sp, s3 = ratio_quartiles(base, samples)
        out = timings.outputs[variant.id]
        # Activations in and out, in the dtype the variant computes in (its output's).
        nbytes = variant.weight_bytes + (m * layer.k + m * layer.n) * out.element_size()
        gbps, gflops = nbytes / med / 1e9, flops / med / 1e9
        read_ceiling, flop_ceiling = ceilings.get("read_gbps"), ceilings.get("matmul_gflops")
        results.append({
            "key": f"{point.id}/{variant.id}", "point": point.id, "layer": layer.name, "m": m, "n": layer.n,
            "k": layer.k, "dtype": point.dtype, "variant": variant.id, "name": variant.name, "label": variant.label,
            "family": variant.family, "role": variant.role, "backend": variant.backend,
            "median_s": med, "q1_s": q1, "q3_s": q3, "rounds": len(samples),
            "calls_per_round": timings.calls_per_round.get(variant.id, 1),
            "speedup": sp, "speedup_q1": s1, "speedup_q3": s3,
            "speedup_vs_fp32": ratio_quartiles(float_base, samples)[1] if float_base else None,
            "gbps": gbps, "gflops": gflops,
            "frac_bw": gbps / read_ceiling if read_ceiling else None,
            "frac_flops": gflops / flop_ceiling if flop_ceiling else None,
            "rel_err": _rel_err(out, ref) if ref is not None else None,
        })
    return results


def run_suite(suite: Suite | str, device: torch.device | str = "cpu", ops: Iterable[str] | None = None,
              backends: Iterable[str] | None = None, max_seconds: float | None = None,
              plan: TimingPlan | None = None, points: Iterable[Point] | None = None,
              on_start: Callable[[int, Point], None] | None = None,
              on_ceilings: Callable[[dict], None] | None = None) -> dict:
    """Measures every point of the suite on `device`; returns the record (see store.py).

    max_seconds bounds the whole run: points not started by then are recorded as skipped.
    """
    suite = SUITES[suite] if isinstance(suite, str) else suite
    device = torch.device(device)
    plan = plan or suite.plan
    points = tuple(points) if points is not None else suite.points_for(device)
    start = time.monotonic()
    deadline = start + max_seconds if max_seconds else None
    ops = tuple(ops) if ops else None
    backends = tuple(backends) if backends else None
    fp = store.fingerprint(device)
    ceilings = measure_ceilings(device)
    if on_ceilings:
        on_ceilings(ceilings)
    record = store.new_record(suite.name, device, fp, ceilings, {
        "ops": list(ops) if ops else None, "backends": list(backends) if backends else None,
        "max_seconds": max_seconds, "plan": dataclasses.asdict(plan), "points": len(points)})
    thorough = suite.name == "full"
    with torch.inference_mode():
        for index, point in enumerate(points):
            if on_start:
                on_start(index, point)
            if deadline is not None and time.monotonic() > deadline:
                record["skipped"].append({"key": point.id, "reason": f"time limit of {max_seconds:g} s reached"})
                continue
            _run_point(record, point, device, ops, backends, thorough, plan, deadline)
            _release(device)
    record["duration_s"] = round(time.monotonic() - start, 1)
    return record


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def _run_point(record, point, device, ops, backends, thorough, plan, deadline) -> None:
    try:
        _, variants, skips = build_case(point, device, ops, backends, thorough)
        timings = measure({v.id: v.step for v in variants}, plan, device, deadline)
    except Exception as error:
        if not _is_out_of_memory(error):
            raise
        record["skipped"].append({"key": point.id, "reason": f"out of memory: {str(error).splitlines()[0][:200]}"})
        return
    for skip in skips:
        record["skipped"].append({"key": f"{point.id}/{skip.id}", "reason": skip.reason})
    for vid, reason in timings.skipped.items():
        record["skipped"].append({"key": f"{point.id}/{vid}", "reason": reason})
    if BASELINE not in timings.samples:
        record["skipped"].append({"key": point.id, "reason": "the torch baseline could not be timed"})
        return
    record["results"].extend(point_results(point, variants, timings, record["ceilings"]))


def _release(device: torch.device) -> None:
    """A point's weight copies reach gigabytes: free them before the next point allocates."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
