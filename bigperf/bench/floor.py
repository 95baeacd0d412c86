"""Is a bigperf op, dispatched automatically, slower than PyTorch here? The absolute gate.

compare.py asks whether a kernel got slower than it was on this kind of machine, and needs
a committed baseline of that kind. This check needs none: it holds every "auto" variant
(a bigperf op called with no backend forced, as a swapped layer calls it) to the promise
made to users, on whatever machine runs it: never slower than the fastest PyTorch path for
the same layer. At each point that path is the fastest "baseline" variant timed in the same
interleaved rounds (F.linear in x's dtype, in fp32, in bf16 for fp32 x).

An auto variant fails when its speedup over that path (median of the per-round ratios) is
below 1 - tolerance, where tolerance is the larger of
- `floor_pct` (default 5%): the ratio of two paths that are the same path (the dispatcher
  chose torch's) still scatters by a few percent here, and
- the uncertainty of that median, 1.57 * IQR / sqrt(rounds) (as in compare.py): a run too
  noisy to tell 0.9 from 1.0 is not evidence either way.
An auto variant that raised (recorded as skipped with "failed: ...") fails too: the call a
user makes must run. Several runs: an entry fails only if it fails in every run that
measured it (a CI re-run confirms a failure rather than replaces it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GATING_ROLE = "auto"
DEFAULT_FLOOR_PCT = 5.0
FAILING = ("slower", "failed")


@dataclass
class FloorRow:
    key: str
    point: str
    variant: str
    status: str                      # "ok", "slower", "failed" (raised), "no baseline", "not measured"
    fastest: str | None = None       # the fastest PyTorch path at the point
    speedup: float | None = None     # fastest torch time / auto time, median over rounds
    q1: float | None = None
    q3: float | None = None
    tolerance: float | None = None   # the speedup must be >= 1 - tolerance
    reason: str | None = None
    runs: list[float] = field(default_factory=list)  # the speedup in each run that measured it

    @property
    def fails(self) -> bool:
        return self.status in FAILING


@dataclass
class FloorCheck:
    rows: list[FloorRow]
    floor_pct: float
    warnings: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[FloorRow]:
        return [r for r in self.rows if r.fails]

    @property
    def judged(self) -> list[FloorRow]:
        return [r for r in self.rows if r.status in ("ok", "slower")]

    def failed(self) -> bool:
        return bool(self.failures)


def vs_fastest(result: dict, results: list[dict]) -> tuple[str, float, float, float] | None:
    """(fastest baseline, speedup, q1, q3) of `result` over the fastest baseline of its point.

    Records written since the auto variants exist carry the per-round figures; older ones
    only the speedups over torch.linear, from which the ratio is derived (its spread then
    is the variant's own, an approximation).
    """
    if result.get("speedup_vs_fastest") is not None and result.get("fastest_baseline"):
        return (result["fastest_baseline"], result["speedup_vs_fastest"],
                result.get("speedup_vs_fastest_q1", result["speedup_vs_fastest"]),
                result.get("speedup_vs_fastest_q3", result["speedup_vs_fastest"]))
    baselines = [r for r in results if r["point"] == result["point"] and r["role"] == "baseline"]
    if not baselines:
        return None
    best = max(baselines, key=lambda r: r["speedup"])  # speedup over torch.linear: highest = fastest
    scale = best["speedup"]
    return best["variant"], result["speedup"] / scale, result["speedup_q1"] / scale, result["speedup_q3"] / scale


def tolerance(q1: float, q3: float, rounds: int, floor_pct: float) -> float:
    noise = 1.57 * max(0.0, q3 - q1) / math.sqrt(max(1, rounds))
    return max(floor_pct / 100, noise)


def check_record(record: dict, floor_pct: float = DEFAULT_FLOOR_PCT) -> list[FloorRow]:
    """One row per auto variant of the record: measured, or skipped with its reason."""
    if floor_pct < 0:
        raise ValueError(f"bench floor: the floor must be >= 0 percent, got {floor_pct}")
    rows = []
    results = record["results"]
    for r in results:
        if r["role"] != GATING_ROLE:
            continue
        found = vs_fastest(r, results)
        if found is None:
            rows.append(FloorRow(r["key"], r["point"], r["variant"], "no baseline",
                                 reason="no PyTorch baseline was timed at this point"))
            continue
        fastest, speedup, q1, q3 = found
        tol = tolerance(q1, q3, r["rounds"], floor_pct)
        status = "ok" if speedup >= 1 - tol else "slower"
        rows.append(FloorRow(r["key"], r["point"], r["variant"], status, fastest, speedup, q1, q3, tol,
                             runs=[speedup]))
    for s in record.get("skipped", []):
        key = s.get("key", "") if isinstance(s, dict) else ""
        point, _, variant = key.rpartition("/")
        if "[auto]" not in variant:
            continue
        reason = str(s.get("reason") or "")
        rows.append(FloorRow(key, point, variant, "failed" if reason.startswith("failed") else "not measured",
                             reason=reason))
    return rows


def check_runs(records: list[dict], floor_pct: float = DEFAULT_FLOOR_PCT) -> FloorCheck:
    """Every run's rows merged per entry: it fails only if it failed in every run that measured
    it; the row shown is its best run's."""
    if not records:
        raise ValueError("bench floor: no records to check")
    by_key: dict[str, list[FloorRow]] = {}
    for record in records:
        for row in check_record(record, floor_pct):
            by_key.setdefault(row.key, []).append(row)
    rows = []
    for runs in by_key.values():
        measured = [r for r in runs if r.status != "not measured"] or runs
        passing = [r for r in measured if not r.fails]
        pool = passing or measured
        best = max(pool, key=lambda r: r.speedup if r.speedup is not None else -math.inf)
        best.runs = [r.speedup for r in measured if r.speedup is not None]
        rows.append(best)
    check = FloorCheck(rows, floor_pct)
    if not check.judged:
        check.warnings.append("no auto variant was measured against a PyTorch baseline: nothing was checked")
    return check
