"""Re-layouts of bigperf's packed weights into the orders the CUDA tensor-core kernels load.

Pure PyTorch (CPU or GPU tensors), exact round trips, versioned: each layout carries the
version it was written in, and bigperf._C_cuda reports the version its kernels read
(``w8a16_requirements()["layout_version"]``, ``sparse24_requirements()["layout_version"]``).
Change a layout and its version together, here and in csrc/cuda (w8a16_tile.h,
sparse24_tile.h).

W8A16 (int8 weight-only, from bigperf.quant's qweight [N, K] int8, scale [N, G] fp32,
zero_point [N, G] int8 or None), version 1:
  weight [Np/32, Kp*32] int8, Np = N rounded up to 32, Kp = K rounded up to 16, zero
      padded. Each row is one block of 32 output columns; it holds Kp/16 blocks of 512
      bytes, one per 16-wide k step. In a block, bytes 16l .. 16l+15 belong to lane
      l = 4g + t of a warp: four groups of 4 bytes, one per 8-column fragment j, each
      holding the codes of column 8j + g at k = 2t, 2t+8, 2t+1, 2t+9 (the k16 step's
      mma.m16n8k16 B fragment registers, even bytes first register, odd bytes second).
  scale [G, Np] fp32 (group-major), zero [G, Np] fp32 or None; padding columns are 0.

2:4 sparse (from bigperf.sparsity's values [N, K/2], meta [N, K/8] uint8), version 1:
  values [N, Kp/2], Kp = K rounded up to 32, zero padded (their order is already the
      compressed-operand order of mma.sp); when K % 32 == 0 the source tensor itself
      (contiguous, 16-byte aligned), not a copy.
  meta [ceil(N/16), Kp/32 * 16] int32 (uint32 bit patterns): per 16-row block and
      32-wide k block, 16 words; word 2g + p is the metadata register of lane 4g + p of
      mma.sp.m16n8k32 (sparsity selector 0): low 16 bits row g, high 16 bits row g + 8,
      each the 2-bit positions of logical k 16p .. 16p+15 (bigperf's two meta bytes for
      that range, little-endian). Padding groups hold positions (0, 1) (nibble 0x4): an
      all-zero nibble is invalid metadata for the tensor cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

W8A16_LAYOUT_VERSION = 1
S24_LAYOUT_VERSION = 1

_W8_PACK_N, _W8_PACK_K = 32, 16
_S24_PACK_K, _S24_ROW_BLOCK = 32, 16
_S24_PAD_META_BYTE = 0x44  # two groups with kept positions (0, 1)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _check(function: str, name: str, t, dtypes, dims: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{function}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{function}: argument '{name}' must have dtype {allowed}, got {t.dtype}")
    if t.dim() != dims:
        raise ValueError(f"{function}: argument '{name}' must be {dims}-D, got shape {tuple(t.shape)}")


def _check_version(function: str, layout) -> None:
    expected = W8A16_LAYOUT_VERSION if isinstance(layout, W8A16Layout) else S24_LAYOUT_VERSION
    if layout.version != expected:
        raise ValueError(f"{function}: layout version {layout.version} is not the version {expected} this "
                         f"bigperf reads; re-pack the weight")


# ----------------------------------------------------------------------------- W8A16

@dataclass(frozen=True)
class W8A16Layout:
    weight: torch.Tensor  # [Np/32, Kp*32] int8
    scale: torch.Tensor  # [G, Np] float32
    zero: torch.Tensor | None  # [G, Np] float32
    n: int
    k: int
    group_size: int | None  # None = per output channel
    version: int = W8A16_LAYOUT_VERSION


def pack_w8a16(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> W8A16Layout:
    """bigperf.quant's int8 weight (codes, scales, zero points) in the W8A16 kernel's order."""
    function = "bigperf.cuda_layouts.pack_w8a16"
    _check(function, "qweight", qweight, (torch.int8,), 2)
    _check(function, "scale", scale, (torch.float32,), 2)
    n, k = qweight.shape
    groups = scale.shape[1]
    if scale.shape[0] != n or groups < 1 or k % groups or (groups > 1 and (k // groups) % 32):
        raise ValueError(f"{function}: argument 'scale' must be [N, G] = [{n}, G] with G dividing K = {k} into "
                         f"groups of a multiple of 32, got {tuple(scale.shape)}")
    if zero_point is not None:
        _check(function, "zero_point", zero_point, (torch.int8,), 2)
        if zero_point.shape != scale.shape:
            raise ValueError(f"{function}: argument 'zero_point' must have the shape of 'scale' "
                             f"{tuple(scale.shape)}, got {tuple(zero_point.shape)}")
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if t is not None and t.device != qweight.device:
            raise ValueError(f"{function}: argument '{name}' is on {t.device} but 'qweight' is on {qweight.device}")
    np_, kp = _round_up(n, _W8_PACK_N), _round_up(k, _W8_PACK_K)
    q = torch.zeros((np_, kp), dtype=torch.int8, device=qweight.device)
    q[:n, :k] = qweight
    # (nb, j, g, kb, h, t, e): column 32 nb + 8 j + g, k 16 kb + 8 h + 2 t + e
    #   -> (nb, kb, g, t, j, e, h): lane 4g + t, fragment j, byte 2e + h.
    blocks = q.view(np_ // 32, 4, 8, kp // 16, 2, 4, 2).permute(0, 3, 2, 5, 1, 6, 4)
    weight = blocks.contiguous().view(np_ // 32, kp * 32)

    def group_major(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((groups, np_), dtype=torch.float32, device=qweight.device)
        out[:, :n] = t.t().float()
        return out

    return W8A16Layout(weight, group_major(scale), group_major(zero_point) if zero_point is not None else None,
                       n, k, None if groups == 1 else k // groups)


def unpack_w8a16(layout: W8A16Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The (qweight [N, K] int8, scale [N, G] fp32, zero_point [N, G] int8 or None) packed."""
    _check_version("bigperf.cuda_layouts.unpack_w8a16", layout)
    n, k = layout.n, layout.k
    np_, kp = _round_up(n, _W8_PACK_N), _round_up(k, _W8_PACK_K)
    blocks = layout.weight.view(np_ // 32, kp // 16, 8, 4, 4, 2, 2).permute(0, 4, 2, 1, 6, 3, 5)
    qweight = blocks.reshape(np_, kp)[:n, :k].contiguous()
    scale = layout.scale[:, :n].t().contiguous()
    zero = layout.zero[:, :n].t().round().to(torch.int8).contiguous() if layout.zero is not None else None
    return qweight, scale, zero


# ----------------------------------------------------------------------------- 2:4 sparse

@dataclass(frozen=True)
class S24Layout:
    values: torch.Tensor  # [N, Kp/2]
    meta: torch.Tensor  # [ceil(N/16), Kp/32 * 16] int32
    n: int
    k: int
    version: int = S24_LAYOUT_VERSION


def pack_s24(values: torch.Tensor, meta: torch.Tensor) -> S24Layout:
    """bigperf.sparsity's 2:4 compressed weight in the mma.sp kernel's order."""
    function = "bigperf.cuda_layouts.pack_s24"
    _check(function, "values", values, (torch.float32, torch.float16, torch.bfloat16, torch.int8), 2)
    _check(function, "meta", meta, (torch.uint8,), 2)
    n, half = values.shape
    k = 2 * half
    if k % 8 or tuple(meta.shape) != (n, k // 8):
        raise ValueError(f"{function}: argument 'meta' must be [N, K/8] = [{n}, {k // 8}] with K % 8 == 0, "
                         f"got {tuple(meta.shape)} for values {tuple(values.shape)}")
    if meta.device != values.device:
        raise ValueError(f"{function}: argument 'meta' is on {meta.device} but 'values' is on {values.device}")
    kp = _round_up(k, _S24_PACK_K)
    nb = -(-n // _S24_ROW_BLOCK)
    if kp == k and values.is_contiguous() and values.data_ptr() % 16 == 0:
        # Already the kernel's order with nothing to pad: share the layer's tensor rather
        # than keep a second copy of the largest part of the weight on the GPU.
        v = values
    else:
        v = torch.zeros((n, kp // 2), dtype=values.dtype, device=values.device)
        v[:, :half] = values
    b = torch.full((nb * _S24_ROW_BLOCK, kp // 8), _S24_PAD_META_BYTE, dtype=torch.int64, device=meta.device)
    b[:n, :k // 8] = meta.to(torch.int64)
    u16 = b[:, 0::2] | (b[:, 1::2] << 8)  # [Np16*16, Kp/16]: logical k 16w .. 16w+15
    # row 16 rb + 8 half + g, u16 column 2 kb + p -> word (rb, kb, g, p) = lo | hi << 16
    parts = u16.view(nb, 2, 8, kp // 32, 2)
    words = (parts[:, 0] | (parts[:, 1] << 16)).permute(0, 2, 1, 3)  # [nb, Kp/32, 8, 2]
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    return S24Layout(v, words.reshape(nb, kp // 32 * 16).contiguous(), n, k)


def unpack_s24(layout: S24Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """The (values [N, K/2], meta [N, K/8] uint8) packed by pack_s24."""
    _check_version("bigperf.cuda_layouts.unpack_s24", layout)
    n, k = layout.n, layout.k
    kp = _round_up(k, _S24_PACK_K)
    nb = -(-n // _S24_ROW_BLOCK)
    words = layout.meta.to(torch.int64).view(nb, kp // 32, 8, 2) & 0xFFFFFFFF
    parts = torch.stack((words & 0xFFFF, words >> 16), dim=1).permute(0, 1, 3, 2, 4)  # [nb, 2, 8, Kp/32, 2]
    u16 = parts.reshape(nb * _S24_ROW_BLOCK, kp // 16)
    b = torch.stack((u16 & 0xFF, u16 >> 8), dim=2).reshape(nb * _S24_ROW_BLOCK, kp // 8)
    return layout.values[:, :k // 2].contiguous(), b[:n, :k // 8].to(torch.uint8).contiguous()
