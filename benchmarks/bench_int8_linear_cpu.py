"""CPU int8 linear: bigperf's kernels against PyTorch, pair by pair in one run.

    python benchmarks/bench_int8_linear_cpu.py [--quick] [--out results.json] [--isa avx2]
                                               [--sections headline,m16,w8a8,crossover] [--omp-active]

Every claim is a ratio of two measurements taken alternately (A, B, B, A, ...) on this
shared, noisy 2-core machine: the median of the per-pair ratios with its interquartile
range. Weights are cold: each call uses the next of enough copies to exceed the last-level
cache twice, as a model's layers would.

Sections
  headline   M=1, K=4096, N=14336, weight-only per channel: % of read bandwidth (vs
             x.sum() over 256 MB), vs F.linear fp32, vs aten._weight_int8pack_mm (bf16
             x, both sides), vs torch.ao quantize_dynamic's Linear (fbgemm); per-group
             128 vs per channel.
  m16        M=16 weight-only (per channel, group 128) vs F.linear fp32.
  w8a8       M=128 (K=4096, N=14336) and M=2048 (K=N=4096) W8A8 vs fbgemm and fp32, with
             8-bit activation codes (the default) and with act_bits=7 (fbgemm's own
             accuracy class: it quantises x with reduce_range, 0..127); the SQNR of
             each against the fp32 Linear.
  crossover  weight-only M=8..256: the skinny kernel (raw binding) vs dequantise + F.linear
             (the op's fallback), and vs the W8A8 op, for CPU_WEIGHT_ONLY_MAX_M.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import warnings
from pathlib import Path

# torch's OpenMP threads spin-wait after each parallel region, and on 2 cores the
# spinners take the cores from bigperf's own thread pool in the next call (measured:
# M=1 weight-only 3.8 ms alone, ~8 ms right after x.sum()). PASSIVE makes them sleep.
# Must be set before torch loads its OpenMP runtime; --omp-active keeps the default.
if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _pairs import paired, quantiles  # noqa: E402  (this folder)

import bigperf  # noqa: E402
from bigperf.ops import int8_linear as ops  # noqa: E402
from bigperf.quant import dequantize_weight, quantize_weight  # noqa: E402

try:
    import bigperf._C as _C
except ImportError as error:  # pragma: no cover - nothing to measure without the build
    raise SystemExit(f"bigperf._C is not built ({error}); pip install -e . first")

LLC_BYTES = 32 << 20
K_BIG, N_BIG = 4096, 14336
CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


# ----------------------------------------------------------------------------- measuring

def copies_for(nbytes):
    return max(2, math.ceil(2 * LLC_BYTES / nbytes) + 1)


class Cold:
    """Several objects with the same content, handed out in turn."""

    def __init__(self, make, nbytes):
        first = make()
        self.items = [first] + [make() for _ in range(copies_for(nbytes) - 1)]
        self.nbytes = nbytes
        self.i = 0

    def next(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def row(section, name, ta, tb, ratio, extra=None):
    r = {"section": section, "name": name, "ours_s": quantiles(ta), "base_s": quantiles(tb),
         "ratio": quantiles(ratio)}
    r.update(extra or {})
    q = r["ratio"]
    print(f"{section:<9} {name:<62} ours {r['ours_s']['median'] * 1e3:9.2f} ms  "
          f"base {r['base_s']['median'] * 1e3:9.2f} ms  ratio {q['median']:6.2f} [{q['q1']:.2f}, {q['q3']:.2f}]"
          + (f"  {extra['note']}" if extra and "note" in extra else ""), flush=True)
    return r


def speedup(section, name, fa, fb, x, reps, extra=None):
    """Speed-up of fa over fb, both called on x."""
    ta, tb = paired(lambda: fa(x), lambda: fb(x), reps)
    return row(section, name, ta, tb, [b / a for a, b in zip(ta, tb)], extra)


# ----------------------------------------------------------------------------- subjects

class QuantCopies:
    """Cold copies of one quantised weight (qweight, scale, zero point)."""

    def __init__(self, n, k, group_size=None, symmetric=True, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.float_weight = torch.randn(n, k, generator=g) / math.sqrt(k)
        q = quantize_weight(self.float_weight, group_size, symmetric)
        self.cold = Cold(lambda: (q.qweight.clone(), q.scale.clone(),
                                  None if q.zero_point is None else q.zero_point.clone()), n * k)

    def next(self):
        return self.cold.next()


def weight_only(isa, qc):
    def call(x):
        qw, s, z = qc.next()
        with bigperf.use_backend("cpu"), bigperf.use_cpu_isa(isa):
            return ops.int8_weight_linear(x, qw, s, z)
    return call


def weight_only_raw(isa, qc, threads):
    """The skinny kernel for any M (the op sends only M <= CPU_WEIGHT_ONLY_MAX_M to it)."""
    def call(x):
        qw, s, z = qc.next()
        m, k = x.shape
        out = torch.empty(m, qw.shape[0], dtype=x.dtype)
        _C.int8_weight_linear(isa, x.data_ptr(), x.stride(0), CODE[x.dtype], qw.data_ptr(), k, s.data_ptr(),
                              z.data_ptr() if z is not None else 0, s.shape[1], 0, out.data_ptr(), qw.shape[0],
                              m, qw.shape[0], k, 0, threads)
        return out
    return call


def dequant_fallback(qc):
    def call(x):
        qw, s, z = qc.next()
        return F.linear(x, dequantize_weight(qw, s, z, x.dtype))
    return call


def dynamic(isa, qc, act_bits=8):
    def call(x):
        qw, s, _ = qc.next()
        with bigperf.use_backend("cpu"), bigperf.use_cpu_isa(isa):
            return ops.int8_dynamic_linear(x, qw, s, None, "none", act_bits)
    return call


def fp32_linear(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    cold = Cold(lambda: w.clone(), n * k * 4)
    return lambda x: F.linear(x, cold.next())


def fbgemm_linear(qc):
    """torch.ao.quantization.quantize_dynamic's Linear (fbgemm on x86), or None."""
    n, k = qc.float_weight.shape

    def make():
        lin = torch.nn.Linear(k, n, bias=False)
        lin.weight.data.copy_(qc.float_weight)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                          dtype=torch.qint8)
    try:
        cold = Cold(make, n * k)
    except Exception as error:  # noqa: BLE001 - engine missing in this torch build
        print(f"# fbgemm dynamic Linear unavailable: {type(error).__name__}: {error}")
        return None
    return lambda x: cold.next()(x)


