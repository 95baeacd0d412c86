"""The dispatch grid: is a swapped bigperf layer ever slower than PyTorch? (issue #13)

    python benchmarks/bench_dispatch_grid.py [--quick] [--shapes 4096x14336 768x3072] [--m 1 16 128 2048]
                                             [--dtypes fp32 bf16] [--layers ...] [--threads 2]
                                             [--max-call-s 3] [--budget-s 2] [--json OUT]

Each layer is built as a user builds it: a one-layer model (nn.Linear in x's dtype), pruned
with bigperf.prune for the sparse layers, then bigperf.swap(model, config). It is called as
a user calls it, with no backend forced: the dispatcher ("auto") picks the path. Each cell
(layer x shape x x-dtype x M) compares it with the FASTEST PyTorch path for the same layer:
  F.linear fp32   x (cast to fp32), the layer's dense weight in fp32, output cast back
  F.linear bf16   x and the weight in bf16, output cast back
  fbgemm int8     (W8A8 only) torch.ao.nn.quantized.dynamic.Linear on fp32 x
For sparse layers the dense weight is the pruned one. The fastest path is picked by a short
interleaved timing of all of them, then the layer and that path are timed pair by pair
(A, B, B, A, ...; benchmarks/_pairs.py): ratio = torch time / bigperf time, median of the
per-pair ratios with quartiles; cells below 0.95 are flagged. Weights are cold: every call
uses the next of enough copies of the layer (and of each torch weight) to exceed twice the
last-level cache.

Before timing, the layer is called once at each M so that the dispatcher's lazy tuning
happens outside the timed region; that first call's time ("first call") and, where
bigperf.tune reports it, the dispatcher's own tuning time and choice are printed.
OMP_WAIT_POLICY is left as the environment has it (what a model gets); it is recorded.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pairs import paired, quantiles, reps_for, timed  # noqa: E402  (this folder)

import bigperf  # noqa: E402
from bigperf.bench.harness import copies_for_cold, last_level_cache_bytes  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPES = {  # "KxN": (in_features, out_features, bias, where it occurs)
    "4096x14336": (4096, 14336, False, "Llama-3-8B gate/up_proj"),
    "768x3072": (768, 3072, True, "BERT-base intermediate, ViT-B/16 fc1"),
}
FLAG_BELOW = 0.95
QUICK = {"m": (1, 16, 128), "budget_s": 1.0}


@dataclass(frozen=True)
class LayerKind:
    name: str
    config: object
    prune: dict | None = None   # bigperf.prune keyword arguments, for the sparse layers
    fbgemm: bool = False        # W8A8: fbgemm's dynamic int8 Linear is a PyTorch path too


LAYERS = {kind.name: kind for kind in (
    LayerKind("fused-bf16", bigperf.FusedMixedPrecision(torch.bfloat16)),
    LayerKind("int8-weight-only", bigperf.Int8WeightOnly()),
    LayerKind("int8-dynamic", bigperf.Int8Dynamic(), fbgemm=True),
    # fbgemm's own accuracy class (7-bit activations, its reduce_range): the like-for-like pair.
    LayerKind("int8-dynamic-7bit", bigperf.Int8Dynamic(act_bits=7), fbgemm=True),
    LayerKind("2:4-bf16", bigperf.Sparse24(), prune={"pattern": "2:4"}),
    LayerKind("2:4-int8", bigperf.Sparse24Int8(), prune={"pattern": "2:4"}),
    LayerKind("block-50%", bigperf.BlockSparse(block=(16, 16), density=0.5),
              prune={"pattern": "block", "density": 0.5, "block": (16, 16)}),
)}


class Cold:
    """Rotates over copies made by `make` (enough to exceed twice the last-level cache)."""

    def __init__(self, make, nbytes: int, llc: int):
        first = make()
        self.items = [first] + [make() for _ in range(copies_for_cold(nbytes, llc) - 1)]
        self._cycle = itertools.cycle(self.items)

    def next(self):
        return next(self._cycle)


def module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))


def build(kind: LayerKind, k: int, n: int, bias: bool, dtype: torch.dtype, seed: int):
    """(swapped layer, dense fp32 weight, fp32 bias or None, swap report) for one layer."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(k, n, bias=bias))
    if kind.prune:
        bigperf.prune(model, **kind.prune)
    weight = model[0].weight.detach().clone()
    b = model[0].bias.detach().clone() if bias else None
    model.to(dtype)
    report = bigperf.swap(model, kind.config)
    layer = model[0]
    if isinstance(layer, nn.Linear):
        raise SystemExit(f"bench_dispatch_grid: bigperf.swap kept the {kind.name} layer: {report.kept}")
    return layer.eval(), weight, b, report


