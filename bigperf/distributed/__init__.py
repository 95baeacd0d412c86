"""Tensor parallelism for bigperf's layers on torch.distributed (gloo on CPUs, NCCL on GPUs).

    mesh = init_device_mesh("cpu", (world_size,))
    bigperf.swap(model, bigperf.Int8WeightOnly())          # before or after parallelize
    bigperf.distributed.parallelize(model, mesh, {r".*\\.(q|k|v|gate|up)_proj": "colwise",
                                                  r".*\\.(o|down)_proj": "rowwise"})

Each weight format cuts its own packed tensors (bigperf/formats/<format>.py: shard_columns,
shard_rows); the layers are rebuilt from their shards through their own constructors, so
every kernel layout is re-derived per rank. torch's parallelize_module shards
them with torch's own ColwiseParallel() / RowwiseParallel(), which styles.py extends to
bigperf's layers, or with bigperf.distributed.ColwiseParallel() / RowwiseParallel().

The names load on first use: torch.distributed.tensor takes seconds to import, which
`import bigperf` should not pay.
"""

import importlib
import sys

_HOMES = {"parallelize": "plan", "ColwiseParallel": "styles", "RowwiseParallel": "styles",
          "TensorParallel": "all_reduce", "save": "checkpoint",
          "load": "checkpoint", "meta_parameters": "empty"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'bigperf.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bigperf.distributed.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def extend_torch_styles_if_loaded() -> None:
    """Let torch's own ColwiseParallel / RowwiseParallel shard bigperf's layers (styles.py), if
    torch.distributed.tensor.parallel is imported already; never imports it (seconds)."""
    if "torch.distributed.tensor.parallel" in sys.modules and "bigperf.distributed.styles" not in sys.modules:
        importlib.import_module("bigperf.distributed.styles")


def __dir__():
    return sorted(set(globals()) | set(_HOMES))
