"""The 16-column panel order shared by the AVX2 kernel layouts (w8a8_cpu, w8a16_cpu).

A [N, K] int8 weight becomes ceil(N / 16) panels, one row each of the packed tensor: panel p
holds output columns 16p .. 16p+15 (zero rows past N) as K / u unit rows, each the 16
columns x u consecutive k (column-major within the unit row). u = 1 is plain [K][16].
"""

from __future__ import annotations

import torch

from bigperf import _ext
from bigperf.formats._checks import round_up
from bigperf.ops.validation import DTYPE_CODES

PANEL_N = 16


def to_panels(qweight: torch.Tensor, kp: int, u: int) -> torch.Tensor:
    """[N, K] int8 -> [Np / 16, kp * 16] in panel order (K zero-padded to kp, a multiple of u)."""
    n, k = qweight.shape
    np_ = round_up(n, PANEL_N)
    q = torch.zeros((np_, kp), dtype=qweight.dtype, device=qweight.device)
    q[:n, :k] = qweight
    # (panel, column, unit, e) -> (panel, unit, column, e): column 16 panel + column, k u unit + e.
    return q.view(np_ // PANEL_N, PANEL_N, kp // u, u).permute(0, 2, 1, 3).contiguous().view(np_ // PANEL_N, -1)


def from_panels(panels: torch.Tensor, n: int, k: int, kp: int, u: int) -> torch.Tensor:
    """The [N, K] int8 weight to_panels laid out (a new contiguous tensor)."""
    np_ = round_up(n, PANEL_N)
    units = panels.view(np_ // PANEL_N, kp // u, PANEL_N, u).permute(0, 2, 1, 3)
    return units.reshape(np_, kp)[:n, :k].contiguous()


def why_not_hold_panels(device: torch.device) -> str | None:
    """Why a layer on `device` should not hold a panel layout (w8a8_cpu, w8a16_cpu), or None:
    their kernels are the AVX2 and the AVX-512 path's."""
    if device.type != "cpu":
        return f"a CPU kernel layout; the weight is on {device}"
    if _ext.cpu_module() is None:
        return _ext.cpu_unavailable_reason()
    return kernels_isa_why_not()


def kernels_isa_why_not() -> str | None:
    """Why the panel layouts' kernels cannot run on the CPU ISA path in use, or None."""
    if _ext.cpu_isa() not in ("avx2", "avx512"):
        return f"the panel layouts' kernels are AVX2 and AVX-512 code; the CPU path in use is {_ext.cpu_isa()}"
    return None


def panel_rows(panels: torch.Tensor, k: int, kp: int, u: int):
    """rows(out, r0, r1) for torch_paths.torch_linear: the codes of weight rows [r0, r1) (r0 a
    multiple of 16) read from the panel order into out ([r1 - r0, k], any dtype) in one
    transposing copy, so PyTorch's paths on a held layout convert a chunk at a time instead
    of unpacking the whole weight on every call."""
    units = panels.view(panels.shape[0], kp // u, PANEL_N, u).permute(0, 2, 1, 3)  # (panel, column, unit, e)
    module = _ext.cpu_module()
    fast = (u == 1 and panels.is_cpu and module is not None and hasattr(module, "int8_panels_to_rows")
            and "avx2" in _ext.runnable_cpu_isas())

    def rows(out: torch.Tensor, r0: int, r1: int) -> None:
        code = DTYPE_CODES.get(out.dtype)
        if fast and code is not None and out.stride(-1) == 1:  # 16 x 16 byte transposes: 3-8x torch's copy
            module.int8_panels_to_rows(panels.data_ptr(), k, r0, r1, out.data_ptr(), out.stride(0), code)
            return
        p0, full = r0 // PANEL_N, (r1 - r0) // PANEL_N
        if full and k == kp:
            out[: full * PANEL_N].view(full, PANEL_N, kp // u, u).copy_(units[p0:p0 + full])
        elif full:  # K padded in the layout: through a copy of whole rows
            out[: full * PANEL_N].view(full, PANEL_N, k).copy_(units[p0:p0 + full].reshape(full, PANEL_N, kp)[..., :k])
        tail = r1 - r0 - full * PANEL_N
        if tail:
            out[full * PANEL_N:].copy_(units[p0 + full].reshape(PANEL_N, kp)[:tail, :k])
    return rows
