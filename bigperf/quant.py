"""int8 quantisation math in plain PyTorch: the oracle for the int8 kernels and layers.

Weights: int8 per output channel (group_size=None) or per group of `group_size`
consecutive K elements, symmetric ([-127, 127], scale = absmax / 127) or asymmetric
(zero point, full [-128, 127]), round to nearest even. Activations (W8A8): symmetric
per-token (per-row absmax) int8, computed at run time: 8 bits (codes in [-127, 127]) or,
opt-in, 7 bits ([-63, 63], scale = absmax / 63: fbgemm's reduce_range accuracy class,
~7 dB less SQNR, and what the AVX2 kernel multiplies fastest).

Layout: qweight [N, K] int8 (nn.Linear order), scale [N, G] fp32 with G = K / group_size
(G = 1 per channel), zero_point [N, G] int8 or None. Dequantised: (q - zero) * scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP_SIZES = (32, 64, 128, 256)
QMIN, QMAX = -128, 127
SYMMETRIC_QMAX = 127  # symmetric weights and activations stay in [-127, 127]
ACTIVATION_BITS = (7, 8)  # per-token activation codes: [-63, 63] or [-127, 127]


def activation_qmax(bits: int, function: str = "bigperf.quant.activation_qmax", arg: str = "bits") -> int:
    """The largest |code| of `bits`-bit symmetric activations: 127 (8) or 63 (7)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ACTIVATION_BITS:
        raise ValueError(f"{function}: argument '{arg}' must be 7 or 8 (bits of the per-token activation codes), "
                         f"got {bits!r}")
    return (1 << (bits - 1)) - 1


@dataclass
class QuantizedWeight:
    qweight: torch.Tensor  # [N, K] int8
    scale: torch.Tensor  # [N, G] float32
    zero_point: torch.Tensor | None  # [N, G] int8, None when symmetric

    @property
    def group_size(self) -> int | None:
        groups = self.scale.shape[1]
        return None if groups == 1 else self.qweight.shape[1] // groups


def _check_group_size(k: int, group_size: int | None, function: str) -> int:
    if group_size is None:
        return k
    if group_size not in GROUP_SIZES:
        raise ValueError(f"{function}: argument 'group_size' must be None (per channel) or one of "
                         f"{GROUP_SIZES}, got {group_size!r}")
    if k % group_size:
        raise ValueError(f"{function}: argument 'group_size' {group_size} does not divide K = {k}; "
                         f"use a group size that divides K, or group_size=None (per channel)")
    return group_size


def quantize_weight(weight: torch.Tensor, group_size: int | None = None, symmetric: bool = True) -> QuantizedWeight:
    """int8-quantise a [N, K] float weight per channel or per group along K."""
    function = "bigperf.quant.quantize_weight"
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.dim() != 2:
        raise TypeError(f"{function}: argument 'weight' must be a 2-D floating-point tensor, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)} {tuple(getattr(weight, 'shape', ()))}")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{function}: argument 'weight' holds NaN or Inf values; they cannot be quantised")
    n, k = weight.shape
    if k == 0:
        raise ValueError(f"{function}: argument 'weight' has no columns (shape {tuple(weight.shape)}); "
                         f"there is nothing to quantise per channel or group")
    group = _check_group_size(k, group_size, function)
    w = weight.detach().float().reshape(n, k // group, group)
    if symmetric:
        absmax = w.abs().amax(dim=2)
        # An all-zero group gets scale 1: finite, and its codes are 0 either way.
        scale = torch.where(absmax > 0, absmax / SYMMETRIC_QMAX, torch.ones_like(absmax))
        q = torch.clamp(torch.round(w / scale[..., None]), -SYMMETRIC_QMAX, SYMMETRIC_QMAX)
        return QuantizedWeight(q.to(torch.int8).reshape(n, k), scale.contiguous(), None)
    # The range always includes 0 so that zero weights stay exact and the zero point fits int8.
    low = w.amin(dim=2).clamp(max=0)
    high = w.amax(dim=2).clamp(min=0)
    span = high - low
    scale = torch.where(span > 0, span / (QMAX - QMIN), torch.ones_like(span))
    zero = torch.clamp(QMIN - torch.round(low / scale), QMIN, QMAX)
    q = torch.clamp(torch.round(w / scale[..., None]) + zero[..., None], QMIN, QMAX)
    return QuantizedWeight(q.to(torch.int8).reshape(n, k), scale.contiguous(), zero.to(torch.int8).contiguous())


def dequantize_weight(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(q - zero) * scale as a [N, K] tensor of `dtype` (computed in fp32)."""
    out = torch.empty(qweight.shape, dtype=torch.float32, device=qweight.device)
    return dequantize_weight_into(out, qweight, scale, zero_point).to(dtype)


def dequantize_weight_into(out: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor,
                           zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """dequantize_weight written into `out` ([N, K], float): no temporaries of the weight's
    size in fp32, for the chunked GEMM paths (bigperf/ops/torch_paths.py). (q - zero) * scale
    is computed in fp32 and rounded once to out's dtype."""
    if out.dtype != torch.float32:
        return out.copy_(dequantize_weight(qweight, scale, zero_point))
    n, k = qweight.shape
    groups = scale.shape[1]
    grouped = out.view(n, groups, k // groups)
    grouped.copy_(qweight.reshape(n, groups, k // groups))
    if zero_point is not None:
        grouped.sub_(zero_point[..., None])
    grouped.mul_(scale.float()[..., None])
    return out


def absmax_rows(act_absmax: torch.Tensor | None) -> torch.Tensor | None:
    """int8_dynamic_linear's act_absmax (x's leading shape) as one fp32 value per row of x
    flattened to [M, K], contiguous: how the kernels read it."""
    return None if act_absmax is None else act_absmax.reshape(-1).contiguous()


def quantize_activation_per_token(x: torch.Tensor, bits: int = 8,
                                  absmax: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 of a [M, K] tensor: (q [M, K] int8, scale [M] fp32).

    bits=8: q in [-127, 127], scale = absmax / 127; bits=7: q in [-63, 63], scale =
    absmax / 63 (scale 1 for an all-zero row). Round half to even. A row holding NaN or
    Inf gets scale NaN and codes 0, so that its outputs are NaN, as F.linear gives on the
    dequantised math (amax keeps NaN; Inf / qmax is made NaN). `absmax` ([M] fp32), when
    given, replaces each row's own (a row-wise shard quantises its slice against the whole
    row's: bigperf/distributed); a row exceeding it clamps to +-qmax."""
    qmax = activation_qmax(bits, "bigperf.quant.quantize_activation_per_token")
    x32 = x.float()
    if absmax is None:  # (K = 0: an empty row's absmax is 0, which amax refuses to reduce)
        absmax = x32.abs().amax(dim=-1) if x32.shape[-1] else x32.new_zeros(x32.shape[:-1])
    else:  # a row holding NaN or Inf still gets scale NaN
        absmax = torch.where(torch.isfinite(x32).all(dim=-1), absmax.float(), float("nan"))
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    scale = torch.where(torch.isfinite(absmax), scale, torch.full_like(absmax, float("nan")))
    q = torch.clamp(torch.round(x32 / scale[..., None]).nan_to_num_(0.0), -qmax, qmax).to(torch.int8)
    return q, scale
