"""What the CPU lane layouts of the sparse formats share (sparse24_lanes, bsr_lanes): one
output row per vector lane, 16 lanes, and the order of float values within a lane word,
which depends on the dtype (so a dtype change of the module re-orders them)."""

from __future__ import annotations

import torch

LANES = 16


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def first_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    # A copy when rows are dropped: a view would keep the padding's storage alive.
    return t if t.shape[0] == n else t[:n].clone()


def slot_major(dtype: torch.dtype) -> bool:
    # Float values, in both layouts: bf16 lane-major pairs [.., 16, 2], f32/f16 [.., 2, 16]
    # (2:4: a group's two slots; BSR: two neighbouring columns). int8 has its own order and
    # never changes dtype with the module.
    return dtype != torch.bfloat16


def reorder_lanes_values(values: torch.Tensor, laid_out_for: torch.dtype) -> torch.Tensor:
    """Lane-layout values (2:4 or BSR) converted element-wise from `laid_out_for` (e.g. by
    Module.half()) back in the order of their own dtype; the tensor itself when the orders
    agree. (BSR values need an even bk for this, as bf16 ones always have.)"""
    if slot_major(values.dtype) == slot_major(laid_out_for):
        return values
    pairs = (2, LANES) if slot_major(laid_out_for) else (LANES, 2)
    return values.reshape(-1, *pairs).transpose(1, 2).reshape(values.shape).contiguous()
