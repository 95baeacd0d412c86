"""What identifies a tensor's data, for caches of work done once per weight (content
checks, re-layouts).

A tensor's _version is bumped by in-place writes through it and its views, but not by an
assignment `t.data = other` (the same Python object then holds other memory, at the same
version), which is how many loaders replace weights. So a cache entry is valid only for
the same live object (a weak reference: ids are reused after a tensor dies) with the same
version, address, dtype, shape and strides.

What no key can see: a write that bypasses the version counter into the same memory (a
numpy view, `t.data.copy_(...)`). For index data the kernels therefore never trust a
cached verdict for memory safety (csrc/bindings/cpu_sparse_linear.cpp checks its own copy
of the indices on every call); for re-laid-out weights such a write is not seen until the
tensor is replaced or written through torch.
"""

from __future__ import annotations

import weakref

import torch


def data_key(tensors: tuple) -> tuple | None:
    """Per tensor (version, address, dtype, shape, strides); None when a tensor keeps no
    version counter (an inference tensor): then nothing proves a hit. Plain loops: this
    runs on every eager call of the sparse ops. Inference tensors are told by
    is_inference(), not by the RuntimeError reading their _version raises: that error
    records a C++ backtrace, ~50 us per call."""
    for t in tensors:
        if t.is_inference():
            return None
    try:
        return tuple([(t._version, t.data_ptr(), t.dtype, t.shape, t.stride()) for t in tensors])
    except RuntimeError:  # any other tensor whose version or address cannot be read
        return None


class OncePerData:
    """Values computed once per (live tensors, their data_key), keyed by the tensors' ids.
    An entry goes away with its source tensors (weak references), so what it holds never
    outlives the data it was made from."""

    def __init__(self, limit: int = 4096):
        self._entries: dict[tuple, tuple] = {}
        self._limit = limit

    def get(self, tensors: tuple, build, extra=None):
        key_of_data = data_key(tensors)
        if key_of_data is None:
            return build()
        key = tuple([id(t) for t in tensors])
        entry = self._entries.get(key)
        if entry is not None:
            refs, seen, seen_extra, value = entry
            if seen == key_of_data and seen_extra == extra:
                for ref, t in zip(refs, tensors):
                    if ref() is not t:
                        break
                else:
                    return value
        value = build()
        if len(self._entries) >= self._limit:
            self._entries.clear()
        refs = tuple([weakref.ref(t, self._forget(key)) for t in tensors])
        self._entries[key] = (refs, key_of_data, extra, value)
        return value

    def _forget(self, key):
        def callback(dead_ref):
            entry = self._entries.get(key)
            # Only the entry that holds this reference: the key may belong to a newer
            # tensor by now (ids are reused).
            if entry is not None and any(r is dead_ref for r in entry[0]):
                del self._entries[key]
        return callback

    def __len__(self) -> int:
        return len(self._entries)


class OncePerTensor:
    """build(t, key) computed once per (tensor data, key), for the hot path of every call:
    leaner than OncePerData (one tensor; its version, address and shape are its data's key:
    in-place writes bump the version, `t.data = other` moves the address). Inference tensors
    keep no version: built on every call. An entry goes away with its tensor."""

    def __init__(self, build, limit: int = 1024):
        self.build = build
        self._entries: dict[int, tuple] = {}
        self._limit = limit

    def __call__(self, t, key=None):
        if t.is_inference():
            return self.build(t, key)
        entry = self._entries.get(id(t))
        version, address = t._version, t.data_ptr()
        if entry is not None:
            ref, seen_version, seen_address, shape, seen_key, value = entry
            if (ref() is t and seen_version == version and seen_address == address and seen_key == key
                    and shape == t.shape):
                return value
        value = self.build(t, key)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        tid = id(t)

        def forget(dead_ref, tid=tid):
            entry = self._entries.get(tid)
            if entry is not None and entry[0] is dead_ref:
                del self._entries[tid]
        self._entries[tid] = (weakref.ref(t, forget), version, address, t.shape, key, value)
        return value

    def __len__(self) -> int:
        return len(self._entries)


def _converted(t, dtype):
    # Detached (a kept tensor must carry no autograd history) and never an inference tensor
    # (made inside inference_mode, it would be refused outside).
    with torch.inference_mode(False):
        return t.detach().to(dtype)


class ConvertedOnce(OncePerTensor):
    """A small tensor (a bias) in another dtype, converted once per its data: F.linear in bf16
    on a layer whose bias is kept in fp32 converted it on every call, ~3 us hot and ~15 us
    with the interpreter's caches cold, 3 % of a 768x3072 GEMV."""

    def __init__(self, limit: int = 1024):
        super().__init__(_converted, limit)

    def __call__(self, t, dtype):
        return t if t.dtype == dtype else super().__call__(t, dtype)
