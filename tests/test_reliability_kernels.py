"""Reliability at the kernel edge (issue 14, classes 1, 9, 10; fork safety is in
tests/test_fork_safety.py).

- Index data written by another thread while a kernel runs never makes it read out of
  bounds (the stress runs in a subprocess, so a segfault fails the test, not pytest).
- NaN and Inf propagate as F.linear does on the dequantised / unpacked dense weight, on
  every backend and ISA that runs here.
- Caches keyed on a tensor's identity see a `.data =` replacement and a numpy-view write.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import bigperf
from bigperf import _ext
from bigperf.formats.bsr_lanes import pack_bsr_lanes
from bigperf.formats.sparse24_lanes import pack_24_lanes
from bigperf.ops.activations import ACTIVATIONS, apply_activation
from bigperf.ops.block_sparse_lanes_linear import block_sparse_lanes_linear
from bigperf.ops.fused_linear import fused_linear
from bigperf.ops.int8_linear import int8_dynamic_linear, int8_weight_linear
from bigperf.ops.sparse24_lanes_linear import sparse24_lanes_linear
from bigperf.ops.sparse_linear import block_sparse_linear, sparse24_linear
from bigperf.quant import dequantize_weight, quantize_activation_per_token, quantize_weight
from bigperf.sparsity import block_mask, nm_mask, pack_24, pack_24_int8, pack_bsr, unpack_24
from tests.helpers import random_tensor

HAS_CPU = _ext.cpu_module() is not None
needs_cpu = pytest.mark.skipif(not HAS_CPU, reason=f"bigperf._C not built: {_ext.cpu_unavailable_reason()}")
CPU_ISAS = _ext.runnable_cpu_isas() if HAS_CPU else []


# ----------------------------------------------------------------------------- class 1

_STRESS = """
import sys, threading, time
import torch, bigperf
from bigperf import _ext
from bigperf.formats.bsr_lanes import pack_bsr_lanes
from bigperf.ops.block_sparse_lanes_linear import block_sparse_lanes_linear
from bigperf.ops.sparse_linear import block_sparse_linear
from bigperf.sparsity import block_mask, pack_bsr

isa, layout, target = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
torch.set_num_threads(2)
sys.setswitchinterval(1e-6)  # hand the GIL to the writer as soon as the kernel releases it
n, k, bn, bk = 256, 512, 16, 16
w = torch.randn(n, k)
packed = pack_bsr(w * block_mask(w, (bn, bk), 0.5), (bn, bk))
x = torch.randn(1, k)
if layout == "lanes":
    lanes = pack_bsr_lanes(packed.values, packed.col_indices, packed.row_ptr, k)
    index = lanes.col_indices if target == "col_indices" else lanes.row_ptr
    call = lambda: block_sparse_lanes_linear(x, lanes)
else:
    index = packed.col_indices if target == "col_indices" else packed.row_ptr
    call = lambda: block_sparse_linear(x, packed.values, packed.col_indices, packed.row_ptr)
view = index.numpy()  # shares memory and never bumps the tensor's version
good = view.copy()
stop = False

def writer():
    bad = 1 << 28  # far outside x and the values
    while not stop:
        for i in range(1, len(view)):
            view[i] = bad
            view[i] = good[i]

with _ext.use_cpu_isa(isa):
    call()  # the content checks pass once, then are cached by version
    thread = threading.Thread(target=writer)
    thread.start()
    refused = 0
    deadline = time.monotonic() + 2.0
    calls = 0
    while time.monotonic() < deadline:
        try:
            call()
        except ValueError:
            refused += 1  # the binding caught the corrupt index before the kernel: fine
        calls += 1
    stop = True
    thread.join()
