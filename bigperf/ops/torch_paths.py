"""PyTorch's own GEMMs as candidate paths (backend "torch") for bigperf's ops.

Where PyTorch's GEMM is the fastest way to compute a layer (large M; a CPU whose torch
GEMM uses AMX or a GPU's cuBLAS), the measuring dispatcher (bigperf/tune.py) picks one of
these. They compute the same math as our kernels, from the same packed weights: a weight
that is not already in the compute dtype is materialised a chunk of output rows at a time
(dequantised, unpacked, converted), so no second full-size copy of it is ever held
unless the user asks for one: a layer told to keep a float copy (`keep_float_copy()`,
`swap(..., float_copy=True)`) attaches its weight, materialised once in fp32, to the tensor
the op receives as its weight, and the path "torch:copy" multiplies by it directly. That
is the original fp32 layer's speed at large M, paid for in memory (the report counts the
copy in the layer's bytes).

Compute dtypes a path may use (what keeps each within the layer's tolerance): fp32
always; a half dtype only where the layer's inputs already carry that precision (x in
half precision, or a bf16 weight: bf16 keeps fp32's range, fp16 does not). An int8
quantised weight counts as bf16 precision: a code q times its scale s rounded to bf16
moves by at most 2^-9 * 127 * s, a quarter of the step s, inside the half step the
quantisation already lost (and x's rounding to bf16, 2^-9 relative, is what W8A16's
16-bit activations mean; not for W8A8, whose integer sums stay exact: exact_int8); on
CPUs whose bf16 GEMM doubles fp32's (AVX512-BF16, AMX) that is the fastest PyTorch path
for int8 weight-only layers at large M.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch
import torch.nn.functional as F

from bigperf.ops.common import as_rows, epilogue_, half_why_not  # noqa: F401 (half_why_not: this module's API)
from bigperf.ops.tensor_keys import ConvertedOnce

# A chunk of materialised weight rows of about this many bytes (about an L2 cache), written
# into a scratch buffer that is reused (no allocation or page faults per chunk) and read
# back from cache by the GEMM right away; at least MIN_CHUNK_ROWS rows, so that each GEMM
# call still runs at full speed.
CHUNK_BYTES = 3 << 19  # 1.5 MiB
MIN_CHUNK_ROWS = 256

# (out, first row, end row) -> None: writes weight rows [r0, r1) into out ([r1 - r0, K]).
RowsFn = Callable[[torch.Tensor, int, int], None]

_scratch = threading.local()
_bias_in = ConvertedOnce()  # (bias, dtype) -> the bias in dtype, once per its data


def chunk_rows(k: int, dtype: torch.dtype, align: int = 16) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    rows = max(MIN_CHUNK_ROWS, CHUNK_BYTES // max(1, k * itemsize))
    return -(-rows // align) * align


def scratch(rows: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A [rows, k] buffer of this thread's, reused across calls (grown when too small)."""
    key = (dtype, device)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buf = buffers.get(key)
    if buf is None or buf.numel() < rows * k:
        with torch.inference_mode(False):  # a normal tensor: writable inside and outside inference mode
            buf = buffers[key] = torch.empty(rows * k, dtype=dtype, device=device)
    return buf[: rows * k].view(rows, k)


def _writes_columns_in_place(left: torch.Tensor, bias: torch.Tensor | None, chunk_out_bytes: int) -> bool:
    """Whether the chunked path's GEMMs write straight into their columns of the output
    (addmm / mm with out= a column slice, [M, chunk rows] of chunk_out_bytes), rather than
    F.linear into a temporary and a strided copy.

    Where the slice outgrows the cache (about CHUNK_BYTES), in fp32 on a CPU: BLAS takes the
    row stride as its leading dimension, where the temporary and its copy went through memory:
    1.03-1.16x the copying path at M = 2048, K = 768, N = 3072 (Zen 3, 2 threads; ~11 ms of
    copies in a 113 ms call). A smaller temporary is copied from cache, and in place read
    0.97-1.00x at M = 128-512, so F.linear and a copy stay there; also where unmeasured
    (oneDNN's bf16 GEMM, cuBLAS may not take a strided output) and where a gradient is
    recorded (out= records none)."""
    return (chunk_out_bytes > CHUNK_BYTES and left.device.type == "cpu" and left.dtype == torch.float32
            and not (torch.is_grad_enabled() and (left.requires_grad or (bias is not None and bias.requires_grad))))


