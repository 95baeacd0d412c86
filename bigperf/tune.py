"""The measuring dispatcher: which candidate path runs a call, decided by timing it here.

Why: the fastest way to compute a layer depends on the machine (AVX2 vs AMX, which GEMM
torch links, the GPU), the thread count, the shape and the batch size M. A crossover
measured on one machine is wrong on another, so bigperf measures on the machine it runs on.

How: an op's backend table (bigperf/ops/registry.py) holds candidate paths — our kernels
and PyTorch's own paths for the same math (backend "torch"). For a call with more than one
eligible candidate, `choose` forms a key (op, candidate set, dtypes and shapes of the
arguments with M bucketed, threads, device) and
  - uses the choice stored for that key (in memory, loaded from the on-disk cache), or
  - times the candidates on the call's own inputs within a small budget and keeps the
    fastest, in memory (so a process never changes its mind) and in the tuning cache.
BIGPERF_TUNE=0 turns measuring off: our kernel at M = 1, PyTorch's path at M > 1.

The cache is JSON (never pickle) in $BIGPERF_CACHE_DIR or ~/.cache/bigperf, one section per
machine fingerprint (CPU model and ISA flags, GPU name and capability, torch and bigperf
versions, the build of the compiled modules). It is written atomically (temp file +
rename, under a lock file, merged with what other processes wrote); a corrupt or foreign
file is ignored and rewritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

import torch

from bigperf._files import write_atomically

CACHE_FORMAT = 1
CACHE_FILE = "tune.json"
# Lazy tuning of one key stops after this many seconds once every candidate has run
# MIN_ROUNDS times (a candidate several times slower than the best is dropped early).
DEFAULT_BUDGET_S = 0.25
MIN_ROUNDS = 3
MAX_ROUNDS = 15
DROP_FACTOR = 3.0
# A candidate is dropped on its fastest sample, and on one sample only if that lasted this
# long: a thread of a short call preempted by another process on a busy machine stretches the
# call to a scheduler time slice or a few (seen: 8 ms for a 0.1 ms W8A16 decode call while the
# test suite ran, which dropped our kernel after one round and persisted torch:fp32, 2x
# slower); a call this long is a large GEMM, which a time slice moves little.
LONE_SAMPLE_DROP_S = 0.05
# On a CPU the warm-up call counts as that sample: a path whose first call took this long and
# DROP_FACTOR times the fastest first call is not run again. (A CPU path's first-call costs —
# an allocation, page faults — are small beside such a call; a GPU path's first call may
# compile its kernel, so there the warm-up stays out.) Seen: fused bf16 4096x14336 at M = 2048
# on Zen 3, torch's bf16 GEMM (18 s a call, 7.8x) ran twice in a 62 s first call.
# Where the fastest path's first call took LONG_CALL_S or more, MIN_ROUNDS_LONG rounds decide:
# each sample then averages over a long call, which a time slice taken by another process
# moves little.
LONG_CALL_S = 0.5
MIN_ROUNDS_LONG = 2
# A path predicted (linearly, from a measured M of at least PREDICT_SKIP_FROM_M) this many
# times slower than a path already warmed up is not run. Not from smaller M: there a path's
# per-call constant (a weight materialised for PyTorch's GEMM) inflates the prediction (see
# measure). From M = 128 such constants are a fraction of the call, and a path 6x slower
# there does not become the fastest at 2048: where a GEMM's speed comes at large M (AMX's bf16
# on a Xeon), it was already 7x our kernel's at M = 128. Seen: torch's bf16 GEMM on Zen 3,
# 6.9x at M = 128, then 16 s of a 36 s first call at M = 2048.
PREDICT_SKIP_FROM_M = 128
PREDICT_SKIP_FACTOR = 2 * DROP_FACTOR
# A choice is not cached when another path's fastest call beat the chosen path's fastest by
# this factor: a near tie (a few percent either way) is no sign of disturbance, a 1.5x gap
# between the best calls of two paths whose medians ranked them the other way is.
UNSETTLED_FACTOR = 1.5
# Nor when, while measuring, some task on this machine waited for a CPU this fraction of the
# time (Linux's CPU pressure, /proc/pressure/cpu "some"): other processes held the cores, and
# a choice made then may suit that moment only (seen: a choice made while the test suite ran,
# cached, halved every later decode). Idle, this Zen 4 VM read 0-3 %, and a process measuring
# with as many threads as cores makes none itself; beside one busy process, ~100 %. (The
# process's own context switches were tried first and dropped: its own threads made them.)
BUSY_PRESSURE = 0.25
# Our kernel must beat PyTorch's fastest path by more than this to be chosen. Tuning times
# each path on one weight, call after call, where part of a weight larger than the cache
# stays cached; a model's layers read their weights cold. Measured on Zen 3 (1 thread,
# 4096x4096 fp32 at M = 1): tuning 2.65 vs 2.63 ms, cold 3.16 vs 2.86 ms — an 11 % swing
# toward our kernel. Again (3072x768 fp32 at M = 1, 1 thread, 2026-12-05): tuning with the
# cache swept saw our kernel 13 % faster (0.885 vs 1.019 ms), the benchmark's rotating cold
# copies 8-15 % slower (CI gate). The promise is "never slower than PyTorch": ties, and wins
# within that swing, go to PyTorch.
PREFER_TORCH_MARGIN = 0.15
# The swing is the weight's trip from memory, so it belongs to the rows where that trip is
# the cost (decode, M < PREDICT_FROM_M). From there up every weight is reused by M rows and
# the call is bound by arithmetic: cached or not moves it a few percent (768x3072 at M = 192:
# its 1.2-4.7 MB weight from memory ~0.1-0.5 ms of a ~3-11 ms GEMM), and the 15 % margin
# handed the encoder's FFN layers to torch:fp32 (bf16 weight converted per call, 1.10x
# F.linear) over a panel kernel at 1.00x. Above that M a near tie is within this margin,
# unless PyTorch's fastest path runs the weight as the layer holds it (Backend.as_held: the
# user's own layer, F.linear on an fp32 weight): our kernels are at parity with it there at
# best, and a near tie measured 0.94x in the CI gate.
PREFER_TORCH_MARGIN_COMPUTE_BOUND = 0.05
TORCH_PREFIX = "torch"
# Timings at M below this bucket are memory-bound and say little about larger M.
PREDICT_FROM_M = 16


def tuning_enabled() -> bool:
    return os.environ.get("BIGPERF_TUNE", "1").strip() not in ("0", "false", "off", "no")


def budget_s() -> float:
    try:
        return max(0.0, float(os.environ.get("BIGPERF_TUNE_BUDGET_S", DEFAULT_BUDGET_S)))
    except ValueError:
        return DEFAULT_BUDGET_S


def cache_dir() -> Path:
    explicit = os.environ.get("BIGPERF_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bigperf"


def cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def m_bucket(m: int) -> int:
    """1, 2, 4, 8, ... (the next power of two), capped at 8192: one tuning per regime."""
    if m <= 1:
        return 1
    return min(1 << (m - 1).bit_length(), 8192)


# ----------------------------------------------------------------------------- fingerprint

def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _build_id() -> str:
    """Changes whenever the compiled modules are rebuilt: their kernels' speed may change."""
    from bigperf import _ext
    parts = []
    for name in ("cpu_module", "cuda_module"):
        module = getattr(_ext, name)()
        path = getattr(module, "__file__", None) if module is not None else None
        if path:
            st = os.stat(path)
            parts.append(f"{Path(path).name}:{st.st_size}:{int(st.st_mtime)}")
    return ";".join(parts)


