"""Every Triton kernel in kernels/ compiles for sm_80 and sm_90a without a GPU.

The kernel modules describe their variants with ``aot_specs()`` (kernels/aot.py); this
module compiles all of them once, in parallel worker processes, and checks the PTX, cubin
and SASS: the right target, shared memory within the device limit, and the tensor-core
instructions the variant is built for (wgmma on Hopper for 64+-row tiles, mma.sync on
Ampere, none for fp32 IEEE).
"""
import os

import pytest

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip(
        "AOT compilation needs the real triton JIT; TRITON_INTERPRET=1 turns @triton.jit "
        "kernels into interpreted functions (run this module without it)",
        allow_module_level=True,
    )

triton = pytest.importorskip("triton", reason="triton is not installed")

import importlib  # noqa: E402
import pkgutil  # noqa: E402

from bigperf import kernels as kernels_pkg  # noqa: E402
from bigperf.kernels import aot  # noqa: E402

ALL_SPECS = aot.all_specs()
# Every variant with BIGPERF_AOT_ALL=1; by default one per kernel and instruction family.
SPECS = ALL_SPECS if os.environ.get("BIGPERF_AOT_ALL") == "1" else aot.representative_specs(ALL_SPECS)
TARGETS = list(aot.TARGETS)
CASES = [pytest.param(s, t, id=f"{s.name}-{t}") for s in SPECS for t in TARGETS]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    # The default triton cache (or TRITON_CACHE_DIR) is used, so reruns are cache hits;
    # a cold run of all variants takes ~80 s on 2 cores.
    return aot.compile_all(tmp_path_factory.mktemp("aot"), jobs=min(os.cpu_count() or 1, 4))


def test_every_jit_kernel_has_a_spec():
    covered = {id(s.fn) for s in ALL_SPECS}
    missing = []
    for info in pkgutil.iter_modules(kernels_pkg.__path__):
        if info.name.startswith("_") or info.name == "aot":
            continue
        mod = importlib.import_module(f"{kernels_pkg.__name__}.{info.name}")
        missing += [f"{info.name}.{k.__name__}" for k in aot.jit_kernels(mod)
                    if id(k) not in covered]
    assert not missing, f"kernels without an aot_specs() entry: {missing}"
    assert SPECS, "no kernel specs found"


@pytest.mark.parametrize("spec,target", CASES)
def test_compiles_to_ptx_and_cubin(artifacts, spec, target):
    art = artifacts[(spec.name, target)]
    assert aot.ptx_target(art.ptx) == target
    assert f".entry {spec.fn.__name__}" in art.ptx
    assert art.cubin[:4] == b"\x7fELF", "cubin is not an ELF image"
    assert art.num_warps == spec.num_warps
    limit = aot.SMEM_LIMIT_BYTES[target]
    assert art.shared_bytes <= limit, (
        f"needs {art.shared_bytes} B of shared memory, {target} allows {limit} B per block"
    )


@pytest.mark.parametrize("spec,target", [c for c in CASES if c.values[1] in c.values[0].tensor_core])
def test_tensor_core_instructions(artifacts, spec, target):
    art = artifacts[(spec.name, target)]
    want = spec.tensor_core[target]
    present = {k for k, marker in aot.PTX_MARKERS.items() if marker in art.ptx}
    if want is None:
        assert not present, f"an fp32 IEEE GEMM must not use tensor cores, found {present}"
        return
    assert present == {want}, f"expected only {want} in PTX, found {present or 'none'}"
    lines = [ln for ln in art.ptx.splitlines() if aot.PTX_MARKERS[want] in ln]
    if spec.mma_operand:
        assert all(f".{spec.mma_operand}" in ln for ln in lines), lines[:3]


@pytest.mark.parametrize("spec,target", [c for c in CASES if c.values[1] in c.values[0].tensor_core])
def test_tensor_core_instructions_in_sass(artifacts, spec, target):
    art = artifacts[(spec.name, target)]
    if art.sass is None:
        pytest.skip("no cuobjdump in triton's wheel (triton/backends/nvidia/bin) or on PATH")
    want = spec.tensor_core[target]
    markers = aot.sass_markers(spec)
    present = {k for k, marker in markers.items() if marker in art.sass}
    if want is None:
        assert not present, f"an fp32 IEEE GEMM must not use tensor cores, found {present}"
    else:
        assert present == {want}, f"expected {markers[want]} in SASS, found {present}"


@pytest.mark.parametrize("target,marker", [("sm_80", "mma.sync"), ("sm_90a", "wgmma.mma_async")])
def test_fp32_x_with_half_weight_stays_on_tensor_cores_at_highest(target, marker):
    """fused_matmul's "tf32x2" (fp32 x, fp16/bf16 W, float32 matmul precision "highest"):
    two TF32 products per k step, so exactly twice the TF32 MMAs of the one-dot TF32
    variant of the same tile, and no other MMA."""
    from bigperf.kernels import fused_matmul

    specs = {s.name.split("/")[-1]: s for s in fused_matmul.aot_specs()}
    counts = {}
    for name in ("fp32x_bf16w_tf32_bias_relu", "fp32x_bf16w_tf32x2_bias_relu"):
        lines = [ln for ln in aot.compile_spec(specs[name], target).ptx.splitlines() if marker in ln]
        assert lines and all(".tf32" in ln for ln in lines), f"{name}: {lines[:3]}"
        counts[name] = len(lines)
    assert counts["fp32x_bf16w_tf32x2_bias_relu"] == 2 * counts["fp32x_bf16w_tf32_bias_relu"], counts
