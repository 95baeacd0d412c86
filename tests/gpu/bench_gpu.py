"""Side-by-side timing of bigperf._C_cuda's kernels against PyTorch on the same GPU.

Llama-3-8B projection shapes (bf16), three suites:
  fused     fused_linear at M = 1, 16, 4096, two variants:
              plain     out = x @ W^T                       vs F.linear(x, W)
              epilogue  out = silu(x @ W^T + b) + residual  vs F.silu(F.linear(x, W, b)) + residual
  w8a16     w8a16_linear (int8 weight, per channel and per group 128) at M = 1 .. 16
            vs F.linear with the bf16 weight (goal: >= 1.7x)
  sparse24  sparse24_linear (2:4 weight, mma.sp) at M >= 4096 vs F.linear with the pruned
            weight stored dense (goal: >= 1.3x), and torch's semi-structured sparse tensor
            as a peer where it works
Times are triton.testing.do_bench medians (CUDA events, L2 flushed before every call, so
weights are read cold) with the 20th/80th percentiles as the spread; the bigperf kernels
are timed through their raw bindings with buffers allocated up front. Writes JSON.

    python tests/gpu/bench_gpu.py --out results.json [--suite fused w8a16 sparse24]
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
        "kernel": "fused_linear", "layer": name, "M": m, "N": n, "K": k, "dtype": "bfloat16", "variant": variant,
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


W8A16_M_VALUES = [1, 2, 4, 8, 16]
S24_M_VALUES = [4096, 8192]
GOALS = {"w8a16": 1.7, "sparse24": 1.3}


def _add_rates(row, flops, bytes_by_key):
    for key, nbytes in bytes_by_key.items():
        t = row.get(key)
        if t and "median_ms" in t:
            seconds = t["median_ms"] * 1e-3
            t["tflops"] = flops / seconds / 1e12
            t["gbps"] = nbytes / seconds / 1e9


def run_w8a16_case(cuda_ext, name, m, n, k, group_size, args) -> dict:
    from bigperf.cuda_layouts import pack_w8a16
    from bigperf.quant import quantize_weight

    dev = torch.device("cuda")
    dtype = torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(m + n + k)
    x = torch.randn(m, k, device=dev, generator=g).to(dtype)
    w = (torch.randn(n, k, device=dev, generator=g) * k ** -0.5).to(dtype)
    q = quantize_weight(w, group_size=group_size)
    layout = pack_w8a16(q.qweight, q.scale)
    out = torch.empty(m, n, device=dev, dtype=dtype)
    sm_count = torch.cuda.get_device_properties(dev).multi_processor_count
    plan = cuda_ext.w8a16_plan(m, n, k, sm_count)
    ws = torch.empty(max(plan["workspace_bytes"], 16), dtype=torch.uint8, device=dev)
    counters = torch.zeros(max(plan["counters"], 1), dtype=torch.int32, device=dev)
    stream = torch.cuda.current_stream().cuda_stream
    call_args = (x.data_ptr(), k, layout.weight.data_ptr(), layout.scale.data_ptr(), 0, group_size or 0, 0,
                 out.data_ptr(), n, ws.data_ptr(), ws.numel(), counters.data_ptr(), counters.numel(), m, n, k,
                 2, 0, stream, plan["config"], plan["splits"])

    def ours():
        cuda_ext.w8a16_linear(*call_args)

    def theirs():
        return F.linear(x, w)

    ours()
    ref = theirs()
    torch.cuda.synchronize()
    w_deq = (q.qweight.float().reshape(n, -1, k // q.scale.shape[1]) * q.scale[..., None]).reshape(n, k)
    exact = x.double() @ w_deq.double().t()
    row = {
        "kernel": "w8a16", "layer": name, "M": m, "N": n, "K": k, "dtype": "bfloat16",
        "variant": "per_channel" if group_size is None else f"group{group_size}",
        "config": cuda_ext.w8a16_requirements()["configs"][plan["config"]], "splits": plan["splits"],
        "rel_error_vs_dequantised_fp64": ((out.double() - exact).norm() / exact.norm()).item(),
        "rel_diff_vs_torch_bf16": ((out.double() - ref.double()).norm() / ref.double().norm()).item(),
        "bigperf_cuda": bench(ours, args.warmup_ms, args.rep_ms), "torch": bench(theirs, args.warmup_ms, args.rep_ms),
    }
    row["speedup_vs_torch"] = row["torch"]["median_ms"] / row["bigperf_cuda"]["median_ms"]
    row["goal"] = GOALS["w8a16"]
    scale_bytes = 4.0 * n * q.scale.shape[1]
    _add_rates(row, 2.0 * m * n * k, {"bigperf_cuda": 1.0 * n * k + scale_bytes + 2.0 * (m * k + m * n),
                                      "torch": 2.0 * (n * k + m * k + m * n)})
    return row


def run_sparse24_case(cuda_ext, name, m, n, k, args) -> dict:
    from bigperf.cuda_layouts import pack_s24
    from bigperf.sparsity import nm_mask, pack_24

    dev = torch.device("cuda")
    dtype = torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(m + n + k)
    x = torch.randn(m, k, device=dev, generator=g).to(dtype)
    w = torch.randn(n, k, device=dev, generator=g) * k ** -0.5
    w = (w * nm_mask(w)).to(dtype)
    p = pack_24(w)
    layout = pack_s24(p.values, p.meta)
    out = torch.empty(m, n, device=dev, dtype=dtype)
    stream = torch.cuda.current_stream().cuda_stream
    sm_count = torch.cuda.get_device_properties(dev).multi_processor_count
    config = cuda_ext.sparse24_choose_config(m, n, sm_count)
    call_args = (x.data_ptr(), k, layout.values.data_ptr(), layout.values.stride(0), layout.meta.data_ptr(), 0,
                 out.data_ptr(), n, m, n, k, 2, 0, stream, config)

    def ours():
        cuda_ext.sparse24_linear(*call_args)

    def theirs():
        return F.linear(x, w)

    ours()
    ref = theirs()
    torch.cuda.synchronize()
    row = {
        "kernel": "sparse24", "layer": name, "M": m, "N": n, "K": k, "dtype": "bfloat16", "variant": "2:4",
        "config": cuda_ext.sparse24_requirements()["configs"][config],
        "rel_error_vs_torch": ((out.double() - ref.double()).norm() / ref.double().norm()).item(),
        "bigperf_cuda": bench(ours, args.warmup_ms, args.rep_ms), "torch": bench(theirs, args.warmup_ms, args.rep_ms),
    }
    row["speedup_vs_torch"] = row["torch"]["median_ms"] / row["bigperf_cuda"]["median_ms"]
    row["goal"] = GOALS["sparse24"]
    try:  # peer: PyTorch's own 2:4 path (cuSPARSELt / CUTLASS), where this build supports it
        from torch.sparse import to_sparse_semi_structured

        w_sparse = to_sparse_semi_structured(w)

        def peer():
            return F.linear(x, w_sparse)

        peer()
        row["torch_semi_structured"] = bench(peer, args.warmup_ms, args.rep_ms)
        row["speedup_vs_torch_semi_structured"] = (row["torch_semi_structured"]["median_ms"]
                                                   / row["bigperf_cuda"]["median_ms"])
    except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
        row["torch_semi_structured"] = {"error": repr(exc)[:200]}
    flops = 2.0 * m * n * k
    _add_rates(row, flops, {"bigperf_cuda": 1.0 * n * k + n * k / 8 + 2.0 * (m * k + m * n),
                            "torch": 2.0 * (n * k + m * k + m * n),
                            "torch_semi_structured": 1.0 * n * k + n * k / 8 + 2.0 * (m * k + m * n)})
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--m", type=int, nargs="*", default=M_VALUES, help="M values of the fused suite")
    parser.add_argument("--w8a16-m", type=int, nargs="*", default=W8A16_M_VALUES)
    parser.add_argument("--sparse24-m", type=int, nargs="*", default=S24_M_VALUES)
    parser.add_argument("--suite", nargs="*", default=["fused", "w8a16", "sparse24"],
                        choices=["fused", "w8a16", "sparse24"])
    args = parser.parse_args()

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    import bigperf._C_cuda as cuda_ext
    import triton

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
    print(f"{'kernel':12} {'layer':18} {'M':>5} {'N':>6} {'K':>6} {'variant':11} {'ours ms':>9} {'torch ms':>9} "
          f"{'speedup':>7} {'ours TF/s':>9} {'ours GB/s':>9}  config")

    def record(kernel, name, m, n, k, variant, make_row):
        try:
            row = make_row()
        except Exception as exc:  # noqa: BLE001 - keep measuring the other shapes, report the failure
            row = {"kernel": kernel, "layer": name, "M": m, "N": n, "K": k, "variant": variant, "error": repr(exc)}
            print(f"{kernel:12} {name:18} {m:5} {n:6} {k:6} {variant:11} ERROR {exc!r}")
        else:
            o, t = row["bigperf_cuda"], row["torch"]
            print(f"{kernel:12} {name:18} {m:5} {n:6} {k:6} {row['variant']:11} {o['median_ms']:9.4f} "
                  f"{t['median_ms']:9.4f} {row['speedup_vs_torch']:7.2f} {o['tflops']:9.1f} {o['gbps']:9.0f}  "
                  f"{row['config']}")
        report["results"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))  # partial results survive a timeout

    has_w8 = hasattr(cuda_ext, "w8a16_linear")
    for name, n, k in SHAPES:
        if "fused" in args.suite:
            for m in args.m:
                for variant in ("plain", "epilogue"):
                    record("fused_linear", name, m, n, k, variant,
                           lambda c=(name, m, n, k, variant): run_case(cuda_ext, *c, args))
        if "w8a16" in args.suite and has_w8:
            for group_size in (None, 128):
                for m in args.w8a16_m:
                    record("w8a16", name, m, n, k, str(group_size),
                           lambda c=(name, m, n, k, group_size): run_w8a16_case(cuda_ext, *c, args))
        if "sparse24" in args.suite and has_w8:
            for m in args.sparse24_m:
                record("sparse24", name, m, n, k, "2:4",
                       lambda c=(name, m, n, k): run_sparse24_case(cuda_ext, *c, args))
    for kernel, goal in GOALS.items():
        rows = [r for r in report["results"] if r.get("kernel") == kernel and "speedup_vs_torch" in r]
        if rows:
            worst = min(r["speedup_vs_torch"] for r in rows)
            met = sum(r["speedup_vs_torch"] >= goal for r in rows)
            report.setdefault("goals", {})[kernel] = {"goal": goal, "cases": len(rows), "met": met, "worst": worst}
            print(f"{kernel}: {met}/{len(rows)} cases reach {goal}x vs torch bf16 (worst {worst:.2f}x)")
    args.out.write_text(json.dumps(report, indent=2))
    failed = [r for r in report["results"] if "error" in r
              or r.get("rel_error_vs_torch", r.get("rel_error_vs_dequantised_fp64", 0.0)) > 2e-2]
    print(f"bench_gpu: {len(report['results'])} cases, {len(failed)} failed or inaccurate -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
