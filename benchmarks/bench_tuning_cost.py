"""What measured dispatch costs at swap time (issue #13: <= 20 s on 2 cores; 0 s when cached).

A 7B-shaped layer set — the four distinct linear shapes of a Llama-2-7B block (q/k/v/o
4096x4096, gate/up 4096->11008, down 11008->4096, fused qkv 4096->12288) — swapped with
`batch_sizes=(1, 16, 128)`: once with an empty tuning cache, then in a fresh process with
the cache the first run wrote (nothing may be measured again).

    python benchmarks/bench_tuning_cost.py [--config int8] [--threads 2] [--batch 1,16,128]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

SHAPES = ((4096, 4096), (4096, 11008), (11008, 4096), (4096, 12288))  # (in, out)


def one_run(config: str, threads: int, batch: tuple[int, ...]) -> dict:
    import torch
    from torch import nn

    import bigperf
    from bigperf import tune

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(k, n, bias=False) for k, n in SHAPES))
    started = time.perf_counter()
    report = bigperf.swap(model, config, batch_sizes=batch)
    total = time.perf_counter() - started
    measured = [d for d in tune.decisions().values() if d.source == "measured"]
    return {"swap_s": total, "tuning_s": report.tuning_seconds, "measured_keys": len(measured),
            "measuring_s": sum(d.seconds for d in measured),
            "paths": {c.name: {m: r["path"] for m, r in c.by_batch.items()} for c in report.changes},
            "speedups": {c.name: {m: round(r["speedup"], 2) for m, r in c.by_batch.items()} for c in report.changes}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", default="1,16,128")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch = tuple(int(b) for b in args.batch.split(","))
    if args.child:
        print(json.dumps(one_run(args.config, args.threads, batch)))
        return
    with tempfile.TemporaryDirectory() as cache:
        env = {**__import__("os").environ, "BIGPERF_CACHE_DIR": cache}
        runs = []
        for label in ("empty cache", "cached"):
            out = subprocess.run([sys.executable, __file__, "--child", "--config", args.config, "--threads",
                                  str(args.threads), "--batch", args.batch], env=env, capture_output=True,
                                 text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(result)
            print(f"{label}: swap {result['swap_s']:.1f} s, of which tuning and timing {result['tuning_s']:.1f} s; "
                  f"{result['measured_keys']} call shapes measured ({result['measuring_s']:.1f} s measuring)")
        print("paths per layer (in->out) and M:", json.dumps(runs[0]["paths"]))
        print("speedup over the fp32 layer per M:", json.dumps(runs[0]["speedups"]))


if __name__ == "__main__":
    main()
