"""Ahead-of-time compilation of bigperf's Triton kernels, without a GPU.

Every kernel module in this package describes the variants it can launch as a list of
:class:`KernelSpec` returned by a module-level ``aot_specs()``; :func:`all_specs` finds those
modules by walking the package, so a new kernel module (int8, sparse) is covered as soon as
it defines ``aot_specs()``. :func:`compile_spec` lowers one spec for one target (sm_80,
sm_90a) to PTX and cubin, and :func:`sass` disassembles the cubin with the ``cuobjdump``
that ships inside triton's wheel. No CUDA driver is touched.

Only APIs present in triton 3.6 are used (the H200 machine runs 3.6): ``ASTSource(fn,
signature, constexprs, attrs)``, ``triton.compile(src, target=..., options=...)`` and
``GPUTarget``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

# The two targets bigperf ships for (matching BIGPERF_CUDA_ARCHS' default "80;90a").
# Capability 90 is compiled as sm_90a by triton, which is what enables wgmma.
TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90a": GPUTarget("cuda", 90, 32)}

# Opt-in shared memory per block: A100 (sm_80) 163 KiB, H100/H200 (sm_90) 227 KiB. A config
# whose compiled kernel needs more can never launch there.
SMEM_LIMIT_BYTES = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}

# Tensor-core instruction families, as they appear in PTX and in SASS.
PTX_MARKERS = {"wgmma": "wgmma.mma_async", "mma": "mma.sync"}
SASS_MARKERS = {"wgmma": "HGMMA", "mma": "HMMA"}
# int8 tensor-core instructions carry an I where the float ones carry an H (IMMA.16832.S8,
# IGMMA.64x128x32.S8); their PTX names are the same as the float ones'.
SASS_MARKERS_INT8 = {"wgmma": "IGMMA", "mma": "IMMA"}


def sass_markers(spec: "KernelSpec") -> dict:
    """The SASS names of the tensor-core instruction families for ``spec``'s operands."""
    return SASS_MARKERS_INT8 if spec.mma_operand == "s8" else SASS_MARKERS


@dataclass(frozen=True)
class KernelSpec:
    """One compilable variant of a @triton.jit kernel.

    signature: every non-constexpr argument -> triton type string ("*fp16", "i32");
        arguments listed in ``constexprs`` are added as "constexpr" automatically.
    constexprs: constexpr arguments, plus runtime ints the JIT would specialise (a stride
        of 1 on contiguous tensors, a None pointer for an absent bias).
    divisible_by_16: arguments the JIT would mark 16-divisible for aligned tensors and
        sizes; without the hint loads are not vectorised and the code is not what runs.
    tensor_core: per target name, the instruction family the kernel must use ("wgmma",
        "mma"), or None when it must use no tensor-core instruction at all (an fp32 IEEE
        GEMM silently running on TF32 would be a precision bug); targets left out are not
        checked (kernels without a dot).
    mma_operand: PTX operand type the tensor-core instructions must name ("f16", "bf16",
        "tf32"), when tensor_core asks for one.
    """

    name: str
    fn: Callable
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 3
    divisible_by_16: tuple = ()
    tensor_core: dict = field(default_factory=dict)
    mma_operand: str | None = None

    def full_signature(self) -> dict:
        sig = dict(self.signature)
        for k in self.constexprs:
            sig[k] = "constexpr"
        missing = [a for a in self.fn.arg_names if a not in sig]
        if missing:
            raise ValueError(f"KernelSpec {self.name}: no type for arguments {missing}")
        # triton binds arguments by position: keep the kernel's order.
        return {a: sig[a] for a in self.fn.arg_names}


@dataclass
class Compiled:
    spec: KernelSpec
    target: str
    ptx: str
    cubin: bytes
    shared_bytes: int
    num_warps: int


def kernel_modules() -> list:
    """Modules of this package that define ``aot_specs()``."""
    pkg = importlib.import_module(__package__)
    mods = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name == "aot":
            continue
        mod = importlib.import_module(f"{__package__}.{info.name}")
        if callable(getattr(mod, "aot_specs", None)):
            mods.append(mod)
    return mods


def jit_kernels(module) -> list:
    """The @triton.jit entry kernels a module defines (named ``_*_kernel`` by convention)."""
    return [
        obj for name, obj in vars(module).items()
        if isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel")
        and getattr(obj, "__module__", module.__name__) == module.__name__
    ]


def all_specs() -> list:
    specs = []
    for mod in kernel_modules():
        specs.extend(mod.aot_specs())
    names = [s.name for s in specs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"duplicate KernelSpec names: {sorted(dup)}")
    return specs


def representative_specs(specs: list) -> list:
    """A subset that still covers every kernel and every instruction family it is built
    for: per kernel function, the first variant plus the first one for each distinct
    tensor-core expectation (e.g. a wgmma tile and an IEEE fp32 one). What CI compiles by
    default: the full set takes minutes on 2 cores (BIGPERF_AOT_ALL=1 runs it)."""
    chosen, seen = [], set()
    for spec in specs:
        key = (id(spec.fn), tuple(sorted((t, str(v)) for t, v in spec.tensor_core.items())))
        if key not in seen:
            seen.add(key)
            chosen.append(spec)
    return chosen


