"""The CPU lane layouts of the sparse formats (bigperf/formats/sparse24_lanes.py, bsr_lanes.py; "cpu-lanes16") against their
definitions, exact round trips both ways, and clear refusals."""

import dataclasses

import pytest
import torch

from bigperf.formats._lanes import reorder_lanes_values
from bigperf.formats.bsr_lanes import VERSION as BSR_LANES_VERSION, bsr_lanes_eligible, pack_bsr_lanes, unpack_bsr_lanes
from bigperf.formats.sparse24_lanes import Sparse24Lanes, VERSION as S24_LANES_VERSION, pack_24_lanes, unpack_24_lanes
from bigperf.sparsity import block_mask, meta_is_valid, nm_mask, pack_24, pack_24_int8, pack_bsr
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


# ----------------------------------------------------------------------------- BSR

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def canonical_bsr(n, k, block, dtype, density=0.5, seed=0):
    w = random_tensor(n, k, seed=seed)
    return pack_bsr((w * block_mask(w, block, density)).to(dtype), block)


def bsr_by_definition(values):
    """The BSR lane layout written from its definition (module docstring), element by element
    within a block (all blocks at once), rather than with the views pack_bsr_lanes uses."""
    nnz, bn, bk = values.shape
    out = torch.zeros(nnz, bn // 16, 16 * bk, dtype=values.dtype)
    for row in range(bn):
        q, lane = divmod(row, 16)
        for col in range(bk):
            if values.dtype == torch.bfloat16:  # [bk/2][16][2]: one 32-bit word per row, two columns
                c, s = divmod(col, 2)
                i = (c * 16 + lane) * 2 + s
            else:  # [bk][16]: a column's 16 rows side by side
                i = col * 16 + lane
            out[:, q, i] = values[:, row, col]
    return out


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("block", [(16, 2), (16, 16), (32, 16), (32, 32), (16, 32)])
def test_bsr_pack_follows_the_definition(dtype, block):
    p = canonical_bsr(64, 96, block, dtype, seed=block[0] + block[1])
    layout = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, 96)
    assert (layout.bn, layout.bk, layout.k, layout.version) == (*block, 96, BSR_LANES_VERSION)
    assert torch.equal(layout.values, bsr_by_definition(p.values)) and layout.values.is_contiguous()
    # The index tensors are shared, not copied.
    assert layout.col_indices is p.col_indices and layout.row_ptr is p.row_ptr


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("block,density", [((16, 2), 0.5), ((16, 16), 0.1), ((32, 16), 1.0), ((32, 32), 0.5),
                                           ((16, 32), 0.1), ((48, 8), 0.3)])
def test_bsr_round_trips_are_exact(dtype, block, density):
    n, k = 96, 128
    p = canonical_bsr(n, k, block, dtype, density, seed=7)
    layout = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, k)
    nnz = p.values.shape[0]
    assert layout.values.shape == (nnz, block[0] // 16, 16 * block[1]) and layout.values.dtype == dtype
    values, col_indices, row_ptr = unpack_bsr_lanes(layout)
    assert torch.equal(values, p.values) and values.is_contiguous()
    assert col_indices is p.col_indices and row_ptr is p.row_ptr
    assert torch.equal(pack_bsr_lanes(values, col_indices, row_ptr, k).values, layout.values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bsr_odd_block_widths_are_fine_outside_bfloat16(dtype):
    p = canonical_bsr(32, 9, (16, 3), dtype, seed=8)
    layout = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, 9)
    assert torch.equal(layout.values, bsr_by_definition(p.values))
    assert torch.equal(unpack_bsr_lanes(layout)[0], p.values)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_bsr_empty_block_rows_and_no_blocks_at_all(dtype):
    w = torch.zeros(64, 32)
    w[16:32, 16:32] = 1.0  # only block row 1 holds a block
    p = pack_bsr(w.to(dtype), (16, 16))
    assert p.row_ptr.tolist() == [0, 0, 1, 1, 1]
    layout = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, 32)
    assert torch.equal(unpack_bsr_lanes(layout)[0], p.values)
    empty = pack_bsr(torch.zeros(32, 32, dtype=dtype), (32, 16))
    assert empty.values.shape == (0, 32, 16)
    layout = pack_bsr_lanes(empty.values, empty.col_indices, empty.row_ptr, 32)
    assert layout.values.shape == (0, 2, 256)
    assert unpack_bsr_lanes(layout)[0].shape == (0, 32, 16)


