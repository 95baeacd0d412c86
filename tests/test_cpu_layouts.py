"""bigperf.cpu_layouts: the 2:4 CPU lane layout ("cpu-lanes16") against its definition,
exact round trips both ways, and clear refusals."""

import dataclasses

import pytest
import torch

from bigperf.cpu_layouts import (
    S24_LANES_VERSION,
    Sparse24Lanes,
    pack_24_lanes,
    reorder_lanes_values,
    unpack_24_lanes,
)
from bigperf.sparsity import meta_is_valid, nm_mask, pack_24, pack_24_int8
from tests.helpers import random_tensor

VALUE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8]


def canonical(n, k, dtype, seed=0):
    w = random_tensor(n, k, seed=seed)
    w = w * nm_mask(w)
    return pack_24_int8(w) if dtype == torch.int8 else pack_24(w.to(dtype))


def by_definition(values, meta, scale):
    """The layout written element by element from its definition (module docstring), with
    plain index arithmetic rather than the views pack_24_lanes uses."""
    n, half = values.shape
    k, nb = 2 * half, -(-n // 16)
    out_v = torch.zeros(nb, 8 * k, dtype=values.dtype)
    out_m = torch.full((nb, 2 * k), 0x44, dtype=torch.uint8)
    for row in range(n):
        b, lane = divmod(row, 16)
        for j in range(k // 8):
            out_m[b, j * 16 + lane] = meta[row, j]
        for g in range(k // 4):
            for s in range(2):
                if values.dtype == torch.bfloat16:  # one 32-bit word per lane and group
                    i = (g * 16 + lane) * 2 + s
                elif values.dtype == torch.int8:  # one 32-bit word per lane and meta byte (2 groups)
                    i = ((g // 2) * 16 + lane) * 4 + (g % 2) * 2 + s
                else:  # per group and slot, 16 lanes in a row
                    i = (g * 2 + s) * 16 + lane
                out_v[b, i] = values[row, 2 * g + s]
    out_s = None
    if scale is not None:
        out_s = torch.zeros(16 * nb)
        out_s[:n] = scale[:, 0]
    return out_v, out_m, out_s


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("n,k", [(1, 8), (15, 16), (16, 24), (33, 40)])
def test_pack_follows_the_definition(dtype, n, k):
    p = canonical(n, k, dtype)
    layout = pack_24_lanes(p.values, p.meta, p.scale)
    values, meta, scale = by_definition(p.values, p.meta, p.scale)
    assert (layout.n, layout.k, layout.version) == (n, k, S24_LANES_VERSION)
    assert torch.equal(layout.values, values) and torch.equal(layout.meta, meta)
    assert (layout.scale is None) == (scale is None) and (scale is None or torch.equal(layout.scale, scale))
    assert layout.values.is_contiguous() and layout.meta.is_contiguous()


@pytest.mark.parametrize("dtype", VALUE_DTYPES)
@pytest.mark.parametrize("n,k", [(1, 8), (7, 16), (16, 32), (17, 64), (40, 4096), (48, 8)])
def test_round_trips_are_exact(dtype, n, k):
    p = canonical(n, k, dtype, seed=n + k)
    layout = pack_24_lanes(p.values, p.meta, p.scale)
    nb = -(-n // 16)
    assert layout.values.shape == (nb, 8 * k) and layout.meta.shape == (nb, 2 * k)
    assert layout.values.dtype == p.values.dtype and layout.meta.dtype == torch.uint8
    assert meta_is_valid(layout.meta), "padding rows must hold valid metadata"
    values, meta, scale = unpack_24_lanes(layout)
    assert torch.equal(values, p.values) and torch.equal(meta, p.meta)
    assert (scale is None) == (p.scale is None) and (scale is None or torch.equal(scale, p.scale))
    # Unpacked rows own exactly their storage (no padding kept alive behind a view).
    assert values.untyped_storage().nbytes() == values.numel() * values.element_size()
    again = pack_24_lanes(values, meta, scale)
    assert torch.equal(again.values, layout.values) and torch.equal(again.meta, layout.meta)
    assert again.scale is None or torch.equal(again.scale, layout.scale)


def test_packing_takes_non_contiguous_canonical_tensors():
    p = canonical(20, 64, torch.float32)
    wide_v = torch.zeros(20, 64)
    wide_v[:, ::2] = p.values
    wide_m = torch.zeros(20, 16, dtype=torch.uint8)
    wide_m[:, ::2] = p.meta
    layout = pack_24_lanes(wide_v[:, ::2], wide_m[:, ::2])
    assert torch.equal(layout.values, pack_24_lanes(p.values, p.meta).values)


@pytest.mark.parametrize("source,target", [(torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16),
                                           (torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_reorder_after_an_elementwise_dtype_change(source, target):
    """What a layer needs after Module.half() & co.: lane values converted element-wise
    are re-ordered for their new dtype (bf16 pairs vs rows of 16)."""
    p = canonical(20, 32, source)
    converted = reorder_lanes_values(pack_24_lanes(p.values, p.meta).values.to(target), source)
    assert torch.equal(converted, pack_24_lanes(p.values.to(target), p.meta).values)


def test_layouts_of_meta_tensors_have_the_right_shapes():
    p = canonical(20, 32, torch.bfloat16)
    layout = pack_24_lanes(p.values.to("meta"), p.meta.to("meta"))
    assert layout.values.shape == (2, 256) and layout.meta.device.type == "meta"
    values, meta, scale = unpack_24_lanes(layout)
    assert values.shape == (20, 16) and meta.shape == (20, 4) and scale is None


def _layout():
    p = canonical(20, 32, torch.int8)
    return p, pack_24_lanes(p.values, p.meta, p.scale)


@pytest.mark.parametrize("call,error,words", [
    (lambda p, lo: pack_24_lanes(p.values.double(), p.meta, None), TypeError, ["pack_24_lanes", "'values'", "dtype"]),
    (lambda p, lo: pack_24_lanes(p.values, p.meta.int(), p.scale), TypeError, ["'meta'", "uint8"]),
    (lambda p, lo: pack_24_lanes(p.values.flatten(), p.meta, p.scale), ValueError, ["'values'", "2-D"]),
    (lambda p, lo: pack_24_lanes(p.values, p.meta[:, :3], p.scale), ValueError, ["'meta'", "[N, K/8]"]),
    (lambda p, lo: pack_24_lanes(p.values[:, :14], p.meta[:, :3], p.scale), ValueError, ["multiple of 8"]),
    (lambda p, lo: pack_24_lanes(p.values[:0], p.meta[:0], p.scale[:0]), ValueError, ["N > 0"]),
    (lambda p, lo: pack_24_lanes(p.values, p.meta), ValueError, ["'scale'", "int8"]),
    (lambda p, lo: pack_24_lanes(p.values.float(), p.meta, p.scale), ValueError, ["'scale'", "int8"]),
    (lambda p, lo: pack_24_lanes(p.values, p.meta, p.scale.double()), TypeError, ["'scale'", "float32"]),
    (lambda p, lo: pack_24_lanes(p.values, p.meta, p.scale[:5]), ValueError, ["'scale'", "shape"]),
    (lambda p, lo: pack_24_lanes(p.values, p.meta.to("meta"), p.scale), ValueError, ["'meta' is on meta"]),
    (lambda p, lo: pack_24_lanes("values", p.meta, p.scale), TypeError, ["'values'", "torch.Tensor"]),
    (lambda p, lo: unpack_24_lanes((lo.values, lo.meta)), TypeError, ["unpack_24_lanes", "'layout'"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, version=2)), ValueError, ["version 2", "re-pack"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, n=33)), ValueError, ["'n'", "(16, 32]"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, n=16)), ValueError, ["'n'"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, k=40)), ValueError, ["'values'", "shape"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, k=12)), ValueError, ["multiple of 8"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, values=lo.values[:, :-16])), ValueError, ["'values'"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, meta=lo.meta[:1])), ValueError, ["'meta'", "shape"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, scale=None)), ValueError, ["'scale'", "int8"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, scale=lo.scale[:20])), ValueError, ["'scale'", "(32,)"]),
    (lambda p, lo: unpack_24_lanes(dataclasses.replace(lo, scale=lo.scale.to("meta"))), ValueError,
     ["'scale' is on meta"]),
])
def test_bad_arguments_are_refused_clearly(call, error, words):
    p, layout = _layout()
    with pytest.raises(error) as info:
        call(p, layout)
    for word in words:
        assert word in str(info.value)


def test_layout_is_frozen():
    _, layout = _layout()
    assert isinstance(layout, Sparse24Lanes)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.n = 3