def compile_spec(spec: KernelSpec, target: str) -> Compiled:
    """Compile ``spec`` for ``target`` ("sm_80" or "sm_90a") to PTX and cubin."""
    fn = spec.fn
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.divisible_by_16}
    src = ASTSource(fn, spec.full_signature(), dict(spec.constexprs), attrs)
    # enable_fp_fusion=True is what the JIT does by default (and silences triton 3.9's
    # warning about that default changing in 3.10).
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages,
               "enable_fp_fusion": True}
    kernel = triton.compile(src, target=TARGETS[target], options=options)
    return Compiled(
        spec=spec,
        target=target,
        ptx=kernel.asm["ptx"],
        cubin=kernel.asm["cubin"],
        shared_bytes=int(kernel.metadata.shared),
        num_warps=int(kernel.metadata.num_warps),
    )


def cuobjdump_path() -> str | None:
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    return shutil.which("cuobjdump")


def sass(cubin: bytes) -> str:
    """Disassemble a cubin (raises FileNotFoundError when no cuobjdump is available)."""
    tool = cuobjdump_path()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found in triton's wheel or on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([tool, "-sass", str(path)], check=True, capture_output=True,
                              text=True).stdout


def ptx_target(ptx: str) -> str | None:
    m = re.search(r"^\s*\.target\s+(\S+)", ptx, re.MULTILINE)
    return m.group(1).rstrip(",") if m else None


# ---------------------------------------------------------------------------------------
# Batch compilation in worker processes
# ---------------------------------------------------------------------------------------
# One compile is 1-10 s of single-threaded MLIR + ptxas work, so the batch is spread over
# fresh interpreter processes (no fork of a process that may hold torch/OpenMP or MLIR
# threads). Each worker writes <name>.<target>.{ptx,cubin,sass,json} into a directory;
# the same entry point dumps artifacts for inspection: python -m bigperf.kernels.aot --out D


def _file_stem(name: str, target: str) -> str:
    return f"{name.replace('/', '__')}.{target}"


def _compile_shard(out_dir: Path, shard: int, num_shards: int, want_sass: bool) -> None:
    jobs = [(s, t) for s in all_specs() for t in TARGETS]
    for spec, target in jobs[shard::num_shards]:
        c = compile_spec(spec, target)
        stem = out_dir / _file_stem(spec.name, target)
        stem.with_suffix(stem.suffix + ".ptx").write_text(c.ptx)
        stem.with_suffix(stem.suffix + ".cubin").write_bytes(c.cubin)
        if want_sass and cuobjdump_path() is not None:
            stem.with_suffix(stem.suffix + ".sass").write_text(sass(c.cubin))
        meta = {"shared_bytes": c.shared_bytes, "num_warps": c.num_warps}
        stem.with_suffix(stem.suffix + ".json").write_text(json.dumps(meta))


@dataclass
class Artifacts:
    name: str
    target: str
    ptx: str
    cubin: bytes
    sass: str | None
    shared_bytes: int
    num_warps: int


def compile_all(out_dir, jobs: int | None = None, want_sass: bool = True) -> dict:
    """Compile every spec of :func:`all_specs` for every target in ``jobs`` processes.

    Returns {(spec name, target): Artifacts}. Raises RuntimeError with the worker's stderr
    when a compile fails.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or min(os.cpu_count() or 1, 8))
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # a compiled kernel is wanted, not an interpreted one
    procs = []
    for shard in range(jobs):
        cmd = [sys.executable, "-m", __name__, "--out", str(out_dir), "--shard", str(shard),
               "--num-shards", str(jobs)] + ([] if want_sass else ["--no-sass"])
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    errors = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err[-4000:])
    if errors:
        raise RuntimeError("AOT compile failed:\n" + "\n----\n".join(errors))
    result = {}
    for spec in all_specs():
        for target in TARGETS:
            stem = out_dir / _file_stem(spec.name, target)
            meta = json.loads(stem.with_suffix(stem.suffix + ".json").read_text())
            sass_file = stem.with_suffix(stem.suffix + ".sass")
            result[(spec.name, target)] = Artifacts(
                name=spec.name,
                target=target,
                ptx=stem.with_suffix(stem.suffix + ".ptx").read_text(),
                cubin=stem.with_suffix(stem.suffix + ".cubin").read_bytes(),
                sass=sass_file.read_text() if sass_file.exists() else None,
                **meta,
            )
    return result


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Compile bigperf's Triton kernels for sm_80/sm_90a")
    ap.add_argument("--out", required=True, help="directory for .ptx/.cubin/.sass/.json files")
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--no-sass", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _compile_shard(out, args.shard, args.num_shards, not args.no_sass)
    return 0


if __name__ == "__main__":
    # Run the package copy of this module so that KernelSpec is one class, not two.
    from bigperf.kernels import aot as _aot

    sys.exit(_aot._main())