def torch_paths(kind: LayerKind, weight: torch.Tensor, bias, llc: int) -> dict:
    """name -> fn(x): PyTorch's own ways to compute the same layer, each on cold weight copies."""
    paths = {}
    w32 = Cold(lambda: weight.clone(), weight.numel() * 4, llc)
    b32 = bias

    def fp32(x):
        return F.linear(x.float(), w32.next(), b32).to(x.dtype)

    paths["F.linear fp32"] = fp32
    w16 = Cold(lambda: weight.to(torch.bfloat16), weight.numel() * 2, llc)
    b16 = bias.to(torch.bfloat16) if bias is not None else None

    def bf16(x):
        return F.linear(x.to(torch.bfloat16), w16.next(), b16).to(x.dtype)

    paths["F.linear bf16"] = bf16
    if kind.fbgemm:
        engines = torch.backends.quantized.supported_engines
        if "fbgemm" in engines or "x86" in engines:
            def make():
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
                with torch.no_grad():
                    linear.weight.copy_(weight)
                    if bias is not None:
                        linear.bias.copy_(bias)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear},
                                                                  dtype=torch.qint8)[0]
            mods = Cold(make, weight.numel(), llc)

            def fbgemm(x):
                return mods.next()(x.float()).to(x.dtype)

            paths["fbgemm int8"] = fbgemm
    return paths


def tune_decisions() -> dict:
    """The dispatcher's decisions so far ({key: Decision}), where bigperf.tune exists."""
    try:
        from bigperf import tune
        return dict(tune.decisions())
    except Exception:  # noqa: BLE001  (before the dispatcher lands, or an API change: report nothing)
        return {}


def describe_decisions(before: dict, after: dict) -> tuple[str, float | None]:
    new = {key: d for key, d in after.items() if key not in before}
    if not new:
        return "", None
    choices = sorted({str(getattr(d, "choice", d)) for d in new.values()})
    seconds = sum(float(getattr(d, "seconds", 0.0) or 0.0) for d in new.values())
    return ",".join(choices), seconds


