"""Drop-in layers backed by bigperf ops."""

from bigperf.nn.fused_linear import FusedLinear
from bigperf.nn.int8_linear import Int8Linear
from bigperf.nn.sparse_linear import SparseLinear

__all__ = ["FusedLinear", "Int8Linear", "SparseLinear"]
