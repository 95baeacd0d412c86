"""Tensor parallelism for bigperf's layers on torch.distributed (gloo on CPUs, NCCL on GPUs).

    mesh = init_device_mesh("cpu", (world_size,))
    bigperf.swap(model, bigperf.Int8WeightOnly())          # before or after parallelize
    bigperf.distributed.parallelize(model, mesh, {r".*\\.(q|k|v|gate|up)_proj": "colwise",
                                                  r".*\\.(o|down)_proj": "rowwise"})

Each weight format cuts its own packed tensors (bigperf/formats/<format>.py: shard_columns,
shard_rows); the layers are rebuilt from their shards through their own constructors, so
every kernel layout is re-derived per rank. torch's parallelize_module takes
bigperf.distributed.ColwiseParallel() / RowwiseParallel() (see styles.py for why torch's own
styles cannot shard these layers).
"""

from bigperf.distributed.all_reduce import TensorParallel
from bigperf.distributed.parallelize import parallelize
from bigperf.distributed.styles import ColwiseParallel, RowwiseParallel

__all__ = ["ColwiseParallel", "RowwiseParallel", "TensorParallel", "parallelize"]
