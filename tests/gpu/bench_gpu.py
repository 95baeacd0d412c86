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
  paths     every path the dispatcher may pick for an op call (bigperf's cuda and triton
            kernels, PyTorch's own GEMMs: the op tables of bigperf/ops), timed side by side
            per (op, shape, M), decode M first; the fastest per call key goes to
            --paths-out, a default table in the tuning cache's terms (key text, choice,
            seconds per path) that a dispatcher can ship for this GPU. Stops at
            --deadline-s and says which entries it did not reach.
Times are triton.testing.do_bench medians (CUDA events, L2 flushed before every call, so
weights are read cold) with the 20th/80th percentiles as the spread; the bigperf kernels
are timed through their raw bindings with buffers allocated up front. Writes JSON.

    python tests/gpu/bench_gpu.py --out results.json [--suite fused w8a16 sparse24 paths]
        [--paths-out default_paths.json] [--deadline-s 200]
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
    from bigperf.formats.w8a16_cuda import pack_w8a16
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
    from bigperf.formats.sparse24 import pack_s24
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


# ----------------------------------------------------------------------------- paths

PATH_M_VALUES = [1, 16, 128, 4096]  # decode first: the table is cut at the deadline


def path_calls(m: int, n: int, k: int, dev: torch.device = torch.device("cuda")):
    """(op table, op name, weight format, args as the op passes them to its paths) per op."""
    from bigperf.ops.fused_linear import BACKENDS as FUSED, OP as FUSED_OP
    from bigperf.ops.int8_linear import WEIGHT_ONLY_BACKENDS, WEIGHT_OP
    from bigperf.ops.sparse_linear import S24_BACKENDS, S24_OP
    from bigperf.quant import quantize_weight
    from bigperf.sparsity import nm_mask, pack_24

    g = torch.Generator(device=dev).manual_seed(m + n + k)
    x = torch.randn(m, k, device=dev, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, device=dev, generator=g) * k ** -0.5
    yield FUSED, FUSED_OP, "dense bf16", (x, w.to(torch.bfloat16), None, None, "none")
    if m in (16, 4096):  # fp32 activations with a bf16 weight (Triton: two TF32 products)
        yield FUSED, FUSED_OP, "dense bf16, fp32 x", (x.float(), w.to(torch.bfloat16), None, None, "none")
    q = quantize_weight(w, group_size=128)
    yield WEIGHT_ONLY_BACKENDS, WEIGHT_OP, "int8 group 128", (x, q.qweight, q.scale, None, None, "none")
    p = pack_24((w * nm_mask(w)).to(torch.bfloat16))
    yield S24_BACKENDS, S24_OP, "2:4 bf16", (x, p.values, p.meta, None, None, "none")


def run_path_entry(table, op_name: str, weight_format: str, args: tuple, m: int, n: int, k: int, bench_args):
    """Every eligible path of one call, timed side by side; the fastest named."""
    from bigperf import tune

    x = args[0]
    ok, reasons = table.eligible(x.device, *args)
    paths = [b for b in ok if b.name != "reference"]
    timed, failed = {}, {}
    for b in paths:
        try:
            b.run(*args)
            torch.cuda.synchronize()
            timed[b.id] = bench(lambda b=b: b.run(*args), bench_args.warmup_ms, bench_args.rep_ms)
        except Exception as exc:  # noqa: BLE001 - a failing path is recorded, the others still compete
            failed[b.id] = repr(exc)[:300]
    ranked = sorted(timed, key=lambda pid: timed[pid]["median_ms"])
    key = tune.key_text(tune.call_key(op_name, tuple(b.id for b in paths), args))
    return {
        "key": key, "op": op_name, "weight": weight_format, "x_dtype": str(x.dtype)[6:], "M": m,
        "m_bucket": tune.m_bucket(m), "N": n, "K": k, "paths": timed, "failed": failed,
        "ineligible": [r.strip() for r in reasons],
        "choice": ranked[0] if ranked else None,
        "margin_vs_next": timed[ranked[1]]["median_ms"] / timed[ranked[0]]["median_ms"] if len(ranked) > 1 else None,
    }