@pytest.mark.parametrize("source,target", [(torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16),
                                           (torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_bsr_reorder_after_an_elementwise_dtype_change(source, target):
    p = canonical_bsr(64, 64, (32, 16), source, seed=9)
    moved = pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, 64).values.to(target)
    want = pack_bsr_lanes(p.values.to(target), p.col_indices, p.row_ptr, 64).values
    assert torch.equal(reorder_lanes_values(moved, source), want)


def test_bsr_lanes_eligibility():
    assert bsr_lanes_eligible(16, 16, torch.bfloat16) is None and bsr_lanes_eligible(32, 3, torch.float32) is None
    assert "multiple of 16" in bsr_lanes_eligible(8, 8, torch.float32)
    assert "even block width" in bsr_lanes_eligible(16, 3, torch.bfloat16)
    assert "float32, float16 or bfloat16" in bsr_lanes_eligible(16, 16, torch.int8)
    assert "positive" in bsr_lanes_eligible(0, 16, torch.float32)


def test_bsr_layouts_of_meta_tensors_have_the_right_shapes():
    p = canonical_bsr(32, 64, (32, 16), torch.bfloat16)
    layout = pack_bsr_lanes(p.values.to("meta"), p.col_indices.to("meta"), p.row_ptr.to("meta"), 64)
    assert layout.values.shape == (p.values.shape[0], 2, 256) and layout.values.device.type == "meta"
    assert unpack_bsr_lanes(layout)[0].shape == p.values.shape


def _bsr_layout():
    p = canonical_bsr(64, 64, (32, 16), torch.bfloat16, seed=10)
    return p, pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, 64)


@pytest.mark.parametrize("call,error,words", [
    (lambda p, lo: pack_bsr_lanes(p.values.double(), p.col_indices, p.row_ptr, 64), TypeError,
     ["pack_bsr_lanes", "'values'", "dtype"]),
    (lambda p, lo: pack_bsr_lanes(p.values[0], p.col_indices, p.row_ptr, 64), ValueError, ["'values'", "3-D"]),
    (lambda p, lo: pack_bsr_lanes(p.values[:, :8], p.col_indices, p.row_ptr, 64), ValueError,
     ["lane layout", "bn = 8", "multiple of 16"]),
    (lambda p, lo: pack_bsr_lanes(p.values[:, :, :3], p.col_indices, p.row_ptr, 64), ValueError,
     ["bfloat16", "even", "bk = 3"]),
    (lambda p, lo: pack_bsr_lanes(p.values, p.col_indices.long(), p.row_ptr, 64), TypeError, ["'col_indices'", "int32"]),
    (lambda p, lo: pack_bsr_lanes(p.values, p.col_indices, p.row_ptr.long(), 64), TypeError, ["'row_ptr'", "int32"]),
    (lambda p, lo: pack_bsr_lanes(p.values, p.col_indices[:-1], p.row_ptr, 64), ValueError,
     ["'col_indices'", "entries for"]),
    (lambda p, lo: pack_bsr_lanes(p.values, p.col_indices, p.row_ptr[:1], 64), ValueError, ["'row_ptr'", ">= 2"]),
    (lambda p, lo: pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, 60), ValueError, ["'k'", "multiple", "16"]),
    (lambda p, lo: pack_bsr_lanes(p.values, p.col_indices, p.row_ptr, 0), ValueError, ["'k'"]),
    (lambda p, lo: pack_bsr_lanes(p.values, p.col_indices.to("meta"), p.row_ptr, 64), ValueError,
     ["'col_indices' is on meta"]),
    (lambda p, lo: unpack_bsr_lanes(lo.values), TypeError, ["unpack_bsr_lanes", "'layout'", "BsrLanes"]),
    (lambda p, lo: unpack_bsr_lanes(_layout()[1]), TypeError, ["'layout'", "BsrLanes", "Sparse24Lanes"]),
    (lambda p, lo: unpack_bsr_lanes(dataclasses.replace(lo, version=2)), ValueError, ["version 2", "re-pack"]),
    (lambda p, lo: unpack_bsr_lanes(dataclasses.replace(lo, bn=16)), ValueError, ["'bn'", "32"]),
    (lambda p, lo: unpack_bsr_lanes(dataclasses.replace(lo, bk=8)), ValueError, ["'values'", "[nnz, bn/16, 16 bk]"]),
    (lambda p, lo: unpack_bsr_lanes(dataclasses.replace(lo, bk=0)), ValueError, ["'bk'", "positive"]),
    (lambda p, lo: unpack_bsr_lanes(dataclasses.replace(lo, k=40)), ValueError, ["'k'", "multiple"]),
    (lambda p, lo: unpack_bsr_lanes(dataclasses.replace(lo, values=lo.values[:, :1, :3 * 16])), ValueError,
     ["'values'"]),
    (lambda p, lo: unpack_bsr_lanes(dataclasses.replace(lo, values=lo.values.to(torch.int8))), TypeError,
     ["'values'", "dtype"]),
    (lambda p, lo: unpack_bsr_lanes(dataclasses.replace(lo, row_ptr=lo.row_ptr.to("meta"))), ValueError,
     ["'row_ptr' is on meta"]),
])
def test_bsr_bad_arguments_are_refused_clearly(call, error, words):
    p, layout = _bsr_layout()
    with pytest.raises(error) as info:
        call(p, layout)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("k, u", [(40, 1), (64, 2), (40, 2), (40, 4)])
def test_panel_rows_reads_any_chunk_of_rows_from_the_panels(k, u, dtype):
    """What PyTorch's paths on a held panel layout multiply by (formats/_panels.panel_rows): the
    codes of rows [r0, r1) in any dtype, for whole panels, a tail of one, and K padded (kp > k);
    u = 1 through bigperf._C's byte transposes where the AVX2 path runs (K = 40: a K tail too)."""
    from bigperf.formats._checks import round_up
    from bigperf.formats._panels import panel_rows, to_panels
    n = 37
    qweight = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=torch.Generator().manual_seed(k + u))
    kp = k if u == 1 else round_up(k, 32)
    rows = panel_rows(to_panels(qweight, kp, u), k, kp, u)
    for r0, r1 in ((0, 16), (16, 37), (0, 37), (32, 37)):
        out = torch.full((r1 - r0, k), 7.0, dtype=dtype)
        rows(out, r0, r1)
        assert torch.equal(out, qweight[r0:r1].to(dtype)), (r0, r1)