print("calls", calls, "refused", refused)
"""


@needs_cpu
@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("layout", ["canonical", "lanes"])
@pytest.mark.parametrize("target", ["col_indices", "row_ptr"])
def test_bsr_index_written_during_kernel_never_crashes(isa, layout, target):
    run = subprocess.run([sys.executable, "-c", _STRESS, isa, layout, target], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, f"stress process died with {run.returncode}: {run.stderr[-2000:]}"
    assert "calls" in run.stdout


# ----------------------------------------------------------------------------- class 9

def _pattern(y: torch.Tensor) -> torch.Tensor:
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf."""
    y = y.double()
    return torch.isnan(y).int() + 2 * torch.isposinf(y).int() + 3 * torch.isneginf(y).int()


def _poisoned_inputs(m, k, n, dtype):
    x = random_tensor(m, k, dtype=dtype, seed=1)
    x[1, 3] = float("nan")
    x[2, 5] = float("inf")
    x[3, k - 2] = float("-inf")
    bias = random_tensor(n, dtype=dtype, seed=2)
    bias[7] = float("nan")
    bias[9] = float("inf")
    bias[10] = float("-inf")
    return x, bias


def _expected(x, w_dense, bias, activation, nonfinite_rows_all_nan=False, torch_activation=False):
    """float64 math; with torch_activation, the activation as PyTorch computes it in x's dtype
    (the torch backend's epilogue is PyTorch's own: its vectorised fp32/bf16 erf GELU maps
    +inf to NaN on AVX-512 CPUs, where float64 gives +inf)."""
    y = F.linear(x.double(), w_dense.double(), None if bias is None else bias.double())
    y = apply_activation(y.to(x.dtype), activation).double() if torch_activation else apply_activation(y, activation)
    if nonfinite_rows_all_nan:  # W8A8: the row's scale is NaN, so the whole row is
        bad = ~torch.isfinite(x.double()).all(dim=1)
        y[bad] = float("nan")
    return y


N, K, M = 48, 64, 5
_W = random_tensor(N, K, seed=3)
_QW = quantize_weight(_W)
_W24 = _W * nm_mask(_W)
_P24 = pack_24(_W24)
_P24I8 = pack_24_int8(_W24)
_WB = _W * block_mask(_W, (16, 16), 0.25)
_PB = pack_bsr(_WB, (16, 16))


def _op_cases():
    """name -> (call(x, bias, activation), dense weight of the math, W8A8?)."""
    deq = dequantize_weight(_QW.qweight, _QW.scale)
    w24_i8 = unpack_24(_P24I8.values, _P24I8.meta, _P24I8.scale, torch.float32)
    return {
        "fused": (lambda x, b, a: fused_linear(x, _W.to(x.dtype), b, activation=a), _W, False),
        "int8_weight_only": (lambda x, b, a: int8_weight_linear(x, _QW.qweight, _QW.scale, None, b, a), deq, False),
        "int8_dynamic": (lambda x, b, a: int8_dynamic_linear(x, _QW.qweight, _QW.scale, b, a), deq, True),
        "sparse24": (lambda x, b, a: sparse24_linear(x, _P24.values.to(x.dtype), _P24.meta, None, b, a),
                     _W24, False),
        "sparse24_int8": (lambda x, b, a: sparse24_linear(x, _P24I8.values, _P24I8.meta, _P24I8.scale, b, a),
                          w24_i8, False),
        "sparse24_lanes": (lambda x, b, a: sparse24_lanes_linear(x, pack_24_lanes(_P24.values.to(x.dtype),
                                                                                  _P24.meta), b, a), _W24, False),
        "block_sparse": (lambda x, b, a: block_sparse_linear(x, _PB.values.to(x.dtype), _PB.col_indices,
                                                             _PB.row_ptr, b, a), _WB, False),
        "block_sparse_lanes": (lambda x, b, a: block_sparse_lanes_linear(
            x, pack_bsr_lanes(_PB.values.to(x.dtype), _PB.col_indices, _PB.row_ptr, K), b, a), _WB, False),
    }


def _backend_isa_params():
    params = [("reference", None), ("torch", None)]
    params += [("cpu", isa) for isa in CPU_ISAS]
    return params


