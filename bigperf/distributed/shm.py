"""The row-wise all-reduce between ranks on one host, through shared memory.

On one CPU host, gloo's all-reduce of one decode row costs ~1.5 ms between two processes
(2048 fp32, 2 ranks of 1 thread, Zen 3): 8 of them per token took more time than the
sharded layers' arithmetic. The ranks of such a group share a segment in /dev/shm instead
(csrc/cpu/shm_all_reduce.h: each rank copies its part in, one barrier on cache lines, each
sums the parts in rank order, so every rank gets the same bits).

A group uses it when every rank can map the same segment (one host, a shared /dev/shm),
the tensor is an fp32 CPU tensor, and BIGPERF_SHM_ALL_REDUCE is not "0"; otherwise, and for
GPUs (NCCL), torch.distributed.all_reduce. Setting the segment up is collective: it happens
on the first all-reduce of the group, which every rank reaches in the same order."""

from __future__ import annotations

import os
import secrets
import tempfile

import torch
import torch.distributed as dist

from bigperf import _ext

# Bytes of one rank's slot; a larger tensor is reduced in pieces of this size. A decode row
# is 8-64 KB; the segment (2 x world slots) must fit /dev/shm, 64 MB in a default container.
CAPACITY = 1 << 20
TIMEOUT_S = 600.0  # how long a rank waits for the others before it raises (never a silent hang)
OPS = {"sum": 0, "max": 1}
_NONCE_BYTES = 16


class SharedSegment:
    """One group's shared memory segment (created collectively; see the module doc)."""

    def __init__(self, group, capacity: int = CAPACITY, timeout_s: float = TIMEOUT_S):
        self.group, self.capacity, self.timeout_s = group, capacity, timeout_s
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        c = _ext.cpu_module()
        nbytes = c.shm_segment_bytes(self.world, capacity)
        nonce_at = c.SHM_HEADER_BYTES  # a slot's first bytes, overwritten before any is read
        where = [None, None]
        if self.rank == 0:
            where = _create(nbytes, nonce_at)
        dist.broadcast_object_list(where, src=dist.get_global_rank(group, 0), group=group)
        path, nonce = where
        self.segment = None
        if path is not None:
            try:
                segment = torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)
                if bytes(segment[nonce_at:nonce_at + _NONCE_BYTES].tolist()) == nonce:
                    self.segment = segment
            except (OSError, RuntimeError):  # another host, or another /dev/shm
                pass
        shared = [None] * self.world
        dist.all_gather_object(shared, self.segment is not None, group=group)
        if self.rank == 0 and path is not None:
            os.unlink(path)  # the mappings stay; nothing is left behind in /dev/shm
        self.usable = all(shared)
        if not self.usable:
            self.segment = None
        self.seq = 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> None:
        """`tensor` (fp32, contiguous, CPU) reduced in place, in pieces of `capacity` bytes."""
        flat = tensor.view(-1)
        per = self.capacity // 4
        c = _ext.cpu_module()
        for start in range(0, flat.numel(), per):
            piece = flat[start:start + per]
            self.seq += 1
            c.shm_all_reduce(self.segment.data_ptr(), self.capacity, self.rank, self.world, piece.data_ptr(),
                             piece.numel(), OPS[op], self.seq, self.timeout_s)


def _create(nbytes: int, nonce_at: int) -> list:
    """[path, nonce] of a new segment file, its pages reserved (a full /dev/shm refuses here
    instead of killing a rank with SIGBUS on a later write); [None, None] if it cannot be."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    try:
        fd, path = tempfile.mkstemp(prefix="bigperf-shm-", dir=folder)
    except OSError:
        return [None, None]
    try:
        os.posix_fallocate(fd, 0, nbytes)
        nonce = secrets.token_bytes(_NONCE_BYTES)
        os.pwrite(fd, nonce, nonce_at)
        return [path, nonce]
    except OSError:
        os.unlink(path)
        return [None, None]
    finally:
        os.close(fd)


_SEGMENTS: dict = {}


def all_reduce(tensor: torch.Tensor, group, op: str = "sum") -> None:
    """torch.distributed.all_reduce of `tensor` in place over `group` (op "sum" or "max"),
    through the group's shared segment where it can (see the module doc)."""
    work = tensor.contiguous()  # (dist.all_reduce of a strided view reduces its storage's prefix)
    segment = _usable_segment(work, group)
    if segment is not None:
        segment.all_reduce(work, op)
    else:
        dist.all_reduce(work, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=group)
    if work is not tensor:
        tensor.copy_(work)


def _usable_segment(tensor: torch.Tensor, group) -> SharedSegment | None:
    """The group's segment (set up on first use) if it can reduce `tensor`, else None."""
    if (tensor.device.type != "cpu" or tensor.dtype != torch.float32
            or os.environ.get("BIGPERF_SHM_ALL_REDUCE", "1") == "0"):
        return None
    segment = _SEGMENTS.get(group)
    if segment is None:
        segment = _SEGMENTS[group] = SharedSegment(group)
    return segment if segment.usable else None
