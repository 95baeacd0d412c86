"""Hands CUDA tensors to bigperf._C_cuda: alignment fix-ups, current stream, device guard,
the once-per-weight re-layouts the int8 and 2:4 kernels read, and what each GPU allows.

Device facts (compute capability, SM count, shared memory a block may opt into) are read
from torch.cuda.get_device_properties once per device; `device_why_not` compares them
with what the binary carries (SASS / PTX archs, each tile configuration's shared memory)
once per (device, kernel), so that the backends' why-not answers cost a cache lookup per
call. The launchers pass no device checks to C++: the ops have checked that every tensor
lives on x's device (bigperf._C_cuda.set_pointer_checks(True) re-checks each pointer, for
debugging).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from bigperf import _ext
from bigperf.ops.tensor_keys import OncePerData
from bigperf.ops.validation import DTYPE_CODES

# The tensor-core kernels load 16 bytes at a time (cp.async): base pointers 16-byte
# aligned and row strides a multiple of 8 elements (fp16/bf16).
_ALIGN_BYTES = 16
_STRIDE_MULTIPLE = 8


# ----------------------------------------------------------------------------- the device

@dataclass(frozen=True)
class DeviceCaps:
    """What a CUDA device offers the kernels."""

    index: int
    name: str
    capability: tuple[int, int]
    sm_count: int
    smem_per_block_optin: int  # bytes of shared memory one block may opt into


# Opt-in shared memory per block by compute capability (CUDA C++ Programming Guide,
# technical specifications), for torch builds whose device properties lack
# shared_memory_per_block_optin; anything else is assumed to allow the 48 KiB every GPU has.
_SMEM_OPTIN_BY_CAPABILITY = {(8, 0): 163 * 1024, (8, 6): 99 * 1024, (8, 7): 163 * 1024, (8, 9): 99 * 1024,
                             (9, 0): 227 * 1024, (10, 0): 227 * 1024, (10, 3): 227 * 1024,
                             (12, 0): 99 * 1024, (12, 1): 99 * 1024}


@functools.cache
def device_caps(index: int) -> DeviceCaps:
    props = torch.cuda.get_device_properties(index)
    capability = (props.major, props.minor)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or _SMEM_OPTIN_BY_CAPABILITY.get(capability, 48 * 1024)
    return DeviceCaps(index, props.name, capability, props.multi_processor_count, int(smem))


def arch_why_not(capability: tuple[int, int], sass: list[str], ptx: list[str]) -> str | None:
    """Why a binary with SASS for `sass` (e.g. ["80", "90a"]) and PTX for `ptx` (["80"])
    cannot run on a GPU of `capability`, or None.

    SASS sm_XY runs on X.y for y >= Y; an arch-specific sm_XYa only on X.Y itself; PTX
    compute_XY is JIT-compiled by the driver for any capability >= X.Y.
    """
    major, minor = capability
    for arch in sass:
        digits = arch.rstrip("af")
        arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
        if arch.endswith("a") and (major, minor) == (arch_major, arch_minor):
            return None
        if not arch.endswith("a") and major == arch_major and minor >= arch_minor:
            return None
    if any(major * 10 + minor >= int(arch) for arch in ptx):
        return None
    ptx_text = ", ".join(f"compute_{a}" for a in ptx) or "none"
    return (f"bigperf._C_cuda carries SASS for {', '.join(f'sm_{a}' for a in sass) or 'no arch'} and PTX for "
            f"{ptx_text}: nothing runs on compute capability {major}.{minor} (rebuild with "
            f"BIGPERF_CUDA_ARCHS including {major}{minor})")


def smem_why_not(kernel: str, config_smem: list[int], caps: DeviceCaps) -> str | None:
    """Why no tile configuration of `kernel` (shared memory per block of each) fits `caps`,
    or None. The launcher itself picks a configuration that fits (bigperf._C_cuda's
    *_choose_config / w8a16_plan with the device's limit)."""
    smallest = min(config_smem)
    if smallest <= caps.smem_per_block_optin:
        return None
    return (f"{kernel}: every tile configuration needs more shared memory per block than {caps.name} "
            f"(sm_{caps.capability[0]}{caps.capability[1]}) allows: at least {smallest} B, the device "
            f"allows {caps.smem_per_block_optin} B")


_REQUIREMENTS = {"fused_linear": "fused_linear_requirements", "w8a16_linear": "w8a16_requirements",
                 "sparse24_linear": "sparse24_requirements"}


@functools.cache
def device_why_not(index: int, kernel: str) -> str | None:
    """Why bigperf._C_cuda's `kernel` cannot run on CUDA device `index`, or None.

    Cached: neither the binary nor the device changes while the process lives.
    """
    reason = _ext.cuda_unavailable_reason()
    if reason:
        return reason
    module = _ext.cuda_module()
    if not hasattr(module, kernel) or not hasattr(module, "compiled_ptx_archs"):
        return f"bigperf._C_cuda was built without {kernel} or before this bigperf (rebuild the package)"
    caps = device_caps(index)
    reason = arch_why_not(caps.capability, list(module.compiled_archs()), list(module.compiled_ptx_archs()))
    if reason:
        return f"{caps.name}: {reason}"
    return smem_why_not(kernel, list(getattr(module, _REQUIREMENTS[kernel])()["config_smem_bytes"]), caps)


def _on_device(device: torch.device):
    """A guard that makes `device` current for the launch (checked first: entering
    torch.cuda.device costs microseconds per call)."""
    return contextlib.nullcontext() if device.index == torch.cuda.current_device() else torch.cuda.device(device)


# ----------------------------------------------------------------------------- launches

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
    with _on_device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        _ext.cuda_module().fused_linear(
            x2.data_ptr(), x2.stride(0), w.data_ptr(), w.stride(0),
            bias.data_ptr() if bias is not None else 0,
            r.data_ptr() if r is not None else 0, r.stride(0) if r is not None else 0,
            out.data_ptr(), out.stride(0), m, n, k, DTYPE_CODES[x.dtype], act_code, stream)
    return out.reshape(*x.shape[:-1], n) if out.is_contiguous() else out.contiguous().reshape(*x.shape[:-1], n)


# ----------------------------------------------------------------------------- re-layout cache

class RelayoutCache(OncePerData):
    """Kernel-order copies of weights, built once per data (bigperf/ops/tensor_keys.py): the
    same live tensors at the same version, address, shape and strides, so an in-place write
    through torch and a `t.data = other` replacement both rebuild. An entry goes away with
    its source tensors, so the packed GPU copy never outlives the weight it was made from."""


_W8A16_CACHE = RelayoutCache()
_S24_CACHE = RelayoutCache()


# ----------------------------------------------------------------------------- split-K scratch

# One (workspace, counters) pair per (device, stream): launches on one stream run one
# after another, and each split-K launch leaves its counters at zero, so every launch on
# the stream reuses the pair instead of allocating (and zeroing) its own. A pair is
# replaced by a larger one when a launch needs more; the replaced tensors stay referenced,
# since a CUDA graph may have captured their addresses (growth is geometric, so they add
# at most the size of the current pair).
_SPLIT_SCRATCH: dict[tuple[int | None, int], tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED_SCRATCH: list[tuple[torch.Tensor, torch.Tensor]] = []


def split_k_scratch(device: torch.device, stream: int, workspace_bytes: int, counters: int):
    """(workspace uint8 [>= workspace_bytes], counters int32 [>= counters], zero on entry)
    for a split-K launch on `stream` of `device` (made current by the caller)."""
    key = (device.index, stream)
    scratch = _SPLIT_SCRATCH.get(key)
    if scratch is None or scratch[0].numel() < workspace_bytes or scratch[1].numel() < counters:
        if scratch is not None:
            _RETIRED_SCRATCH.append(scratch)
        size = max(16, workspace_bytes, 2 * scratch[0].numel() if scratch else 0)
        count = max(1, counters, 2 * scratch[1].numel() if scratch else 0)
        scratch = (torch.empty(size, dtype=torch.uint8, device=device),
                   torch.zeros(count, dtype=torch.int32, device=device))
        _SPLIT_SCRATCH[key] = scratch
    return scratch


@functools.lru_cache(maxsize=4096)
def _w8a16_plan(module, m: int, n: int, k: int, sm_count: int, max_smem: int) -> tuple[int, int, int, int]:
    plan = module.w8a16_plan(m, n, k, sm_count, -1, -1, max_smem)
    return plan["config"], plan["splits"], plan["workspace_bytes"], plan["counters"]


def _padded_out(m: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """[m, n] output whose rows start 16-byte aligned (row stride rounded up to 8)."""
    stride = -(-n // _STRIDE_MULTIPLE) * _STRIDE_MULTIPLE
    return torch.empty((m, stride), dtype=like.dtype, device=like.device)[:, :n]


def _finish_shape(out: torch.Tensor, x: torch.Tensor, n: int) -> torch.Tensor:
    return out.reshape(*x.shape[:-1], n) if out.is_contiguous() else out.contiguous().reshape(*x.shape[:-1], n)


def launch_w8a16(x, qweight, scale, zero_point, bias, act_code: int) -> torch.Tensor:
    """int8 weight-only linear on the W8A16 kernel; the weight is re-laid out once per
    tensor version (layers on a GPU own their layout instead: Int8Linear)."""
    from bigperf.formats.w8a16_cuda import pack_w8a16

    sources = (qweight, scale) if zero_point is None else (qweight, scale, zero_point)
    layout = _W8A16_CACHE.get(sources, lambda: pack_w8a16(qweight, scale, zero_point))
    return launch_w8a16_layout(x, layout, bias, act_code)


def launch_w8a16_layout(x, layout, bias, act_code: int) -> torch.Tensor:
    """int8 weight-only linear on the W8A16 kernel from a bigperf.formats.w8a16_cuda.W8A16Layout."""
    n, k = layout.n, layout.k
    # The kernel reads the layout's tensors as contiguous: copy any that a caller built
    # otherwise (a no-op for a layer's own layout). Referenced until the launch returns.
    weight, scale = layout.weight.contiguous(), layout.scale.contiguous()
    zero = layout.zero.contiguous() if layout.zero is not None else None
    x2 = aligned_rows(x, k)
    m = x2.shape[0]
    out = _padded_out(m, n, x)
    module = _ext.cuda_module()
    caps = device_caps(x.device.index)
    config, splits, workspace_bytes, counters = _w8a16_plan(module, m, n, k, caps.sm_count, caps.smem_per_block_optin)
    with _on_device(x.device):
        stream = torch.cuda.current_stream().cuda_stream
        split_args = (0, 0, 0, 0)
        if splits > 1:
            workspace, counter_buf = split_k_scratch(x.device, stream, workspace_bytes, counters)
            split_args = (workspace.data_ptr(), workspace.numel(), counter_buf.data_ptr(), counter_buf.numel())
        module.w8a16_linear(
            x2.data_ptr(), x2.stride(0), weight.data_ptr(), scale.data_ptr(),
            zero.data_ptr() if zero is not None else 0, layout.group_size or 0,
            bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), *split_args,
            m, n, k, DTYPE_CODES[x.dtype], act_code, stream, config, splits)
    return _finish_shape(out, x, n)


def launch_sparse24(x, values, meta, bias, act_code: int) -> torch.Tensor:
    """2:4 sparse linear on the mma.sp kernel; the weight is re-laid out once."""
    from bigperf.formats.sparse24 import pack_s24

    n, k = values.shape[0], values.shape[1] * 2
    layout = _S24_CACHE.get((values, meta), lambda: pack_s24(values, meta))
    x2 = aligned_rows(x, k)
    m = x2.shape[0]
    out = _padded_out(m, n, x)
    with _on_device(x.device):
        _ext.cuda_module().sparse24_linear(
            x2.data_ptr(), x2.stride(0), layout.values.data_ptr(), layout.values.stride(0), layout.meta.data_ptr(),
            bias.data_ptr() if bias is not None else 0, out.data_ptr(), out.stride(0), m, n, k,
            DTYPE_CODES[x.dtype], act_code, torch.cuda.current_stream().cuda_stream)
    return _finish_shape(out, x, n)
