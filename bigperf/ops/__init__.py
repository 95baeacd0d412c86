"""bigperf ops: one module per op family, each registering torch.ops.bigperf.<name>."""

from bigperf.ops import fused_linear  # noqa: F401  (registers torch.ops.bigperf.fused_linear)
from bigperf.ops.registry import BACKEND_NAMES, NoBackendError, forced_backend, use_backend

__all__ = ["BACKEND_NAMES", "NoBackendError", "forced_backend", "fused_linear", "use_backend"]
