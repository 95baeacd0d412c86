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


def _expected(x, w_dense, bias, activation, nonfinite_rows_all_nan=False):
    y = F.linear(x.double(), w_dense.double(), None if bias is None else bias.double())
    y = apply_activation(y, activation)
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
            expected = _pattern(_expected(x, w_dense, b, activation, w8a8).to(dtype))
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
