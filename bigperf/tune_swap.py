"""Tuning at swap time: every swapped layer is run at the batch sizes the user names, so the
measuring dispatcher (bigperf/tune.py) decides its paths now rather than at the first real
call, and the report says per layer which path runs at each batch size and how fast that
is against the layer it replaced.

Layers of the same shape, dtype and config share one measurement: a 32-layer decoder has
seven distinct linear shapes, not 224.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from bigperf import tune
from bigperf.distributed.adopt import local_tensor
from bigperf.ops.activations import apply_activation
from bigperf.ops.registry import record_paths

# How a swapped layer's speed is compared with the original's: samples of each, alternating,
# each sample long enough to rise above the clock and the host's noise (a 64 x 64 layer's call
# is ~10 us: a sample is ~200 calls), then the ratio of the medians. A layer whose single call
# already takes SLOW_CALL_S is sampled fewer times: swap(batch_sizes=...) of a 7B-shaped layer
# set must stay within its tuning-time goal (benchmarks/bench_tuning_cost.py).
SAMPLE_S = 2e-3
ROUNDS = 5
ROUNDS_SLOW = 3
SLOW_CALL_S = 20e-3

# Tuning allocates an x of M rows per layer (M = 65536, K = 16384 would be 4 GiB of fp32).
MAX_TUNED_ROWS = 1 << 15


def check_batch_sizes(batch_sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(int(m) for m in batch_sizes)
    except (TypeError, ValueError):
        raise TypeError(f"bigperf.swap: argument 'batch_sizes' must be an iterable of positive ints, "
                        f"got {batch_sizes!r}") from None
    if not sizes or any(m <= 0 for m in sizes) or any(m != b for m, b in zip(sizes, batch_sizes)):
        raise ValueError(f"bigperf.swap: argument 'batch_sizes' must be positive ints, got {batch_sizes!r}")
    if max(sizes) > MAX_TUNED_ROWS:
        raise ValueError(f"bigperf.swap: argument 'batch_sizes' holds {max(sizes)} rows; tuning runs each layer on "
                         f"that many rows, so at most {MAX_TUNED_ROWS} are taken (larger M share its bucket's "
                         f"choice)")
    return tuple(sorted(set(sizes)))


def _time_calls(fn, x, calls: int) -> float:
    """Seconds a call of fn(x), averaged over `calls` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - t0) / calls


def speed_ratio(old, new, x) -> float:
    """old's time / new's time on x (both warm): the ratio of the medians of alternating samples."""
    first_old, first_new = _time_calls(old, x, 1), _time_calls(new, x, 1)
    slowest = max(first_old, first_new, 1e-7)
    calls = max(1, math.ceil(SAMPLE_S / slowest))
    rounds = ROUNDS_SLOW if slowest >= SLOW_CALL_S else ROUNDS
    olds, news = ([first_old], [first_new]) if calls == 1 else ([], [])  # a one-call sample is a sample
    while len(olds) < rounds:
        olds.append(_time_calls(old, x, calls))
        news.append(_time_calls(new, x, calls))
    t_new = statistics.median(news)
    return statistics.median(olds) / t_new if t_new > 0 else float("inf")


def tune_layer(old, new: nn.Module, in_features: int, batch_sizes: Iterable[int],
               dtype: torch.dtype, device: torch.device) -> dict[int, dict]:
    """Per batch size: {"path": what ran, "speedup": old time / new time}.

    The first call of `new` at each M is where the dispatcher tunes; the timed calls after it
    run the chosen path. The old layer is timed the same way, in the same loop.
    """
    results = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        for m in batch_sizes:
            x = torch.randn(m, in_features, generator=gen).to(device=device, dtype=dtype)
            with record_paths() as ran:
                new(x)  # tunes, if this key is new
            paths = sorted({path for _, path in ran})
            old(x)  # warm-up of the original, as the new layer just had
            results[m] = {"path": "+".join(paths) or "?", "speedup": speed_ratio(old, new, x)}
    return results


class _OriginalMath(nn.Module):
    """What the replaced layer computed (and the activation the swap fuses into the new one),
    as F.linear on its own tensors, called as a module like the original: timing it must not
    run the user's module (its forward hooks, or any other code of theirs)."""

    def __init__(self, linear_map, activation: str):
        super().__init__()
        module = linear_map.module
        weight = local_tensor(module.weight.detach())
        self.weight = weight.t() if linear_map.transposed else weight
        bias = getattr(module, "bias", None)
        self.bias = local_tensor(bias.detach()) if bias is not None else None
        self.activation = activation

    def forward(self, x):
        return apply_activation(F.linear(x, self.weight, self.bias), self.activation)


def _new_sizes(planned) -> tuple[int, int]:
    """(in, out) features of the new layer: a shard's (distributed/adopt.py) are its slice of
    the layer's; a config's own module that does not say has the layer's."""
    lm, new = planned.linear, planned.new
    return getattr(new, "in_features", lm.in_features), getattr(new, "out_features", lm.out_features)


def layer_signature(planned) -> tuple:
    w = planned.linear.module.weight
    new = planned.new  # its activation: a row-wise shard runs the layer's after the sum
    return (type(new).__name__, planned.config.describe(), getattr(new, "activation", planned.activation),
            *_new_sizes(planned), w.dtype, w.device.type)


def tune_planned(planned: list, batch_sizes: tuple[int, ...]) -> tuple[dict[str, dict[int, dict]], float]:
    """Tunes every planned layer at `batch_sizes`; ({layer name: per-M results}, seconds spent)."""
    started = time.perf_counter()
    done: dict[tuple, dict[int, dict]] = {}
    per_layer = {}
    for p in planned:
        sig = layer_signature(p)
        if sig not in done:
            done[sig] = tune_layer(_OriginalMath(p.linear, sig[2]), p.new, _new_sizes(p)[0], batch_sizes,
                                   p.linear.module.weight.dtype, p.linear.module.weight.device)
        per_layer[p.name] = done[sig]
    return per_layer, time.perf_counter() - started


def check_min_speedup(min_speedup) -> None:
    if min_speedup is None:
        return
    if isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float)) or not 0 < min_speedup < math.inf:
        raise ValueError(f"bigperf.swap: argument 'min_speedup' must be None or a positive number (the original "
                         f"layer's time / the swapped layer's, e.g. 0.95), got {min_speedup!r}")


def slower_reason(by_batch: dict[int, dict], min_speedup: float) -> str | None:
    """Why a layer measured at these batch sizes is kept, or None when it is swapped: kept
    only when it runs below min_speedup at every size (a layer faster at some sizes is
    swapped and the report shows the others)."""
    if not by_batch or any(r["speedup"] >= min_speedup for r in by_batch.values()):
        return None
    ratios = ", ".join(f"{r['speedup']:.2f}x at M={m}" for m, r in sorted(by_batch.items()))
    return f"slower than the original at every batch size measured ({ratios}; min_speedup={min_speedup:g})"


def cache_location() -> str:
    return str(tune.cache_path())