@pytest.mark.parametrize("backend,isa", _backend_isa_params(), ids=lambda v: str(v))
@pytest.mark.parametrize("op", list(_op_cases()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nan_and_inf_propagate_as_in_f_linear(op, backend, isa, dtype):
    call, w_dense, w8a8 = _op_cases()[op]
    x, bias = _poisoned_inputs(M, K, N, dtype)
    failures = []
    for activation in ACTIVATIONS:
        for b in (None, bias):
            try:
                with bigperf.use_backend(backend):
                    if isa:
                        with _ext.use_cpu_isa(isa):
                            y = call(x, b, activation)
                    else:
                        y = call(x, b, activation)
            except bigperf.ops.NoBackendError as error:
                pytest.skip(f"{op} has no {backend} path here: {error}")
            expected = _pattern(_expected(x, w_dense, b, activation, w8a8, backend == "torch").to(dtype))
            got = _pattern(y)
            if not torch.equal(got, expected):
                rows = (got != expected).any(dim=1).nonzero().flatten().tolist()
                failures.append(f"{activation}, bias={'yes' if b is not None else 'no'}: rows {rows} differ")
            finite = torch.isfinite(y.double()) & (expected == 0)
            assert finite.sum() > 0
    assert not failures, failures


def test_activation_quantisation_of_a_nonfinite_row_gives_a_nan_scale():
    x = random_tensor(4, 32, seed=5)
    x[1, 0] = float("nan")
    x[2, 7] = float("-inf")
    for bits in (7, 8):
        q, scale = quantize_activation_per_token(x, bits)
        assert torch.isnan(scale[1]) and torch.isnan(scale[2])
        assert torch.isfinite(scale[[0, 3]]).all()
        assert (q[1] == 0).all() and (q[2] == 0).all()  # defined codes, not a cast of NaN


# ----------------------------------------------------------------------------- class 10

def _corrupt_meta(meta: torch.Tensor) -> torch.Tensor:
    bad = meta.clone()
    bad[0, 0] = 0  # both kept positions of group 0 are position 0: not a valid 2:4 group
    return bad


def test_meta_check_sees_data_assignment():
    """The once-per-tensor content check of 2:4 metadata must run again after `.data =`:
    same object, same _version, other memory."""
    values, meta = _P24.values.clone(), _P24.meta.clone()
    x = random_tensor(3, K, seed=7)
    with bigperf.use_backend("reference"):
        sparse24_linear(x, values, meta)  # checked, and the verdict cached
        meta.data = _corrupt_meta(meta)
        with pytest.raises(ValueError, match=r"bigperf\.sparse24_linear: argument 'meta' is corrupt"):
            sparse24_linear(x, values, meta)


def test_bsr_index_check_sees_data_assignment():
    values, col_indices, row_ptr = _PB.values.clone(), _PB.col_indices.clone(), _PB.row_ptr.clone()
    x = random_tensor(3, K, seed=8)
    with bigperf.use_backend("reference"):
        block_sparse_linear(x, values, col_indices, row_ptr)
        bad = col_indices.clone()
        bad[0] = K // 16 + 5  # a block column past the weight
        col_indices.data = bad
        with pytest.raises(ValueError, match=r"bigperf\.block_sparse_linear: .*'col_indices'"):
            block_sparse_linear(x, values, col_indices, row_ptr)


@pytest.mark.parametrize("backend", ["reference"] + (["cpu"] if HAS_CPU else []))
def test_index_and_meta_writes_change_the_next_output(backend):
    """Negative controls: a `.data =` replacement and a numpy-view write of valid, different
    index data each change the next output (nothing computed from the old data is reused)."""
    x = random_tensor(3, K, seed=9)
    values, meta = _P24.values.clone(), _P24.meta.clone()
    other = pack_24(_W * nm_mask(random_tensor(N, K, seed=10)))  # another valid pattern
    with bigperf.use_backend(backend):
        y0 = sparse24_linear(x, values, meta)
        meta.data = other.meta.clone()
        y1 = sparse24_linear(x, values, meta)
        assert not torch.equal(y0, y1)
        meta.numpy()[:] = _P24.meta.numpy()  # back, bypassing the version counter
        assert torch.equal(sparse24_linear(x, values, meta), y0)

        v, ci, rp = _PB.values.clone(), _PB.col_indices.clone(), _PB.row_ptr.clone()
        z0 = block_sparse_linear(x, v, ci, rp)
        noise = random_tensor(N, K, seed=13)
        moved = pack_bsr(noise * block_mask(noise, (16, 16), 0.25), (16, 16))  # as many blocks, elsewhere
        assert moved.col_indices.shape == ci.shape and not torch.equal(moved.col_indices, ci)
        ci.data, rp.data = moved.col_indices.clone(), moved.row_ptr.clone()
        z1 = block_sparse_linear(x, v, ci, rp)
        assert not torch.equal(z0, z1)
        ci.numpy()[:] = _PB.col_indices.numpy()
        rp.numpy()[:] = _PB.row_ptr.numpy()
        assert torch.equal(block_sparse_linear(x, v, ci, rp), z0)


def test_relayout_cache_sees_data_assignment_and_inplace_writes():
    from bigperf.ops.cuda_launch import RelayoutCache

    cache, builds = RelayoutCache(), []

    def build():
        builds.append(1)
        return t.clone()

    t = torch.randn(4, 8)
    first = cache.get((t,), build)
    assert cache.get((t,), build) is first and len(builds) == 1  # a hit
    t.data = torch.randn(4, 8)  # same object, same version, new memory
    second = cache.get((t,), build)
    assert len(builds) == 2 and torch.equal(second, t) and not torch.equal(second, first)
    t.add_(1)  # through torch: bumps the version
    assert torch.equal(cache.get((t,), build), t) and len(builds) == 3
    t.data = t.data.t().contiguous().t()  # same values, other strides
    cache.get((t,), build)
    assert len(builds) == 4


def test_w8a16_launch_reads_noncontiguous_layout_tensors_by_their_strides(monkeypatch):
    """The CUDA W8A16 launcher hands raw pointers to a kernel that reads them as contiguous:
    a non-contiguous layout tensor must reach it as a contiguous copy. Run on the CPU with
    the CUDA module, device and stream faked; the fake kernel reads the pointers back."""
    import contextlib
    import ctypes
    import dataclasses

    from bigperf.formats.w8a16_cuda import pack_w8a16
    from bigperf.ops import cuda_launch

    q = quantize_weight(random_tensor(64, 128, seed=11))
    layout = pack_w8a16(q.qweight, q.scale)

    def strided(t):
        wide = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype)
        wide[:, ::2] = t
        return wide[:, ::2]

    loose = dataclasses.replace(layout, weight=strided(layout.weight), scale=strided(layout.scale))
    assert not loose.weight.is_contiguous()
    seen = {}

    class FakeModule:
        def w8a16_linear(self, x, x_stride, weight, scale, zero, group_size, bias, out, *rest):
            seen["weight"] = bytes((ctypes.c_int8 * layout.weight.numel()).from_address(weight))
            seen["scale"] = bytes((ctypes.c_float * layout.scale.numel()).from_address(scale))

    monkeypatch.setattr(cuda_launch._ext, "cuda_module", lambda: FakeModule())
    monkeypatch.setattr(cuda_launch, "device_caps", lambda index: cuda_launch.DeviceCaps(0, "fake", (9, 0), 132,
                                                                                         227 * 1024))
    monkeypatch.setattr(cuda_launch, "_w8a16_plan", lambda *args: (0, 1, 0, 0))
    monkeypatch.setattr(cuda_launch, "_on_device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: type("S", (), {"cuda_stream": 0})())
    cuda_launch.launch_w8a16_layout(random_tensor(2, 128, dtype=torch.float16, seed=12), loose, None, 0)
    assert seen["weight"] == layout.weight.contiguous().numpy().tobytes()
    assert seen["scale"] == layout.scale.contiguous().numpy().tobytes()
