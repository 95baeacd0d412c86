"""bigperf ops: one module per op family, each registering torch.ops.bigperf.<name>."""

from bigperf.ops import fused_linear, int8_layout_linear, int8_linear, sparse_linear  # noqa: F401  (register torch.ops.bigperf.*)
from bigperf.ops.registry import (
    BACKEND_NAMES,
    NoBackendError,
    forced_backend,
    use_backend,
)

__all__ = ["BACKEND_NAMES", "NoBackendError", "forced_backend", "fused_linear", "int8_layout_linear", "int8_linear", "sparse_linear", "use_backend"]
