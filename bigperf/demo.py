"""`bigperf demo`: the main job on a model that ships with the project.

Builds the demo transformer, swaps it with each config in turn, and prints a table of
what changed: layers swapped, weight memory, error against the original, and latency of
original vs swapped at batch 1 and 16 on this machine (medians, same run).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bigperf.accuracy import sqnr_db
from bigperf.configs import (
    BlockSparse,
    FusedMixedPrecision,
    Int8Dynamic,
    Int8WeightOnly,
    Sparse24,
    Sparse24Int8,
)
from bigperf.demo_model import build_demo_model
from bigperf.prune import prune
from bigperf.swap import swap

# (config, pruning applied to a copy of the model first). Sparse rows are compared with the
# pruned dense model: pruning itself changes the outputs, the swap must not change them more.
DEMO_CONFIGS = [
    (FusedMixedPrecision(torch.bfloat16), None),
    (FusedMixedPrecision(torch.float16), None),
    (Int8WeightOnly(), None),
    (Int8WeightOnly(group_size=128), None),
    (Int8Dynamic(), None),
    (Sparse24(), {"pattern": "2:4"}),
    (Sparse24Int8(), {"pattern": "2:4"}),
    (BlockSparse((16, 16)), {"pattern": "block", "density": 0.25, "block": (16, 16)}),
]
BATCHES = (1, 16)


def median_latency_ms(model, x, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def weight_mb(model) -> float:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 2**20


def run_demo(console: Console | None = None, repeats: int = 20, sizes: dict | None = None) -> list[dict]:
    console = console or Console()
    sizes = sizes or {}
    original = build_demo_model(**sizes)
    d_model = original.norm.normalized_shape[0]
    inputs = {b: torch.randn(b, 1, d_model, generator=torch.Generator().manual_seed(b)) for b in BATCHES}
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring the original model", total=len(BATCHES) * (1 + len(DEMO_CONFIGS)))
        with torch.inference_mode():
            reference = {b: original(x) for b, x in inputs.items()}
        base_latency = {}
        for b, x in inputs.items():
            base_latency[b] = median_latency_ms(original, x, repeats)
            progress.advance(task)
        for config, pruning in DEMO_CONFIGS:
            progress.update(task, description=f"swapping with {config.describe()}")
            model = copy.deepcopy(original)
            compare_to = reference
            if pruning is not None:
                prune(model, **pruning)
                with torch.inference_mode():
                    compare_to = {b: model(x) for b, x in inputs.items()}
            report = swap(model, config)
            row = {"config": config.describe() + (f" (vs {pruning['pattern']}-pruned)" if pruning else ""),
                   "layers": len(report.changes), "mb_before": weight_mb(original), "mb_after": weight_mb(model)}
            with torch.inference_mode():
                out = model(inputs[BATCHES[-1]])
            row["sqnr_db"] = sqnr_db(compare_to[BATCHES[-1]], out)
            row["max_abs_err"] = (out.double() - compare_to[BATCHES[-1]].double()).abs().max().item()
            for b, x in inputs.items():
                row[f"ms_b{b}"] = median_latency_ms(model, x, repeats)
                row[f"orig_ms_b{b}"] = base_latency[b]
                progress.advance(task)
            rows.append(row)
    console.print(_table(rows))
    return rows


def _table(rows: list[dict]) -> Table:
    table = Table(title="bigperf demo: DemoTransformer swapped, vs the original fp32 model (medians)")
    for column in ("config", "layers", "weight MB", "SQNR dB", "max |err|",
                   *(f"batch {b} ms (orig → new)" for b in BATCHES), *(f"speedup b{b}" for b in BATCHES)):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["config"], str(r["layers"]), f"{r['mb_before']:.3g} → {r['mb_after']:.3g}",
                      f"{r['sqnr_db']:.1f}", f"{r['max_abs_err']:.2e}",
                      *(f"{r[f'orig_ms_b{b}']:.2f} → {r[f'ms_b{b}']:.2f}" for b in BATCHES),
                      *(f"{r[f'orig_ms_b{b}'] / r[f'ms_b{b}']:.2f}×" for b in BATCHES))
    return table
