import math

import pytest
import torch

from bigperf.accuracy import sqnr_db
from bigperf.quant import dequantize_weight, quantize_activation_per_token, quantize_weight


def gaussian(n, k, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("group_size", [None, 32, 64, 128, 256])
@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_within_half_a_step(group_size, symmetric):
    w = gaussian(48, 512)
    q = quantize_weight(w, group_size=group_size, symmetric=symmetric)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == w.shape
    assert q.scale.shape == (48, 1 if group_size is None else 512 // group_size)
    assert (q.zero_point is None) == symmetric
    restored = dequantize_weight(q.qweight, q.scale, q.zero_point)
    step = q.scale.repeat_interleave(512 // q.scale.shape[1], dim=1)
    assert ((restored - w).abs() <= step / 2 + 1e-6).all()
    if symmetric:
        assert q.qweight.min() >= -127


def test_per_group_beats_per_channel_on_gaussian_weights():
    w = gaussian(256, 4096)
    per_channel = quantize_weight(w)
    per_group = quantize_weight(w, group_size=128)
    sqnr_channel = sqnr_db(w, dequantize_weight(per_channel.qweight, per_channel.scale))
    sqnr_group = sqnr_db(w, dequantize_weight(per_group.qweight, per_group.scale))
    assert sqnr_channel >= 38 and sqnr_group > sqnr_channel + 1


def test_zero_channels_and_groups_stay_finite_and_exact():
    w = gaussian(4, 64)
    w[1] = 0
    w[2, :32] = 0
    for group_size, symmetric in [(None, True), (32, True), (None, False), (32, False)]:
        q = quantize_weight(w, group_size=group_size, symmetric=symmetric)
        assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
        restored = dequantize_weight(q.qweight, q.scale, q.zero_point)
        assert torch.isfinite(restored).all()
        assert (restored[1] == 0).all() and (restored[2, :32] == 0).all()


def test_asymmetric_uses_the_full_range_of_one_sided_weights():
    w = gaussian(8, 256).abs() + 0.5  # all positive
    sym = quantize_weight(w)
    asym = quantize_weight(w, symmetric=False)
    err = lambda q: (dequantize_weight(q.qweight, q.scale, q.zero_point) - w).pow(2).mean().item()  # noqa: E731
    assert err(asym) < err(sym)


def test_round_to_nearest_even():
    w = torch.tensor([[127.0, 0.5, 1.5, -0.5, 2.5]])  # scale = 1 exactly
    q = quantize_weight(w)
    assert q.qweight.tolist() == [[127, 0, 2, 0, 2]]


@pytest.mark.parametrize("bad,error,word", [
    (torch.tensor([[1.0, math.nan]]), ValueError, "NaN or Inf"),
    (torch.tensor([[1.0, math.inf]]), ValueError, "NaN or Inf"),
    (torch.ones(4, 4, dtype=torch.int32), TypeError, "'weight'"),
    (torch.ones(4), TypeError, "'weight'"),
])
def test_bad_weights_are_refused(bad, error, word):
    with pytest.raises(error, match=word):
        quantize_weight(bad)


@pytest.mark.parametrize("k,group_size,word", [(200, 128, "does not divide"), (96, 48, "one of")])
def test_bad_group_sizes_are_refused(k, group_size, word):
    with pytest.raises(ValueError, match=word):
        quantize_weight(gaussian(4, k), group_size=group_size)


@pytest.mark.parametrize("bits,qmax", [(8, 127), (7, 63)])
def test_activation_per_token(bits, qmax):
    x = gaussian(5, 33)
    x[3] = 0
    q, scale = quantize_activation_per_token(x, bits)
    assert q.dtype == torch.int8 and scale.shape == (5,)
    assert q.abs().max() == qmax and (q[3] == 0).all() and scale[3] == 1
    assert torch.equal(scale[:3], x[:3].abs().amax(dim=1) / qmax)
    assert ((q.float() * scale[:, None] - x).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("bits", [6, 9, 8.0, True, "8"])
def test_activation_per_token_refuses_other_bits(bits):
    match = r"bigperf.quant.quantize_activation_per_token: argument 'bits' must be 7 or 8"
    with pytest.raises(ValueError, match=match):
        quantize_activation_per_token(gaussian(2, 8), bits)
