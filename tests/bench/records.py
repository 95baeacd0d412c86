"""Synthetic benchmark records: what compare and plot decide on, without timing anything."""

from __future__ import annotations

import copy

from bigperf.bench.store import SCHEMA, SCHEMA_VERSION

FINGERPRINT = {
    "cpu": {"model": "Test CPU", "arch": "x86_64", "isa": "avx2", "torch_threads": 1, "logical_cores": 2},
    "gpu": None, "versions": {"torch": "2.13.0", "bigperf": "0.1.0"},
    "git": {"commit": "0123456789abcdef", "dirty": False}, "machine_kind": "cpu-x86_64-avx2-1t",
}


def result(key_variant="fused_linear[cpu]", speedup=2.0, spread=0.1, rounds=20, role="ours", layer="l.proj",
           m=1, dtype="fp32", family="fused_linear", median_s=1e-3):
    point = f"{layer}/m={m}/{dtype}"
    return {
        "key": f"{point}/{key_variant}", "point": point, "layer": layer, "m": m, "n": 64, "k": 32, "dtype": dtype,
        "variant": key_variant, "name": key_variant, "label": "", "family": family, "role": role,
        "backend": "cpu" if role == "ours" else None, "median_s": median_s, "q1_s": median_s * 0.95,
        "q3_s": median_s * 1.05, "rounds": rounds, "calls_per_round": 3,
        "speedup": speedup, "speedup_q1": speedup - spread / 2, "speedup_q3": speedup + spread / 2,
        "speedup_vs_fp32": None, "gbps": 1.0, "gflops": 2.0, "frac_bw": 0.1, "frac_flops": 0.01, "rel_err": 1e-7,
    }


def auto(key_variant="fused_linear[auto]", vs_fastest=1.0, spread=0.04, rounds=20, fastest="torch.linear",
         speedup=None, **kwargs):
    """An "auto" variant's result, with its speedup over the fastest baseline of the point."""
    out = result(key_variant, speedup if speedup is not None else vs_fastest, spread, rounds, role="auto", **kwargs)
    out.update(backend="auto", fastest_baseline=fastest, speedup_vs_fastest=vs_fastest,
               speedup_vs_fastest_q1=vs_fastest - spread / 2, speedup_vs_fastest_q3=vs_fastest + spread / 2,
               prepare_s=0.01)
    return out


def record(results, created="2026-11-01T00:00:00+00:00", commit="0123456789abcdef", skipped=(), suite="quick"):
    fp = copy.deepcopy(FINGERPRINT)
    fp["git"]["commit"] = commit
    baseline = result("torch.linear", 1.0, 0.0, role="baseline", family="torch")
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "created": created, "suite": suite, "device": "cpu",
            "settings": {}, "fingerprint": fp, "ceilings": {"read_gbps": 20.0, "matmul_gflops": 80.0},
            "results": [baseline, *results], "skipped": list(skipped), "duration_s": 1.0}
