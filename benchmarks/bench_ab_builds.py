"""Two builds of bigperf's CPU kernels compared in one process, on the same weights.

    python benchmarks/bench_ab_builds.py OTHER_C_SO [--shape 768x3072] [--m 1 16 192]
        [--configs int8wo fmp 2:4 2:4-int8 block int8dyn] [--activation none|gelu|gelu_tanh|silu|relu] [--dtype fp32|bf16] [--rounds 15]
        [--path cpu:panel]

OTHER_C_SO is another build's bigperf/_C*.so (e.g. of the commit before a change, built
in a git worktree with `python setup.py build_ext --inplace`). Why in one process: this
project's machines are shared, and the same layer timed in two processes minutes apart
moved by 30 % and more (benchmarks/NOTES.md, session 25); a change worth a few percent only
shows when both builds run in the same minutes, alternating, on the same tensors.

How: each layer is swapped with this checkout's Python code; its calls on 2-D x run this
build's kernels, and its calls on the same rows as a 3-D x are bound (once, through
bigperf's prepared calls, ops/prepared.py) while `bigperf._ext.cpu_module` answers with
the other build's module. Both therefore read the same weight tensors. Rounds alternate
which goes first; the result is the median over rounds of other / this (> 1: this build
is faster).

Limits: run it single-threaded (the default): each module has its own copy of the thread
pool, and with two pools' workers on the machine's cores the second-called build waits
for the first's spinning threads. Both builds must take the same arguments (the Python
side is this checkout's). The 3-D form costs a few microseconds more per call (as_rows):
an A/A run (OTHER_C_SO = this build's own module) read 1.04-1.15 at M = 1 on a 768 x 3072
layer and 0.98-1.04 at 4096 x 14336, so read small-M ratios against such a run.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import statistics
import time

import torch
from torch import nn

import bigperf
from bigperf import _ext

CONFIGS = {
    "int8wo": (lambda: bigperf.Int8WeightOnly(), None),
    "fmp": (lambda: bigperf.FusedMixedPrecision(torch.bfloat16), None),
    "int8dyn": (lambda: bigperf.Int8Dynamic(), None),
    "2:4": (lambda: bigperf.Sparse24(), {"pattern": "2:4"}),
    "2:4-int8": (lambda: bigperf.Sparse24Int8(), {"pattern": "2:4"}),
    "block": (lambda: bigperf.BlockSparse(block=(16, 16), density=0.5),
              {"pattern": "block", "density": 0.5, "block": (16, 16)}),
}


ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU, "relu": nn.ReLU}


def load_module(path: str):
    """The other build's _C as a module of its own (its PyInit symbol is PyInit__C)."""
    loader = importlib.machinery.ExtensionFileLoader("bigperf_other_build._C", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def layer(config: str, k: int, n: int, activation: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A one-layer model swapped to `config`, built in `dtype` (the activations' dtype)."""
    make, prune = CONFIGS[config]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(k, n), *([ACTIVATIONS[activation]()] if activation != "none" else []))
    if prune:
        bigperf.prune(model, **prune)
    bigperf.swap(model.to(dtype), make())
    return model


def compare(model: nn.Module, other, m: int, k: int, rounds: int,
            dtype: torch.dtype = torch.float32) -> tuple[float, float, float]:
    """(this build's median s, the other's, median of other / this) for x of m rows."""
    xs = [torch.randn(m, k).to(dtype) for _ in range(4)]
    this = model
    def that(x):
        return model(x.unsqueeze(0)).squeeze(0)

    with torch.inference_mode():
        this(xs[0])
        real = _ext.cpu_module
        _ext.cpu_module = lambda: other
        try:
            that(xs[0])  # binds the 3-D form's runner to the other build
        finally:
            _ext.cpu_module = real
        if not torch.allclose(this(xs[0]).float(), that(xs[0]).float(), rtol=1e-3, atol=1e-3):
            raise SystemExit("bench_ab_builds: the two builds disagree on the same call")
        start = time.perf_counter()
        this(xs[0])
        calls = max(2, min(200, int(0.02 / max(1e-6, time.perf_counter() - start))))
        mine, theirs = [], []
        for r in range(rounds):
            for fn, store in ((this, mine), (that, theirs)) if r % 2 == 0 else ((that, theirs), (this, mine)):
                start = time.perf_counter()
                for i in range(calls):
                    fn(xs[i % 4])
                store.append((time.perf_counter() - start) / calls)
    return statistics.median(mine), statistics.median(theirs), statistics.median(b / a for a, b in zip(mine, theirs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other_so", help="the other build's bigperf/_C*.so")
    parser.add_argument("--shape", default="768x3072", help="KxN (default 768x3072)")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16, 192])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument("--activation", choices=("none", *ACTIVATIONS), default="none")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="of the model and x")
    parser.add_argument("--threads", type=int, default=1, help="keep 1 (see the module docstring)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--path", default="auto",
                        help="one path id for every call (bigperf.use_backend, e.g. cpu:panel), not the tuner's choice")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    k, n = (int(v) for v in args.shape.split("x"))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    other = load_module(args.other_so)
    print(f"# {args.shape}, {args.dtype}, activation {args.activation}, {args.threads} thread(s), path {args.path}; "
          "other / this > 1: this build faster")
    for config in args.configs:
        model = layer(config, k, n, args.activation, dtype)
        for m in args.m:
            with bigperf.use_backend(args.path):
                mine, theirs, ratio = compare(model, other, m, k, args.rounds, dtype)
            print(f"{config:8s} M={m:<5d} this {mine * 1e3:8.3f} ms  other {theirs * 1e3:8.3f} ms  other/this {ratio:.3f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
