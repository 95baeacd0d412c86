"""The CUDA layouts (bigperf/formats/w8a16_cuda.py, sparse24.py pack_s24) on the CPU: exact pack/unpack round trips, the documented element
positions checked one by one against independent formulas, padding, versions, bad input.

Whether these orders are what the kernels load is checked by the emulator tests
(tests/test_cuda_emulated_kernels.py) and, on a GPU, by tests/gpu."""
from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from bigperf.formats.sparse24 import CUDA_LAYOUT_VERSION as S24_LAYOUT_VERSION, pack_s24, unpack_s24
from bigperf.formats.w8a16_cuda import VERSION as W8A16_LAYOUT_VERSION, pack_w8a16, unpack_w8a16
from bigperf.quant import quantize_weight
from bigperf.sparsity import nm_mask, pack_24
from tests.helpers import random_tensor

W8_CASES = [  # (N, K, group_size, symmetric)
    (40, 72, None, True), (1, 8, None, False), (64, 128, 32, True), (33, 256, 64, False),
    (100, 512, 128, True), (7, 256, 256, False), (32, 16, None, True),
]


def _quantized(n, k, group_size, symmetric, seed=0):
    return quantize_weight(random_tensor(n, k, seed=seed), group_size=group_size, symmetric=symmetric)


