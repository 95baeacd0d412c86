"""What the weight formats' shard rules share (tensor parallelism, bigperf/distributed):
which slice of a dimension a rank takes, checked before anything is cut, and the bias rule
of a row-wise split.

Column-wise ("colwise") splits the output features N: each rank computes its own N / world
outputs. Row-wise ("rowwise") splits the input features K: each rank computes a partial sum
over its K / world inputs, and the ranks all-reduce; the bias is added once, so only rank 0
keeps it. A split a format cannot take raises ValueError naming the function and the reason.
"""

from __future__ import annotations

import torch

STYLES = ("colwise", "rowwise")


def check_rank(function: str, rank: int, world: int) -> None:
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise ValueError(f"{function}: argument 'world' must be a positive int, got {world!r}")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world:
        raise ValueError(f"{function}: argument 'rank' must be an int in [0, {world}), got {rank!r}")


def shard_range(function: str, what: str, size: int, rank: int, world: int, unit: int = 1,
                unit_name: str = "") -> tuple[int, int]:
    """[lo, hi) of `size` (the `what` dimension) that `rank` of `world` takes: equal shards,
    each a whole number of `unit`s (a quantisation group, a block, a meta byte's groups)."""
    check_rank(function, rank, world)
    if size % world:
        raise ValueError(f"{function}: {what} = {size} does not split into {world} equal shards")
    shard = size // world
    if shard % unit:
        raise ValueError(f"{function}: a shard of {what} = {size} over {world} ranks is {shard} wide, which "
                         f"would cut a {unit_name} of {unit} in two")
    return rank * shard, (rank + 1) * shard


def row_slice(t: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    return None if t is None else t[lo:hi]


def bias_once(bias: torch.Tensor | None, rank: int) -> torch.Tensor | None:
    """A row-wise shard's bias: rank 0 adds it to its partial sum, the others none."""
    return bias if rank == 0 else None


def check_k(function: str, k: int, held: int) -> None:
    """The layer's in_features `k` is the K the packed tensors hold."""
    if k != held:
        raise ValueError(f"{function}: argument 'k' is {k}, but the packed weight holds K = {held}")


def cat_rows(parts: list) -> torch.Tensor | None:
    """The shards' tensors (or biases) stacked back along dim 0; None if the shards hold none."""
    return None if parts[0] is None else torch.cat(parts, dim=0)
