"""Build of the two raw-pointer extension modules.

bigperf._C       C++ CPU kernels. One translation unit per ISA (``*_avx512.cpp``,
                 ``*_avx2.cpp``, ``*_scalar.cpp``), each compiled with its own target
                 flags; the module picks one at import by CPU feature detection.
bigperf._C_cuda  CUDA kernels (csrc/cuda/*.cu) compiled by nvcc, one -gencode per arch,
                 linked against the static CUDA runtime so that it imports on machines
                 without a GPU or a driver.

Neither includes torch headers nor links libtorch (see docs/ARCHITECTURE.md). Environment knobs:
  BIGPERF_CUDA=auto|0|1       build _C_cuda when nvcc is found (auto), never, or always
  BIGPERF_CUDA_ARCHS="80;90a" -gencode targets
  BIGPERF_NVCC=/path/to/nvcc  which nvcc to use (default: $CUDA_HOME/bin/nvcc, then PATH)
  BIGPERF_BUILD_JOBS=N        parallel nvcc processes (default: one per CPU)
  BIGPERF_SANITIZE=address,undefined  build _C with these sanitizers (`make test-sanitize`
                              builds it out of tree, see the Makefile; never for a wheel)
"""

import concurrent.futures
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
VERSION = "0.1.0"
IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

# Target flags per ISA translation unit. Never -march=native: the wheel must run on
# other CPUs, and the runtime dispatch decides what actually executes.
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni",
               "-mavx512bf16", "-mfma", "-mf16c", "-mavx2"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "scalar": [],
}
ISAS = ["avx512", "avx2", "scalar"] if IS_X86 else ["scalar"]


def isa_of(source: str) -> str:
    stem = Path(source).stem
    for isa in ISA_FLAGS:
        if stem.endswith("_" + isa):
            return isa
    return ""


def cpu_sources() -> list[str]:
    sources = []
    for path in sorted((ROOT / "csrc" / "cpu").glob("*.cpp")):
        isa = isa_of(str(path))
        if isa and isa not in ISAS:
            continue  # e.g. AVX files on aarch64
        sources.append(str(path.relative_to(ROOT)))
    # The module file plus one binding file per op family.
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "bindings").glob("cpu_*.cpp"))
    return sources