@pytest.mark.parametrize("n,k,group_size,symmetric", W8_CASES)
def test_w8a16_round_trip_is_exact(n, k, group_size, symmetric):
    q = _quantized(n, k, group_size, symmetric)
    layout = pack_w8a16(q.qweight, q.scale, q.zero_point)
    # One group spanning K is per channel, whatever it was called.
    assert layout.version == W8A16_LAYOUT_VERSION and layout.group_size == (None if group_size == k else group_size)
    np_, kp = -(-n // 32) * 32, -(-k // 16) * 16
    assert layout.weight.shape == (np_ // 32, kp * 32) and layout.weight.dtype == torch.int8
    assert layout.scale.shape == (q.scale.shape[1], np_) and layout.scale.dtype == torch.float32
    qweight, scale, zero = unpack_w8a16(layout)
    assert torch.equal(qweight, q.qweight) and torch.equal(scale, q.scale)
    if symmetric:
        assert zero is None and layout.zero is None
    else:
        assert torch.equal(zero, q.zero_point) and layout.zero.shape == layout.scale.shape


@pytest.mark.parametrize("n,k", [(40, 72), (96, 128)])
def test_w8a16_bytes_sit_where_the_lanes_read_them(n, k):
    """Block (nb, kb), lane 4g + t, fragment j, byte b holds column 32 nb + 8 j + g and
    k = 16 kb + 2t + (0, 8, 1, 9)[b]; padding is zero."""
    q = _quantized(n, k, None, True, seed=3)
    w = pack_w8a16(q.qweight, q.scale).weight
    rng = random.Random(0)
    for _ in range(400):
        nb, kb = rng.randrange(w.shape[0]), rng.randrange(w.shape[1] // 512)
        lane, j, b = rng.randrange(32), rng.randrange(4), rng.randrange(4)
        col = 32 * nb + 8 * j + lane // 4
        kk = 16 * kb + 2 * (lane % 4) + (0, 8, 1, 9)[b]
        got = int(w[nb, kb * 512 + lane * 16 + 4 * j + b])
        expected = int(q.qweight[col, kk]) if col < n and kk < k else 0
        assert got == expected, (nb, kb, lane, j, b)


def test_w8a16_scales_are_group_major_and_zero_padded():
    q = _quantized(40, 256, 64, False)
    layout = pack_w8a16(q.qweight, q.scale, q.zero_point)
    assert torch.equal(layout.scale[:, :40], q.scale.t())
    assert torch.equal(layout.zero[:, :40], q.zero_point.t().float())
    assert not layout.scale[:, 40:].any() and not layout.zero[:, 40:].any()


def test_w8a16_layout_follows_the_weight_device_and_is_contiguous():
    q = _quantized(16, 64, 32, True)
    layout = pack_w8a16(q.qweight, q.scale)
    assert layout.weight.is_contiguous() and layout.scale.is_contiguous()
    assert layout.weight.device == q.qweight.device


W8_BAD = [
    (lambda q: (q.qweight.float(), q.scale, None), TypeError, "qweight"),
    (lambda q: (q.qweight, q.scale.double(), None), TypeError, "scale"),
    (lambda q: (q.qweight[0], q.scale, None), ValueError, "qweight"),
    (lambda q: (q.qweight, q.scale[:5], None), ValueError, "scale"),
    (lambda q: (q.qweight, torch.ones(16, 3), None), ValueError, "scale"),
    (lambda q: (q.qweight, torch.ones(16, 8), None), ValueError, "scale"),  # groups of 16
    (lambda q: (q.qweight, q.scale, torch.zeros(16, 1, dtype=torch.int32)), TypeError, "zero_point"),
    (lambda q: (q.qweight, q.scale, torch.zeros(16, 2, dtype=torch.int8)), ValueError, "zero_point"),
]


@pytest.mark.parametrize("make,error,word", W8_BAD)
def test_w8a16_bad_input_names_the_argument(make, error, word):
    q = _quantized(16, 128, None, True)
    with pytest.raises(error, match=f"pack_w8a16: argument '{word}'"):
        pack_w8a16(*make(q))


def test_w8a16_unpack_refuses_another_version():
    q = _quantized(16, 64, None, True)
    layout = dataclasses.replace(pack_w8a16(q.qweight, q.scale), version=W8A16_LAYOUT_VERSION + 1)
    with pytest.raises(ValueError, match="layout version"):
        unpack_w8a16(layout)


# ----------------------------------------------------------------------------- 2:4

def _pruned(n, k, dtype=torch.float32, seed=0):
    w = random_tensor(n, k, seed=seed)
    return (w * nm_mask(w)).to(dtype)


S24_CASES = [(40, 72), (16, 64), (100, 200), (1, 8), (17, 32), (64, 4096 // 16)]


@pytest.mark.parametrize("n,k", S24_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_s24_round_trip_is_exact(n, k, dtype):
    p = pack_24(_pruned(n, k, dtype))
    layout = pack_s24(p.values, p.meta)
    assert layout.version == S24_LAYOUT_VERSION
    kp = -(-k // 32) * 32
    assert layout.values.shape == (n, kp // 2) and layout.values.dtype == dtype
    assert layout.meta.shape == (-(-n // 16), kp // 32 * 16) and layout.meta.dtype == torch.int32
    values, meta = unpack_s24(layout)
    assert torch.equal(values, p.values) and torch.equal(meta, p.meta)


def _nibble(meta_bytes, row, group):
    byte = int(meta_bytes[row, group // 2])
    return (byte >> (4 * (group % 2))) & 0xF


@pytest.mark.parametrize("n,k", [(40, 72), (48, 128)])
def test_s24_words_hold_each_lanes_metadata(n, k):
    """Word 2g + p of block (rb, kb): bits 4q..4q+3 (+16 for row g + 8) are the positions of
    group 8 kb + 4 p + q of row 16 rb + g (+8); padding groups hold nibble 0x4."""
    p = pack_24(_pruned(n, k, seed=5))
    layout = pack_s24(p.values, p.meta)
    words = layout.meta.to(torch.int64) & 0xFFFFFFFF
    kp = -(-k // 32) * 32
    for rb in range(words.shape[0]):
        for kb in range(kp // 32):
            for g in range(8):
                for lane_p in range(2):
                    word = int(words[rb, kb * 16 + 2 * g + lane_p])
                    for half in range(2):
                        row = 16 * rb + g + 8 * half
                        for q in range(4):
                            group = 8 * kb + 4 * lane_p + q
                            got = (word >> (16 * half + 4 * q)) & 0xF
                            expected = _nibble(p.meta, row, group) if row < n and group < k // 4 else 0x4
                            assert got == expected, (rb, kb, g, lane_p, half, q)


def test_s24_values_are_zero_padded_along_k():
    p = pack_24(_pruned(8, 40))
    layout = pack_s24(p.values, p.meta)
    assert torch.equal(layout.values[:, :20], p.values) and not layout.values[:, 20:].any()


def test_s24_values_are_shared_not_copied_when_nothing_needs_padding():
    """K % 32 == 0: the layout reads the layer's own values (no second copy on the GPU);
    otherwise, or for a view that is not contiguous, a padded copy."""
    p = pack_24(_pruned(8, 64))
    assert pack_s24(p.values, p.meta).values.data_ptr() == p.values.data_ptr()
    padded = pack_24(_pruned(8, 40))
    assert pack_s24(padded.values, padded.meta).values.data_ptr() != padded.values.data_ptr()
    wide = torch.zeros(8, 64, dtype=p.values.dtype)
    wide[:, :32] = p.values
    view = wide[:, :32]  # right shape, row stride 64: not the kernel's order
    layout = pack_s24(view, p.meta)
    assert layout.values.data_ptr() != view.data_ptr() and torch.equal(layout.values, p.values)


S24_BAD = [
    (lambda p: (p.values.to(torch.int16), p.meta), TypeError, "values"),
    (lambda p: (p.values, p.meta.to(torch.int8)), TypeError, "meta"),
    (lambda p: (p.values[0], p.meta), ValueError, "values"),
    (lambda p: (p.values, p.meta[:, :-1]), ValueError, "meta"),
    (lambda p: (p.values[:, :-2], p.meta), ValueError, "meta"),
]


@pytest.mark.parametrize("make,error,word", S24_BAD)
def test_s24_bad_input_names_the_argument(make, error, word):
    p = pack_24(_pruned(16, 64))
    with pytest.raises(error, match=f"pack_s24: argument '{word}'"):
        pack_s24(*make(p))


def test_s24_unpack_refuses_another_version():
    p = pack_24(_pruned(16, 64))
    layout = dataclasses.replace(pack_s24(p.values, p.meta), version=S24_LAYOUT_VERSION + 1)
    with pytest.raises(ValueError, match="layout version"):
        unpack_s24(layout)
