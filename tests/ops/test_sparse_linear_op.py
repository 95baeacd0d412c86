"""The sparse ops' contract on the reference and cpu backends vs float64."""

import pytest
import torch

import bigperf
from bigperf.ops.sparse_linear import BSR_BACKENDS, S24_BACKENDS, block_sparse_linear, sparse24_linear
from bigperf.sparsity import block_mask, nm_mask, pack_24, pack_24_int8, pack_bsr, unpack_24, unpack_bsr
from tests.helpers import TOLERANCE, fused_linear_fp64, random_tensor, rel_error

BACKENDS = ["reference"] + (["cpu"] if S24_BACKENDS.backends["cpu"].why_not(torch.empty(1, 8)) is None else [])


def pruned(n, k, seed=0):
    w = random_tensor(n, k, seed=seed, scale=k ** -0.5)
    return w * nm_mask(w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("x_dtype,v_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                             (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_sparse24_matches_the_pruned_dense_layer(backend, x_dtype, v_dtype, m):
    packed = pack_24(pruned(40, 72).to(v_dtype))
    x, b = random_tensor(m, 72, dtype=x_dtype, seed=1), random_tensor(40, seed=2)
    with bigperf.use_backend(backend):
        out = sparse24_linear(x, packed.values, packed.meta, None, b, "gelu")
    expected = fused_linear_fp64(x, unpack_24(packed.values, packed.meta), b, None, "gelu")
    assert out.dtype == x_dtype and rel_error(out, expected) < max(TOLERANCE[x_dtype], 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse24_int8(backend):
    packed = pack_24_int8(pruned(24, 64))
    x = random_tensor(2, 3, 64, seed=3)
    with bigperf.use_backend(backend):
        out = sparse24_linear(x, packed.values, packed.meta, packed.scale, None, "relu")
    expected = fused_linear_fp64(x, unpack_24(packed.values, packed.meta, packed.scale), None, None, "relu")
    assert out.shape == (2, 3, 24) and rel_error(out, expected) < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block,density", [((16, 16), 0.1), ((8, 32), 0.5), ((32, 8), 1.0)])
def test_block_sparse_matches_the_pruned_dense_layer(backend, block, density):
    w = random_tensor(64, 96, seed=4)
    w = w * block_mask(w, block, density)
    packed = pack_bsr(w, block)
    x, b = random_tensor(5, 96, seed=5), random_tensor(64, seed=6)
    with bigperf.use_backend(backend):
        out = block_sparse_linear(x, packed.values, packed.col_indices, packed.row_ptr, b, "silu")
    expected = fused_linear_fp64(x, unpack_bsr(packed.values, packed.col_indices, packed.row_ptr, 96), b, None, "silu")
    assert rel_error(out, expected) < 1e-5


def test_opcheck_and_compile():
    p24 = pack_24(pruned(16, 32))
    pb = pack_bsr(pruned(16, 32), (8, 8))
    x = random_tensor(3, 32)
    torch.library.opcheck(torch.ops.bigperf.sparse24_linear.default, (x, p24.values, p24.meta, None, None, "none"))
    torch.library.opcheck(torch.ops.bigperf.block_sparse_linear.default,
                          (x, pb.values, pb.col_indices, pb.row_ptr, None, "gelu"))
    f = lambda x: sparse24_linear(x, p24.values, p24.meta) + block_sparse_linear(  # noqa: E731
        x, pb.values, pb.col_indices, pb.row_ptr)
    assert torch.allclose(torch.compile(f, fullgraph=True, backend="eager")(x), f(x))


def test_corrupt_metadata_and_indices_are_refused_before_any_kernel():
    p24 = pack_24(pruned(16, 32))
    x = random_tensor(2, 32)
    bad_meta = p24.meta.clone()
    bad_meta[3, 1] = 0b00000101  # group with positions (1, 1)
    for backend in BACKENDS:
        with bigperf.use_backend(backend), pytest.raises(ValueError, match="'meta' is corrupt"):
            sparse24_linear(x, p24.values, bad_meta)
    sparse24_linear(x, p24.values, p24.meta)  # valid: passes and is cached
    p24.meta[0, 0] = 0b00000101  # corrupted in place after a successful call
    with pytest.raises(ValueError, match="'meta' is corrupt"):
        sparse24_linear(x, p24.values, p24.meta)

    pb = pack_bsr(pruned(16, 32), (8, 8))
    bad_cols = pb.col_indices.clone()
    bad_cols[-1] = 4  # only 4 block columns: 0..3
    for backend in BACKENDS:
        with bigperf.use_backend(backend), pytest.raises(ValueError, match="col_indices"):
            block_sparse_linear(x, pb.values, bad_cols, pb.row_ptr)
    bad_rows = pb.row_ptr.clone()
    bad_rows[1] = 100
    with pytest.raises(ValueError, match="row_ptr"):
        block_sparse_linear(x, pb.values, pb.col_indices, bad_rows)


@pytest.mark.parametrize("call,error,word", [
    (lambda x, p: sparse24_linear(x, p.values, p.meta.int()), TypeError, "'meta'"),
    (lambda x, p: sparse24_linear(x, p.values, p.meta[:, :3]), ValueError, "'meta'"),
    (lambda x, p: sparse24_linear(x[:, :16], p.values, p.meta), ValueError, "'x'"),
    (lambda x, p: sparse24_linear(x, p.values.to(torch.int8), p.meta), ValueError, "'scale'"),
    (lambda x, p: sparse24_linear(x, p.values, p.meta, torch.ones(16, 1)), ValueError, "'scale'"),
    (lambda x, p: sparse24_linear(x, p.values, p.meta, None, torch.ones(5)), ValueError, "'bias'"),
    (lambda x, p: sparse24_linear(x, p.values.to("meta"), p.meta), ValueError, "'values' is on meta"),
    (lambda x, p: sparse24_linear(x, p.values, p.meta.to("meta")), ValueError, "'meta' is on meta"),
    (lambda x, p: sparse24_linear(x, p.values, p.meta, None, torch.ones(16, device="meta")), ValueError, "'bias'"),
    (lambda x, p: sparse24_linear(x, p.values, p.meta, None, None, "tanh"), ValueError, "'activation'"),
])
def test_bad_input_is_refused(call, error, word):
    with pytest.raises(error, match=word):
        call(random_tensor(2, 32), pack_24(pruned(16, 32)))


def _bsr_whose_last_block_column_is(last_column, k=64, block=(8, 16)):
    """A BSR weight of K = k whose stored blocks reach block column `last_column`."""
    w = torch.zeros(16, k)
    w[:8, last_column * block[1]:(last_column + 1) * block[1]] = random_tensor(8, block[1], seed=7)
    w[8:, :block[1]] = random_tensor(8, block[1], seed=8)
    return pack_bsr(w, block)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_sparse_x_is_checked_against_the_weights_k(backend):
    """A BSR weight does not record K, so x's features are checked against what it does
    record: whole blocks, and its last block column (once refused as 'corrupt indices')."""
    pb = _bsr_whose_last_block_column_is(3)  # the weight reaches K = 64
    with bigperf.use_backend(backend):
        with pytest.raises(ValueError, match=r"block_sparse_linear: argument 'x' has 48 features .* up to K = 64 "
                                             r"\(block column 3, width 16\)"):
            block_sparse_linear(random_tensor(2, 48), pb.values, pb.col_indices, pb.row_ptr)
        with pytest.raises(ValueError, match=r"block_sparse_linear: argument 'x' has 72 features .* not a "
                                             r"multiple of the weight's block width 16"):
            block_sparse_linear(random_tensor(2, 72), pb.values, pb.col_indices, pb.row_ptr)
        x = random_tensor(2, 64)
        expected = fused_linear_fp64(x, unpack_bsr(pb.values, pb.col_indices, pb.row_ptr, 64))
        assert rel_error(block_sparse_linear(x, pb.values, pb.col_indices, pb.row_ptr), expected) < 1e-5


@pytest.mark.parametrize("name", ["values", "col_indices", "row_ptr"])
def test_block_sparse_tensors_on_another_device_are_refused(name):
    pb = pack_bsr(pruned(16, 32), (8, 8))
    args = {"values": pb.values, "col_indices": pb.col_indices, "row_ptr": pb.row_ptr}
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=f"'{name}' is on meta but 'x' is on cpu"):
        block_sparse_linear(random_tensor(2, 32), **args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_sparse_keeps_leading_dimensions(backend):
    pb = pack_bsr(pruned(16, 32), (8, 8))
    x = random_tensor(2, 3, 32, seed=7)
    with bigperf.use_backend(backend):
        out = block_sparse_linear(x, pb.values, pb.col_indices, pb.row_ptr)
    expected = fused_linear_fp64(x, unpack_bsr(pb.values, pb.col_indices, pb.row_ptr, 32))
    assert out.shape == (2, 3, 16) and rel_error(out, expected) < 1e-5


def test_index_checks_are_cached_per_tensor_version():
    """The content check runs once per tensor version; a changed index after a cached pass is
    still refused (by the new version, and on the cpu backend by the binding as well)."""
    pb = pack_bsr(pruned(16, 32), (8, 8))
    x = random_tensor(2, 32)
    block_sparse_linear(x, pb.values, pb.col_indices, pb.row_ptr)
    block_sparse_linear(x, pb.values, pb.col_indices, pb.row_ptr)  # cache hit
    pb.col_indices[0] = 99
    with pytest.raises(ValueError, match="col_indices"):
        block_sparse_linear(x, pb.values, pb.col_indices, pb.row_ptr)


def test_weights_made_under_inference_mode_are_checked_every_call():
    with torch.inference_mode():
        p24 = pack_24(pruned(16, 32))
        x = random_tensor(2, 32)
        out = sparse24_linear(x, p24.values, p24.meta)
        p24.meta[0, 0] = 0b00000101  # in-place corruption: no version counter to notice it
        with pytest.raises(ValueError, match="'meta' is corrupt"):
            sparse24_linear(x, p24.values, p24.meta)
    assert out.shape == (2, 16)
