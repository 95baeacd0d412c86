"""Hands CUDA tensors to bigperf._C_cuda: alignment fix-ups, current stream, device guard,
and the once-per-weight re-layouts the int8 and 2:4 kernels read."""

from __future__ import annotations

import functools
import weakref

import torch

from bigperf import _ext
from bigperf.ops.validation import DTYPE_CODES

# The tensor-core kernels load 16 bytes at a time (cp.async): base pointers 16-byte
# aligned and row strides a multiple of 8 elements (fp16/bf16).
_ALIGN_BYTES = 16
_STRIDE_MULTIPLE = 8


def aligned_rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """[..., width] as [rows, width] meeting the kernels' alignment rules (copies if not)."""
    t = t.reshape(-1, width)
    ok = (t.stride(-1) == 1 and t.data_ptr() % _ALIGN_BYTES == 0
          and (t.shape[0] == 1 or t.stride(0) % _STRIDE_MULTIPLE == 0))
    return t if ok else t.contiguous()


def launch_fused_linear(x, weight, bias, residual, act_code: int) -> torch.Tensor:
    k, n = weight.shape[1], weight.shape[0]
    x2 = aligned_rows(x, k)
    w = aligned_rows(weight, k)
    m = x2.shape[0]
    # Pad the output's row stride so every row starts 16-byte aligned; the view hides it.
    out_stride = -(-n // _STRIDE_MULTIPLE) * _STRIDE_MULTIPLE
    out = torch.empty((m, out_stride), dtype=x.dtype, device=x.device)[:, :n]
    r = aligned_rows(residual, n) if residual is not None else None
    if r is not None and r.shape[0] > 1 and r.stride(0) % _STRIDE_MULTIPLE:
        padded = torch.empty((m, out_stride), dtype=r.dtype, device=r.device)[:, :n]
        r = padded.copy_(r)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        _ext.cuda_module().fused_linear(
            x2.data_ptr(), x2.stride(0), w.data_ptr(), w.stride(0),
            bias.data_ptr() if bias is not None else 0,
            r.data_ptr() if r is not None else 0, r.stride(0) if r is not None else 0,
            out.data_ptr(), out.stride(0), m, n, k, DTYPE_CODES[x.dtype], act_code, stream)
    return out.reshape(*x.shape[:-1], n) if out.is_contiguous() else out.contiguous().reshape(*x.shape[:-1], n)


# ----------------------------------------------------------------------------- re-layout cache

class RelayoutCache:
    """Kernel-order copies of weights, built once per (live tensor, version).

    Keyed by the ids of the source tensors; a hit needs the same live tensors (weak
    references, since ids are reused after a tensor dies) at the same _version (bumped by
    every in-place write). An entry goes away with its source tensors, so the packed GPU
    copy never outlives the weight it was made from.
    """

    def __init__(self, limit: int = 4096):
        self._entries: dict[tuple, tuple] = {}
        self._limit = limit

    def get(self, tensors: tuple, build):
        try:
            versions = tuple(t._version for t in tensors)
        except RuntimeError:  # inference tensors have no version counter: nothing proves a hit
            return build()
        key = tuple(id(t) for t in tensors)
        entry = self._entries.get(key)
        if entry is not None:
            refs, seen_versions, value = entry
            if seen_versions == versions and all(r() is t for r, t in zip(refs, tensors)):
                return value
        value = build()
        if len(self._entries) >= self._limit:
            self._entries.clear()
        refs = tuple(weakref.ref(t, self._forget(key)) for t in tensors)
        self._entries[key] = (refs, versions, value)
        return value

    def _forget(self, key):
        def callback(dead_ref):
            entry = self._entries.get(key)
            # Only the entry that holds this reference: the key may belong to a newer
            # tensor by now (ids are reused).
            if entry is not None and any(r is dead_ref for r in entry[0]):
                del self._entries[key]
        return callback

    def __len__(self) -> int:
        return len(self._entries)


_W8A16_CACHE = RelayoutCache()
_S24_CACHE = RelayoutCache()


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _padded_out(m: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """[m, n] output whose rows start 16-byte aligned (row stride rounded up to 8)."""
    stride = -(-n // _STRIDE_MULTIPLE) * _STRIDE_MULTIPLE
    return torch.empty((m, stride), dtype=like.dtype, device=like.device)[:, :n]


def _finish_shape(out: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    return out.reshape(*x.shape[:-1], n) if out.is_contiguous() else out.contiguous().reshape(*x.shape[:-1], n)


def launch_w8a16(x, qweight, scale, zero_point, bias, act_code: int) -> torch.Tensor:
    """int8 weight-only linear on the W8A16 kernel; the weight is re-laid out once per
    tensor version (layers on a GPU own their layout instead: Int8Linear)."""
    from bigperf.cuda_layouts import pack_w8a16

    sources = (qweight, scale) if zero_point is None else (qweight, scale, zero_point)
    layout = _W8A16_CACHE.get(sources, lambda: pack_w8a16(qweight, scale, zero_point))
    return launch_w8a16_layout(x, layout, bias, act_code)


def launch_w8a16_layout(x, layout, bias, act_code: int) -> torch.Tensor:
    """int8 weight-only linear on the W8A16 kernel from a cuda_layouts.W8A16Layout."""
    n, k = layout.n, layout.k
    x2 = aligned_rows(x, k)
    m = x2.shape[0]
    out = _padded_out(m, n, x)
    module = _ext.cuda_module()
    with torch.cuda.device(x.device):
        plan = module.w8a16_plan(m, n, k, _sm_count(x.device.index))
        workspace = counters = None
        if plan["splits"] > 1:
            workspace = torch.empty(plan["workspace_bytes"], dtype=torch.uint8, device=x.device)
            counters = torch.zeros(plan["counters"], dtype=torch.int32, device=x.device)
        module.w8a16_linear(
            x2.data_ptr(), x2.stride(0), layout.weight.data_ptr(), layout.scale.data_ptr(),
            layout.zero.data_ptr() if layout.zero is not None else 0, layout.group_size or 0,
            bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0),
            workspace.data_ptr() if workspace is not None else 0, plan["workspace_bytes"],
            counters.data_ptr() if counters is not None else 0, plan["counters"],
            m, n, k, DTYPE_CODES[x.dtype], act_code, torch.cuda.current_stream().cuda_stream,
            plan["config"], plan["splits"])
    return _finish_shape(out, x, n)


def launch_sparse24(x, values, meta, bias, act_code: int) -> torch.Tensor:
    """2:4 sparse linear on the mma.sp kernel; the weight is re-laid out once."""
    from bigperf.cuda_layouts import pack_s24

    n, k = values.shape[0], values.shape[1] * 2
    layout = _S24_CACHE.get((values, meta), lambda: pack_s24(values, meta))
    x2 = aligned_rows(x, k)
    m = x2.shape[0]
    out = _padded_out(m, n, x)
    with torch.cuda.device(x.device):
        _ext.cuda_module().sparse24_linear(
            x2.data_ptr(), x2.stride(0), layout.values.data_ptr(), layout.values.stride(0), layout.meta.data_ptr(),
            bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, n, k,
            DTYPE_CODES[x.dtype], act_code, torch.cuda.current_stream().cuda_stream)
    return _finish_shape(out, x, n)
