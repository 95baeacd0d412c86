"""The weight formats' shard rules (bigperf/formats/*.py: shard_columns / shard_rows), in one
process: every rank's shard, unpacked, is exactly that rank's slice of the unsharded weight,
and a split a format cannot take is refused with the function and the reason."""

import pytest
import torch

from bigperf.formats import bsr, dense, int8_rowmajor, sparse24
from bigperf.quant import dequantize_weight
from bigperf.sparsity import block_mask, nm_mask, unpack_24, unpack_bsr

N, K = 64, 128


def weight(seed=0):
    return torch.randn(N, K, generator=torch.Generator().manual_seed(seed))


def bias():
    return torch.randn(N, generator=torch.Generator().manual_seed(7))


def int8_unpack(t, k):
    return dequantize_weight(*t)


def s24_unpack(t, k):
    return unpack_24(*t).float()


def bsr_unpack(t, k):
    return unpack_bsr(*t, k).float()


# (format, pack -> canonical tensors, unpack(tensors, k) -> dense fp32)
FORMATS = {
    "dense": (dense, lambda w: (w,), lambda t, k: t[0]),
    "int8-channel": (int8_rowmajor, lambda w: int8_rowmajor.pack(w), int8_unpack),
    "int8-group32-asym": (int8_rowmajor, lambda w: int8_rowmajor.pack(w, 32, symmetric=False), int8_unpack),
    "sparse24": (sparse24, lambda w: sparse24.pack(w * nm_mask(w), torch.float32, False), s24_unpack),
    "sparse24-int8": (sparse24, lambda w: sparse24.pack(w * nm_mask(w), torch.float32, True), s24_unpack),
    "bsr": (bsr, lambda w: bsr.pack(w * block_mask(w, (8, 8), 0.4), (8, 8), torch.float32), bsr_unpack),
}


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("world", [1, 2, 4])
def test_shards_are_slices_of_the_weight(name, world):
    fmt, pack, unpack = FORMATS[name]
    packed = pack(weight())
    full = unpack(packed, K)
    b = bias()
    for rank in range(world):
        cols, cols_bias = fmt.shard_columns(packed, b, rank, world)
        n0, n1 = rank * N // world, (rank + 1) * N // world
        assert torch.equal(unpack(cols, K), full[n0:n1])
        assert torch.equal(cols_bias, b[n0:n1])
        rows, rows_bias = fmt.shard_rows(packed, b, K, rank, world)
        k0, k1 = rank * K // world, (rank + 1) * K // world
        assert torch.equal(unpack(rows, K // world), full[:, k0:k1])
        assert (rows_bias is b) if rank == 0 else rows_bias is None  # the bias is added once


@pytest.mark.parametrize("name", FORMATS)
def test_row_shards_sum_to_the_product(name):
    """Negative control on the recombination: the partial products of the row shards sum to
    x @ W^T; a shard taken from the wrong rank would not."""
    fmt, pack, unpack = FORMATS[name]
    packed = pack(weight(3))
    x = torch.randn(5, K, dtype=torch.float64)
    full = x @ unpack(packed, K).double().T
    parts = [x[:, r * K // 2:(r + 1) * K // 2] @ unpack(fmt.shard_rows(packed, None, K, r, 2)[0], K // 2).double().T
             for r in range(2)]
    assert torch.allclose(parts[0] + parts[1], full, atol=1e-9)
    swapped = x[:, :K // 2] @ unpack(fmt.shard_rows(packed, None, K, 1, 2)[0], K // 2).double().T
    assert not torch.allclose(swapped + parts[1], full, atol=1e-3)


@pytest.mark.parametrize("name, style, world, reason", [
    ("dense", "columns", 5, "N (output features) = 64 does not split into 5"),
    ("dense", "rows", 5, "K (input features) = 128 does not split into 5"),
    ("int8-group32-asym", "rows", 8, "cut a quantisation group of 32 in two"),
    ("sparse24", "rows", 32, "cut a metadata byte's two 2:4 groups of 8 in two"),
    ("bsr", "columns", 16, "cut a block row of 8 in two"),
    ("bsr", "rows", 32, "cut a block column of 8 in two"),
])
def test_a_split_the_format_cannot_take_is_refused(name, style, world, reason):
    fmt, pack, _ = FORMATS[name]
    packed = pack(weight())
    before = [t.clone() if t is not None else None for t in packed]
    args = (packed, None, 0, world) if style == "columns" else (packed, None, K, 0, world)
    with pytest.raises(ValueError, match=f"shard_{style}: .*" + reason.replace("(", r"\(").replace(")", r"\)")):
        getattr(fmt, f"shard_{style}")(*args)
    assert all(torch.equal(a, b) for a, b in zip(packed, before) if a is not None)


@pytest.mark.parametrize("rank, world, match", [(2, 2, "argument 'rank'"), (-1, 2, "argument 'rank'"),
                                                (0, 0, "argument 'world'")])
def test_bad_rank_or_world(rank, world, match):
    with pytest.raises(ValueError, match=f"bigperf.formats.int8_rowmajor.shard_columns: {match}"):
        int8_rowmajor.shard_columns(int8_rowmajor.pack(weight()), None, rank, world)


def test_wrong_k_is_refused():
    with pytest.raises(ValueError, match="sparse24.shard_rows: argument 'k' is 64"):
        sparse24.shard_rows(sparse24.pack(weight() * nm_mask(weight()), torch.float32, False), None, 64, 0, 2)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("world", [1, 2, 4])
def test_unshard_gives_back_the_packed_weight(name, world):
    """unshard_columns / unshard_rows (what saving a sharded model gathers) give back the
    packed tensors bitwise, from the shards in rank order."""
    fmt, pack, _ = FORMATS[name]
    packed, b = pack(weight(5)), bias()
    extra = {"group_size": 32 if "group" in name else None} if fmt is int8_rowmajor else {}
    for style in ("columns", "rows"):
        parts = [getattr(fmt, f"shard_{style}")(*((packed, b) if style == "columns" else (packed, b, K)), r, world)
                 for r in range(world)]
        shards, biases = [p[0] for p in parts], [p[1] for p in parts]
        args = (shards, biases) if style == "columns" else (shards, biases, K)
        tensors, whole_bias = getattr(fmt, f"unshard_{style}")(*args, **(extra if style == "rows" else {}))
        assert torch.equal(whole_bias, b), style
        for got, want in zip(tensors, packed):
            assert (got is None and want is None) or (got.dtype == want.dtype and torch.equal(got, want)), style


@pytest.mark.parametrize("name", [n for n in FORMATS if n != "bsr"])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_shard_dims_describe_the_cut(name, world):
    """What a sharded layer's state_dict claims (bigperf/distributed/state.py: a DTensor placed
    by shard_dims): every rank's tensor is the even chunk of the unsharded one along that dim,
    or the whole of it where the dim is None."""
    fmt, pack, _ = FORMATS[name]
    packed = pack(weight())
    per_channel = name == "int8-channel"
    for style in ("colwise", "rowwise"):
        dims = fmt.shard_dims(style, per_channel=per_channel) if fmt is int8_rowmajor else fmt.shard_dims(style)
        assert len(dims) == len(packed)
        for rank in range(world):
            shard, _ = (fmt.shard_columns(packed, None, rank, world) if style == "colwise"
                        else fmt.shard_rows(packed, None, K, rank, world))
            for whole, part, dim in zip(packed, shard, dims):
                if whole is None:
                    assert part is None
                    continue
                expected = whole if dim is None else torch.chunk(whole, world, dim=dim)[rank]
                assert torch.equal(part, expected), (style, rank, dim)


def test_bsr_claims_no_placement():
    assert bsr.shard_dims("colwise") is None and bsr.shard_dims("rowwise") is None