# Environment variables that cap the ISA of the libraries behind PyTorch's CPU GEMMs (oneDNN,
# MKL): with one set, torch's paths run other code at another speed on the same CPU.
LIBRARY_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_DEFAULT_FPMATH_MODE")


def machine_fingerprint() -> dict:
    """What the timings of a cache section hold for: the CPU and GPUs, the ISA paths our
    kernels and PyTorch's use (a decision taken against torch's AVX-512 GEMMs is wrong once
    they run their AVX2 code: ATEN_CPU_CAPABILITY, the library caps above, fp32 matmul
    precision), and the versions."""
    from bigperf import __version__, _ext
    cpu = _ext.cpu_module()
    features = cpu.cpu_features() if cpu is not None else {}
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(f"{p.name} sm_{p.major}{p.minor} {p.multi_processor_count}SM")
    return {
        "cpu": cpu_model(),
        "cpu_flags": sorted(k for k, v in features.items() if v),
        "cpu_isa": _ext.cpu_isa() if cpu is not None else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_fp32_matmul": torch.get_float32_matmul_precision(),
        "library_isa_env": {name: os.environ[name] for name in LIBRARY_ISA_ENV if os.environ.get(name)},
        "gpus": gpus,
        "torch": torch.__version__,
        "bigperf": __version__,
        "build": _build_id(),
    }


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the cache file