def fastest_path(paths: dict, x: torch.Tensor, max_call_s: float) -> tuple[str | None, dict, dict]:
    """(name of the fastest path, median seconds per path, why a path was skipped)."""
    single, skipped = {}, {}
    for name, fn in paths.items():
        fn(x)  # first call: oneDNN primitive creation, page faults
        seconds = timed(lambda fn=fn: fn(x))
        if seconds > max_call_s:
            skipped[name] = f"one call takes {seconds:.1f} s > --max-call-s {max_call_s:g}"
        else:
            single[name] = [seconds]
    # Only paths within 2x of the best single call are worth more calls (bf16 GEMMs are ~8x
    # slower than fp32 on AVX2-only CPUs, and take seconds at large M).
    best_single = min((ts[0] for ts in single.values()), default=0.0)
    contenders = [name for name, ts in single.items() if ts[0] <= 2 * best_single]
    rounds = 4 if best_single < 0.2 else 2
    for _ in range(rounds):  # interleaved: a drift hits every path alike
        for name in contenders:
            single[name].append(timed(lambda fn=paths[name]: fn(x)))
    medians = {name: quantiles(ts)["median"] for name, ts in single.items()}
    return (min(medians, key=medians.get) if medians else None), medians, skipped


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    return float(torch.linalg.vector_norm(out.float() - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def run_cell(kind, shape, dtype_name, m, layers: Cold, paths, args) -> dict:
    k, n = SHAPES[shape][:2]
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(1000 + m)
    x = torch.randn(m, k, generator=g).to(dtype)
    cell = {"layer": kind.name, "shape": shape, "k": k, "n": n, "dtype": dtype_name, "m": m}
    before = tune_decisions()
    first = layers.items[0]
    cell["first_call_s"] = timed(lambda: first(x))  # lazy tuning at this M happens here
    cell["auto_choice"], cell["tuning_s"] = describe_decisions(before, tune_decisions())
    for layer in layers.items[1:]:  # each copy's one-off checks (the sparse ops cache them per tensor)
        layer(x)
    warm = timed(lambda: layers.next()(x))
    cell["bigperf_call_s"] = warm
    if warm > args.max_call_s:
        cell["skipped"] = f"one bigperf call takes {warm:.1f} s > --max-call-s {args.max_call_s:g}"
        return cell
    best, medians, skipped = fastest_path(paths, x, args.max_call_s)
    cell["torch_path_s"] = medians
    if skipped:
        cell["torch_paths_skipped"] = skipped
    if best is None:
        cell["skipped"] = "no PyTorch path ran within --max-call-s: " + "; ".join(f"{p}: {w}" for p, w in skipped.items())
        return cell
    cell["fastest_torch"] = best
    cell["rel_err_vs_fp32"] = rel_err(first(x), paths["F.linear fp32"](x))
    reps = reps_for(warm + medians[best], args.budget_s, lo=args.min_pairs, hi=200)
    tb, tt = paired(lambda: layers.next()(x), lambda: paths[best](x), reps)
    ratios = [t / b for b, t in zip(tb, tt)]
    q = quantiles(ratios)
    cell.update(pairs=reps, ratio=q["median"], ratio_q1=q["q1"], ratio_q3=q["q3"],
                bigperf_s=quantiles(tb)["median"], torch_s=quantiles(tt)["median"],
                flagged=q["median"] < FLAG_BELOW)
    return cell


def machine() -> dict:
    from bigperf import _ext
    from bigperf.tune import cpu_model

    model = cpu_model()
    try:
        isa = _ext.cpu_isa()
    except Exception:  # noqa: BLE001
        isa = None
    return {"cpu": model, "isa": isa, "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "llc_bytes": last_level_cache_bytes(torch.device("cpu")),
            "tuning_cache": os.environ.get("BIGPERF_CACHE_DIR"),
            "forced_backend": bigperf.ops.forced_backend()}


def print_table(cells: list[dict], info: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console = console if console.is_terminal else Console(width=180)
    table = Table(title=escape(f"dispatch grid on {info['cpu']} ({info['isa']}), {info['threads']} threads: ratio = "
                               f"fastest torch path time / bigperf layer (auto) time, median of pairs [q1–q3]; "
                               f"< {FLAG_BELOW} flagged"))
    for col, justify in (("layer", "left"), ("KxN", "left"), ("x", "left"), ("M", "right"), ("ratio", "right"),
                         ("[q1–q3]", "right"), ("fastest torch", "left"), ("bigperf", "right"), ("torch", "right"),
                         ("first call", "right"), ("tuning", "right"), ("auto chose", "left"), ("rel err", "right"),
                         ("", "left")):
        table.add_column(escape(col), justify=justify)
    last = None
    for c in cells:
        group = (c["layer"], c["shape"], c["dtype"])
        if last is not None and group != last:
            table.add_section()
        last = group
        if "ratio" not in c:
            table.add_row(c["layer"], c["shape"], c["dtype"], str(c["m"]), "", "", "", _ms(c.get("bigperf_call_s")), "",
                          _ms(c.get("first_call_s")), _ms(c.get("tuning_s")), escape(c.get("auto_choice") or ""), "",
                          escape("skipped: " + c.get("skipped", "")), style="dim")
            continue
        table.add_row(c["layer"], c["shape"], c["dtype"], str(c["m"]), f"{c['ratio']:.2f}x",
                      f"{c['ratio_q1']:.2f}–{c['ratio_q3']:.2f}", c["fastest_torch"], _ms(c["bigperf_s"]),
                      _ms(c["torch_s"]), _ms(c["first_call_s"]), _ms(c.get("tuning_s")),
                      escape(c.get("auto_choice") or ""), f"{c['rel_err_vs_fp32']:.1e}",
                      "SLOWER" if c["flagged"] else "", style="red" if c["flagged"] else "")
    console.print(table)
    judged = [c for c in cells if "ratio" in c]
    flagged = [c for c in judged if c["flagged"]]
    console.print(f"{len(judged)} cells timed, {len(cells) - len(judged)} skipped, {len(flagged)} below {FLAG_BELOW}"
                  + (": " + ", ".join(f"{c['layer']} {c['shape']} {c['dtype']} M={c['m']} ({c['ratio']:.2f}x)"
                                      for c in flagged) if flagged else ""))


def _ms(seconds) -> str:
    if seconds is None:
        return ""
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"M in {QUICK['m']} and a {QUICK['budget_s']:g} s "
                                                             "budget per cell (unless --m / --budget-s say otherwise)")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--m", nargs="+", type=int, default=None, help="batch sizes (default 1 16 128 2048)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--max-call-s", type=float, default=3.0,
                        help="skip a cell (or a torch path) whose single warm call takes longer (default 3)")
    parser.add_argument("--budget-s", type=float, default=None, help="pair-timing budget per cell (default 2)")
    parser.add_argument("--min-pairs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="write the cells and the machine here")
    args = parser.parse_args(argv)
    ms = args.m or (list(QUICK["m"]) if args.quick else [1, 16, 128, 2048])
    args.budget_s = args.budget_s or (QUICK["budget_s"] if args.quick else 2.0)
    torch.set_num_threads(args.threads)
    info = machine()
    llc = info["llc_bytes"]
    print(f"# {info['cpu']} ({info['isa']}, torch {info['torch']} {info['torch_capability']}), "
          f"{info['threads']} threads, OMP_WAIT_POLICY={info['omp_wait_policy']}, LLC {llc >> 20} MiB", flush=True)
    cells = []
    started = time.monotonic()
    with torch.inference_mode():
        for shape in args.shapes:
            k, n, bias, _ = SHAPES[shape]
            for dtype_name in args.dtypes:
                for name in args.layers:
                    kind = LAYERS[name]
                    with torch.inference_mode(False):  # weights as a model has them, not inference tensors
                        t0 = time.perf_counter()
                        layer, weight, b, _ = build(kind, k, n, bias, DTYPES[dtype_name], args.seed)
                        layers = Cold(lambda: copy.deepcopy(layer), module_bytes(layer), llc)
                        paths = torch_paths(kind, weight, b, llc)
                        build_s = time.perf_counter() - t0
                    del layer, weight
                    for m in ms:
                        cell = run_cell(kind, shape, dtype_name, m, layers, paths, args)
                        cell["build_s"] = build_s
                        cells.append(cell)
                        status = (f"{cell['ratio']:.2f}x [{cell['ratio_q1']:.2f}-{cell['ratio_q3']:.2f}] vs "
                                  f"{cell['fastest_torch']}" if "ratio" in cell else f"skipped: {cell['skipped']}")
                        print(f"  {name:16s} {shape:10s} {dtype_name} M={m:<5d} {status}  (first call "
                              f"{cell['first_call_s'] * 1e3:.1f} ms, auto chose {cell.get('auto_choice') or '?'}; "
                              f"{time.monotonic() - started:.0f} s)", flush=True)
                    del layers, paths
    print_table(cells, info)
    if args.json:
        out = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": info, "settings": {k: v for k, v in vars(args).items() if k != "json"} | {"m": ms},
               "cells": cells}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
