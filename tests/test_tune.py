"""The measuring dispatcher (bigperf/tune.py) and its tuning cache.

Candidates here are planted paths with a known cost (they sleep), not mocks of the timer:
what is measured is real time, as in use.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest
import torch

import bigperf
from bigperf import tune
from bigperf.ops.registry import OpBackends


REAL_BUSY_PRESSURE = tune.BUSY_PRESSURE  # own_cache (tests/conftest.py) turns the rule off


@pytest.fixture(autouse=True)
def _own_cache(own_cache, monkeypatch):
    monkeypatch.setenv("BIGPERF_TUNE_BUDGET_S", "0.05")
    return own_cache


def _sleeper(seconds, calls=None):
    def run(x, *rest):
        if calls is not None:
            calls.append(seconds)
        time.sleep(seconds)
        return x
    return run


def _table(costs: dict[str, float], name="bigperf.test_planted", calls=None) -> OpBackends:
    table = OpBackends(name)
    for bid, cost in costs.items():
        backend, _, variant = bid.partition(":")
        table.register(backend, lambda *a: None, _sleeper(cost, calls), variant=variant)
    return table


def _x(m=4, k=8):
    return torch.zeros(m, k)


def test_picks_the_planted_fast_candidate_and_ignores_the_slow_one():
    # Costs 8-15x apart: a sleep overshoots by scheduler latency on a loaded machine.
    table = _table({"cpu": 0.03, "torch:fp32": 0.002, "torch:bf16": 0.016})
    assert table.select(_x()).id == "torch:fp32"
    decision = next(d for k, d in tune.decisions().items() if "test_planted" in k)
    assert decision.source == "measured"
    assert decision.times_s["torch:fp32"] < decision.times_s["cpu"]


def test_fast_kernel_wins_too():
    table = _table({"cpu": 0.002, "torch:fp32": 0.03})
    assert table.select(_x()).id == "cpu"


def test_a_binding_path_is_timed_as_the_runner_a_layer_keeps():
    # cpu's binding costs 30 ms once, its runner 2 ms a call; torch:fp32 costs 16 ms a call.
    # A prepared call (ops/prepared.py) binds once, so cpu is the faster path for a layer.
    table = _table({"torch:fp32": 0.016})
    run_x = _sleeper(0.002)

    def bind(*rest):
        time.sleep(0.03)
        return run_x
    table.register("cpu", lambda *a: None, lambda x, *rest: bind(*rest)(x), bind=bind)
    assert table.select(_x()).id == "cpu"


def test_candidates_are_timed_without_recording_gradients():
    # A grad-enabled layer call selects its path before its autograd.Function runs: a torch
    # path timed then would record a graph each call and be charged for it.
    grad_seen = []

    def run(x, *rest):
        grad_seen.append(torch.is_grad_enabled())
        return x
    table = _table({"cpu": 0.002})
    table.register("torch", lambda *a: None, run, variant="fp32")
    with torch.enable_grad():
        table.select(_x())
    assert grad_seen and not any(grad_seen)


def test_a_candidate_that_raises_is_dropped_not_fatal():
    table = _table({"cpu": 0.001})

    def broken(*args):
        raise RuntimeError("planted failure")
    table.register("torch", lambda *a: None, broken, variant="fp32")
    with pytest.warns(RuntimeWarning, match="torch:fp32 raised"):
        assert table.select(_x()).id == "cpu"


def test_the_same_call_keeps_its_path_within_a_process():
    calls = []
    table = _table({"cpu": 0.002, "torch:fp32": 0.03}, calls=calls)
    first = table.select(_x(m=3))
    n_calls = len(calls)
    for _ in range(5):
        assert table.select(_x(m=4)) is first  # same M bucket (4)
    assert len(calls) == n_calls, "a decided call must not be measured again"


def test_m_buckets_are_tuned_separately():
    table = _table({"cpu": 0.001, "torch:fp32": 0.002})
    table.select(_x(m=1))
    table.select(_x(m=100))
    keys = [k for k in tune.decisions() if "test_planted" in k]
    assert len(keys) == 2 and any("128" in k for k in keys)


def test_measuring_off_uses_safe_defaults(monkeypatch):
    monkeypatch.setenv("BIGPERF_TUNE", "0")
    calls = []
    table = _table({"cpu": 0.001, "torch:fp32": 0.001}, calls=calls)
    assert table.select(_x(m=1)).id == "cpu"
    assert table.select(_x(m=16)).id == "torch:fp32"
    assert calls == [], "nothing may be timed with BIGPERF_TUNE=0"


def test_forced_backend_restricts_the_candidates():
    table = _table({"cpu": 0.03, "torch:fp32": 0.002})
    with bigperf.use_backend("cpu"):
        assert table.select(_x()).id == "cpu"


def test_reference_runs_only_when_nothing_else_can():
    table = OpBackends("bigperf.test_reference_last")
    table.register("cpu", lambda *a: "not built", _sleeper(0))
    table.register("reference", lambda *a: None, _sleeper(0))
    assert table.select(_x()).id == "reference"


# ----------------------------------------------------------------------------- the cache file

def _cache_file(tmp):
    return tmp / tune.CACHE_FILE


def test_cache_round_trip(own_cache):
    table = _table({"cpu": 0.03, "torch:fp32": 0.002})
    table.select(_x())
    data = json.loads(_cache_file(own_cache).read_text())
    assert data["format"] == tune.CACHE_FORMAT
    (section,) = data["machines"].values()
    assert section["fingerprint"]["torch"] == torch.__version__
    assert any(e["choice"] == "torch:fp32" for e in section["choices"].values())

    tune.forget()  # a new process: the choice comes from the file, nothing is timed
    calls = []
    table2 = _table({"cpu": 0.0, "torch:fp32": 0.0}, calls=calls)
    assert table2.select(_x()).id == "torch:fp32"
    assert calls == []
    decision = next(d for k, d in tune.decisions().items() if "test_planted" in k)
    assert decision.source == "cache"


@pytest.mark.parametrize("content", ["{not json", "", "\x00\xff", json.dumps({"format": 99, "machines": {}}),
                                     json.dumps([1, 2]), json.dumps({"format": 1, "machines": {"x": 3}})])
def test_corrupt_or_foreign_cache_is_ignored_and_rewritten(own_cache, content):
    _cache_file(own_cache).write_text(content, errors="surrogateescape")
    table = _table({"cpu": 0.03, "torch:fp32": 0.002})
    assert table.select(_x()).id == "torch:fp32"
    data = json.loads(_cache_file(own_cache).read_text())
    assert data["format"] == tune.CACHE_FORMAT and len(data["machines"]) == 1


def test_a_changed_fingerprint_ignores_stale_entries(own_cache, monkeypatch):
    _table({"cpu": 0.03, "torch:fp32": 0.002}).select(_x())
    tune.forget()
    real = tune.machine_fingerprint()
    monkeypatch.setattr(tune, "machine_fingerprint", lambda: {**real, "cpu": "another CPU"})
    # On the "other machine" the kernel is the fast one: a stale entry would say torch.
    table = _table({"cpu": 0.002, "torch:fp32": 0.03})
    assert table.select(_x()).id == "cpu"
    data = json.loads(_cache_file(own_cache).read_text())
    assert len(data["machines"]) == 2  # the first machine's section is kept, not clobbered


@pytest.mark.parametrize("change", ["torch capability", "library cap", "fp32 matmul precision"])
def test_pytorchs_own_isa_is_part_of_the_machine(own_cache, monkeypatch, change):
    # The same CPU with PyTorch's GEMMs on other code (ATEN_CPU_CAPABILITY=avx2, a oneDNN or
    # MKL cap, TF32-like fp32 matmuls): decisions timed against the old torch paths are stale.
    # Seen on Zen 4: with torch capped to AVX2, entries tuned against its AVX-512 bf16 GEMM
    # kept a layer on torch:bf16 at 0.24-0.39x of the fastest path.
    before = tune.fingerprint_id(tune.machine_fingerprint())
    if change == "torch capability":
        # A capability other than this machine's own (an AVX2-only CPU already reads "AVX2").
        other = "DEFAULT" if torch.backends.cpu.get_cpu_capability() == "AVX2" else "AVX2"
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    elif change == "library cap":
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    else:
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    assert tune.fingerprint_id(tune.machine_fingerprint()) != before


def test_an_unwritable_cache_costs_nothing_but_the_file(own_cache, monkeypatch):
    blocker = own_cache / "file-not-dir"
    blocker.write_text("")
    monkeypatch.setenv("BIGPERF_CACHE_DIR", str(blocker))
    table = _table({"cpu": 0.03, "torch:fp32": 0.002})
    assert table.select(_x()).id == "torch:fp32"


def _write_many(args):
    directory, writer, count = args
    os.environ["BIGPERF_CACHE_DIR"] = directory
    path = tune.cache_path()
    for i in range(count):
        tune._write_cache_file(path, "machine", {"cpu": "test"}, {f"w{writer}-k{i}": {"choice": "cpu"}})
    return True


def test_concurrent_writers_lose_nothing_and_leave_valid_json(own_cache):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        assert all(pool.map(_write_many, [(str(own_cache), w, 25) for w in range(2)]))
    data = json.loads(_cache_file(own_cache).read_text())
    choices = data["machines"]["machine"]["choices"]
    assert len(choices) == 50
    assert not [p for p in own_cache.iterdir() if p.name.startswith(".tune-")], "temp files left behind"


def test_cache_file_gets_the_users_umask(own_cache):
    old = os.umask(0o022)
    try:
        _table({"cpu": 0.02, "torch:fp32": 0.0}).select(_x())  # a clear winner: an unsettled one is not cached
    finally:
        os.umask(old)
    assert _cache_file(own_cache).stat().st_mode & 0o777 == 0o644


def test_m_bucket():
    assert [tune.m_bucket(m) for m in (0, 1, 2, 3, 4, 5, 16, 17, 128, 129, 100000)] == \
        [1, 1, 2, 4, 4, 8, 16, 32, 128, 256, 8192]


def test_a_new_weight_at_a_freed_weights_address_is_decided_anew():
    """The per-call memo keys on the weight object's id(); a freed tensor's id() is reused,
    and the new weight (another format, another speed) must get its own decision."""
    table = _table({"cpu": 0.002, "torch:fp32": 0.03})
    w_old = torch.zeros(3)
    assert table.select(_x(), w_old).id == "cpu"
    (key_old, (_, chosen)), = table._chosen.items()
    w_new = torch.zeros(5)
    # What the memo would hold for w_new had w_old been freed at its address: its key, a dead ref.
    table._chosen[key_old[:4] + (id(w_new), key_old[5], (w_new.dtype, w_new.shape))] = (lambda: None, chosen)
    Backend = type(chosen)
    table.backends["cpu"] = Backend("cpu", lambda *a: None, _sleeper(0.03))
    table.backends["torch:fp32"] = Backend("torch", lambda *a: None, _sleeper(0.002), "fp32")
    assert table.select(_x(), w_new).id == "torch:fp32"


def test_a_path_predicted_slow_from_a_smaller_m_is_not_run():
    """At a large M a wrong path costs seconds per call: once M = 16 has shown a path 8x
    slower, M = 128 predicts it (linearly) and skips it without calling it."""
    calls = []
    table = _table({"cpu": 0.002, "torch:bf16": 0.03}, calls=calls)
    table.select(_x(m=16))
    assert 0.03 in calls
    calls.clear()
    assert table.select(_x(m=128)).id == "cpu"
    assert 0.03 not in calls, "the predicted-slow path was still run"
    assert calls, "the predicted-fast path must still be measured"


def test_a_path_with_a_constant_cost_is_not_skipped_by_the_linear_prediction():
    """PyTorch's path on a packed weight costs mostly its materialisation, the same at any
    M: 4x the kernel at M = 16 but 0.5x at M = 128, where the kernel's time grew 8-fold. A
    linear prediction (32x) would skip it; the floor (its M = 16 time) must not."""
    def kernel(x, *rest):
        time.sleep(0.0005 * x.shape[0] / 16)  # grows with M
        return x
    table = _table({"torch:bf16": 0.002})
    table.register("cpu", lambda *a: None, kernel)
    assert table.select(_x(m=16)).id == "cpu"
    assert table.select(_x(m=128)).id == "torch:bf16"


def test_predictions_never_come_from_one_row_timings():
    calls = []
    table = _table({"cpu": 0.002, "torch:bf16": 0.03}, calls=calls)
    table.select(_x(m=1))
    calls.clear()
    table.select(_x(m=64))
    assert 0.03 in calls, "memory-bound one-row timings must not rule out a path at larger M"


def test_a_near_tie_goes_to_pytorch():
    """Our kernel must win by more than the margin: tuning runs warmer than a model does.
    (The rule on given times: sleeps are too noisy on a loaded machine for a 5 % difference.)"""
    margin = tune.PREFER_TORCH_MARGIN
    assert tune.choose({"cpu": 1.0, "torch:fp32": 1.0 + margin / 2, "torch:bf16": 3.0}) == "torch:fp32"
    assert tune.choose({"cpu": 1.0, "torch:fp32": 1.0 + 2 * margin}) == "cpu"
    assert tune.choose({"cpu": 1.0, "cuda": 0.5, "torch:fp32": 0.52}) == "torch:fp32"
    assert tune.choose({"cpu": 1.0}) == "cpu" and tune.choose({"torch:fp32": 2.0, "cpu": 1.0}) == "cpu"
    # Bound by arithmetic (M >= PREDICT_FROM_M), where cached or cold weights move a call a
    # few percent only, the margin is the smaller one.
    small = tune.PREFER_TORCH_MARGIN_COMPUTE_BOUND
    assert small < margin
    between = {"cpu:panel": 1.0, "torch:fp32": 1.0 + (small + margin) / 2}
    assert tune.choose(between, m=1) == "torch:fp32"
    assert tune.choose(between, m=tune.PREDICT_FROM_M) == "cpu:panel"
    assert tune.choose({"cpu:panel": 1.0, "torch:fp32": 1.0 + small / 2}, m=192) == "torch:fp32"
    # Unless PyTorch's fastest path is the layer's own F.linear on its weight as held.
    assert tune.choose(between, m=192, held={"torch:fp32"}) == "torch:fp32"
    assert tune.choose(between, m=192, held={"torch:bf16"}) == "cpu:panel"


def test_torch_paths_know_whether_they_run_the_weight_as_held():
    """F.linear on the layer's own float weight (or its opted-in float copy) is as held; a
    weight converted, dequantised or unpacked per call is not, nor a call that casts x in and
    the output back."""
    from bigperf.ops.fused_linear import BACKENDS as FUSED
    from bigperf.ops.int8_linear import WEIGHT_ONLY_BACKENDS as INT8

    x = torch.randn(32, 8)
    fp32_args = (x, torch.randn(4, 8), None, None, "none")
    bf16_args = (x, torch.randn(4, 8).bfloat16(), None, None, "none")
    assert FUSED.backends["torch:fp32"].as_held(*fp32_args)
    assert not FUSED.backends["torch:fp32"].as_held(*bf16_args)
    assert not FUSED.backends["torch:bf16"].as_held(*bf16_args)  # fp32 x: cast in and out
    bf16_x_args = (x.bfloat16(), *bf16_args[1:])
    assert FUSED.backends["torch:bf16"].as_held(*bf16_x_args)
    assert FUSED.backends["torch:copy"].as_held(*bf16_args)
    assert INT8.backends["torch:fp32"].as_held is None
    assert FUSED.backends["cpu:panel"].as_held is None
    table = _table({"cpu": 0.002, "torch:fp32": 0.03}, name="bigperf.test_clear_win")
    assert table.select(_x()).id == "cpu"


def test_small_weights_are_timed_cold(monkeypatch):
    """A weight that fits the cache would stay in it between timed calls; a model reads it cold."""
    from bigperf.bench.harness import last_level_cache_bytes

    small = (torch.zeros(4, 8), torch.zeros(16, 8))
    flush = tune._cache_flusher(torch.device("cpu"), small)
    assert flush is not None
    flush()
    huge = torch.empty(0).new_empty((2 * last_level_cache_bytes(torch.device("cpu"))) // 4 + 1)
    assert tune._cache_flusher(torch.device("cpu"), (torch.zeros(1, 8), huge)) is None
    monkeypatch.setenv("BIGPERF_TUNE_COLD", "0")
    assert tune._cache_flusher(torch.device("cpu"), small) is None


def test_a_weight_given_other_data_of_another_form_is_decided_anew():
    """`w.data = other` keeps the object (and its id()); with another dtype or shape the path
    timed for the old form must not be reused."""
    table = _table({"cpu": 0.002, "torch:fp32": 0.03})
    w = torch.zeros(3)
    assert table.select(_x(), w).id == "cpu"
    w.data = torch.zeros(7, dtype=torch.float64)
    Backend = type(table.backends["cpu"])
    table.backends["cpu"] = Backend("cpu", lambda *a: None, _sleeper(0.03))
    table.backends["torch:fp32"] = Backend("torch", lambda *a: None, _sleeper(0.002), "fp32")
    assert table.select(_x(), w).id == "torch:fp32"


def _by_call(costs_per_call: list[float], then: float):
    """A planted path whose n-th call sleeps costs_per_call[n] (then `then`): a kernel whose
    threads another process preempted on some calls, with a known cost otherwise."""
    calls = []

    def run(x, *rest):
        calls.append(1)
        n = len(calls) - 1
        time.sleep(costs_per_call[n] if n < len(costs_per_call) else then)
        return x
    return run


def test_one_disturbed_sample_does_not_drop_the_fastest_path(own_cache):
    """Our path's first timed call is stretched (40 ms, over 3x the other path's 12 ms): one
    sample drops nothing, and its later calls (1 ms) win; the choice is settled and cached.
    (Costs in milliseconds: a sleep on a loaded machine overshoots by a few.)"""
    table = _table({"torch:fp32": 0.012})
    table.register("cpu", lambda *a: None, _by_call([0.001, 0.040], then=0.001))  # warm-up, then the spike
    assert table.select(_x()).id == "cpu"
    decision = next(d for k, d in tune.decisions().items() if "test_planted" in k)
    assert decision.source == "measured"
    (section,) = json.loads(_cache_file(own_cache).read_text())["machines"].values()
    assert [e["choice"] for e in section["choices"].values()] == ["cpu"]


def test_a_choice_that_disturbances_decided_is_not_cached(own_cache):
    """Our path runs 1 ms, but most of its calls are stretched to 40 ms: by the medians
    PyTorch's steady 12 ms path wins, by each path's fastest call ours does, by far. Which
    one is right depends on the moment; this process uses the medians' choice and the cache
    file keeps nothing, so the next process measures again."""
    table = _table({"torch:fp32": 0.012})
    table.register("cpu", lambda *a: None, _by_call([0.001, 0.001], then=0.040))
    assert table.select(_x()).id == "torch:fp32"
    decision = next(d for k, d in tune.decisions().items() if "test_planted" in k)
    assert decision.source.startswith("measured, unsettled")
    assert not _cache_file(own_cache).exists() or not any(
        section["choices"] for section in json.loads(_cache_file(own_cache).read_text())["machines"].values())


def test_a_choice_measured_under_cpu_pressure_is_not_cached(own_cache, monkeypatch):
    """Linux's CPU pressure while measuring (planted: tasks waited for a CPU 100 % of the
    time): the choice holds for this process only, and says why."""
    clock = iter(range(0, 10**13, 10**7))  # each read 10 s of waiting after the last
    monkeypatch.setattr(tune, "cpu_pressure_us", lambda: next(clock))
    monkeypatch.setattr(tune, "BUSY_PRESSURE", REAL_BUSY_PRESSURE)
    _table({"cpu": 0.002, "torch:fp32": 0.012}).select(_x())
    decision = next(d for k, d in tune.decisions().items() if "test_planted" in k)
    assert decision.choice == "cpu" and "CPU pressure" in decision.source, decision
    assert not _cache_file(own_cache).exists()


def _busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.skipif(tune.cpu_pressure_us() is None, reason="this kernel reports no CPU pressure (/proc/pressure/cpu)")
def test_busy_processes_beside_the_measurement_keep_it_out_of_the_cache(own_cache, monkeypatch):
    """Busy processes, one more than the cores: the choice measured then is not cached;
    measured again once they are gone, it is."""
    monkeypatch.setattr(tune, "BUSY_PRESSURE", REAL_BUSY_PRESSURE)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    hogs = [multiprocessing.get_context("spawn").Process(target=_busy, args=(20,)) for _ in range(cores + 1)]
    for hog in hogs:
        hog.start()
    try:
        time.sleep(1.0)  # (the hogs' interpreters start)
        _table({"cpu": 0.002, "torch:fp32": 0.012}).select(_x())
        decision = next(d for k, d in tune.decisions().items() if "test_planted" in k)
        assert "CPU pressure" in decision.source, decision
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()
    assert not _cache_file(own_cache).exists()
    for _ in range(20):  # the machine settles (within seconds, unless a neighbour keeps it busy)
        time.sleep(0.5)
        tune.forget()
        _table({"cpu": 0.002, "torch:fp32": 0.012}).select(_x())
        decision = next(d for k, d in tune.decisions().items() if "test_planted" in k)
        if decision.source == "measured":
            break
    assert decision.source == "measured" and _cache_file(own_cache).exists(), decision


def test_cpu_pressure_reads_psi_or_says_it_cannot(monkeypatch):
    monkeypatch.setattr(tune, "_cpu_pressure_line", lambda: "some avg10=37.50 avg60=2.62 avg300=2.38 total=2618262738\n")
    assert tune.cpu_pressure_us() == 2618262738 and tune.cpu_pressure_recent() == 0.375
    monkeypatch.setattr(tune, "_cpu_pressure_line", lambda: None)
    assert tune.cpu_pressure_us() is None and tune.cpu_pressure_recent() is None


def test_a_first_call_far_slower_than_the_fastest_is_its_only_call_on_a_cpu():
    """At a large M a wrong path costs seconds per call (torch's bf16 GEMM on an AVX2 CPU, 18 s
    at 4096x14336, M = 2048): its warm-up call already shows it 3x slower, and it is not run
    again; its time is kept (a floor at larger M)."""
    calls = []
    table = _table({"cpu": 0.01, "torch:bf16": 0.08}, calls=calls)
    assert table.select(_x()).id == "cpu"
    assert calls.count(0.08) == 1, calls
    assert calls.count(0.01) >= 1 + tune.MIN_ROUNDS
    decision = next(d for k, d in tune.decisions().items() if "test_planted" in k)
    assert decision.times_s["torch:bf16"] >= 0.08


def test_a_slow_first_call_short_of_the_drop_threshold_is_timed_again():
    """A first call under LONE_SAMPLE_DROP_S may be a time slice lost to another process:
    it does not drop a path alone."""
    calls = []
    table = _table({"cpu": 0.002, "torch:bf16": 0.02}, calls=calls)
    table.select(_x())
    assert calls.count(0.02) >= 2


def test_long_calls_are_decided_in_fewer_rounds(monkeypatch):
    """From LONG_CALL_S a call averages over its own length: MIN_ROUNDS_LONG rounds after
    the warm-up, not MIN_ROUNDS."""
    monkeypatch.setattr(tune, "LONG_CALL_S", 0.01)
    calls = []
    table = _table({"cpu": 0.015, "torch:fp32": 0.02}, calls=calls)
    assert table.select(_x()).id == "cpu"
    assert calls.count(0.015) == 1 + tune.MIN_ROUNDS_LONG < 1 + tune.MIN_ROUNDS, calls


def _growing(per_row_s, calls=None, tag=None):
    """A planted path whose call grows with M, as a compute-bound GEMM's does."""
    def run(x, *rest):
        if calls is not None:
            calls.append((tag, x.shape[0]))
        time.sleep(per_row_s * x.shape[0])
        return x
    return run


