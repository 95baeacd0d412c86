"""The 16-column panel order shared by the AVX2 kernel layouts (w8a8_cpu, w8a16_cpu).

A [N, K] int8 weight becomes ceil(N / 16) panels, one row each of the packed tensor: panel p
holds output columns 16p .. 16p+15 (zero rows past N) as K / u unit rows, each the 16
columns x u consecutive k (column-major within the unit row). u = 1 is plain [K][16].
"""

from __future__ import annotations

import torch

from bigperf.formats._checks import round_up

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