def find_nvcc() -> str | None:
    explicit = os.environ.get("BIGPERF_NVCC")
    if explicit:
        return explicit
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_cuda_home(nvcc: str) -> Path:
    """The toolkit root holding include/cuda_runtime.h and the static runtime library."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  str(Path(nvcc).resolve().parent.parent), "/usr/local/cuda"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "include" / "cuda_runtime.h").exists():
            return Path(candidate)
    raise RuntimeError(f"found nvcc at {nvcc} but no CUDA toolkit with include/cuda_runtime.h; set CUDA_HOME")


def cuda_archs() -> list[str]:
    raw = os.environ.get("BIGPERF_CUDA_ARCHS", "80;90a")
    return [a.strip() for a in raw.replace(",", ";").split(";") if a.strip()]


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def compiler_version(cmd: str) -> str:
    try:
        out = subprocess.run([cmd, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else "unknown"
    except OSError:
        return "unknown"


class BuildExt(build_ext):
    """build_ext with per-ISA flags, nvcc for .cu files, and build metadata."""

    def build_extensions(self):
        self.build_info = {
            "version": VERSION,
            "machine": platform.machine(),
            "cxx": compiler_version(os.environ.get("CXX", "c++")),
            "cpu_isa_paths": ISAS,
            "cuda_built": False,
            "cuda_archs": [],
            "cuda_ptx_archs": [],
            "nvcc": None,
            "cuda_skip_reason": None,
        }
        original_compile = self.compiler._compile

        def compile_with_isa_flags(obj, src, ext, cc_args, extra_postargs, pp_opts):
            flags = list(extra_postargs) + ISA_FLAGS.get(isa_of(src), [])
            return original_compile(obj, src, ext, cc_args, flags, pp_opts)

        self.compiler._compile = compile_with_isa_flags
        cuda = [e for e in self.extensions if e.name == "bigperf._C_cuda"]
        if cuda and not self.prepare_cuda(cuda[0]):
            self.extensions.remove(cuda[0])  # nothing to build, nothing to copy in place
        super().build_extensions()
        self.write_build_info()

    def prepare_cuda(self, ext) -> bool:
        """Compile the .cu files with nvcc into objects that the C++ link picks up."""
        mode = os.environ.get("BIGPERF_CUDA", "auto").lower()
        nvcc = find_nvcc()
        if mode == "0":
            self.build_info["cuda_skip_reason"] = "BIGPERF_CUDA=0"
            return False
        if nvcc is None:
            if mode == "1":
                raise RuntimeError("BIGPERF_CUDA=1 but nvcc was not found (set CUDA_HOME or BIGPERF_NVCC)")
            self.build_info["cuda_skip_reason"] = "nvcc not found at build time"
            print("bigperf: nvcc not found, skipping bigperf._C_cuda", file=sys.stderr)
            return False
        cuda_home = find_cuda_home(nvcc)
        archs = cuda_archs()
        gencode = []
        for arch in archs:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        # PTX of the lowest portable arch as well, so that GPUs newer than every listed
        # arch (whose SASS we do not ship) can JIT the kernels instead of failing.
        portable = sorted((a for a in archs if a.isdigit()), key=int)[:1]
        for arch in portable:
            gencode += ["-gencode", f"arch=compute_{arch},code=compute_{arch}"]
        # The module reports both (compiled_archs, compiled_ptx_archs): the ops' why-not
        # answers compare them with the GPU's compute capability.
        archs_defines = ['-DBIGPERF_CUDA_ARCHS_STR="' + ";".join(archs) + '"',
                         '-DBIGPERF_CUDA_PTX_ARCHS_STR="' + ";".join(portable) + '"']
        obj_dir = Path(self.build_temp) / "cuda"
        obj_dir.mkdir(parents=True, exist_ok=True)
        commands, objects = [], []
        for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
            obj = obj_dir / (source.stem + ".o")
            commands.append([nvcc, "-c", str(source), "-o", str(obj), "-O3", "-std=c++17",
                             "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr", "-lineinfo",
                             "-I", str(ROOT / "csrc"), *archs_defines,
                             *gencode])
            objects.append(str(obj))
        # One nvcc per translation unit, in parallel: ptxas runs single-threaded per file
        # and arch, so a serial build leaves all but one core idle for minutes.
        jobs = int(os.environ.get("BIGPERF_BUILD_JOBS", "0")) or os.cpu_count() or 1
        for cmd in commands:
            print(" ".join(cmd), file=sys.stderr)
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for result in pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), commands):
                sys.stderr.write(result.stdout + result.stderr)
                if result.returncode:
                    raise subprocess.CalledProcessError(result.returncode, result.args)
        ext.extra_objects = objects
        ext.include_dirs.append(str(cuda_home / "include"))
        ext.library_dirs.append(str(cuda_home / "lib64"))
        # Static runtime: the module imports without libcudart.so or a driver present.
        ext.libraries += ["cudart_static", "dl", "rt", "pthread"]
        self.build_info.update(cuda_built=True, cuda_archs=archs, cuda_ptx_archs=portable,
                               nvcc=nvcc_version(nvcc))
        return True

    def write_build_info(self):
        # Beside the extension modules: in the build tree (wheels) and, for in-place and
        # editable builds, in the source package that Python imports from.
        targets = [Path(self.get_ext_fullpath("bigperf._C")).parent / "_build_info.json"]
        if self.inplace or getattr(self, "editable_mode", False):
            targets.append(ROOT / "bigperf" / "_build_info.json")
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(self.build_info, indent=2))


def sanitizer_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags for BIGPERF_SANITIZE, e.g. "address,undefined": every UB report
    aborts (no recovery), so a test run under it fails on the first one."""
    sanitizers = os.environ.get("BIGPERF_SANITIZE", "").strip()
    if not sanitizers:
        return [], []
    compile_flags = [f"-fsanitize={sanitizers}", "-fno-omit-frame-pointer", "-g", "-O1"]
    if "undefined" in sanitizers:
        # -fno-wrapv undoes Python's -fwrapv (sysconfig CFLAGS), under which a signed
        # overflow in index arithmetic is defined and UBSan would never see it.
        compile_flags += ["-fno-sanitize-recover=undefined", "-fno-wrapv"]
    return compile_flags, [f"-fsanitize={sanitizers}"]


SANITIZE_COMPILE, SANITIZE_LINK = sanitizer_flags()

cpu_ext = Pybind11Extension(
    "bigperf._C",
    cpu_sources(),
    include_dirs=["csrc"],
    cxx_std=17,
    # (the sanitizer flags come last: their -O1 overrides -O3, for readable reports)
    extra_compile_args=["-O3", "-fno-math-errno", *SANITIZE_COMPILE],
    extra_link_args=["-pthread", *SANITIZE_LINK],
    libraries=["dl"],  # dlopen/dlsym: adopting torch's OpenMP runtime (csrc/cpu/thread_pool.h)
    define_macros=[("BIGPERF_X86", "1")] if IS_X86 else [],
)

# The .cu files hold the kernels and their launchers (nvcc, above); kernel_plans.cpp the
# host-only validation and planning, which the tests' emulator module links as well
# (tests/cuda_emulators.py). The host emulators themselves are test code: not in here.
cuda_ext = Pybind11Extension(
    "bigperf._C_cuda",
    ["csrc/bindings/cuda_module.cpp", "csrc/cuda/kernel_plans.cpp"],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O2"],
)

# Guarded so that the tests can import this file for find_nvcc (tests/cuda_emulators.py);
# pip's build backend and `python setup.py ...` run it as __main__.
if __name__ == "__main__":
    setup(ext_modules=[cpu_ext, cuda_ext], cmdclass={"build_ext": BuildExt})
