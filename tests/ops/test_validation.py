"""The one-expression checks of common calls (ops/validation.py: plain_layout_call) accept
only what the full checks accept: every way a layout call can be wrong is refused by the
fast predicate, so the full checks (and their messages) run for it."""

import pytest
import torch

from bigperf.ops.validation import plain_layout_call

N, K = 20, 8


def _good():
    x = torch.randn(3, K)
    weight = torch.zeros(2, K * 16, dtype=torch.int8)
    scale = torch.ones(N, 1)
    return x, weight, scale, torch.zeros(N)


def _call(x, weight, scale, bias, activation="none", k=K):
    return plain_layout_call(x, k, N, bias, activation, ((weight, torch.int8, (2, K * 16)),
                                                         (scale, torch.float32, (N, 1))))


def test_the_common_call_passes():
    x, weight, scale, bias = _good()
    assert _call(x, weight, scale, bias) and _call(x, weight, scale, None, "gelu")
    assert _call(x.bfloat16(), weight, scale, bias.bfloat16())


@pytest.mark.parametrize("change", [
    lambda x, w, s, b: (x.int(), w, s, b),                      # x not float
    lambda x, w, s, b: (x[:, :-1], w, s, b),                    # K mismatch
    lambda x, w, s, b: (x[0, 0], w, s, b),                      # 0-d x
    lambda x, w, s, b: ([1.0] * K, w, s, b),                    # not a tensor
    lambda x, w, s, b: (x, w.float(), s, b),                    # layout dtype
    lambda x, w, s, b: (x, w[:, :-16], s, b),                   # layout shape
    lambda x, w, s, b: (x, torch.zeros(K * 16, 2, dtype=torch.int8).t(), s, b),  # layout not contiguous
    lambda x, w, s, b: (x, w, s.t(), b),                        # shape [1, N]
    lambda x, w, s, b: (x, w, torch.ones(N, 2)[:, :1], b),      # not contiguous
    lambda x, w, s, b: (x, w, s, b[:-1]),                       # bias shape
    lambda x, w, s, b: (x, w, s, b.int()),                      # bias dtype
    lambda x, w, s, b: (x, w, s, b.to("meta")),                 # bias device
    lambda x, w, s, b: (x, w.to("meta"), s, b),                 # layout device
])
def test_every_wrong_call_takes_the_full_checks(change):
    x, weight, scale, bias = change(*_good())
    assert not _call(x, weight, scale, bias)


def test_unknown_activation_takes_the_full_checks():
    x, weight, scale, bias = _good()
    assert not _call(x, weight, scale, bias, "swish")
