import pytest
import torch
from torch import nn

import bigperf
from bigperf.sparsity import (block_mask, bsr_is_valid, magnitude_mask, meta_is_valid, nm_mask, pack_24, pack_24_int8,
                              pack_bsr, satisfies_nm, unpack_24, unpack_bsr)


def weight(n=32, k=64, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


def test_nm_mask_keeps_the_two_largest_of_every_four():
    w = weight()
    mask = nm_mask(w)
    assert mask.reshape(32, 16, 4).sum(dim=2).eq(2).all()
    groups = w.abs().reshape(32, 16, 4)
    kept_min = torch.where(mask.reshape(32, 16, 4), groups, torch.inf).amin(dim=2)
    dropped_max = torch.where(mask.reshape(32, 16, 4), -torch.inf, groups).amax(dim=2)
    assert (kept_min >= dropped_max).all()


def test_magnitude_and_block_masks_hit_their_density():
    w = weight()
    assert magnitude_mask(w, 0.25).sum() == 512
    mask = block_mask(w, (8, 16), 0.5)
    blocks = mask.reshape(4, 8, 4, 16)
    per_block = blocks.float().mean(dim=(1, 3))
    assert ((per_block == 0) | (per_block == 1)).all() and per_block.mean() == 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_24_pack_unpack_is_exact(dtype):
    w = (weight() * nm_mask(weight())).to(dtype)
    w[3, 8:12] = 0  # a group with fewer than two non-zeros
    w[4, 16:20] = torch.tensor([0, 0, 0, 1.5], dtype=dtype)
    packed = pack_24(w)
    assert packed.values.shape == (32, 32) and packed.meta.shape == (32, 8) and packed.meta.dtype == torch.uint8
    assert meta_is_valid(packed.meta)
    assert torch.equal(unpack_24(packed.values, packed.meta), w)


def test_24_int8_round_trip_is_close():
    w = weight() * nm_mask(weight())
    packed = pack_24_int8(w)
    assert packed.values.dtype == torch.int8 and packed.scale.shape == (32, 1)
    restored = unpack_24(packed.values, packed.meta, packed.scale)
    assert ((restored - w).abs() <= packed.scale / 2 + 1e-6).all()


def test_bsr_pack_unpack_is_exact_and_indices_checked():
    w = weight() * block_mask(weight(seed=1), (8, 16), 0.25)
    packed = pack_bsr(w, (8, 16))
    assert packed.values.shape == (4, 8, 16) and packed.row_ptr.tolist()[-1] == 4
    assert torch.equal(unpack_bsr(packed.values, packed.col_indices, packed.row_ptr, 64), w)
    assert bsr_is_valid(packed.col_indices, packed.row_ptr, 4, 4) is None
    bad = packed.col_indices.clone()
    bad[0] = 4
    assert "col_indices" in bsr_is_valid(bad, packed.row_ptr, 4, 4)
    assert "row_ptr" in bsr_is_valid(packed.col_indices, packed.row_ptr.flip(0), 4, 4)


@pytest.mark.parametrize("call,error,word", [
    (lambda: pack_24(weight()), ValueError, "does not satisfy 2:4"),
    (lambda: pack_24(weight(4, 12)), ValueError, "multiple of 8"),
    (lambda: nm_mask(weight(4, 10)), ValueError, "multiple of m"),
    (lambda: nm_mask(weight(), 4, 2), ValueError, "0 < n < m"),
    (lambda: block_mask(weight(), (7, 16), 0.5), ValueError, "not divisible"),
    (lambda: magnitude_mask(weight(), 0), ValueError, "'density'"),
    (lambda: pack_bsr(weight().int(), (8, 8)), TypeError, "'weight'"),
])
def test_bad_input_is_refused(call, error, word):
    with pytest.raises(error, match=word):
        call()


def test_prune_model_in_place_and_masks_kept_through_training():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    masks = bigperf.prune(model, "2:4", keep_masks=True)
    assert set(masks) == {"0", "2"} and all(satisfies_nm(m.weight) for m in (model[0], model[2]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 32)).pow(2).sum().backward()
    optimizer.step()
    assert satisfies_nm(model[0].weight.detach())  # the parametrisation re-applies the mask


def test_prune_a_model_loaded_under_inference_mode():
    """Its weights are inference tensors, which torch lets change in place only inside
    inference mode: pruning them outside used to fail inside torch; keep_masks (training) is
    refused by name before anything changes."""
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
    before = [m.weight.clone() for m in (model[0], model[2])]
    with pytest.raises(ValueError, match="bigperf.prune: argument 'keep_masks'.*inference tensors"):
        bigperf.prune(model, "2:4", keep_masks=True)
    assert all(torch.equal(b, m.weight) for b, m in zip(before, (model[0], model[2])))
    masks = bigperf.prune(model, "2:4")
    for b, name in zip(before, ("0", "2")):
        assert torch.equal(model.get_submodule(name).weight, b * masks[name])
        assert satisfies_nm(model.get_submodule(name).weight)


def test_prune_global_unstructured_and_block():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 16))
    bigperf.prune(model, "unstructured", density=0.3, scope="global")
    total = sum(m.weight.numel() for m in model)
    kept = sum((m.weight != 0).sum().item() for m in model)
    assert abs(kept / total - 0.3) < 0.01
    model = nn.Sequential(nn.Linear(32, 64))
    bigperf.prune(model, "block", density=0.5, block=(16, 16))
    assert (model[0].weight != 0).float().mean() == 0.5


def test_prune_refuses_without_changing_anything():
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(30, 16))
    before = [m.weight.clone() for m in model]
    with pytest.raises(ValueError, match="layer '1'"):
        bigperf.prune(model, "2:4")
    assert all(torch.equal(b, m.weight) for b, m in zip(before, model))
    with pytest.raises(ValueError, match="density"):
        bigperf.prune(model, "unstructured")
    with pytest.raises(ValueError, match="'pattern'"):
        bigperf.prune(model, "3-of-4")
