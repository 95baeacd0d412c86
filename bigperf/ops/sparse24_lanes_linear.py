"""The 2:4 sparse linear from a layer-owned CPU lane layout.

torch.ops.bigperf.sparse24_lanes_linear(x, values, meta, scale, n, bias, activation)
    The same result as sparse24_linear on the n-row weight that
    bigperf.formats.sparse24_lanes.pack_24_lanes laid out (values [NB, 8K] float or int8, meta [NB, 2K]
    uint8, scale [16 NB] fp32 exactly for int8 values; NB = ceil(n / 16)). A SparseLinear on
    the CPU keeps only this form where bigperf._C has the kernel that reads it, so the CPU
    never holds the weight twice. Each other backend is sparse24_linear's backend of that
    name, on the weight unpacked for the call, so every backend computes the same thing and
    the backend this op reports is the one that runs.
"""

from __future__ import annotations

import torch

from bigperf.formats import sparse24_lanes
from bigperf.formats.sparse24_lanes import Sparse24Lanes, check_lanes, check_version
from bigperf.ops.define import define_op
from bigperf.ops.frozen_weight_grad import register_frozen_weight_autograd
from bigperf.ops.validation import check_finite_once
from bigperf.ops.sparse_linear import S24_BACKENDS, _check_devices, _check_x_bias, check_meta_once

LANES_OP = "bigperf.sparse24_lanes_linear"


def validate_lanes_call(x, values, meta, scale, n, bias, activation):
    k = check_lanes(LANES_OP, values, meta, scale, n)
    _check_x_bias(LANES_OP, x, k, n, bias, activation)
    _check_devices(LANES_OP, x, (("values", values), ("meta", meta), ("scale", scale)))
    if scale is not None:
        check_finite_once(LANES_OP, "scale", scale)
    check_meta_once(LANES_OP, meta, "bigperf.formats.sparse24_lanes.pack_24_lanes")


def _signature(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, scale: torch.Tensor | None, n: int,
               bias: torch.Tensor | None, activation: str) -> torch.Tensor: ...


SPARSE24_LANES = define_op(LANES_OP, _signature, validate_lanes_call,
                           lambda x, values, meta, scale, n, *rest: (*x.shape[:-1], n))
LANES_BACKENDS = SPARSE24_LANES.backends
register_frozen_weight_autograd(SPARSE24_LANES, sparse24_lanes.dense_weight, bias_at=5, activation_at=6)
sparse24_lanes_linear_op = SPARSE24_LANES.torch_op
sparse24_lanes.register_paths(LANES_BACKENDS, S24_BACKENDS)


def sparse24_lanes_linear(x, layout: Sparse24Lanes, bias=None, activation="none"):
    """act(x @ W^T + bias) for a 2:4 W held in the CPU lane layout (bigperf.formats.sparse24_lanes)."""
    check_version(LANES_OP, layout)
    return SPARSE24_LANES(x, layout.values, layout.meta, layout.scale, layout.n, bias, activation)