def torch_linear(x: torch.Tensor, n: int, k: int, compute_dtype: torch.dtype, *,
                 rows: RowsFn | None = None, whole: torch.Tensor | None = None,
                 bias: torch.Tensor | None = None, activation: str = "none",
                 residual: torch.Tensor | None = None, align: int = 16,
                 x_rows: torch.Tensor | None = None, row_scale: torch.Tensor | None = None,
                 col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """act((x @ W^T) * row_scale * col_scale + bias) (+ residual) by PyTorch's GEMM in
    compute_dtype, output in x's dtype and shape [..., n].

    W is `whole` (already [n, k] in compute_dtype) or is written chunk by chunk by
    `rows(out, r0, r1)` for chunks of rows that are multiples of `align`. `x_rows` replaces
    x's values as the GEMM's operand (W8A8: the int8 codes of x) while x still gives the
    output's dtype and shape. (A float weight in compute_dtype without scales: linear_as_held,
    in fewer steps per call.)

    Each chunk is converted into a small reused buffer and multiplied at once, while it is
    still in cache, by F.linear into its columns of the output. Measured on Zen 3 (bf16
    weights read cold, fp32 GEMM): 3072x768 at M = 128, 7.5 ms against F.linear's 7.55 on an
    fp32 weight (1 thread; 5.4 vs 5.6 ms with 2), where converting the whole weight first
    took 7.9-8.2 ms and a W @ x^T formulation lost a 1 ms transposing copy; 14336x4096,
    256-row chunks: 110 vs 130 ms (2 threads), 185 vs 208 ms (1 thread).
    """
    left = x_rows if x_rows is not None else as_rows(x, k)
    if left.dtype != compute_dtype:  # (each call here costs a microsecond or more: small layers feel it)
        left = left.to(compute_dtype)
    m = left.shape[0]
    scaled = row_scale is not None or col_scale is not None
    bias_c = None
    if bias is not None and not scaled:
        # Sliced per chunk below: from a copy, because a layer's bias made under inference
        # mode can refuse views there ("Inference tensors do not track version counter";
        # seen with SparseLinear built and cast to bf16 inside torch.inference_mode()).
        bias_c = bias.to(compute_dtype, copy=True)
    if whole is not None:
        y = F.linear(left, whole, bias_c)
    else:
        # (at least one aligned chunk: N = 0 would make a step of 0)
        step = max(align, min(chunk_rows(k, compute_dtype, align), -(-n // align) * align))
        buf = scratch(step, k, compute_dtype, left.device)
        if step >= n:  # one chunk (a small layer): its GEMM's output is the result, no copy
            rows(buf[:n], 0, n)
            y = F.linear(left, buf[:n], bias_c)
        else:
            y = left.new_empty((m, n))
            in_place = _writes_columns_in_place(left, bias_c, m * step * left.element_size())
            for r0 in range(0, n, step):
                r1 = min(n, r0 + step)
                chunk = buf[: r1 - r0]
                rows(chunk, r0, r1)
                chunk_bias = bias_c[r0:r1] if bias_c is not None else None
                if not in_place:
                    y[:, r0:r1] = F.linear(left, chunk, chunk_bias)
                elif chunk_bias is None:
                    torch.mm(left, chunk.t(), out=y[:, r0:r1])
                else:
                    torch.addmm(chunk_bias, left, chunk.t(), out=y[:, r0:r1])
    if scaled:  # W8A8: integer products, then the row (per token) and column (per N) scales, in fp32
        # The first scale promotes y to fp32 in the same pass (no separate y.float() copy).
        first, rest = (row_scale.reshape(-1, 1), col_scale) if row_scale is not None else (col_scale.reshape(1, -1), None)
        y = torch.mul(y, first.float())
        if rest is not None:
            y.mul_(rest.reshape(1, -1))
        if bias is not None:
            y.add_(bias.float())
    r = residual.reshape(m, n).to(y.dtype) if residual is not None else None
    y = epilogue_(y, activation, r)
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)


def linear_as_held(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   activation: str = "none", residual: torch.Tensor | None = None) -> torch.Tensor:
    """act(x @ weight^T + bias) (+ residual) by F.linear on a float weight already in the
    compute dtype (the layer's own weight, or its float copy), output in x's dtype.

    The hot path where PyTorch's GEMM is chosen for a call as the layer holds it: every
    Python step here is paid on top of the bare F.linear the user had (~1 us each with the
    interpreter's working set evicted by the weight stream), so x keeps its shape (F.linear
    takes [..., K] at any strides) and nothing is converted that is already right.
    """
    dtype = weight.dtype
    left = x if x.dtype == dtype else x.to(dtype)
    if bias is not None and bias.dtype != dtype:  # FusedLinear keeps its bias in fp32
        bias = _bias_in(bias, dtype)
    y = F.linear(left, weight, bias)
    if activation != "none" or residual is not None:
        y = epilogue_(y, activation, residual.to(dtype) if residual is not None else None)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def precision_of(weight: torch.Tensor) -> torch.dtype | None:
    """The precision a weight already has, for half_why_not: a float weight's dtype; int8
    codes bf16's (see the module's docstring); anything else none that allows a half dtype."""
    if weight.is_floating_point():
        return weight.dtype
    return torch.bfloat16 if weight.dtype == torch.int8 else None


def copy_rows(weight: torch.Tensor) -> RowsFn:
    """The rows of a weight that only needs converting (a float weight, int8 codes)."""
    return lambda out, r0, r1: out.copy_(weight[r0:r1])


# W8A8's GEMM multiplies x's int8 codes: its sums reach 127 * 127 * K, past fp16's 65504 from
# K = 5 (the fuzzer's fp16 x at K = 64 gave Inf where the reference is ~1). fp32 holds them
# exactly to K = 1040; bf16 keeps fp32's range (its 8-bit rounding is the documented cost).
W8A8_FP16_WHY_NOT = ("an fp16 GEMM of W8A8's int8 codes overflows: its integer sums pass 65504 "
                     "(computed in fp32 or bf16 instead)")


def register_torch_paths(table, run_for: Callable[[torch.dtype], Callable[..., torch.Tensor]],
                         float_weight: bool = False, exact_int8: bool = False) -> None:
    """One "torch" path per compute dtype: fp32, bf16, fp16. Every op's arguments start
    (x, weight or its packed values, ...): a bf16 weight or int8 codes count as precision the
    layer already has (half_why_not, precision_of), an fp16 weight (range) does not.
    float_weight: the op's weight is the layer's float weight itself (the dense format), so
    the path of its own dtype runs the weight as held (Backend.as_held) where x has that dtype
    too. exact_int8: the op's math is exact integer sums of int8 codes (W8A8), which a bf16
    GEMM would round to 8 bits before the scales, so its codes do not count as bf16 precision."""
    for dtype, variant in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        def why_not(x, weight, *rest, dtype=dtype):
            if exact_int8 and dtype == torch.float16:
                return W8A8_FP16_WHY_NOT
            return half_why_not(x, dtype, None if exact_int8 and weight.dtype == torch.int8 else precision_of(weight))

        # As held: F.linear exactly as the user's layer runs it, nothing converted per call.
        # x in another dtype is cast in and the output back, as our kernels convert: then the
        # compute-bound margin applies (a bf16 weight with fp32 x at 768x3072, M = 128, Zen 4:
        # cpu:panel-bf16 6-9 % faster in tuning, 1.04x the gate's cast-in-and-out F.linear,
        # where torch:bf16, chosen by the as-held margin, measured 0.95x).
        def as_held(x, weight, *rest, dtype=dtype):
            return weight.dtype == dtype and x.dtype == dtype
        table.register("torch", why_not, run_for(dtype), variant=variant, as_held=as_held if float_weight else None)


# ----------------------------------------------------------------------------- opt-in float copies

_FLOAT_COPY = "_bigperf_float_copy"  # attribute of the weight tensor: (copy, data_ptr, version)


def attach_float_copy(weight: torch.Tensor, copy: torch.Tensor | None) -> None:
    """Attach (or, with None, drop) the fp32 materialisation of `weight`, the tensor an op
    receives as its weight. The copy is tied to weight's storage and version: after an
    in-place write or a `.data =` assignment it no longer serves (a stale copy is never used)."""
    if copy is None:
        weight.__dict__.pop(_FLOAT_COPY, None)
        return
    setattr(weight, _FLOAT_COPY, (copy, weight.data_ptr(), weight._version))


def float_copy_why_not(weight: torch.Tensor) -> str | None:
    """Why the float copy of `weight` cannot serve a call, or None."""
    held = getattr(weight, _FLOAT_COPY, None)
    if held is None:
        return "no float copy of the weight is held (opt in: layer.keep_float_copy(), swap(..., float_copy=True))"
    copy, data_ptr, version = held
    if weight.data_ptr() != data_ptr or weight._version != version:
        return "the float copy is stale: the weight changed after it was made (call keep_float_copy() again)"
    if copy.device != weight.device:
        return f"the float copy is on {copy.device}, the weight on {weight.device}"
    return None


def float_copy_of(weight: torch.Tensor) -> torch.Tensor:
    return getattr(weight, _FLOAT_COPY)[0]


def register_float_copy_path(table, run: Callable[..., torch.Tensor]) -> None:
    """The "torch:copy" path: `run` computes with float_copy_of(args[1]), which serves only
    where the layer holds a fresh copy."""
    table.register("torch", lambda x, weight, *rest: float_copy_why_not(weight), run, variant="copy",
                   as_held=lambda *args: True)


def copy_linear(x: torch.Tensor, weight: torch.Tensor, **epilogue) -> torch.Tensor:
    """torch_linear in fp32 on the float copy attached to `weight`."""
    held = float_copy_of(weight)
    if "x_rows" in epilogue:  # W8A8: the GEMM of x's codes, then the scales
        return torch_linear(x, held.shape[0], held.shape[1], torch.float32, whole=held, **epilogue)
    return linear_as_held(x, held, **epilogue)
