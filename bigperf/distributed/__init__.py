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
import importlib.abc
import importlib.util
import sys
import warnings

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


_TORCH_TENSOR_PARALLEL = "torch.distributed.tensor.parallel"


def extend_torch_styles() -> None:
    """Let torch's own ColwiseParallel / RowwiseParallel shard bigperf's layers (styles.py):
    now if torch.distributed.tensor.parallel is imported, else as soon as it is. Never imports
    it itself (half a second), so that a swap without tensor parallelism does not pay for it."""
    if "bigperf.distributed.styles" in sys.modules:
        return
    if _TORCH_TENSOR_PARALLEL in sys.modules:
        importlib.import_module("bigperf.distributed.styles")
    elif not any(isinstance(finder, _ExtendWhenImported) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ExtendWhenImported())


class _ExtendWhenImported(importlib.abc.MetaPathFinder):
    """Import hook, once: torch.distributed.tensor.parallel loads as it would, then styles.py
    extends its styles."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TORCH_TENSOR_PARALLEL:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ExtendingLoader(spec.loader)
        return spec


class _ExtendingLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        try:
            importlib.import_module("bigperf.distributed.styles")
        except Exception as error:  # noqa: BLE001 - never fail the user's import of torch
            warnings.warn(f"bigperf: torch's ColwiseParallel / RowwiseParallel not extended to bigperf's layers: "
                          f"{error}", stacklevel=2)


def __dir__():
    return sorted(set(globals()) | set(_HOMES))
