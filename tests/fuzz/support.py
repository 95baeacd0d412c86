"""What every fuzzer shares: inputs drawn by hypothesis, and the property itself.

The property (issue #14): a call either returns a result that agrees with the float64
reference within the op's tolerance (NaN where the reference has NaN, the same infinities),
or raises a clear Python exception whose message names the function and the argument.
Never a crash, a hang or a silently different result.

Tensors are made by torch from a drawn seed (drawing every element through hypothesis
would spend the whole budget on data); hypothesis draws what matters: sizes, strides,
dtypes, where the special values go.
"""

from __future__ import annotations

import re

import torch
from hypothesis import strategies as st

from tests.helpers import TOLERANCE

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# How an input tensor is laid out in memory: every op must accept all of them.
LAYOUTS = ("contiguous", "transposed", "expanded", "sliced", "batched")
# What goes into it besides ordinary values.
VALUE_KINDS = ("normal", "normal", "nan", "inf", "huge", "denormal", "zero")
# Large but never overflowing an fp32 accumulation of K <= 4096 products with |w| < 8.
HUGE = {torch.float32: 1e30, torch.float16: 3e3, torch.bfloat16: 1e30}
DENORMAL = {torch.float32: 1e-40, torch.float16: 1e-6, torch.bfloat16: 1e-40}
# The exceptions bigperf raises for bad input (NoBackendError and LayerRefused derive from these).
CLEAR_ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError)

sizes = st.sampled_from([0, 1, 2, 3, 5, 8, 16, 17, 33, 64])
seeds = st.integers(0, 2**31 - 1)


def fill(shape, dtype, seed: int, kind: str = "normal", scale: float = 1.0) -> torch.Tensor:
    """A fresh tensor of `shape` with a few special values of `kind` in it (never all zeros
    unless kind is "zero")."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g) * scale
    if kind == "zero":
        t.zero_()
    elif kind != "normal" and t.numel():
        flat = t.view(-1)
        where = torch.randint(0, flat.numel(), (max(1, flat.numel() // 17),), generator=g)
        special = {"nan": float("nan"), "inf": float("inf"), "huge": HUGE.get(dtype, 1e30),
                   "denormal": DENORMAL.get(dtype, 1e-40)}[kind]
        signs = torch.randint(0, 2, where.shape, generator=g) * 2 - 1
        flat[where] = special * signs.float() if kind != "nan" else special
    return t.to(dtype)


def lay_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as `t` ([M, K]), in another memory layout (a view, never a copy
    that hides the layout)."""
    if layout == "transposed":
        return t.t().contiguous().t()
    if layout == "expanded":  # stride-0 rows, as x.expand(...) gives: every row the first
        return t[:1].expand(t.shape[0], t.shape[1]) if t.shape[0] else t
    if layout == "sliced":  # every other column of a wider buffer, at an offset
        wide = torch.empty(t.shape[0], 2 * t.shape[1] + 1, dtype=t.dtype)
        wide[:, 1::2] = t
        return wide[:, 1::2]
    if layout == "batched":  # a leading batch dimension of 1 over the same rows
        return t.unsqueeze(0)
    return t


@st.composite
def activations_x(draw, k: int, dtypes=FLOATS):
    """x: [M, K] (or [1, M, K]) in one of LAYOUTS, dtype and value kind drawn."""
    m = draw(sizes)
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(VALUE_KINDS))
    layout = draw(st.sampled_from(LAYOUTS))
    x = lay_out(fill((m, k), dtype, draw(seeds), kind), layout)
    return x, kind


def expand_reference_rows(x: torch.Tensor) -> torch.Tensor:
    """x's values as a plain fp64 [rows, K] tensor (whatever its layout)."""
    return x.reshape(-1, x.shape[-1]).double()


def name_check(error: BaseException, function, arguments) -> None:
    """The message names `function` (or one of several: a layer may pass on the message of
    the packing function it called) and one of `arguments` (quoted, as the project writes)."""
    message = str(error)
    functions = (function,) if isinstance(function, str) else tuple(function)
    assert any(f in message for f in functions), \
        f"error does not name {' or '.join(functions)}: {type(error).__name__}: {message}"
    quoted = [a for a in arguments if re.search(rf"['\"]?{re.escape(a)}['\"]?", message)]
    assert quoted, f"error names none of the arguments {arguments}: {type(error).__name__}: {message}"


def call_or_clear_error(call, function: str, arguments):
    """call()'s result, or None after checking that what it raised is a clear error."""
    try:
        return call()
    except CLEAR_ERRORS as error:
        name_check(error, function, arguments)
        return None


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "",
                             magnitude: torch.Tensor | None = None) -> None:
    """out (any dtype) agrees with the fp64 reference ref: same shape, NaN exactly where ref
    (rounded to out's dtype) has NaN, the same infinities, and a relative Frobenius error of
    at most `tol` over the rest. Outputs within 1 % of the dtype's largest value may round
    either way and are left out. `magnitude` (|x| @ |W|^T / sqrt(K)) keeps the bound honest
    when a few outputs cancel to near zero: the error is relative to the larger norm."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    ref = ref.double()
    rounded = ref.to(out.dtype).double()
    got = out.double()
    # (finite: an infinite reference comes from an Inf in the inputs, and must be matched)
    near_max = torch.isfinite(ref) & (ref.abs() > 0.99 * torch.finfo(out.dtype).max)
    nan_ref, nan_got = torch.isnan(rounded), torch.isnan(got)
    mismatch = (nan_ref != nan_got) & ~near_max
    assert not mismatch.any(), (f"{what}: NaN pattern differs from the reference at {int(mismatch.sum())} of "
                                f"{out.numel()} outputs (first at {mismatch.nonzero()[0].tolist()})")
    inf_mismatch = (torch.isinf(rounded) | torch.isinf(got)) & ~nan_ref & ~near_max & (rounded != got)
    assert not inf_mismatch.any(), (f"{what}: infinities differ from the reference at {int(inf_mismatch.sum())} "
                                    f"outputs (first at {inf_mismatch.nonzero()[0].tolist()})")
    finite = torch.isfinite(rounded) & torch.isfinite(got) & ~near_max
    if finite.any():
        diff = (got[finite] - ref[finite]).norm()
        norm = ref[finite].norm()
        if magnitude is not None:
            norm = torch.maximum(norm, magnitude.double().reshape(ref.shape)[finite].nan_to_num(0.0).norm())
        # Outputs in the dtype's subnormal range carry an absolute error of up to half its
        # subnormal spacing, however they are computed (fp16: 3e-8, 5 % of a 6e-7 output);
        # an all-zero (or underflowing) reference is compared at that resolution alone.
        info = torch.finfo(out.dtype)
        spacing = info.tiny * info.eps * finite.sum().double().sqrt()
        bound = tol * norm + (info.tiny if norm <= 1e-30 else spacing)
        assert diff <= bound + 1e-300, f"{what}: relative error {(diff / norm.clamp_min(1e-300)).item():.3g} > {tol}"


def tolerance(*dtypes) -> float:
    """The loosest tolerance of the float dtypes involved (a torch:bf16 path may compute
    an fp32 x in bf16 when the weight is bf16)."""
    return max(TOLERANCE.get(d, 1e-5) for d in dtypes)
