"""Eager per-call overhead of the fused_linear op over calling the C++ kernel directly.

Goal (issue: foundation): ≤ 15 µs at a tiny shape. Rounds alternate the variants so that
machine drift hits them alike; the median over rounds of the per-call mean is reported.

    python benchmarks/bench_overhead.py [--rounds 15] [--calls 5000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bigperf import _ext
from bigperf.nn import FusedLinear, Int8Linear
from bigperf.ops.fused_linear import fused_linear

M, N, K = 1, 16, 16


def per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()

    cpu = _ext.cpu_module()
    isa = _ext.cpu_isa()
    x = torch.randn(M, K)
    w = torch.randn(N, K)
    out = torch.empty(M, N)
    layer = FusedLinear(K, N, bias=False).eval()
    int8_layer = Int8Linear.from_linear(torch.nn.Linear(K, N)).eval()
    with torch.inference_mode():  # as a model swapped under inference_mode: its scales must stay checked once
        int8_layer_made_in_inference = Int8Linear.from_linear(torch.nn.Linear(K, N)).eval()
    threads = torch.get_num_threads()

    def direct():
        cpu.fused_linear(isa, x.data_ptr(), K, 0, w.data_ptr(), K, 0, 0, 0, 0, out.data_ptr(), N, M, N, K, 0, threads)

    def op_inference():
        with torch.inference_mode():
            fused_linear(x, w)

    def op_plain():
        fused_linear(x, w)

    def layer_no_grad():
        with torch.no_grad():
            layer(x)

    def layer_grad_enabled():
        layer(x)  # parameters require grad: an autograd.Function with the op's backward

    def int8_no_grad():
        with torch.no_grad():
            int8_layer(x)

    def int8_made_in_inference_no_grad():
        with torch.no_grad():
            int8_layer_made_in_inference(x)

    def torch_linear():
        torch.nn.functional.linear(x, w)

    torch_layer = torch.nn.Linear(K, N, bias=False)

    def torch_layer_grad_enabled():
        torch_layer(x)  # what FusedLinear (grad enabled) is held against: nn.Linear records its graph in C++

    def torch_ops_route():
        torch.ops.bigperf.fused_linear(x, w, None, None, "none")  # a compiled graph's call

    variants = {"C++ kernel, direct": direct, "op (eager, inference_mode)": op_inference,
                "op (eager, grad mode, no grad needed)": op_plain, "FusedLinear (no_grad)": layer_no_grad,
                "FusedLinear (grad enabled)": layer_grad_enabled, "Int8Linear (no_grad)": int8_no_grad,
                "Int8Linear made under inference_mode": int8_made_in_inference_no_grad, "torch F.linear": torch_linear,
                "nn.Linear (grad enabled)": torch_layer_grad_enabled, "torch.ops.bigperf call": torch_ops_route}
    samples = {name: [] for name in variants}
    for fn in variants.values():
        per_call_us(fn, 500)  # warm-up
    for _ in range(args.rounds):
        for name, fn in variants.items():
            samples[name].append(per_call_us(fn, args.calls))
    base = statistics.median(samples["C++ kernel, direct"])
    print(f"M={M} N={N} K={K}, ISA {isa}, {threads} threads; median of {args.rounds} rounds × {args.calls} calls")
    print(f"{'variant':40s} {'µs/call':>9s} {'over direct':>12s} {'IQR µs':>8s}")
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4)
        med = statistics.median(values)
        print(f"{name:40s} {med:9.2f} {med - base:12.2f} {q[2] - q[0]:8.2f}")


if __name__ == "__main__":
    main()
