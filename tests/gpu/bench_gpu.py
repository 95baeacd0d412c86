"""Side-by-side timing: bigperf._C_cuda.fused_linear against PyTorch on the same GPU.

Llama-3-8B projection shapes (bf16) at M = 1, 16, 4096, two variants:
  plain     out = x @ W^T                              vs F.linear(x, W)
  epilogue  out = silu(x @ W^T + b) + residual         vs F.silu(F.linear(x, W, b)) + residual
Times are triton.testing.do_bench medians (CUDA events, L2 flushed before every call, so
weights are read cold) with the 20th/80th percentiles as the spread. Writes JSON.

    python tests/gpu/bench_gpu.py --out results.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SHAPES = [  # (name, N, K) of Llama-3-8B's linear layers
    ("q_proj/o_proj", 4096, 4096),
    ("k_proj/v_proj", 1024, 4096),
    ("gate_proj/up_proj", 14336, 4096),
    ("down_proj", 4096, 14336),
]
M_VALUES = [1, 16, 4096]
QUANTILES = [0.2, 0.5, 0.8]


def bench(fn, warmup_ms: int, rep_ms: int) -> dict:
    from triton.testing import do_bench

    p20, p50, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=QUANTILES)
    return {"median_ms": p50, "p20_ms": p20, "p80_ms": p80}


def run_case(cuda_ext, name, m, n, k, variant, args) -> dict:
    dev = torch.device("cuda")
    dtype = torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(m + n + k)
    x = torch.randn(m, k, device=dev, generator=g).to(dtype)
    w = (torch.randn(n, k, device=dev, generator=g) * k ** -0.5).to(dtype)
    epilogue = variant == "epilogue"
    bias = torch.randn(n, device=dev, generator=g) if epilogue else None
    residual = torch.randn(m, n, device=dev, generator=g).to(dtype) if epilogue else None
    out = torch.empty(m, n, device=dev, dtype=dtype)
    act = 4 if epilogue else 0
    stream = torch.cuda.current_stream().cuda_stream
    call_args = (x.data_ptr(), k, w.data_ptr(), k, bias.data_ptr() if epilogue else 0,
                 residual.data_ptr() if epilogue else 0, n if epilogue else 0, out.data_ptr(), n,
                 m, n, k, 2, act, stream)

    def ours():
        cuda_ext.fused_linear(*call_args)

    if epilogue:
        bias_t = bias.to(dtype)  # F.linear wants the bias in the input dtype

        def theirs():
            return F.silu(F.linear(x, w, bias_t)) + residual
    else:
        def theirs():
            return F.linear(x, w)

    ours()
    ref = theirs()
    torch.cuda.synchronize()
    err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
    t_ours = bench(ours, args.warmup_ms, args.rep_ms)
    t_torch = bench(theirs, args.warmup_ms, args.rep_ms)
    flops = 2.0 * m * n * k
    bytes_moved = 2.0 * (m * k + n * k + m * n) + ((4.0 * n + 2.0 * m * n) if epilogue else 0.0)
    sm_count = torch.cuda.get_device_properties(dev).multi_processor_count
    row = {
        "layer": name, "M": m, "N": n, "K": k, "dtype": "bfloat16", "variant": variant,
        "config": cuda_ext.fused_linear_requirements()["configs"][cuda_ext.fused_linear_choose_config(m, n, sm_count)],
        "rel_error_vs_torch": err,
        "bigperf_cuda": t_ours, "torch": t_torch,
        "speedup_vs_torch": t_torch["median_ms"] / t_ours["median_ms"],
    }
    for key, t in (("bigperf_cuda", t_ours), ("torch", t_torch)):
        seconds = t["median_ms"] * 1e-3
        t["tflops"] = flops / seconds / 1e12
        t["gbps"] = bytes_moved / seconds / 1e9
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--m", type=int, nargs="*", default=M_VALUES)
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    import triton

    import bigperf._C_cuda as cuda_ext

    props = torch.cuda.get_device_properties(0)
    report = {
        "device": props.name, "sm_count": props.multi_processor_count,
        "capability": list(torch.cuda.get_device_capability(0)),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": triton.__version__,
        "python": platform.python_version(), "compiled_archs": list(cuda_ext.compiled_archs()),
        "method": "triton.testing.do_bench (CUDA events, L2 flushed per call), median with p20/p80; "
                  "speedup = torch median / bigperf median",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": [],
    }
    print(f"{'layer':18} {'M':>5} {'N':>6} {'K':>6} {'variant':9} {'ours ms':>9} {'torch ms':>9} "
          f"{'speedup':>7} {'ours TF/s':>9} {'ours GB/s':>9}  config")
    for name, n, k in SHAPES:
        for m in args.m:
            for variant in ("plain", "epilogue"):
                try:
                    row = run_case(cuda_ext, name, m, n, k, variant, args)
                except Exception as exc:  # keep measuring the other shapes, report the failure
                    row = {"layer": name, "M": m, "N": n, "K": k, "variant": variant, "error": repr(exc)}
                    print(f"{name:18} {m:5} {n:6} {k:6} {variant:9} ERROR {exc!r}")
                else:
                    o, t = row["bigperf_cuda"], row["torch"]
                    print(f"{name:18} {m:5} {n:6} {k:6} {variant:9} {o['median_ms']:9.4f} {t['median_ms']:9.4f} "
                          f"{row['speedup_vs_torch']:7.2f} {o['tflops']:9.1f} {o['gbps']:9.0f}  {row['config']}")
                report["results"].append(row)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2))  # partial results survive a timeout
    failed = [r for r in report["results"] if "error" in r or r["rel_error_vs_torch"] > 2e-2]
    print(f"bench_gpu: {len(report['results'])} cases, {len(failed)} failed or inaccurate -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
