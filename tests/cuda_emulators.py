"""The tests' own module of CUDA host emulators (`_cuda_emulators`), built on demand.

The emulators (tests/csrc/cuda_emulation) run the CUDA kernels' index maps on the CPU;
they are test code, so bigperf._C_cuda does not carry them (issue #12). This module
compiles them, with csrc/cuda/kernel_plans.cpp (the launchers' validation and planning)
and the shared binding code, into a pybind11 module, once per content: the build lands
in a folder named by the hash of every source, header, flag and tool version that goes
into it, under $BIGPERF_TEST_BUILD_DIR (default build/test-ext in the repository), so
later runs only import it. Concurrent test processes serialise on a lock file; a build
is moved into place only when complete.

Only nvcc's host side is used (``-x c++``, no device passes, ~30 s on 2 cores the first
time): it brings the CUDA headers the emulators need (cuda_fp16.h, cuda_bf16.h). No GPU,
driver or CUDA build of bigperf is needed.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import functools
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
EMULATION = ROOT / "tests" / "csrc" / "cuda_emulation"
NAME = "_cuda_emulators"
FLAGS = ["-x", "c++", "-O2", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden"]


class Unavailable(RuntimeError):
    """No toolchain to build the emulators with (the reason is the message)."""


def find_nvcc() -> str | None:
    """The nvcc the package build would use ($BIGPERF_NVCC, $CUDA_HOME/bin, PATH): setup.py's own lookup."""
    spec = importlib.util.spec_from_file_location("_bigperf_setup", ROOT / "setup.py")
    setup_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_py)
    return setup_py.find_nvcc()


def sources() -> list[Path]:
    return sorted(EMULATION.glob("*.cpp")) + [ROOT / "csrc" / "cuda" / "kernel_plans.cpp"]


def _inputs() -> list[Path]:
    """Every file whose content the build depends on."""
    headers = [*EMULATION.glob("*.h"), *(ROOT / "csrc" / "cuda").glob("*.h"),
               ROOT / "csrc" / "bindings" / "cuda_host_api.h"]
    return sources() + sorted(headers)


def _include_dirs() -> list[str]:
    import pybind11

    return [str(ROOT / "csrc"), str(EMULATION), pybind11.get_include(), sysconfig.get_paths()["include"]]


def build_dir(nvcc: str) -> Path:
    digest = hashlib.sha256()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    for part in (version, " ".join(FLAGS), " ".join(_include_dirs()), sysconfig.get_config_var("EXT_SUFFIX")):
        digest.update(part.encode())
    for path in _inputs():
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    root = Path(os.environ.get("BIGPERF_TEST_BUILD_DIR") or ROOT / "build" / "test-ext")
    return root / f"{NAME}-{digest.hexdigest()[:16]}"


def _compile(nvcc: str, out_dir: Path) -> Path:
    includes = [arg for d in _include_dirs() for arg in ("-I", d)]
    commands = [[nvcc, *FLAGS, *includes, "-c", str(src), "-o", str(out_dir / (src.stem + ".o"))]
                for src in sources()]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for result in pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), commands):
            if result.returncode:
                raise RuntimeError(f"building {NAME} failed: {' '.join(result.args)}\n{result.stdout}{result.stderr}")
    library = out_dir / (NAME + sysconfig.get_config_var("EXT_SUFFIX"))
    link = [nvcc, "-shared", "--cudart", "none", *(c[-1] for c in commands), "-o", str(library)]
    result = subprocess.run(link, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"linking {NAME} failed: {' '.join(link)}\n{result.stdout}{result.stderr}")
    return library


@functools.cache
def load() -> ModuleType:
    """The emulator module, built first if this content has not been built before.

    Raises Unavailable without nvcc, RuntimeError (with the compiler's output) when the
    build fails.
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise Unavailable("nvcc not found ($BIGPERF_NVCC, $CUDA_HOME/bin, PATH): the CUDA host emulators "
                          "need the CUDA headers")
    target = build_dir(nvcc)
    library = target / (NAME + sysconfig.get_config_var("EXT_SUFFIX"))
    if not library.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not library.exists():  # another process may have built it meanwhile
                staging = target.with_name(target.name + f".tmp{os.getpid()}")
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir()
                _compile(nvcc, staging)
                os.replace(staging, target)
    spec = importlib.util.spec_from_file_location(NAME, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.setdefault(NAME, module)
    return module