def int8pack_mm(qc):
    """aten._weight_int8pack_mm(x bf16 [M, K], w int8 [N, K], scales bf16 [N])."""
    def make():
        qw, s, _ = qc.next()
        return qw.clone(), s[:, 0].bfloat16().contiguous()
    cold = Cold(make, qc.float_weight.numel())
    return lambda x: torch.ops.aten._weight_int8pack_mm(x, *cold.next())


# ----------------------------------------------------------------------------- sections

def headline(isa, threads, big, reps):
    rows = []
    qc = QuantCopies(N_BIG, K_BIG)
    ours = weight_only(isa, qc)
    x = torch.randn(1, K_BIG)
    ta, tb = paired(lambda: ours(x), lambda: big.sum(), reps)
    nbytes = N_BIG * K_BIG
    bw = [(nbytes / a) / (big.numel() * 4 / b) for a, b in zip(ta, tb)]
    rows.append(row("headline", "per-channel W / read bandwidth (x.sum 256 MB)", ta, tb, bw,
                    {"note": f"{nbytes / statistics.median(ta) / 1e9:.1f} GB/s vs read "
                             f"{big.numel() * 4 / statistics.median(tb) / 1e9:.1f} GB/s",
                     "ours_GBps": nbytes / statistics.median(ta) / 1e9,
                     "read_GBps": big.numel() * 4 / statistics.median(tb) / 1e9}))
    fp32_lin = fp32_linear(N_BIG, K_BIG)
    rows.append(speedup("headline", "vs F.linear fp32", ours, fp32_lin, x, reps))
    xb = x.bfloat16()
    pack = int8pack_mm(qc)
    rows.append(speedup("headline", "bf16 x: vs aten._weight_int8pack_mm (bf16 x)", ours, pack, xb, reps))
    fb = fbgemm_linear(qc)
    if fb is not None:
        rows.append(speedup("headline", "vs quantize_dynamic Linear (fbgemm)", ours, fb, x, reps))
    qg = QuantCopies(N_BIG, K_BIG, group_size=128)
    grouped = weight_only(isa, qg)
    rows.append(speedup("headline", "per-group 128 speed / per-channel speed", grouped, ours, x, reps))
    qa = QuantCopies(N_BIG, K_BIG, group_size=128, symmetric=False)
    asym = weight_only(isa, qa)
    rows.append(speedup("headline", "per-group 128 asymmetric speed / per-channel", asym, ours, x, reps))
    return rows