def _read_cache_file(path: Path) -> dict:
    """The file's sections, or {} when it is missing, corrupt or of another format."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("machines"), dict):
        return {}
    return {k: v for k, v in data["machines"].items()
            if isinstance(v, dict) and isinstance(v.get("choices"), dict)}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on a side file, so that read-merge-write cycles do not interleave.
    Best effort: where locking is impossible the atomic rename still keeps the file whole."""
    handle = None
    try:
        handle = open(path.with_suffix(".lock"), "a+")
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:
        pass
    try:
        yield
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def _write_cache_file(path: Path, fp_id: str, fingerprint: dict, choices: dict) -> None:
    """Merge our choices into the file's section for this machine and replace the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        machines = _read_cache_file(path)
        section = machines.setdefault(fp_id, {"fingerprint": fingerprint, "choices": {}})
        section["fingerprint"] = fingerprint
        section["choices"].update(choices)
        text = json.dumps({"format": CACHE_FORMAT, "machines": machines}, indent=1, sort_keys=True)
        write_atomically(path, lambda temp: Path(temp).write_text(text))


# ----------------------------------------------------------------------------- keys

def call_key(op_name: str, candidate_ids: tuple[str, ...], args: tuple) -> tuple:
    """What identifies a call for tuning: the op, its eligible candidates, and per argument
    its dtype and shape (the first argument is x: its leading dims become an M bucket),
    the device and the thread count. A tuple: cheap to build and hash on every call."""
    x = args[0]
    shape = x.shape
    m = 1
    for d in shape[:-1]:
        m *= d
    parts: list = [op_name, candidate_ids, (x.dtype, shape[-1] if shape else 0, m_bucket(m), x.device.type)]
    for a in args[1:]:
        if isinstance(a, torch.Tensor):
            parts.append((a.dtype, a.shape))
        elif a is None or isinstance(a, (bool, int, float, str)):
            parts.append(a)
        else:
            parts.append(type(a).__name__)
    parts.append(torch.get_num_threads())
    return tuple(parts)


def key_text(key: tuple) -> str:
    """The key as the cache file spells it (stable across processes)."""
    def text(part) -> str:
        if isinstance(part, torch.dtype):
            return str(part).replace("torch.", "")
        if isinstance(part, torch.Size):
            return "[" + ",".join(map(str, part)) + "]"
        if isinstance(part, tuple):
            return "(" + ",".join(text(p) for p in part) + ")"
        return repr(part) if isinstance(part, str) and part and not part.isidentifier() else str(part)
    return " ".join(text(p) for p in key)


def m_of(args: tuple) -> int:
    x = args[0]
    return math.prod(x.shape[:-1]) if isinstance(x, torch.Tensor) and x.dim() > 1 else 1


# ----------------------------------------------------------------------------- measuring

@dataclass
class Measurement:
    choice: str
    times_s: dict[str, float]            # median per candidate that finished
    dropped: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not kept
    seconds: float = 0.0                 # what the measuring cost
    # Why the choice holds for this process only (the cache file does not keep it), or None:
    # a path the medians did not choose ran, at its fastest, UNSETTLED_FACTOR times faster
    # than the chosen one did at its fastest (disturbances decided), or the CPU pressure while
    # measuring passed BUSY_PRESSURE.
    unsettled: str | None = None

    @property
    def settled(self) -> bool:
        return self.unsettled is None


def _cpu_pressure_line() -> str | None:
    """Linux PSI's "some avg10=.. avg60=.. avg300=.. total=.." line for CPUs, or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return f.readline()
    except OSError:
        return None


def cpu_pressure_us() -> int | None:
    """Microseconds, since boot, that some task waited for a CPU (Linux PSI), or None."""
    try:
        return int(_cpu_pressure_line().rsplit("total=", 1)[1])
    except (AttributeError, ValueError, IndexError):
        return None


