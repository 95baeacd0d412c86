"""bigperf: compiled kernels for PyTorch as drop-in layers.

    report = bigperf.swap(model, bigperf.FusedMixedPrecision())
"""

from bigperf import deploy, distributed, nn, ops, sparsity
from bigperf._ext import use_cpu_isa
from bigperf.configs import BlockSparse, FusedMixedPrecision, Int8Dynamic, Int8WeightOnly, Sparse24, Sparse24Int8
from bigperf.ops.common import fp32_compute
from bigperf.ops.registry import NoBackendError, use_backend
from bigperf.prune import prune
from bigperf.report import SwapReport
from bigperf.serialize import load, save
from bigperf.swap import swap

__version__ = "0.1.0"

__all__ = ["BlockSparse", "FusedMixedPrecision", "Int8Dynamic", "Int8WeightOnly", "NoBackendError", "Sparse24",
           "Sparse24Int8", "SwapReport", "deploy", "fp32_compute", "load", "nn", "ops", "prune", "save", "sparsity",
           "swap", "use_backend", "use_cpu_isa"]