def m16(isa, threads, reps):
    rows = []
    x = torch.randn(16, K_BIG)
    fp32_lin = fp32_linear(N_BIG, K_BIG)
    for name, gs in (("per channel", None), ("group 128", 128)):
        ours = weight_only(isa, QuantCopies(N_BIG, K_BIG, group_size=gs))
        rows.append(speedup("m16", f"M=16 {name} vs F.linear fp32", ours, fp32_lin, x, reps))
    return rows


def sqnr_db(ref, out):
    ref, out = ref.double(), out.double()
    return (10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())).item()


def w8a8(isa, threads, reps, quick):
    rows = []
    shapes = [(128, K_BIG, N_BIG)] + ([] if quick else [(2048, 4096, 4096)])
    for m, k, n in shapes:
        qc = QuantCopies(n, k)
        x = torch.randn(m, k)
        r = max(3, reps // (4 if m >= 2048 else 2))
        fb = fbgemm_linear(qc)
        fp32_lin = fp32_linear(n, k)
        for bits in (8, 7):
            ours = dynamic(isa, qc, bits)
            tag = "" if bits == 8 else " act_bits=7"
            if fb is not None:
                rows.append(speedup("w8a8", f"M={m} K={k} N={n}{tag} vs fbgemm dynamic Linear", ours, fb, x, r))
            rows.append(speedup("w8a8", f"M={m} K={k} N={n}{tag} vs F.linear fp32", ours, fp32_lin, x, r,
                                {"note": f"{2 * m * n * k / 1e9:.1f} GOP"}))
        # Accuracy against the fp32 Linear on the same float weight and x.
        with torch.inference_mode():
            ref = F.linear(x, qc.float_weight)
            sq = {f"ours act_bits={bits}": sqnr_db(ref, dynamic(isa, qc, bits)(x)) for bits in (8, 7)}
            if fb is not None:
                sq["fbgemm (reduce_range)"] = sqnr_db(ref, fb(x))
        print(f"w8a8      M={m} K={k} N={n} SQNR vs fp32 Linear: "
              + ", ".join(f"{name} {v:.1f} dB" for name, v in sq.items()), flush=True)
        rows.append({"section": "w8a8", "name": f"M={m} K={k} N={n} SQNR vs fp32 Linear (dB)", "sqnr_db": sq})
    return rows


def crossover(isa, threads, reps, quick):
    rows = []
    qc = QuantCopies(N_BIG, K_BIG)
    skinny = weight_only_raw(isa, qc, threads)
    fallback = dequant_fallback(qc)
    dyn = dynamic(isa, qc)
    for m in ((16, 64) if quick else (8, 16, 32, 64, 128, 256)):
        x = torch.randn(m, K_BIG)
        r = max(3, reps // (3 if m <= 64 else 8))
        rows.append(speedup("crossover", f"M={m} skinny vs dequantise + F.linear", skinny, fallback, x, r))
        rows.append(speedup("crossover", f"M={m} skinny vs W8A8 op", skinny, dyn, x, r))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller set")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--isa", default=None, help="ISA path (default: the best runnable)")
    parser.add_argument("--sections", default="headline,m16,w8a8,crossover")
    parser.add_argument("--omp-active", action="store_true",
                        help="leave OMP_WAIT_POLICY unset (torch's threads spin after each op)")
    args = parser.parse_args()
    isa = args.isa or _C.runnable_isas()[0]
    threads = torch.get_num_threads()
    reps = 9 if args.quick else 25
    omp = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"# bigperf int8 CPU bench: isa={isa} threads={threads} torch={torch.__version__} "
          f"cpu={platform.processor() or platform.machine()} OMP_WAIT_POLICY={omp}", flush=True)
    big = torch.randn(64 << 20)  # 256 MB: the read-bandwidth reference
    rows = []
    sections = args.sections.split(",")
    if "headline" in sections:
        rows += headline(isa, threads, big, reps)
    if "m16" in sections:
        rows += m16(isa, threads, reps)
    if "w8a8" in sections:
        rows += w8a8(isa, threads, reps, args.quick)
    if "crossover" in sections:
        rows += crossover(isa, threads, reps, args.quick)
    if args.out:
        args.out.write_text(json.dumps({"isa": isa, "threads": threads, "torch": torch.__version__,
                                        "omp_wait_policy": omp, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