def default_table(report: dict, rows: list, complete: bool, not_reached: list) -> dict:
    """The fastest path per call key, in the tuning cache's terms (choice, times_s)."""
    return {
        "format": 1,
        "what": "fastest bigperf path per op call key on this GPU, measured side by side: a default "
                "table for the dispatcher (keys as bigperf.tune.key_text spells them)",
        "device": {k: report[k] for k in ("device", "capability", "sm_count")},
        "versions": {k: report[k] for k in ("torch", "torch_cuda", "triton", "compiled_archs")},
        "method": report["method"],
        "complete": complete,
        "not_reached": not_reached,
        "choices": {r["key"]: {"choice": r["choice"],
                               "times_s": {pid: t["median_ms"] * 1e-3 for pid, t in r["paths"].items()},
                               "spread_s": {pid: [t["p20_ms"] * 1e-3, t["p80_ms"] * 1e-3]
                                            for pid, t in r["paths"].items()},
                               "op": r["op"], "weight": r["weight"], "M": r["M"], "N": r["N"], "K": r["K"]}
                    for r in rows if r.get("choice")},
    }


def run_paths(report: dict, args, deadline: float) -> None:
    rows, not_reached = report.setdefault("paths", []), []
    print(f"{'op':26} {'weight':18} {'M':>5} {'N':>6} {'K':>6}  fastest (ms per path)")

    def write(complete: bool):
        args.paths_out.parent.mkdir(parents=True, exist_ok=True)
        args.paths_out.write_text(json.dumps(default_table(report, rows, complete, not_reached), indent=2))

    for m in args.paths_m:
        for name, n, k in SHAPES:
            if time.monotonic() > deadline:
                not_reached.append({"layer": name, "M": m, "N": n, "K": k})
                continue
            for table, op_name, fmt, call_args in path_calls(m, n, k):
                with torch.inference_mode():
                    try:
                        row = run_path_entry(table, op_name, fmt, call_args, m, n, k, args)
                    except Exception as exc:  # noqa: BLE001 - keep going with the other calls
                        row = {"op": op_name, "weight": fmt, "M": m, "N": n, "K": k, "error": repr(exc)[:300]}
                row["layer"] = name
                rows.append(row)
                times = " ".join(f"{pid}={t['median_ms']:.4f}" for pid, t in row.get("paths", {}).items())
                print(f"{op_name:26} {fmt:18} {m:5} {n:6} {k:6}  {row.get('choice')}  {times} {row.get('error', '')}")
            write(complete=False)  # partial results survive a timeout
    write(complete=not not_reached)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--m", type=int, nargs="*", default=M_VALUES, help="M values of the fused suite")
    parser.add_argument("--w8a16-m", type=int, nargs="*", default=W8A16_M_VALUES)
    parser.add_argument("--sparse24-m", type=int, nargs="*", default=S24_M_VALUES)
    parser.add_argument("--suite", nargs="*", default=["fused", "w8a16", "sparse24", "paths"],
                        choices=["fused", "w8a16", "sparse24", "paths"])
    parser.add_argument("--paths-m", type=int, nargs="*", default=PATH_M_VALUES, help="M values of the paths suite")
    parser.add_argument("--paths-out", type=Path, default=Path("default_paths.json"),
                        help="the default path table (fastest path per call key)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="stop starting new measurements after this many seconds (the kernel suites "
                             "get a third of it when the paths suite runs too)")
    args = parser.parse_args()
    started = time.monotonic()
    deadline = started + args.deadline_s if args.deadline_s else float("inf")
    kernel_deadline = started + args.deadline_s / 3 if args.deadline_s and "paths" in args.suite else deadline

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
        if time.monotonic() > kernel_deadline:
            report.setdefault("not_reached", []).append(name)
            continue
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
    if "paths" in args.suite:
        run_paths(report, args, deadline)
        args.out.write_text(json.dumps(report, indent=2))
    failed = [r for r in report["results"] if "error" in r
              or r.get("rel_error_vs_torch", r.get("rel_error_vs_dequantised_fp64", 0.0)) > 2e-2]
    print(f"bench_gpu: {len(report['results'])} cases, {len(failed)} failed or inaccurate -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
