"""Loading of the compiled extensions and the CPU ISA choice.

Import failures are kept as reasons (strings), not raised: a missing extension makes a
backend unavailable, and `bigperf doctor` / the dispatch error say why.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
from functools import lru_cache
from pathlib import Path
from types import ModuleType

_BUILD_INFO_PATH = Path(__file__).with_name("_build_info.json")
_local = threading.local()
_best_isa: list[str] = []  # memo of the best runnable ISA (the CPU does not change)


@lru_cache(maxsize=None)
def _load(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(name), None
    except ImportError as error:
        return None, f"{name} is not importable ({error})"


def cpu_module() -> ModuleType | None:
    return _load("bigperf._C")[0]


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


# Read once at import: an environment lookup per kernel call costs microseconds.
_ENV_CPU_ISA = os.environ.get("BIGPERF_CPU_ISA", "").strip() or None


def cpu_isa() -> str:
    """The ISA path the CPU kernels use: use_cpu_isa() > $BIGPERF_CPU_ISA > best runnable."""
    forced = getattr(_local, "cpu_isa", None) or _ENV_CPU_ISA
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


@contextlib.contextmanager
def use_cpu_isa(isa: str):
    """Force one CPU ISA path (avx512, avx2, scalar) inside the block, in this thread."""
    if isa not in ("avx512", "avx2", "scalar"):
        raise ValueError(f"bigperf.use_cpu_isa: argument 'isa' must be avx512, avx2 or scalar, got {isa!r}")
    previous = getattr(_local, "cpu_isa", None)
    _local.cpu_isa = isa
    try:
        cpu_isa()  # refuse an ISA this CPU cannot run now, not at the first kernel call
        yield
    finally:
        _local.cpu_isa = previous
