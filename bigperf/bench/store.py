"""Benchmark records: versioned JSON with a machine fingerprint, and the history file.

A record is one suite run (one JSON document, `--out FILE`); the history is a JSON Lines
file with one record per line, appended to by every run, so that `bigperf bench plot`
can draw a kernel's speedup over commits. Records are checked on load: a file that is not
a record (or of a newer schema) gives a BenchFileError naming the file and the problem.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

import torch

from bigperf.tune import cpu_model

SCHEMA = "bigperf.bench"
SCHEMA_VERSION = 1
ROLES = ("baseline", "ours", "auto", "peer")  # see bigperf/bench/cases.py

_NUMBER = (int, float)
# field -> allowed types (None allowed where listed); what compare/plot rely on.
RESULT_FIELDS = {
    "key": (str,), "point": (str,), "layer": (str,), "m": (int,), "n": (int,), "k": (int,), "dtype": (str,),
    "variant": (str,), "name": (str,), "family": (str,), "role": (str,), "backend": (str, type(None)),
    "median_s": _NUMBER, "q1_s": _NUMBER, "q3_s": _NUMBER, "rounds": (int,),
    "speedup": _NUMBER, "speedup_q1": _NUMBER, "speedup_q3": _NUMBER,
}
# Optional fields (auto variants, merged runs) and what they must hold when present.
OPTIONAL_RESULT_FIELDS = {
    "speedup_vs_fastest": _NUMBER + (type(None),), "speedup_vs_fastest_q1": _NUMBER + (type(None),),
    "speedup_vs_fastest_q3": _NUMBER + (type(None),), "fastest_baseline": (str, type(None)),
    "speedup_runs": (list,),
}
SKIPPED_FIELDS = {"key": (str,), "reason": (str,)}
RECORD_FIELDS = {
    "schema": (str,), "version": (int,), "created": (str,), "suite": (str,), "device": (str,),
    "fingerprint": (dict,), "ceilings": (dict,), "results": (list,), "skipped": (list,),
}


class BenchFileError(ValueError):
    """A benchmark file that cannot be used; the message names the file and what is wrong."""


# ----------------------------------------------------------------------------- fingerprint

def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    # --no-optional-locks: a benchmark must not touch the index of the repository it measures.
    base = ["git", "--no-optional-locks", "-C", str(root)]
    try:
        sha = subprocess.run(base + ["rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(base + ["status", "--porcelain", "--untracked-files=no"],
                                check=False, capture_output=True, text=True, timeout=20)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": sha.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _gpu_info(device: torch.device) -> dict | None:
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    driver = None
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               check=False, capture_output=True, text=True, timeout=20)
        driver = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"name": props.name, "capability": f"{props.major}.{props.minor}", "memory_gb": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count, "driver": driver, "cuda_runtime": torch.version.cuda,
            "count": torch.cuda.device_count()}


def fingerprint(device: torch.device) -> dict:
    from bigperf import __version__, _ext

    module = _ext.cpu_module()
    try:
        isa = _ext.cpu_isa() if module is not None else None
    except RuntimeError:
        isa = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    features = dict(module.cpu_features()) if module is not None and hasattr(module, "cpu_features") else None
    fp = {
        "cpu": {
            # PyTorch's bf16 and int8 GEMMs run on AMX where it exists (oneDNN), so our speedups
            # over them there are not those of an AVX-512 CPU without it (Zen 4): its own kind.
            "model": cpu_model(), "arch": platform.machine(), "amx": bool(features and features.get("amx_tile")),
            "features": features,
            "runnable_isas": _ext.runnable_cpu_isas(), "isa": isa,
            "torch_capability": torch.backends.cpu.get_cpu_capability(),
            "logical_cores": os.cpu_count(), "usable_cores": usable, "torch_threads": torch.get_num_threads(),
            "memory_gb": round(memory / 2**30, 1),
        },
        "gpu": _gpu_info(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
                     "numpy": _version("numpy"), "bigperf": __version__},
        "git": _git_commit(),
        "os": f"{platform.system()} {platform.release()}",
    }
    fp["machine_kind"] = machine_kind(fp)
    return fp


def machine_kind(fp: dict) -> str:
    """What a baseline is valid for: ratios depend on the ISA path and cores, or on the GPU."""
    if fp.get("gpu"):
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", fp["gpu"]["name"].lower()).strip("-")
    cpu = fp["cpu"]
    isa = cpu.get("isa") or str(cpu.get("torch_capability") or cpu.get("arch")).lower()
    amx = "-amx" if cpu.get("amx") else ""  # (records from before the field: no AMX recorded)
    return f"cpu-{cpu.get('arch', 'unknown')}-{isa}{amx}-{cpu.get('torch_threads')}t"


# ----------------------------------------------------------------------------- records

def new_record(suite: str, device: torch.device, fp: dict, ceilings: dict, settings: dict) -> dict:
    return {"schema": SCHEMA, "version": SCHEMA_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "suite": suite, "device": device.type, "settings": settings, "fingerprint": fp,
            "ceilings": ceilings, "results": [], "skipped": [], "duration_s": None, "complete": False}


def _type_names(types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_fields(obj: dict, fields: dict, where: str) -> None:
    for name, types in fields.items():
        if name not in obj:
            raise BenchFileError(f"{where}: missing field '{name}'")
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise BenchFileError(f"{where}: field '{name}' must be {_type_names(types)}, got {type(value).__name__}")


def _check_fingerprint(fp: dict, where: str) -> None:
    """The fingerprint fields compare and plot read (each may be absent)."""
    for name, types in (("machine_kind", (str,)), ("versions", (dict,)), ("git", (dict, type(None)))):
        if name in fp and not isinstance(fp[name], types):
            raise BenchFileError(f"{where}: field '{name}' must be {_type_names(types)}, "
                                 f"got {type(fp[name]).__name__}")
    commit = (fp.get("git") or {}).get("commit")
    if commit is not None and not isinstance(commit, str):
        raise BenchFileError(f"{where}: field 'git.commit' must be str or null, got {type(commit).__name__}")


def validate_record(record, source: str) -> dict:
    """Returns the record if it is one this version reads; raises BenchFileError otherwise."""
    if not isinstance(record, dict):
        raise BenchFileError(f"{source}: a benchmark record is a JSON object, got {type(record).__name__}")
    if record.get("schema") != SCHEMA:
        raise BenchFileError(f"{source}: not a bigperf benchmark record (schema is {record.get('schema')!r}, "
                             f"expected {SCHEMA!r})")
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BenchFileError(f"{source}: field 'version' must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise BenchFileError(f"{source}: written with record version {version}; this bigperf reads up to "
                             f"{SCHEMA_VERSION} (upgrade bigperf)")
    _check_fields(record, RECORD_FIELDS, source)
    _check_fingerprint(record["fingerprint"], f"{source}: fingerprint")
    for i, skipped in enumerate(record["skipped"]):
        if not isinstance(skipped, dict):
            raise BenchFileError(f"{source}: skipped[{i}]: must be an object, got {type(skipped).__name__}")
        _check_fields(skipped, {k: t for k, t in SKIPPED_FIELDS.items() if k in skipped}, f"{source}: skipped[{i}]")
    keys = set()
    for i, result in enumerate(record["results"]):
        where = f"{source}: results[{i}]"
        if not isinstance(result, dict):
            raise BenchFileError(f"{where}: must be an object, got {type(result).__name__}")
        _check_fields(result, RESULT_FIELDS, where)
        _check_fields(result, {k: t for k, t in OPTIONAL_RESULT_FIELDS.items() if k in result}, where)
        if not all(isinstance(x, _NUMBER) and not isinstance(x, bool) for x in result.get("speedup_runs", [])):
            raise BenchFileError(f"{where}: field 'speedup_runs' must be a list of numbers")
        if result.get("speedup_vs_fastest") is not None and not all(
                isinstance(result.get(f"speedup_vs_fastest_{q}"), _NUMBER) for q in ("q1", "q3")):
            raise BenchFileError(f"{where}: fields 'speedup_vs_fastest_q1' and '_q3' must be numbers when "
                                 f"'speedup_vs_fastest' is")
        if result["role"] not in ROLES:
            raise BenchFileError(f"{where}: role must be one of {ROLES}, got {result['role']!r}")
        for name, value in result.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise BenchFileError(f"{where}: field '{name}' must be a finite number, got {value}")
        if not (result["median_s"] > 0 and result["speedup"] > 0 and result["rounds"] >= 1):
            raise BenchFileError(f"{where}: median_s, speedup and rounds must be positive")
        if not result["speedup_q1"] <= result["speedup"] <= result["speedup_q3"]:
            raise BenchFileError(f"{where}: speedup_q1 <= speedup <= speedup_q3 must hold, got "
                                 f"{result['speedup_q1']}, {result['speedup']}, {result['speedup_q3']}")
        if result["key"] in keys:
            raise BenchFileError(f"{where}: duplicate key {result['key']!r}")
        keys.add(result["key"])
    return record


def load_records(path: str | os.PathLike) -> list[dict]:
    """The records in a file: one JSON record, or a .jsonl history (one record per line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise BenchFileError(f"{path}: cannot read ({error.strerror or error})") from None
    if not text.strip():
        raise BenchFileError(f"{path}: the file is empty")
    if path.suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                records.append(validate_record(_parse(line, f"{path}:{lineno}"), f"{path}:{lineno}"))
        return records
    return [validate_record(_parse(text, str(path)), str(path))]


def load_record(path: str | os.PathLike) -> dict:
    """One record; for a history file, its newest (last) one."""
    return load_records(path)[-1]


def _parse(text: str, source: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BenchFileError(f"{source}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None


def save_record(record: dict, path: str | os.PathLike) -> Path:
    """Writes atomically: a reader never sees half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; records are meant to be shared and committed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def default_history_path() -> Path:
    env = os.environ.get("BIGPERF_BENCH_HISTORY")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "bigperf" / "bench-history.jsonl"


def append_history(record: dict, path: str | os.PathLike) -> Path:
    """One line per record, written with a single append (O_APPEND keeps concurrent runs' lines whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return path
