"""Loading of the compiled extensions and the CPU ISA choice.

Import failures are kept as reasons (strings), not raised: a missing extension makes a
backend unavailable, and `bigperf doctor` / the dispatch error say why.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from types import ModuleType

_BUILD_INFO_PATH = Path(__file__).with_name("_build_info.json")


class _ThreadState(threading.local):
    cpu_isa: str | None = None  # use_cpu_isa's forced path in this thread (a class default: read on every call)


_local = _ThreadState()
_best_isa: list[str] = []  # memo of the best runnable ISA (the CPU does not change)


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(name), None
    except ImportError as error:
        return None, f"{name} is not importable ({error})"


def cpu_module() -> ModuleType | None:
    module = _load("bigperf._C")[0]
    if module is not None and not _threads_chosen:
        _choose_thread_runtime(module)
    return module


def cpu_unavailable_reason() -> str | None:
    return _load("bigperf._C")[1]


def cuda_module() -> ModuleType | None:
    return _load("bigperf._C_cuda")[0]


def cuda_unavailable_reason() -> str | None:
    """Why bigperf._C_cuda cannot run kernels here, or None if it can."""
    module, reason = _load("bigperf._C_cuda")
    if module is None:
        info = build_info()
        if info.get("cuda_skip_reason"):
            return f"bigperf._C_cuda was not built: {info['cuda_skip_reason']}"
        return reason
    if module.device_count() == 0:
        return "bigperf._C_cuda is built but sees no CUDA device/driver"
    return None


@lru_cache(maxsize=None)
def build_info() -> dict:
    try:
        return json.loads(_BUILD_INFO_PATH.read_text())
    except (OSError, ValueError):
        return {}


def runnable_cpu_isas() -> list[str]:
    module = cpu_module()
    return list(module.runnable_isas()) if module is not None else []


# ----------------------------------------------------------------------------- threads

# Where the CPU kernels run their parallel regions (csrc/cpu/thread_pool.h): "openmp" (the
# default) adopts the OpenMP runtime torch has loaded, so that torch's spin-waiting worker
# threads run our chunks instead of competing with a pool of our own; "own" keeps that pool.
_ENV_THREADS = os.environ.get("BIGPERF_THREADS", "openmp").strip().lower() or "openmp"
_OPENMP_LIBRARY = re.compile(r"lib(gomp|iomp5|omp)([-.][^/]*)?\.so[.0-9]*$")
_threads_chosen: list[str] = []


def _loaded_openmp_runtimes() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process, torch's first."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(maxsplit=5)[5].strip() for line in maps if "/" in line and ".so" in line}
    except (OSError, IndexError):
        return []
    found = sorted(p for p in paths if _OPENMP_LIBRARY.search(os.path.basename(p)))
    return sorted(found, key=lambda p: "torch" not in p)


def _choose_thread_runtime(module: ModuleType) -> None:
    _threads_chosen.append(_ENV_THREADS)
    if _ENV_THREADS == "own":
        return
    import torch  # noqa: F401  (its OpenMP runtime must be loaded before we look for it)

    for path in _loaded_openmp_runtimes():
        if module.adopt_openmp_runtime(path):
            return


def thread_runtime() -> str:
    """'own' (bigperf's thread pool) or the path of torch's OpenMP runtime the CPU kernels use."""
    module = cpu_module()
    return module.thread_runtime() if module is not None else "none (bigperf._C not built)"


# Read once at import: an environment lookup per kernel call costs microseconds.
_ENV_CPU_ISA = os.environ.get("BIGPERF_CPU_ISA", "").strip() or None


def cpu_isa() -> str:
    """The ISA path the CPU kernels use: use_cpu_isa() > $BIGPERF_CPU_ISA > best runnable."""
    forced = _local.cpu_isa or _ENV_CPU_ISA
    if forced is None and _best_isa:
        return _best_isa[0]  # the common case, kept cheap: it runs on every kernel call
    runnable = runnable_cpu_isas()
    if not runnable:
        raise RuntimeError(f"bigperf: CPU kernels unavailable: {cpu_unavailable_reason()}")
    if forced is None:
        _best_isa.append(runnable[0])
        return runnable[0]
    if forced not in runnable:
        raise ValueError(
            f"bigperf: CPU ISA '{forced}' (from use_cpu_isa or BIGPERF_CPU_ISA) cannot run here; "
            f"runnable: {runnable}")
    return forced


def forced_cpu_isa() -> str | None:
    """The ISA path use_cpu_isa forces in this thread, or None (cheap: the selection memo of
    every op call reads it)."""
    return _local.cpu_isa


@contextlib.contextmanager
def use_cpu_isa(isa: str):
    """Force one CPU ISA path (avx512, avx2, scalar) inside the block, in this thread."""
    if isa not in ("avx512", "avx2", "scalar"):
        raise ValueError(f"bigperf.use_cpu_isa: argument 'isa' must be avx512, avx2 or scalar, got {isa!r}")
    previous = _local.cpu_isa
    _local.cpu_isa = isa
    try:
        cpu_isa()  # refuse an ISA this CPU cannot run now, not at the first kernel call
        yield
    finally:
        _local.cpu_isa = previous
