"""Runs a suite: ceilings first, then each point's variants timed together, into a record."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
from collections.abc import Callable, Iterable

import torch

from bigperf.bench import store
from bigperf.bench.cases import BASELINE, FLOAT_BASELINE, Skip, build_case
from bigperf.bench.harness import TimingPlan, Timings, measure, measure_ceilings, quartiles, ratio_quartiles
from bigperf.bench.suites import SUITES, Point, Suite


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float | None:
    if out.shape != ref.shape:
        return None
    ref = ref.float()
    return float(torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def fastest_baseline(variants, timings: Timings, compare_to: tuple[str, ...] | None = None) -> str | None:
    """The baseline variant (a PyTorch path for the layer) with the lowest median time, among
    `compare_to` when given (see Variant.compare_to)."""
    timed = [v.id for v in variants if v.role == "baseline" and timings.samples.get(v.id)
             and (compare_to is None or v.id in compare_to)]
    return min(timed, key=lambda vid: quartiles(timings.samples[vid])[1], default=None)


def point_results(point: Point, variants, timings: Timings, ceilings: dict,
                  prepare_s: dict[str, float] | None = None) -> list[dict]:
    """One result per timed variant: absolute quartiles, speedup quartiles vs the in-run baseline
    and vs the fastest in-run baseline (what the "auto" variants are judged against)."""
    base = timings.samples.get(BASELINE)
    if not base:
        return []
    float_base = timings.samples.get(FLOAT_BASELINE)
    prepare_s = prepare_s or {}
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
        fastest = fastest_baseline(variants, timings, variant.compare_to) or BASELINE
        f1, fsp, f3 = ratio_quartiles(timings.samples[fastest], samples)
        out = timings.outputs[variant.id]
        own_ref = variant.reference() if variant.reference is not None else ref
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
            "fastest_baseline": fastest, "speedup_vs_fastest": fsp,
            "speedup_vs_fastest_q1": f1, "speedup_vs_fastest_q3": f3,
            "prepare_s": prepare_s.get(variant.id),
            "gbps": gbps, "gflops": gflops,
            "frac_bw": gbps / read_ceiling if read_ceiling else None,
            "frac_flops": gflops / flop_ceiling if flop_ceiling else None,
            "rel_err": _rel_err(out, own_ref) if own_ref is not None else None,
        })
    return results


def run_suite(suite: Suite | str, device: torch.device | str = "cpu", ops: Iterable[str] | None = None,
              backends: Iterable[str] | None = None, max_seconds: float | None = None,
              plan: TimingPlan | None = None, points: Iterable[Point] | None = None,
              on_start: Callable[[int, Point], None] | None = None,
              on_ceilings: Callable[[dict], None] | None = None,
              on_point_done: Callable[[dict], None] | None = None, threads: int | None = None) -> dict:
    """Measures every point of the suite on `device`; returns the record (see store.py).

    threads: torch's thread count while timing (and for the ceilings and the fingerprint);
    inputs are prepared with all threads. max_seconds bounds the whole run: points not
    started by then are recorded as skipped.
    on_point_done gets the record so far ("complete": False) after each point, e.g. to save
    it, so that a run killed by an outer time limit still leaves its measurements.
    """
    suite = SUITES[suite] if isinstance(suite, str) else suite
    device = torch.device(device)
    plan = plan or suite.plan
    points = tuple(points) if points is not None else suite.points_for(device)
    start = time.monotonic()
    deadline = start + max_seconds if max_seconds else None
    ops = tuple(ops) if ops else None
    backends = tuple(backends) if backends else None
    with _num_threads(threads):
        fp = store.fingerprint(device)
        ceilings = measure_ceilings(device, suite.ceiling_repeats)
    if on_ceilings:
        on_ceilings(ceilings)
    record = store.new_record(suite.name, device, fp, ceilings, {
        "ops": list(ops) if ops else None, "backends": list(backends) if backends else None,
        "max_seconds": max_seconds, "plan": dataclasses.asdict(plan), "points": len(points)})
    thorough = suite.name == "full"
    shared: dict = {}
    for index, point in enumerate(points):
        if any(key[0] != point.layer.name for key in shared):
            shared.clear()  # a new layer: the previous one's weight copies can go
        if on_start:
            on_start(index, point)
        if deadline is not None and time.monotonic() > deadline:
            record["skipped"].append({"key": point.id, "reason": f"time limit of {max_seconds:g} s reached"})
            continue
        _run_point(record, point, device, ops, backends, thorough, plan, deadline, shared, threads)
        _release(device)
        record["duration_s"] = round(time.monotonic() - start, 1)
        if on_point_done:
            on_point_done(record)
    record["complete"] = True
    record["duration_s"] = round(time.monotonic() - start, 1)
    return record


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


@contextlib.contextmanager
def _num_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_point(record, point, device, ops, backends, thorough, plan, deadline, shared, threads) -> None:
    try:
        # Weights are made outside inference mode, as a model's are: ops may keep state on
        # them (the sparse ops cache index checks per tensor version).
        _, variants, skips = build_case(point, device, ops, backends, thorough, shared)
        with torch.inference_mode(), _num_threads(threads):
            variants, prepare_s, failed = _prepare(variants, device)
            timings = measure({v.id: v.step for v in variants}, plan, device, deadline)
    except Exception as error:
        if not _is_out_of_memory(error):
            raise
        record["skipped"].append({"key": point.id, "reason": f"out of memory: {str(error).splitlines()[0][:200]}"})
        return
    for skip in [*skips, *failed]:
        record["skipped"].append({"key": f"{point.id}/{skip.id}", "reason": skip.reason})
    for vid, reason in timings.skipped.items():
        record["skipped"].append({"key": f"{point.id}/{vid}", "reason": reason})
    if BASELINE not in timings.samples:
        record["skipped"].append({"key": point.id, "reason": "the torch baseline could not be timed"})
        return
    with torch.inference_mode():
        record["results"].extend(point_results(point, variants, timings, record["ceilings"], prepare_s))


def _prepare(variants, device) -> tuple[list, dict[str, float], list[Skip]]:
    """Runs each variant's one-off preparation (the dispatcher's measurements at a new M)
    before any timing, in the threads and mode of the timed calls; returns the variants that
    still run, the seconds each preparation took and the failures (as skips, with the error)."""
    kept, seconds, failed = [], {}, []
    for variant in variants:
        if variant.prepare is None:
            kept.append(variant)
            continue
        start = time.perf_counter()
        try:
            variant.prepare()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as error:  # noqa: BLE001  (recorded as "failed: ...", which the floor check fails on)
            first_line = (str(error).splitlines() or [""])[0][:200]
            failed.append(Skip(variant.id, f"failed: {type(error).__name__}: {first_line}"))
            continue
        seconds[variant.id] = time.perf_counter() - start
        kept.append(variant)
    return kept, seconds, failed


def _release(device: torch.device) -> None:
    """A point's weight copies reach gigabytes: free them before the next point allocates."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
