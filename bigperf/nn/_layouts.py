"""Shared by the layers that hold their weight in one of several layouts (Int8Linear,
SparseLinear): swapping one set of buffers for another, so only one copy is ever held."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bigperf.ops.prepared import forget_prepared


def ordinary(t: torch.Tensor) -> torch.Tensor:
    """`t` as an ordinary tensor: one made under torch.inference_mode() is copied out of
    inference. The ops check a weight's content (finite scales, 2:4 metadata, block
    indices) once per tensor version (bigperf/ops/tensor_keys.py), and inference tensors
    keep no version, so a layer holding them would be checked again on every call (an
    Int8Linear swapped under inference_mode: 118 us per call at 64 x 64 against 42)."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()


def replace_buffers(module: nn.Module, old: tuple[str, ...], new: dict[str, torch.Tensor | None],
                    persistent: bool = True) -> None:
    """Drop the buffers named `old`, then register `new` (a None value stays a plain None
    attribute; inference tensors become ordinary ones). Dropped names are deleted as
    buffers, since torch.export miscounts a root module's None buffers (torch 2.13), and
    left as plain None attributes, which read at no cost on the forward path."""
    forget_prepared(module)  # (a float copy changes which paths are eligible: ops/prepared.py)
    for name in old:
        module._buffers.pop(name, None)
        module.__dict__[name] = None
    for name, t in new.items():
        module.__dict__.pop(name, None)  # register_buffer refuses a plain attribute
        if t is None:
            module.__dict__[name] = None
        else:
            module.register_buffer(name, ordinary(t), persistent=persistent)


def keeping_dtype(fn, tensors) -> callable:
    """`fn` of Module._apply, except that `tensors` keep their dtype: quantisation scales stay
    fp32 through .half() or .to(torch.bfloat16) (the kernels read fp32 scales, and an fp16
    round trip would lose their precision); device moves still apply to them."""
    keep = {id(t) for t in tensors if t is not None}

    def apply(t):
        out = fn(t)
        if id(t) in keep and out.dtype != t.dtype:
            return t.to(out.device)
        return out
    return apply


def set_float_copy(module: nn.Module, key: torch.Tensor, copy: torch.Tensor | None) -> None:
    """Hold `copy` (the layer's weight materialised in fp32, or None for none) as the
    non-persistent buffer `float_copy` (so moves carry it and the swap report counts its
    bytes) and attach it to `key`, the tensor the layer's op receives as its weight (see
    bigperf.ops.torch_paths.attach_float_copy)."""
    from bigperf.ops.torch_paths import attach_float_copy

    replace_buffers(module, ("float_copy",), {"float_copy": copy}, persistent=False)
    attach_float_copy(key, copy)



class FloatCopy:
    """Mixin of the layers that may keep a float copy of their weight (opt in). A layer
    says which tensor its op receives as the weight (_float_copy_key) and how its held
    format materialises in fp32 (_float_weight); call _init_float_copy() in __init__,
    _refresh_float_copy() when the held tensors change (a layout change), and wrap moves
    and loads in `with self._float_copy_rebuilt():`."""

    def _init_float_copy(self) -> None:
        self.keeps_float_copy = False
        self.float_copy = None

    def keep_float_copy(self, keep: bool = True):
        """Keep (keep=False: drop) a float copy of the weight: its fp32 materialisation, held
        beside the packed weight, which adds the dispatcher path torch:copy (F.linear on the
        copy: the original fp32 layer's speed where M is large). It costs N x K x 4 bytes,
        counted in the swap report's bytes; kept through moves and loads, not saved. Returns self."""
        self.keeps_float_copy = bool(keep)
        self._refresh_float_copy()
        return self

    def _refresh_float_copy(self) -> None:
        key = self._float_copy_key()
        if self.keeps_float_copy and key.is_inference():
            raise ValueError(f"bigperf.nn.{type(self).__name__}.keep_float_copy: the layer's weight is an inference "
                             f"tensor (made under torch.inference_mode(), e.g. by copy.deepcopy there), which keeps "
                             f"no version to tie a float copy to; build or copy the layer outside inference mode")
        with torch.inference_mode(False):  # made ordinary (see `ordinary`) rather than copied out
            copy = self._float_weight() if self.keeps_float_copy else None
        set_float_copy(self, key, copy)

    @contextlib.contextmanager
    def _float_copy_rebuilt(self):
        """Around a move, a dtype change or a load: the copy is dropped (never converted, moved
        or rebuilt by layout changes inside) and made once from the held weight afterwards,
        also when the block raises (the copy then matches the weight the layer kept)."""
        keeps = self.keeps_float_copy
        set_float_copy(self, self._float_copy_key(), None)
        self.keeps_float_copy = False
        try:
            yield
        finally:
            self.keeps_float_copy = keeps
            self._refresh_float_copy()