def cpu_pressure_recent() -> float | None:
    """The fraction of the last 10 s that some task waited for a CPU (PSI's avg10), or None."""
    try:
        return float(_cpu_pressure_line().split("avg10=", 1)[1].split()[0]) / 100
    except (AttributeError, ValueError, IndexError):
        return None


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    if device.type == "cuda":
        def timed_cuda(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return timed_cuda

    def timed_cpu(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return timed_cpu


def _cache_flusher(device: torch.device, args: tuple) -> Callable[[], object] | None:
    """A call that evicts the CPU's last-level cache, when the call's tensors would otherwise
    stay in it from one timed call to the next: a model's layers find their weights cold
    (each layer's weight was pushed out by the others), so a path must be timed that way.
    Measured on Zen 3 (32 MiB L3, 768x3072 fp32 at M = 1): our kernel looked faster than
    F.linear timed back to back, and was 5-8 % slower with the weights cold."""
    if device.type != "cpu" or os.environ.get("BIGPERF_TUNE_COLD", "1") == "0":
        return None
    from bigperf.bench.harness import last_level_cache_bytes

    llc = last_level_cache_bytes(device)
    data = sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor))
    if data >= 2 * llc:
        return None  # the call's own data evicts it already
    sweep = torch.empty((3 * llc) // 8, dtype=torch.float32)  # 1.5x the cache, written each time
    return lambda: sweep.fill_(1.0)


def _as_called(candidate, args: tuple) -> Callable[[], object]:
    """The candidate's call on args as a layer makes it: a path that binds its arguments
    (Backend.bind) is timed as the runner a prepared call keeps (ops/prepared.py), without
    the per-call work the binding does once."""
    runner, x = candidate.runner(*args[1:]), args[0]
    return lambda: runner(x)


@torch.no_grad()  # inference is timed: a call that records a gradient selects its path here too
def measure(candidates: Sequence, args: tuple, budget: float | None = None,
            predicted: dict[str, float] | None = None, floors: dict[str, float] | None = None,
            predicted_from: dict[str, int] | None = None) -> Measurement:
    """Times each candidate's call on args (_as_called) in interleaved rounds and names the fastest.

    A candidate that raises is dropped with its error (the others still compete); one
    whose first timed run (on a CPU, already its warm-up call, where that is long) is
    DROP_FACTOR times the best so far stops being timed: at a large M a wrong path costs
    seconds per call, and it cannot win. `predicted` (seconds
    per call, scaled linearly from a smaller M of the same shape) orders the warm-up;
    `floors` (the same candidates' times at that smaller M: a call never gets cheaper with
    more rows) skip a candidate whose floor is DROP_FACTOR times one already run, before
    it costs a call. Not the linear prediction from a small M (predicted_from: the M each
    prediction scales from, under PREDICT_SKIP_FROM_M): a path whose cost is mostly a per-call
    constant (a weight materialised for PyTorch's GEMM) is predicted far slower than it is.
    """
    budget = budget_s() if budget is None else budget
    predicted = predicted or {}
    floors = floors or {}
    predicted_from = predicted_from or {}
    device = args[0].device if isinstance(args[0], torch.Tensor) else torch.device("cpu")
    timed = _timer(device)
    pressure_before = cpu_pressure_us() if device.type == "cpu" else None
    started = time.perf_counter()
    samples: dict[str, list[float]] = {}
    calls: dict[str, Callable[[], object]] = {}
    dropped: dict[str, str] = {}
    live = []
    best_warm = math.inf
    warm: dict[str, float] = {}
    order = sorted(candidates, key=lambda c: predicted.get(c.id, math.inf))  # stable: priority order otherwise
    for c in order:  # warm-up: first-call costs (allocation, JIT, page faults) stay out
        floor = floors.get(c.id)
        if floor is not None and floor > DROP_FACTOR * best_warm:
            dropped[c.id] = f"{floor / best_warm:.1f}x the fastest already at a smaller M"
            continue
        guess, from_m = predicted.get(c.id), predicted_from.get(c.id, 0)
        if from_m >= PREDICT_SKIP_FROM_M and guess is not None and guess > PREDICT_SKIP_FACTOR * best_warm:
            dropped[c.id] = f"predicted {guess / best_warm:.1f}x the fastest from M = {from_m}"
            continue
        try:
            call = _as_called(c, args)
            warm[c.id] = timed(call)
            best_warm = min(best_warm, warm[c.id])
        except Exception as error:  # noqa: BLE001 - a failing candidate must not fail the call
            dropped[c.id] = f"raised {type(error).__name__}: {error}"
            # Said aloud: a path that cannot run a call it called eligible is a bug to fix.
            warnings.warn(f"bigperf.tune: path {c.id} raised while being timed and was left out: "
                          f"{type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)
            continue
        samples[c.id] = []
        calls[c.id] = call
        live.append(c)
    if device.type == "cpu":  # a first call far slower than the fastest one is the only one
        for c in list(live):
            if len(live) > 1 and warm[c.id] >= LONE_SAMPLE_DROP_S and warm[c.id] > DROP_FACTOR * best_warm:
                live.remove(c)
                samples[c.id] = [warm[c.id]]  # its time, for the report and as a floor at larger M
                dropped[c.id] = f"{warm[c.id] / best_warm:.1f}x the fastest (its first call)"
    min_rounds = MIN_ROUNDS_LONG if best_warm >= LONG_CALL_S else MIN_ROUNDS
    rounds = 0
    flush = _cache_flusher(device, args)
    while live and rounds < MAX_ROUNDS:
        order = live if rounds % 2 == 0 else list(reversed(live))  # alternate: no position bias
        for c in order:
            if flush is not None:
                flush()
            samples[c.id].append(timed(calls[c.id]))
        rounds += 1
        best = min(statistics.median(samples[c.id]) for c in live)
        for c in list(live):
            fastest = min(samples[c.id])
            if (len(live) > 1 and fastest > DROP_FACTOR * best
                    and (len(samples[c.id]) >= 2 or fastest >= LONE_SAMPLE_DROP_S)):
                live.remove(c)
                dropped[c.id] = f"{fastest / best:.1f}x the fastest"
        if rounds >= min_rounds and time.perf_counter() - started > budget:
            break
    times = {cid: statistics.median(ts) for cid, ts in samples.items() if ts}
    if not times:
        raise RuntimeError("bigperf.tune.measure: every candidate failed:\n" +
                           "\n".join(f"  {k}: {v}" for k, v in dropped.items()))
    held = {c.id for c in candidates if getattr(c, "as_held", None) is not None and c.as_held(*args)}
    live_ids = {c.id for c in live}
    choice = choose({cid: t for cid, t in times.items() if cid in live_ids}, m_of(args), held)
    fastest = {cid: min(samples[cid]) for cid in live_ids}
    seconds = time.perf_counter() - started
    pressure_after = cpu_pressure_us() if pressure_before is not None else None
    busy = None if pressure_after is None else (pressure_after - pressure_before) / 1e6 / max(seconds, 1e-9)
    unsettled = None
    if busy is not None and busy > BUSY_PRESSURE:
        unsettled = f"CPU pressure {busy:.0%}"
    elif min(fastest.values()) * UNSETTLED_FACTOR < fastest[choice]:
        unsettled = "disturbed calls decided"
    return Measurement(choice, times, dropped, seconds, unsettled=unsettled)


def tie_margin(m: int, as_held: bool = False) -> float:
    """How much faster than PyTorch's fastest path our kernel must be at M rows to be chosen;
    as_held: that path runs the weight as the layer holds it (Backend.as_held)."""
    return PREFER_TORCH_MARGIN if m < PREDICT_FROM_M or as_held else PREFER_TORCH_MARGIN_COMPUTE_BOUND


def choose(times: dict[str, float], m: int = 1, held: Collection[str] = ()) -> str:
    """The path to use given each candidate's median time at M = m rows: the fastest, except
    that a torch path within tie_margin of a faster kernel of ours wins the tie (`held`: the
    torch paths that run the weight as the layer holds it)."""
    choice = min(times, key=times.__getitem__)
    if not choice.startswith(TORCH_PREFIX):
        fastest_torch = min((cid for cid in times if cid.startswith(TORCH_PREFIX)), key=times.__getitem__,
                            default=None)
        margin = tie_margin(m, fastest_torch in held)
        if fastest_torch is not None and times[fastest_torch] <= (1 + margin) * times[choice]:
            choice = fastest_torch
    return choice


# ----------------------------------------------------------------------------- the dispatcher state

@dataclass
class Decision:
    choice: str
    source: str                           # "measured", "cache", "default", "only" (or "measured, unsettled ...")
    times_s: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class Tuner:
    """Choices per call key for this process; loads and writes the cache file."""

    def __init__(self):
        self._lock = threading.RLock()
        self._decisions: dict[tuple, Decision] = {}      # by call_key: what this process uses
        self._from_file: dict[str, Decision] = {}        # by key_text: the cache file's section
        self._loaded_from: Path | None = None
        self._fingerprint: dict | None = None
        self._fp_id: str | None = None

    # -- cache file
    def _ensure_loaded(self) -> None:
        path = cache_path()
        if self._loaded_from == path:
            return
        self._fingerprint = machine_fingerprint()
        self._fp_id = fingerprint_id(self._fingerprint)
        section = _read_cache_file(path).get(self._fp_id, {})
        self._from_file = {}
        for text, entry in section.get("choices", {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("choice"), str):
                times = entry.get("times_s") if isinstance(entry.get("times_s"), dict) else {}
                self._from_file[text] = Decision(entry["choice"], "cache", times)
        self._loaded_from = path

    def _persist(self, key: str, decision: Decision) -> None:
        entry = {"choice": decision.choice, "times_s": decision.times_s, "when": int(time.time())}
        try:
            _write_cache_file(cache_path(), self._fp_id, self._fingerprint, {key: entry})
        except OSError:
            pass  # an unwritable cache costs a re-tune next time, never the call

    # -- choosing
    def decide(self, op_name: str, candidates: Sequence, args: tuple) -> Decision:
        """The decision for this call among `candidates` (already known eligible)."""
        ids = tuple(c.id for c in candidates)
        if len(ids) == 1:
            return Decision(ids[0], "only")
        key = call_key(op_name, ids, args)
        decision = self._decisions.get(key)
        if decision is not None:
            return decision
        with self._lock:
            self._ensure_loaded()
            text = key_text(key)
            decision = self._decisions.get(key) or self._from_file.get(text)
            if decision is not None and decision.choice in ids:
                self._decisions[key] = decision
                return decision
            if not tuning_enabled():
                decision = Decision(default_choice(candidates, args), "default")
            else:
                predicted, floors, from_m = self._predict(key)
                result = measure(candidates, args, predicted=predicted, floors=floors, predicted_from=from_m)
                source = "measured" if result.settled else f"measured, unsettled (not cached; {result.unsettled})"
                decision = Decision(result.choice, source, result.times_s, result.seconds)
                if result.settled:
                    self._persist(text, decision)
            self._decisions[key] = decision
            return decision

    def _predict(self, key: tuple) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
        """Per candidate: its seconds per call at this key's M scaled linearly, the floor (the
        time measured), and the M measured, from the largest smaller M bucket (>= PREDICT_FROM_M,
        where GEMMs are compute-bound and time grows with M) that timed it, for the same op,
        shape and dtypes in this process (a path skipped at one M is still predicted at the next)."""
        x_part = key[2]
        seen: dict[str, tuple[int, float]] = {}
        for other, decision in self._decisions.items():
            o = other[2]
            if (len(other) == len(key) and other[:2] == key[:2] and other[3:] == key[3:]
                    and o[:2] == x_part[:2] and o[3:] == x_part[3:] and PREDICT_FROM_M <= o[2] < x_part[2]):
                for cid, t in decision.times_s.items():
                    if cid not in seen or o[2] > seen[cid][0]:
                        seen[cid] = (o[2], t)
        predicted = {cid: t * x_part[2] / m for cid, (m, t) in seen.items()}
        return predicted, {cid: t for cid, (m, t) in seen.items()}, {cid: m for cid, (m, t) in seen.items()}

    def decisions(self) -> dict[str, Decision]:
        return {key_text(k): d for k, d in self._decisions.items()}

    def forget(self) -> None:
        """Drop what this process decided and reload the cache on next use (tests, `bigperf tune`)."""
        global generation
        with self._lock:
            generation += 1
            self._decisions.clear()
            self._from_file.clear()
            self._loaded_from = None
            for memo in _MEMOS:
                memo.clear()


def default_choice(candidates: Sequence, args: tuple) -> str:
    """Without measuring: our kernel for one row (memory-bound, where it wins everywhere
    it was measured), PyTorch's first path for more (the safe choice on an unknown machine)."""
    if m_of(args) > 1:
        for c in candidates:
            if c.name == "torch":
                return c.id
    return candidates[0].id


TUNER = Tuner()
_MEMOS: list[dict] = []  # the op tables' per-call memos of TUNER's choices
# How many times forget() ran: prepared calls (ops/prepared.py) key on it, so they select again
# after it. Read as tune.generation (a module attribute, not a call: it is read on every call).
generation = 0


def register_memo(memo: dict) -> dict:
    """An op table's memo of choices, cleared whenever the tuner forgets."""
    _MEMOS.append(memo)
    return memo


def decisions() -> dict[str, Decision]:
    """Every key this process has decided, with how (for reports and `bigperf doctor`)."""
    return TUNER.decisions()


def forget() -> None:
    TUNER.forget()
