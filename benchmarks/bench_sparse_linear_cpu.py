"""CPU sparse linear (2:4 and block-sparse) against our dense kernels and PyTorch, pair by pair.

    python benchmarks/bench_sparse_linear_cpu.py [--quick] [--out results.json] [--isa avx2]

The decode shape of issue 4: M = 1, K = 4096, N = 14336, fp32 x. This machine's bandwidth
drifts from one minute to the next (a shared 2-core VM), so every claim is a ratio of two
measurements taken alternately (A, B, B, A, ...); a ratio is the median of the per-pair
ratios with its interquartile range. Weights are cold: each call uses the next of several
copies whose total exceeds the last-level cache, as a model's layers would.

Rows (ratio = base time / our time, so > 1 means we are faster). Sparse weights run as
SparseLinear runs them on the CPU: in the CPU lane layouts (bigperf/cpu_layouts.py) through
bigperf.ops.sparse24_lanes_linear / block_sparse_lanes_linear; a row each keeps the
canonical-layout op for comparison.
  2:4 bf16 values   vs our dense bf16 fused linear (bigperf.ops.fused_linear, bf16 W)
  2:4 int8 values   vs our int8 weight-only linear (per channel) and vs F.linear fp32
  BSR 10% / 50%     bf16 (16, 16) blocks vs our dense bf16 fused linear
  bandwidth         bytes each kernel reads / its time, as a fraction of the read bandwidth
                    of x.sum() over 256 MB measured alternately with it
  sweep             (not with --quick) M = 4, 16 for 2:4 bf16 and BSR 50 % vs the dense bf16 kernel

OpenMP wait policy: left as the environment has it; unset, torch's workers spin for a while
after each parallel region, which is what a model gets by default. bigperf's CPU kernels
run their parallel regions on that same runtime (since session 9), so the spinning workers
pick up our work at once. Until then this script forced OMP_WAIT_POLICY=PASSIVE, because
the spinning workers took the cores from bigperf's own pool; set it before Python starts
to measure that way (benchmarks/NOTES.md has runs both ways).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _pairs import paired, quantiles  # noqa: E402  (this folder)

import bigperf
from bigperf.ops.fused_linear import fused_linear
from bigperf.formats.bsr_lanes import BsrLanes, pack_bsr_lanes
from bigperf.formats.sparse24_lanes import Sparse24Lanes, pack_24_lanes
from bigperf.ops.block_sparse_lanes_linear import block_sparse_lanes_linear
from bigperf.ops.sparse24_lanes_linear import sparse24_lanes_linear
from bigperf.ops.sparse_linear import block_sparse_linear, sparse24_linear
from bigperf.quant import quantize_weight
from bigperf.sparsity import block_mask, nm_mask, pack_24, pack_24_int8, pack_bsr

LLC_BYTES = 32 << 20
K_BIG, N_BIG = 4096, 14336


# ----------------------------------------------------------------------------- measuring

class Cold:
    """Copies of one set of weight tensors, used in turn so each call streams from memory."""

    def __init__(self, tensors):
        tensors = [t for t in tensors]
        self.nbytes = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        count = max(2, math.ceil(3 * LLC_BYTES / self.nbytes))
        self.copies = [tensors] + [[t.clone() if t is not None else None for t in tensors] for _ in range(count - 1)]
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.copies)
        return self.copies[self.i]


def row(name, ta, tb, ratio, extra=None):
    r = {"name": name, "ours_s": quantiles(ta), "base_s": quantiles(tb), "ratio": quantiles(ratio)}
    r.update(extra or {})
    q = r["ratio"]
    print(f"{name:<58} ours {r['ours_s']['median'] * 1e3:7.3f} ms  base {r['base_s']['median'] * 1e3:7.3f} ms  "
          f"ratio {q['median']:5.2f} [{q['q1']:.2f}, {q['q3']:.2f}]" + (f"  {r['note']}" if "note" in r else ""),
          flush=True)
    return r


def versus(name, ours, base, reps, goal=None):
    ta, tb = paired(ours, base, reps)
    extra = {"goal": goal} if goal else {}
    if goal:
        extra["note"] = f"goal >= {goal}"
    return row(name, ta, tb, [b / a for a, b in zip(ta, tb)], extra)


def bandwidth(name, ours, nbytes, big, reps):
    """Fraction of the read bandwidth (x.sum over `big`) that `ours` reaches, pair by pair."""
    ta, tb = paired(ours, lambda: big.sum(), reps)
    frac = [(nbytes / a) / (big.numel() * 4 / b) for a, b in zip(ta, tb)]
    gbps = nbytes / statistics.median(ta) / 1e9
    read = big.numel() * 4 / statistics.median(tb) / 1e9
    return row(name, ta, tb, frac, {"ours_GBps": gbps, "read_GBps": read, "bytes": nbytes,
                                    "note": f"{gbps:.1f} of {read:.1f} GB/s"})


# ----------------------------------------------------------------------------- weights

def dense_weight(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) / math.sqrt(k)


def correct(got, want, what, tol):
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()
    if err > tol:
        print(f"# WARNING: {what}: relative error {err:.2e} against the reference")
    return err


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no M sweep")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--isa", help="force a CPU ISA path (default: the best runnable)")
    args = parser.parse_args()

    import bigperf._C as C
    isa = args.isa or C.runnable_isas()[0]
    threads = torch.get_num_threads()
    reps = 11 if args.quick else 31
    print(f"# isa {isa}, threads {threads}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', '(unset: workers spin)')}")
    big = torch.ones(64 << 20)  # 256 MB

    n, k = N_BIG, K_BIG
    x = torch.randn(1, k)
    w = dense_weight(n, k)
    w24 = w * nm_mask(w)
    p24 = pack_24(w24.bfloat16())
    p24i = pack_24_int8(w24)
    qw = quantize_weight(w)
    wb = Cold([w.bfloat16()])
    w32 = Cold([w])
    wq = Cold([qw.qweight, qw.scale])
    l24, l24i = pack_24_lanes(p24.values, p24.meta), pack_24_lanes(p24i.values, p24i.meta, p24i.scale)
    s24 = Cold([l24.values, l24.meta])
    s24i = Cold([l24i.values, l24i.meta, l24i.scale])
    s24_canonical = Cold([p24.values, p24.meta])
    bsr, bsr_canonical = {}, {}
    for density in (0.1, 0.5):
        wd = w * block_mask(w, (16, 16), density)
        pb = pack_bsr(wd.bfloat16(), (16, 16))
        bsr[density] = Cold([pack_bsr_lanes(pb.values, pb.col_indices, pb.row_ptr, k).values, pb.col_indices,
                             pb.row_ptr])
        bsr_canonical[density] = Cold([pb.values, pb.col_indices, pb.row_ptr])
    del w24

    rows = []
    with bigperf.use_backend("cpu"), bigperf.use_cpu_isa(isa):
        def dense_bf16(xx=x):
            return fused_linear(xx, wb.next()[0])

        def ours24(xx=x):
            v, m = s24.next()
            return sparse24_lanes_linear(xx, Sparse24Lanes(v, m, None, n, k))

        def ours24i():
            v, m, s = s24i.next()
            return sparse24_lanes_linear(x, Sparse24Lanes(v, m, s, n, k))

        def ours24_canonical():
            v, m = s24_canonical.next()
            return sparse24_linear(x, v, m)

        def int8_dense():
            q, s = wq.next()
            return bigperf.ops.int8_linear.int8_weight_linear(x, q, s)

        def ours_bsr(density, xx=x):
            def call():
                v, ci, rp = bsr[density].next()
                return block_sparse_lanes_linear(xx, BsrLanes(v, ci, rp, 16, 16, k))
            return call

        def ours_bsr_canonical(density):
            def call():
                v, ci, rp = bsr_canonical[density].next()
                return block_sparse_linear(x, v, ci, rp)
            return call

        from bigperf.sparsity import unpack_24, unpack_bsr
        correct(ours24(), x @ unpack_24(p24.values, p24.meta).float().t(), "2:4 bf16", 1e-5)
        correct(ours24i(), x @ unpack_24(p24i.values, p24i.meta, p24i.scale).t(), "2:4 int8", 1e-5)
        for density in bsr:
            v, ci, rp = bsr_canonical[density].copies[0]
            correct(ours_bsr(density)(), x @ unpack_bsr(v.float(), ci, rp, k).t(), f"BSR {density}", 1e-5)

        # The sparse ops check index data once per tensor (a layer pays that once): call each
        # op once on every copy now, or the first round of timings pays for it (measured:
        # ~0.6 ms on each first BSR 10 % call, most of a --quick row).
        for call, cold in [(ours24, s24), (ours24i, s24i), (ours24_canonical, s24_canonical),
                           *[(ours_bsr(d), bsr[d]) for d in bsr], *[(ours_bsr_canonical(d), bsr_canonical[d]) for d in bsr]]:
            for _ in cold.copies:
                call()

        print("## headline: M = 1, K = 4096, N = 14336, fp32 x (ratio = base / ours)")
        rows.append(versus("2:4 bf16 vs dense bf16 fused linear (ours)", ours24, dense_bf16, reps, 1.6))
        rows.append(versus("2:4 bf16, canonical layout op, vs dense bf16", ours24_canonical, dense_bf16, reps))
        has_int8 = hasattr(C, "int8_weight_linear")
        if has_int8:
            rows.append(versus("2:4 int8 vs int8 weight-only linear (ours)", ours24i, int8_dense, reps, 1.4))
        else:
            print("# the int8 CPU kernel is not built: 2:4 int8 is compared with the dense bf16 kernel")
            rows.append(versus("2:4 int8 vs dense bf16 fused linear (ours)", ours24i, dense_bf16, reps))
        rows.append(versus("2:4 int8 vs F.linear fp32", ours24i, lambda: F.linear(x, w32.next()[0]), reps, 7.0))
        rows.append(versus("2:4 bf16 vs F.linear fp32", ours24, lambda: F.linear(x, w32.next()[0]), reps))
        rows.append(versus("BSR 10% bf16 (16,16) vs dense bf16 fused linear", ours_bsr(0.1), dense_bf16, reps, 6.0))
        rows.append(versus("BSR 50% bf16 (16,16) vs dense bf16 fused linear", ours_bsr(0.5), dense_bf16, reps, 1.7))
        rows.append(versus("BSR 10%, canonical layout op, vs dense bf16", ours_bsr_canonical(0.1), dense_bf16, reps))

        print("## bandwidth: fraction of the read bandwidth (x.sum over 256 MB) reached")
        rows.append(bandwidth("dense bf16 fused linear", dense_bf16, wb.nbytes, big, reps))
        rows.append(bandwidth("2:4 bf16", ours24, s24.nbytes, big, reps))
        rows.append(bandwidth("2:4 int8", ours24i, s24i.nbytes, big, reps))
        if has_int8:
            rows.append(bandwidth("int8 weight-only linear", int8_dense, wq.nbytes, big, reps))
        for density, cold in bsr.items():
            rows.append(bandwidth(f"BSR {int(density * 100)}% bf16", ours_bsr(density), cold.nbytes, big, reps))

        if not args.quick:
            print("## sweep: 2:4 bf16 and BSR 50 % vs dense bf16, M rows of x")
            for m in (4, 16):
                xm = torch.randn(m, k)
                rows.append(versus(f"M={m}: 2:4 bf16 vs dense bf16 fused linear", lambda xm=xm: ours24(xm),
                                   lambda xm=xm: dense_bf16(xm), max(7, reps // 2)))
                rows.append(versus(f"M={m}: BSR 50% bf16 vs dense bf16 fused linear", ours_bsr(0.5, xm),
                                   lambda xm=xm: dense_bf16(xm), max(7, reps // 2)))

    if args.out:
        args.out.write_text(json.dumps({"isa": isa, "threads": threads, "torch": torch.__version__,
                                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
                                        "machine": platform.machine(), "rows": rows}, indent=2))
        print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