def test_a_path_predicted_far_slower_from_m_128_is_not_run_at_larger_m():
    """torch's bf16 GEMM on an AVX2 CPU: ~7x our kernel at M = 128, 16 s a call at M = 2048.
    Predicted from M = 128 (and from there on, from the largest M that timed it) it is not run."""
    calls = []
    table = OpBackends("bigperf.test_planted_growing")
    table.register("cpu", lambda *a: None, _growing(0.00003, calls, "cpu"))
    table.register("torch", lambda *a: None, _growing(0.00025, calls, "bf16"), variant="bf16")
    assert table.select(_x(m=128)).id == "cpu"
    assert ("bf16", 128) in calls  # timed where it was measured
    calls.clear()
    assert table.select(_x(m=256)).id == "cpu"
    assert table.select(_x(m=512)).id == "cpu"
    assert not [c for c in calls if c[0] == "bf16"], calls
    decision = next(d for k, d in tune.decisions().items() if "growing" in k and "512" in k)
    assert "torch:bf16" not in decision.times_s


def test_a_path_predicted_far_slower_from_a_small_m_is_still_run():
    """From M = 16 the linear prediction may be a per-call constant scaled up: not a reason
    to skip a path. 8x slower at M = 16, its floor there is under 3x our path's time at
    M = 64 (so the floor rule keeps it), its prediction over 6x: it is still run."""
    calls = []
    table = OpBackends("bigperf.test_planted_small_m")
    table.register("cpu", lambda *a: None, _growing(0.00003, calls, "cpu"))
    table.register("torch", lambda *a: None, _growing(0.00025, calls, "bf16"), variant="bf16")
    table.select(_x(m=16))
    calls.clear()
    table.select(_x(m=64))
    assert ("bf16", 64) in calls
