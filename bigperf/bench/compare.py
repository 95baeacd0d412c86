"""Did anything get slower? Two records compared by their in-run speedups.

Absolute times drift between runs and machines; the speedup over the torch baseline timed
in the same rounds does not (much). A kernel regressed when its speedup fell by more than
`threshold` percent AND by more than the noise. The noise is the larger of
- the quadrature sum of both runs' uncertainty of the median speedup, 1.57 * IQR / sqrt(rounds)
  (the half-width of a box plot's notch, a ~95% interval for a median), and
- the range of the speedup over the runs merged into the old record (a baseline made with
  `--repeat 3`): on a shared machine some entries move between runs by more than any single
  run's spread shows (a memory-bound kernel against a compute-bound baseline, when a
  neighbour takes half the memory bandwidth), and such an entry must fall further to count.
Only our own ops gate (per backend, and "auto": the op as dispatched with no backend forced,
so a dispatcher that starts choosing a slower path is caught too); peers and baselines are
shown for context. Whether an auto variant beats the fastest PyTorch path at all, on any
machine and with no baseline, is bigperf/bench/floor.py's check.

Several runs of one suite merge into one record (merge_records): per entry, the run with
the lower-median speedup (a baseline that an outlier cannot make too optimistic) or the best
one (a regression must then show in every run: a CI re-run confirms rather than replaces).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from bigperf.bench.store import load_record

GATING_ROLES = ("ours", "auto")


@dataclass
class Row:
    key: str
    role: str
    status: str                    # "slower", "faster", "same", "missing", "new"
    old: float | None = None       # speedups
    new: float | None = None
    change: float | None = None    # new/old - 1
    noise: float | None = None     # in speedup units
    reason: str | None = None      # why a missing entry is missing, when the new run says

    @property
    def gates(self) -> bool:
        return self.role in GATING_ROLES


@dataclass
class Comparison:
    rows: list[Row]
    threshold_pct: float
    warnings: list[str] = field(default_factory=list)

    def of(self, status: str, gating_only: bool = False) -> list[Row]:
        return [r for r in self.rows if r.status == status and (r.gates or not gating_only)]

    @property
    def regressions(self) -> list[Row]:
        return self.of("slower", gating_only=True)

    @property
    def missing(self) -> list[Row]:
        return self.of("missing", gating_only=True)

    def failed(self, fail_on_missing: bool = False) -> bool:
        return bool(self.regressions or (fail_on_missing and self.missing))


def median_uncertainty(result: dict) -> float:
    iqr = max(0.0, result["speedup_q3"] - result["speedup_q1"])
    return 1.57 * iqr / math.sqrt(max(1, result["rounds"]))


def run_range(result: dict) -> float:
    runs = result.get("speedup_runs") or []
    return max(runs) - min(runs) if len(runs) > 1 else 0.0


def judge(old: dict, new: dict, threshold_pct: float) -> tuple[str, float, float]:
    """(status, change, noise) for one entry present in both records."""
    change = new["speedup"] / old["speedup"] - 1.0
    noise = max(math.hypot(median_uncertainty(old), median_uncertainty(new)), run_range(old))
    delta = new["speedup"] - old["speedup"]
    if change < -threshold_pct / 100 and -delta > noise:
        return "slower", change, noise
    if change > threshold_pct / 100 and delta > noise:
        return "faster", change, noise
    return "same", change, noise


def check_threshold(threshold_pct: float, name: str = "threshold") -> float:
    """A speedup can fall by less than 100 %: a threshold of 100 or more (or NaN) could never
    fail, and would print OK on any regression."""
    if not (isinstance(threshold_pct, (int, float)) and 0 <= threshold_pct < 100):
        raise ValueError(f"bench compare: {name} must be a percentage in [0, 100), got {threshold_pct!r} "
                         f"(a speedup cannot fall by 100 % or more, so such a gate could never fail)")
    return float(threshold_pct)


def compare_records(old: dict, new: dict, threshold_pct: float = 30.0) -> Comparison:
    check_threshold(threshold_pct)
    comparison = Comparison([], threshold_pct, _warnings(old, new))
    old_by_key = {r["key"]: r for r in old["results"] if r["role"] != "baseline"}
    new_by_key = {r["key"]: r for r in new["results"] if r["role"] != "baseline"}
    skip_reasons = {s.get("key"): s.get("reason") for s in new.get("skipped", []) if isinstance(s, dict)}
    for key, o in old_by_key.items():
        n = new_by_key.get(key)
        if n is None:
            point = key.rsplit("/", 1)[0]
            reason = skip_reasons.get(key) or skip_reasons.get(point) or "not in the new run"
            comparison.rows.append(Row(key, o["role"], "missing", old=o["speedup"], reason=reason))
            continue
        status, change, noise = judge(o, n, threshold_pct)
        comparison.rows.append(Row(key, n["role"], status, o["speedup"], n["speedup"], change, noise))
    for key, n in new_by_key.items():
        if key not in old_by_key:
            comparison.rows.append(Row(key, n["role"], "new", new=n["speedup"]))
    return comparison


def _warnings(old: dict, new: dict) -> list[str]:
    out = []
    kinds = [r["fingerprint"].get("machine_kind") for r in (old, new)]
    if kinds[0] != kinds[1]:
        out.append(f"different machine kinds ({kinds[0]} vs {kinds[1]}): speedups may differ for that reason alone")
    if old["suite"] != new["suite"]:
        out.append(f"different suites ({old['suite']} vs {new['suite']}): only shared points are compared")
    if old["device"] != new["device"]:
        out.append(f"different devices ({old['device']} vs {new['device']})")
    torch_versions = [r["fingerprint"].get("versions", {}).get("torch") for r in (old, new)]
    if torch_versions[0] != torch_versions[1]:
        out.append(f"different torch versions ({torch_versions[0]} vs {torch_versions[1]}): the baseline itself changed")
    return out


def merge_records(records: list[dict], pick: str = "median") -> dict:
    """One record from several runs: per entry the run with the (lower) median or best speedup."""
    if pick not in ("median", "best"):
        raise ValueError(f"merge_records: pick must be 'median' or 'best', got {pick!r}")
    if len(records) == 1:
        return records[0]
    by_key: dict[str, list[dict]] = {}
    for rec in records:
        for result in rec["results"]:
            by_key.setdefault(result["key"], []).append(result)
    merged = copy.deepcopy(records[-1])
    merged["results"] = []
    for runs in by_key.values():
        runs = sorted(runs, key=lambda r: r["speedup"])
        chosen = dict(runs[-1] if pick == "best" else runs[(len(runs) - 1) // 2])
        chosen["speedup_runs"] = [r["speedup"] for r in runs]
        merged["results"].append(chosen)
    merged["skipped"] = [s for s in merged["skipped"] if s.get("key") not in by_key]
    merged.setdefault("settings", {})["merged_runs"] = {"runs": len(records), "pick": pick,
                                                        "created": [rec["created"] for rec in records]}
    return merged


def compare_files(old_path, new_paths, threshold_pct: float = 30.0) -> Comparison:
    """For a history file (.jsonl), its newest record is compared; several new files merge (best run)."""
    new_paths = [new_paths] if isinstance(new_paths, (str, bytes)) or not hasattr(new_paths, "__iter__") else new_paths
    new = merge_records([load_record(p) for p in new_paths], pick="best")
    return compare_records(load_record(old_path), new, threshold_pct)
