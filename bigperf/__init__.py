"""bigperf: compiled kernels for PyTorch as drop-in layers.

    report = bigperf.swap(model, bigperf.FusedMixedPrecision())
"""

from bigperf import nn, ops
from bigperf._ext import use_cpu_isa
from bigperf.ops.registry import NoBackendError, use_backend
from bigperf.configs import FusedMixedPrecision, Int8Dynamic, Int8WeightOnly
from bigperf.report import SwapReport
from bigperf.serialize import load, save
from bigperf.swap import swap

__version__ = "0.1.0"

__all__ = ["FusedMixedPrecision", "Int8Dynamic", "Int8WeightOnly", "NoBackendError", "SwapReport", "load", "nn", "ops", "save", "swap",
           "use_backend", "use_cpu_isa"]
