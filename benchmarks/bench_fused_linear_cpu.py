"""CPU fused linear: bigperf's kernel against PyTorch, pair by pair in one run.

    python benchmarks/bench_fused_linear_cpu.py [--quick] [--out results.json] [--isa avx2]

This machine's bandwidth drifts by tens of percent from one minute to the next (a shared,
2-core VM), so every claim is a ratio of two measurements taken alternately: kernel A,
kernel B, A, B, ... (the order flips every pair). A ratio is the median of the per-pair
ratios, with its interquartile range. Weights are cold: each call uses the next of
several copies whose total exceeds the last-level cache, as a model's layers would.

Sections
  headline   M=1, K=4096, N=14336, fp32 x, bf16 W: % of read bandwidth (vs x.sum() over
             256 MB), speed-up vs F.linear in fp32 (fp32 weight) and in bf16 (bf16 x and W).
  sweep      M = 1..16, five x/W dtype pairs, bias + GELU: vs F.linear + activation in the
             same dtypes (for fp32 x with 16-bit W: the fp32 weight the user had, and the
             16-bit torch linear as a second line).
  crossover  M = 16..128: the kernel vs PyTorch's GEMM on the weight converted to x's dtype
             (converted once, and converted per call as a fallback would), for the
             dispatch threshold.

torch's OpenMP workers (libgomp) busy-wait for a while after each parallel op, on the same
cores as bigperf's thread pool, so the kernel runs slower right after a torch op (see
benchmarks/NOTES.md). That is what a model sees too, and it is left in; run with
OMP_WAIT_POLICY=PASSIVE (set before Python starts) to measure without it.
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
from _pairs import paired, quantiles, reps_for, timed  # noqa: E402  (this folder)

from bigperf.ops.activations import ACTIVATIONS, apply_activation

try:
    from bigperf import _C
except ImportError as error:  # pragma: no cover - nothing to measure without the build
    raise SystemExit(f"bigperf._C is not built ({error}); pip install -e . first")

CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
SHORT = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
LLC_BYTES = 32 << 20
K_BIG, N_BIG = 4096, 14336


# ----------------------------------------------------------------------------- measuring

class Cold:
    """Copies of one weight, used in turn so that each call streams it from memory."""

    def __init__(self, n, k, dtype, seed=0):
        g = torch.Generator().manual_seed(seed)
        first = (torch.randn(n, k, generator=g) / math.sqrt(k)).to(dtype)
        count = max(2, math.ceil(3 * LLC_BYTES / (first.numel() * first.element_size())))
        self.copies = [first] + [first.clone() for _ in range(count - 1)]
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.copies)
        return self.copies[self.i]

    @property
    def nbytes(self):
        return self.copies[0].numel() * self.copies[0].element_size()


# ----------------------------------------------------------------------------- callers

def direct_call(isa, x, w, bias, out, activation, threads):
    """bigperf._C.fused_linear on raw pointers (no validation, no allocation)."""
    M, K = x.shape
    N = w.shape[0]
    _C.fused_linear(isa, x.data_ptr(), x.stride(0), CODE[x.dtype], w.data_ptr(), w.stride(0),
                    CODE[w.dtype], bias.data_ptr() if bias is not None else 0, 0, 0,
                    out.data_ptr(), out.stride(0), M, N, K, ACTIVATIONS.index(activation), threads)
    return out


def find_op(isa):
    """bigperf.ops.fused_linear.fused_linear when it exists and runs our kernel, else None."""
    try:
        from bigperf.ops.fused_linear import fused_linear
    except Exception as error:  # noqa: BLE001 - the lead's module may be mid-change
        print(f"# op path unavailable ({type(error).__name__}: {error}); timing direct calls only")
        return None
    x = torch.randn(3, 40)
    w = torch.randn(24, 40).to(torch.bfloat16)
    b = torch.randn(24)
    try:
        got = fused_linear(x, w, b, activation="gelu")
    except Exception as error:  # noqa: BLE001
        print(f"# op path failed ({type(error).__name__}: {error}); timing direct calls only")
        return None
    want = direct_call(isa, x, w, b, torch.empty(3, 24), "gelu", 1)
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
        print("# op path disagrees with the direct call; timing direct calls only")
        return None
    return fused_linear


def check(isa, x, w, bias, activation, threads, cols=512):
    """Relative error of the kernel on the first columns vs float64; warns when too large."""
    w, bias = w[:cols], bias[:cols]
    got = direct_call(isa, x, w, bias, torch.empty(x.shape[0], w.shape[0], dtype=x.dtype), activation, threads)
    ref = torch_linear(x.double(), w.double(), bias.double(), activation)
    err = ((got.double() - ref).norm() / ref.norm()).item()
    if err > {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[x.dtype]:
        print(f"# WARNING: relative error {err:.2e} for x {x.dtype}, W {w.dtype}, M={x.shape[0]}")
    return err


def torch_linear(x, w, bias, activation):
    return apply_activation(F.linear(x, w, bias), activation)


# ----------------------------------------------------------------------------- sections

def ceilings(big, quick):
    ts = [timed(lambda: big.sum()) for _ in range(5 if quick else 15)]
    a = torch.randn(2048, 2048)
    a @ a
    tg = min(timed(lambda: a @ a) for _ in range(3))
    return {"read_GBps": big.numel() * 4 / statistics.median(ts) / 1e9,
            "sgemm_GFLOPs": 2 * 2048 ** 3 / tg / 1e9}


def row(section, name, ta, tb, ratio, extra=None):
    r = {"section": section, "name": name, "ours_s": quantiles(ta), "base_s": quantiles(tb),
         "ratio": quantiles(ratio)}
    r.update(extra or {})
    q = r["ratio"]
    print(f"{section:<9} {name:<44} ours {r['ours_s']['median'] * 1e3:8.2f} ms  "
          f"base {r['base_s']['median'] * 1e3:8.2f} ms  ratio {q['median']:6.2f} [{q['q1']:.2f}, {q['q3']:.2f}]"
          + (f"  {extra['note']}" if extra and "note" in extra else ""), flush=True)
    return r


def headline(isa, threads, op, big, quick, cold):
    rows = []
    x = torch.randn(1, K_BIG)
    out = torch.empty(1, N_BIG)
    wb = cold(torch.bfloat16)
    reps = 11 if quick else 31

    def ours():
        if op is not None:
            op(x, wb.next())
        else:
            direct_call(isa, x, wb.next(), None, out, "none", threads)

    ta, tb = paired(ours, lambda: big.sum(), reps)
    bw = [(wb.nbytes / a) / (big.numel() * 4 / b) for a, b in zip(ta, tb)]
    rows.append(row("headline", "bf16 W / read bandwidth (x.sum 256MB)", ta, tb, bw,
                    {"note": f"{wb.nbytes / statistics.median(ta) / 1e9:.1f} GB/s",
                     "ours_GBps": wb.nbytes / statistics.median(ta) / 1e9,
                     "read_GBps": big.numel() * 4 / statistics.median(tb) / 1e9}))
    w32 = cold(torch.float32)
    ta, tb = paired(ours, lambda: F.linear(x, w32.next()), reps)
    rows.append(row("headline", "speed-up vs F.linear fp32 (fp32 W)", ta, tb, [b / a for a, b in zip(ta, tb)]))
    xb = x.bfloat16()
    ta, tb = paired(ours, lambda: F.linear(xb, wb.next()), reps)
    rows.append(row("headline", "speed-up vs F.linear bf16 (bf16 x, W)", ta, tb, [b / a for a, b in zip(ta, tb)]))
    if op is not None:
        ta, tb = paired(lambda: op(x, wb.next()), lambda: direct_call(isa, x, wb.next(), None, out, "none", threads),
                        reps)
        rows.append(row("overhead", "op / direct call, big shape", ta, tb, [a / b for a, b in zip(ta, tb)]))
        xs, ws, os_ = torch.randn(1, 512), torch.randn(512, 512).bfloat16(), torch.empty(1, 512)
        ta, tb = paired(lambda: op(xs, ws), lambda: direct_call(isa, xs, ws, None, os_, "none", threads), 2001)
        rows.append(row("overhead", "op / direct call, M=1 K=N=512 (hot)", ta, tb, [a / b for a, b in zip(ta, tb)],
                        {"note": f"op - direct = {(statistics.median(ta) - statistics.median(tb)) * 1e6:.1f} us"}))
    return rows


SWEEP_PAIRS = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
               (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)]


def sweep(isa, threads, op, quick, cold, activation="gelu"):
    rows = []
    ms = (1, 16) if quick else (1, 2, 4, 8, 16)
    bias = torch.randn(N_BIG)
    for xd, wd in SWEEP_PAIRS:
        w = cold(wd)
        base_w = cold(torch.float32) if xd == torch.float32 else w
        for m in ms:
            x = torch.randn(m, K_BIG).to(xd)
            out = torch.empty(m, N_BIG, dtype=xd)
            bias_x = bias.to(xd)

            def ours(x=x, w=w, out=out):
                if op is not None:
                    op(x, w.next(), bias, activation=activation)
                else:
                    direct_call(isa, x, w.next(), bias, out, activation, threads)

            def base(x=x, base_w=base_w, bias_x=bias_x):
                torch_linear(x, base_w.next(), bias_x, activation)

            err = check(isa, x, w.copies[0], bias, activation, threads)
            t1 = timed(base) + timed(ours)
            reps = reps_for(t1, 1.5 if quick else 3.0, 5, 41)
            ta, tb = paired(ours, base, reps)
            name = f"M={m:<3} x={SHORT[xd]:<4} W={SHORT[wd]:<4} vs torch {SHORT[xd]}/{SHORT[base_w.copies[0].dtype]}"
            rows.append(row("sweep", name, ta, tb, [b / a for a, b in zip(ta, tb)],
                            {"M": m, "x": SHORT[xd], "w": SHORT[wd], "baseline": "same-dtype",
                             "rel_err": err, "ours_GBps": w.nbytes / statistics.median(ta) / 1e9}))
            if xd == torch.float32 and wd != torch.float32 and (not quick or m == 1):
                x16 = x.to(wd)
                bias16 = bias.to(wd)
                def base16(x16=x16, w=w, bias16=bias16):
                    torch_linear(x16, w.next(), bias16, activation)

                ta, tb = paired(ours, base16, reps_for(t1, 2.0, 5, 21))
                rows.append(row("sweep", f"M={m:<3} x=f32  W={SHORT[wd]:<4} vs torch {SHORT[wd]}/{SHORT[wd]}",
                                ta, tb, [b / a for a, b in zip(ta, tb)],
                                {"M": m, "x": "f32", "w": SHORT[wd], "baseline": "16-bit"}))
    return rows


def crossover(isa, threads, quick, cold, ms=None, activation="gelu"):
    rows = []
    ms = ms or ((16, 32, 64) if quick else (16, 32, 64, 128))
    bias = torch.randn(N_BIG)
    pairs = [(torch.float32, torch.bfloat16), (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)]
    summary = {}
    for xd, wd in pairs:
        w = cold(wd)
        conv = cold(xd) if xd != wd else w
        for m in ms:
            x = torch.randn(m, K_BIG).to(xd)
            out = torch.empty(m, N_BIG, dtype=xd)
            bias_x = bias.to(xd)

            def ours(x=x, w=w, out=out):
                direct_call(isa, x, w.next(), bias, out, activation, threads)

            def gemm(x=x, conv=conv, bias_x=bias_x):  # PyTorch on a weight already in x's dtype
                torch_linear(x, conv.next(), bias_x, activation)

            t1 = timed(ours) + timed(gemm)
            reps = reps_for(t1, 2.0 if quick else 3.0, 5, 21)
            ta, tb = paired(ours, gemm, reps)
            ratio = [b / a for a, b in zip(ta, tb)]
            key = f"x={SHORT[xd]} W={SHORT[wd]}"
            rows.append(row("crossover", f"M={m:<3} {key} vs GEMM(W in {SHORT[xd]})", ta, tb, ratio,
                            {"M": m, "x": SHORT[xd], "w": SHORT[wd], "baseline": "gemm-preconverted"}))
            if wd != xd:
                def gemm_convert(x=x, w=w, xd=xd, bias_x=bias_x):  # converts the weight every call
                    torch_linear(x, w.next().to(xd), bias_x, activation)

                ta, tb = paired(ours, gemm_convert, reps)
                rows.append(row("crossover", f"M={m:<3} {key} vs convert+GEMM per call", ta, tb,
                                [b / a for a, b in zip(ta, tb)],
                                {"M": m, "x": SHORT[xd], "w": SHORT[wd], "baseline": "gemm-convert-per-call"}))
            summary.setdefault(key, []).append((m, statistics.median(ratio)))
    for key, points in summary.items():
        slower = [m for m, r in points if r < 1.0]
        print(f"# crossover {key}: torch GEMM (pre-converted W) is faster from M = "
              f"{slower[0] if slower else 'never (up to ' + str(points[-1][0]) + ')'}")
    return rows, {k: [list(p) for p in v] for k, v in summary.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats (about a minute)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--isa", default=None, help="ISA path (default: the best runnable)")
    parser.add_argument("--sections", default="headline,sweep,crossover")
    parser.add_argument("--threads", type=int, default=None, help="default: torch.get_num_threads()")
    parser.add_argument("--crossover-m", default=None, help="comma-separated M values for the crossover section")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    isa = args.isa or _C.runnable_isas()[0]
    op = find_op(isa) if args.isa is None else None
    torch.manual_seed(0)
    big = torch.randn(64 << 20)  # 256 MB of fp32: the read-bandwidth yardstick
    weights = {}

    def cold(dtype):
        if dtype not in weights:
            weights[dtype] = Cold(N_BIG, K_BIG, dtype, seed=1)
        return weights[dtype]

    info = {"machine": platform.machine(), "processor": _cpu_name(), "torch": torch.__version__,
            "threads": threads, "isa": isa, "via_op": op is not None, "quick": args.quick,
            "runnable_isas": list(_C.runnable_isas()),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset: libgomp spins)")}
    info.update(ceilings(big, args.quick))
    print(f"# {info['processor']}, torch {info['torch']}, {threads} threads, isa {isa}, "
          f"{'through bigperf.ops.fused_linear' if op else 'direct _C calls'}; "
          f"read {info['read_GBps']:.1f} GB/s, sgemm {info['sgemm_GFLOPs']:.0f} GFLOP/s, "
          f"OMP_WAIT_POLICY {info['OMP_WAIT_POLICY']}")
    print("# ratio = baseline time / ours (speed-up), except where the name says otherwise; "
          "median [q1, q3] of per-pair ratios")
    sections = set(args.sections.split(","))
    results = {"info": info, "rows": []}
    if "headline" in sections:
        results["rows"] += headline(isa, threads, op, big, args.quick, cold)
    del big
    if "sweep" in sections:
        results["rows"] += sweep(isa, threads, op, args.quick, cold)
    if "crossover" in sections:
        ms = tuple(int(v) for v in args.crossover_m.split(",")) if args.crossover_m else None
        rows, summary = crossover(isa, threads, args.quick, cold, ms)
        results["rows"] += rows
        results["crossover"] = summary
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"# wrote {args.out}")
    return results


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
