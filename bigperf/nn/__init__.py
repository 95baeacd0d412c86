"""Drop-in layers backed by bigperf ops."""

from bigperf.nn.fused_linear import FusedLinear

__all__ = ["FusedLinear"]
