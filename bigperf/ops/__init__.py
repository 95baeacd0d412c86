"""bigperf ops: one module per op family, each registering torch.ops.bigperf.<name>."""

from bigperf.ops import (  # (importing registers torch.ops.bigperf.*)
    block_sparse_lanes_linear,
    fused_linear,
    int8_dynamic_layout_linear,
    int8_layout_linear,
    int8_linear,
    int8_weight_cpu_layout_linear,
    sparse24_lanes_linear,
    sparse_linear,
)
from bigperf.ops.registry import (
    BACKEND_NAMES,
    NoBackendError,
    forced_backend,
    use_backend,
)

__all__ = [
    "BACKEND_NAMES",
    "NoBackendError",
    "block_sparse_lanes_linear",
    "forced_backend",
    "fused_linear",
    "int8_dynamic_layout_linear",
    "int8_layout_linear",
    "int8_linear",
    "int8_weight_cpu_layout_linear",
    "sparse24_lanes_linear",
    "sparse_linear",
    "use_backend",
]
