"""Swapped layers called the ways servers and compilers call them: from several Python
threads at once, and in a graph compiled for dynamic batch sizes."""

import copy
import threading

import pytest
import torch
from torch import nn

import bigperf

CONFIGS = {"fused-bf16": (bigperf.FusedMixedPrecision(), None), "int8-weight-only": (bigperf.Int8WeightOnly(), None),
           "int8-dynamic": (bigperf.Int8Dynamic(), None), "2:4": (bigperf.Sparse24(), "2:4")}


def _swapped(name: str, k: int = 64, n: int = 96) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(k, n), nn.GELU(), nn.Linear(n, k)).eval()
    config, prune = CONFIGS[name]
    if prune:
        bigperf.prune(model, prune)
    bigperf.swap(model, config)
    return model


# Not inside the suite's fp32_compute(): like torch.no_grad(), it holds for the thread (context)
# that entered it, and the worker threads here run in the default context, as the main one does.
@pytest.mark.bf16_dispatch
@pytest.mark.parametrize("name", list(CONFIGS))
def test_calls_from_several_threads_give_the_single_threaded_results(name):
    # Each thread runs the shared layers at its own batch sizes: prepared calls, the tuner's
    # first decisions and the kernels' thread pool are shared between them.
    model = _swapped(name)
    xs = {m: torch.randn(m, 64, generator=torch.Generator().manual_seed(m)) for m in (1, 5, 16, 40)}
    with torch.no_grad():
        expected = {m: model(x) for m, x in xs.items()}
    failures = []

    def work(tid):
        try:
            with torch.no_grad():
                for step in range(24):
                    m = list(xs)[(tid + step) % len(xs)]
                    out = model(xs[m])
                    if not torch.equal(out, expected[m]):
                        failures.append((tid, m, (out - expected[m]).abs().max().item()))
        except Exception as error:  # noqa: BLE001 - reported below with the thread's id
            failures.append((tid, repr(error)))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_graph_compiled_for_dynamic_batch_sizes_matches_eager(name):
    model = _swapped(name)
    # Graphs compiled by earlier tests count against dynamo's per-code-object recompile limit
    # (8), which fullgraph=True turns into an error: start from an empty cache.
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(model), dynamic=True, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for m in (3, 7, 1, 33):  # one graph with a symbolic M: the fake validates symbolic shapes
            x = torch.randn(m, 64)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_in_an_autocast_region_a_layer_computes_in_its_dtype_as_nn_linear_does(name):
    # torch.autocast("cpu") is how many CPU (and most GPU) inference servers run a model: the
    # original layers compute and return bf16 there, and so must the swapped ones, eagerly,
    # with a gradient recorded and compiled, each as the layer computes bf16 x outside it.
    torch.manual_seed(0)
    original = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64)).eval()
    model = _swapped(name)
    torch._dynamo.reset()
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 64)
    with torch.no_grad():
        expected = model(x.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert original(x).dtype == torch.bfloat16
            eager, graph = model(x), compiled(x)
    assert eager.dtype == graph.dtype == torch.bfloat16
    assert torch.equal(eager, expected)
    torch.testing.assert_close(graph, expected)
    xg = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(xg)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and xg.grad.dtype == torch.float32 and torch.isfinite(xg.grad).all()
    assert torch.equal(out.detach(), expected)
