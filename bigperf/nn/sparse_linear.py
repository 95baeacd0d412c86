"""SparseLinear: a pruned linear layer stored compressed (2:4, 2:4 + int8, or BSR)."""

from __future__ import annotations

import torch
from torch import nn

from bigperf.formats import bsr, bsr_lanes, sparse24, sparse24_lanes
from bigperf.formats._lanes import reorder_lanes_values
from bigperf.formats.bsr_lanes import BsrLanes, bsr_lanes_eligible, pack_bsr_lanes, unpack_bsr_lanes
from bigperf.formats.sparse24_lanes import Sparse24Lanes, pack_24_lanes, unpack_24_lanes
from bigperf.errors import LayerRefused  # noqa: F401 - also importable from here, its first home
from bigperf.nn._held import held_tensors
from bigperf.nn._layouts import FloatCopy, keeping_dtype, ordinary, replace_buffers
from bigperf.ops.activations import activation_name
from bigperf.ops.block_sparse_lanes_linear import BSR_LANES
from bigperf.ops.prepared import call_prepared
from bigperf.ops.sparse24_lanes_linear import SPARSE24_LANES
from bigperf.ops.sparse_linear import BLOCK_SPARSE, SPARSE24
from bigperf.ops.validation import FLOAT_DTYPES
from bigperf.sparsity import (
    block_mask,
    kept_count,
    nm_mask,
    satisfies_nm,
)

PACKED_VERSION = 1
PATTERNS = ("2:4", "block")

# How a layer holds its weight in memory (its state_dict is always canonical):
#   "canonical"   the formats sparse24 (values / meta / scale) or bsr (values /
#                 col_indices / row_ptr);
#   "cpu-lanes16" only a CPU lane layout, versioned: sparse24_lanes (lanes_values /
#                 lanes_meta / lanes_scale) or bsr_lanes (lanes_values and the canonical
#                 col_indices / row_ptr, shared); values etc. None.
# A layer settles on "cpu-lanes16" wherever that format's why_not_hold says it can (on the
# CPU, with the kernel built, and for BSR an eligible block shape and dtype), and on
# "canonical" elsewhere, so it never holds the weight twice.
KERNEL_LAYOUTS = ("canonical", "cpu-lanes16")
# Per (pattern, layout): the weight format held (bigperf/formats: its buffers, in the order
# of the canonical tensors or of the lane layout's fields, its packing and its eligibility).
_FORMATS = {
    ("2:4", "canonical"): sparse24,
    ("2:4", "cpu-lanes16"): sparse24_lanes,
    ("block", "canonical"): bsr,
    ("block", "cpu-lanes16"): bsr_lanes,
}
# What forward reads per call (held_tensors): the layout's buffers, then the bias.
_TENSORS = {key: (*fmt.BUFFERS, "bias") for key, fmt in _FORMATS.items()}


class SparseLinear(FloatCopy, nn.Module):
    """y = act(x @ W^T + b) with W compressed: pattern "2:4" (float or int8 values) or
    "block" (BSR with `block` = (bn, bk)). Output in x's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, pattern: str = "2:4",
                 block=(16, 16), int8: bool = False, values_dtype: torch.dtype = torch.bfloat16,
                 activation="none", device=None):
        super().__init__()
        where = "bigperf.nn.SparseLinear"
        if pattern not in PATTERNS:
            raise ValueError(f"{where}: argument 'pattern' must be one of {PATTERNS}, got {pattern!r}")
        if values_dtype not in FLOAT_DTYPES:
            raise TypeError(f"{where}: argument 'values_dtype' must be one of {FLOAT_DTYPES}, got {values_dtype}")
        if int8 and pattern != "2:4":
            raise ValueError(f"{where}: int8 values are available for pattern '2:4' only")
        self.in_features, self.out_features = in_features, out_features
        self.pattern, self.int8 = pattern, int8
        self.block = tuple(block) if pattern == "block" else None
        self.activation = activation_name(activation, where)
        n, k = out_features, in_features
        # Buffers whose size is data, not configuration (bigperf.load checks them by dtype).
        self.data_shaped_buffers = ("values", "col_indices") if pattern == "block" else ()
        if pattern == "2:4" and k % 8:
            raise LayerRefused(f"{where}: in_features {k} must be a multiple of 8 for the 2:4 format")
        if pattern == "block" and (n % self.block[0] or k % self.block[1]):
            raise LayerRefused(f"{where}: a {n}x{k} weight is not divisible into {self.block[0]}x{self.block[1]} "
                               f"blocks")
        self._make_buffers(n, k, int8, values_dtype, device)
        if bias:
            self.bias = nn.Parameter(torch.zeros(n, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.kernel_layout = "canonical"
        self._init_float_copy()
        if pattern == "block":
            self.register_load_state_dict_pre_hook(_take_block_count)

    def _make_buffers(self, n, k, int8, values_dtype, device):
        # Never inference tensors, even when the layer is built under torch.inference_mode():
        # the ops cache their content checks (2:4 metadata, block indices) per tensor
        # version, and inference tensors have none, so every call would check again
        # (~300 ms at K = 4096, N = 14336). Loading and from_linear copy into these.
        with torch.inference_mode(False):
            if self.pattern == "2:4":
                self.register_buffer("values", torch.zeros(n, k // 2, dtype=torch.int8 if int8 else values_dtype,
                                                           device=device))
                # Positions (0, 1) in every group: a valid, all-zero-valued weight until loaded.
                self.register_buffer("meta", torch.full((n, k // 8), 0x44, dtype=torch.uint8, device=device))
                self.register_buffer("scale", torch.ones(n, 1, device=device) if int8 else None)
            else:
                bn, bk = self.block
                self.register_buffer("values", torch.zeros(0, bn, bk, dtype=values_dtype, device=device))
                self.register_buffer("col_indices", torch.zeros(0, dtype=torch.int32, device=device))
                self.register_buffer("row_ptr", torch.zeros(n // bn + 1, dtype=torch.int32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, pattern: str = "2:4", *, block=(16, 16), density: float | None = None,
                    int8: bool = False, values_dtype: torch.dtype = torch.bfloat16, prune: bool = False,
                    activation=None) -> "SparseLinear":
        """Compress a pruned linear layer. A weight that does not satisfy the pattern is
        refused unless prune=True (magnitude pruning: 2:4, or blocks up to `density`)."""
        where = "bigperf.nn.SparseLinear.from_linear"
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{where}: argument 'linear' must be nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, pattern=pattern, block=block,
                    int8=int8, values_dtype=values_dtype, activation=activation, device=linear.weight.device)
        weight = linear.weight.detach().float()
        if pattern == "2:4":
            if not satisfies_nm(weight):
                if not prune:
                    raise LayerRefused(f"{where}: weight is not 2:4 sparse along K; prune it first "
                                       f"(bigperf.prune(model, '2:4')) or pass prune=True")
                weight = weight * nm_mask(weight)
            values, meta, scale = sparse24.pack(weight, values_dtype, int8)
            layer._set_buffers(values=values, meta=meta, scale=scale)
        else:
            if density is not None and prune:
                weight = weight * block_mask(weight, layer.block, density)
            elif density is not None:
                present = (weight.reshape(linear.out_features // layer.block[0], layer.block[0], -1, layer.block[1])
                           != 0).any(dim=(1, 3))
                if int(present.sum()) > kept_count(density, present.numel()):  # block_mask's own rule
                    raise LayerRefused(f"{where}: {int(present.sum())} of the {present.numel()} {layer.block} "
                                       f"blocks are non-zero, more than density {density} keeps; prune first "
                                       f"or pass prune=True")
            values, col_indices, row_ptr = bsr.pack(weight, layer.block, values_dtype)
            layer._set_buffers(values=values, col_indices=col_indices, row_ptr=row_ptr)
        if linear.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(linear.bias.detach())
        return layer.use_kernel_layout(layer._preferred_layout())

    def _set_buffers(self, **tensors):
        # Inference tensors (packed under torch.inference_mode()) become ordinary ones: see
        # _make_buffers.
        for name, t in tensors.items():
            if t is not None:
                setattr(self, name, ordinary(t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each call is validated and dispatched once per form of x (ops/prepared.py); the layer
        # builds its layouts itself, so their versions are this package's.
        *held, bias = held_tensors(self, _TENSORS[self.pattern, self.kernel_layout])
        if self.kernel_layout == "cpu-lanes16":
            if self.pattern == "2:4":
                return call_prepared(self, SPARSE24_LANES, x, (*held, self.out_features, bias, self.activation))
            self._check_features(x)  # the BSR ops take K from x (the format does not record it)
            return call_prepared(self, BSR_LANES, x, (*held, self.block[1], bias, self.activation))
        if self.pattern == "2:4":
            return call_prepared(self, SPARSE24, x, (*held, bias, self.activation))
        self._check_features(x)
        return call_prepared(self, BLOCK_SPARSE, x, (*held, bias, self.activation))

    def _check_features(self, x: torch.Tensor) -> None:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"bigperf.nn.SparseLinear.forward: argument 'x' has shape {tuple(x.shape)}, "
                             f"expected [..., {self.in_features}]")

    def packed_24(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The canonical 2:4 (values [N, K/2], meta [N, K/8] uint8, scale [N, 1] fp32 or None),
        whatever layout the layer holds (a conversion in "cpu-lanes16": read it, do not write it)."""
        self._check_pattern("packed_24", "2:4")
        return self._canonical()

    def packed_bsr(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The canonical BSR (values [nnz, bn, bk], col_indices [nnz] int32, row_ptr [N/bn + 1]
        int32), whatever layout the layer holds (values are a conversion in "cpu-lanes16": read
        them, do not write them)."""
        self._check_pattern("packed_bsr", "block")
        return self._canonical()

    def _check_pattern(self, method: str, pattern: str) -> None:
        if self.pattern != pattern:
            raise ValueError(f"bigperf.nn.SparseLinear.{method}: this layer's pattern is {self.pattern!r}, "
                             f"not {pattern!r}")

    # ------------------------------------------------------------------------- layouts

    def _held(self, layout: str | None = None) -> tuple:
        """The buffers of `layout` (default: the one held), in the format's BUFFERS order."""
        return tuple(held_tensors(self, _FORMATS[self.pattern, layout or self.kernel_layout].BUFFERS))

    def _lanes_layout(self) -> Sparse24Lanes | BsrLanes:
        if self.pattern == "2:4":
            return Sparse24Lanes(*self._held("cpu-lanes16"), self.out_features, self.in_features)
        return BsrLanes(*self._held("cpu-lanes16"), *self.block, self.in_features)

    def _canonical(self) -> tuple:
        if self.kernel_layout == "canonical":
            return self._held()
        return (unpack_24_lanes if self.pattern == "2:4" else unpack_bsr_lanes)(self._lanes_layout())

    def _lanes_why_not(self, dtype: torch.dtype) -> str | None:
        """Why this layer's weight, with `dtype` values, cannot be held in the lane layout."""
        return bsr_lanes_eligible(*self.block, dtype) if self.pattern == "block" else None

    def use_kernel_layout(self, layout: str) -> "SparseLinear":
        """Hold the weight as `layout` (KERNEL_LAYOUTS), converting exactly; returns self.
        Moves between devices choose the layout by themselves (see KERNEL_LAYOUTS)."""
        where = "bigperf.nn.SparseLinear.use_kernel_layout"
        if layout not in KERNEL_LAYOUTS:
            raise ValueError(f"{where}: argument 'layout' must be one of {KERNEL_LAYOUTS}, got {layout!r}")
        if layout == self.kernel_layout:
            return self
        reason = self._lanes_why_not(self._held()[0].dtype) if layout == "cpu-lanes16" else None
        if reason:
            raise ValueError(f"{where}: layout 'cpu-lanes16' cannot hold this layer's weight: {reason}")
        with torch.inference_mode(False):  # the new buffers are never inference tensors: see _make_buffers
            canonical = self._canonical()
            if layout == "canonical":
                new = canonical
            elif self.pattern == "2:4":
                lanes = pack_24_lanes(*canonical)
                new = (lanes.values, lanes.meta, lanes.scale)
            else:
                lanes = pack_bsr_lanes(*canonical, self.in_features)
                new = (lanes.values, lanes.col_indices, lanes.row_ptr)
            # Buffers both layouts hold (BSR's indices) stay as they are: only the others change.
            old_names = _FORMATS[self.pattern, self.kernel_layout].BUFFERS
            new_names = _FORMATS[self.pattern, layout].BUFFERS
            replace_buffers(self, tuple(n for n in old_names if n not in new_names),
                            {n: t for n, t in zip(new_names, new) if n not in old_names},
                            persistent=layout == "canonical")
        self.kernel_layout = layout
        self._refresh_float_copy()  # attached to the tensor the new layout's op receives
        return self

    def _float_copy_key(self) -> torch.Tensor:
        return self._held()[0]

    def _float_weight(self) -> torch.Tensor:
        if self.kernel_layout == "cpu-lanes16":
            return _FORMATS[self.pattern, "cpu-lanes16"].float_weight(self._lanes_layout())
        if self.pattern == "2:4":
            return sparse24.float_weight(*self._held())
        return bsr.float_weight(*self._held(), self.in_features)

    def _preferred_layout(self) -> str:
        # The lane layout wherever its format says it can be held (a CPU with the kernel,
        # and for BSR an eligible block shape and dtype), else the canonical one.
        values = self._held()[0]
        if self.pattern == "2:4":
            reason = sparse24_lanes.why_not_hold(values.device)
        else:
            reason = bsr_lanes.why_not_hold(values.device, self.block, values.dtype)
        return "canonical" if reason else "cpu-lanes16"

    def _apply(self, fn, recurse=True):
        with self._float_copy_rebuilt():
            self._apply_to_buffers(fn, recurse)
        return self

    def _apply_to_buffers(self, fn, recurse):
        # A lane layout that another float dtype could not hold (BSR with an odd bk: not in
        # bf16) is unpacked first, while its order is still known; settled again below.
        if self.kernel_layout == "cpu-lanes16" and any(self._lanes_why_not(d) for d in FLOAT_DTYPES):
            self.use_kernel_layout("canonical")
        # A dtype change (.half(), .to(torch.bfloat16)) converts the lane values element-wise,
        # but their order depends on the dtype: it is redone before anything reads them.
        laid_out_for = self.lanes_values.dtype if self.kernel_layout == "cpu-lanes16" else None
        scale = getattr(self, "lanes_scale" if self.kernel_layout == "cpu-lanes16" else "scale", None)
        with torch.inference_mode(False):  # moved buffers are never inference tensors either: see _make_buffers
            super()._apply(keeping_dtype(fn, (scale,)), recurse)
            if laid_out_for is not None:
                self.lanes_values = reorder_lanes_values(self.lanes_values, laid_out_for)
        self.use_kernel_layout(self._preferred_layout())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.kernel_layout != "canonical":  # the saved form is always canonical
            for name, t in zip(_FORMATS[self.pattern, "canonical"].BUFFERS, self._canonical()):
                if t is not None:
                    destination[prefix + name] = t

    def backend(self) -> str:
        """The backend a 1-row call on this layer's device would use (NoBackendError if none)."""
        from bigperf.ops.block_sparse_lanes_linear import LANES_BACKENDS as BSR_LANES_BACKENDS
        from bigperf.ops.sparse24_lanes_linear import LANES_BACKENDS
        from bigperf.ops.sparse_linear import BSR_BACKENDS, S24_BACKENDS

        x = torch.empty(1, self.in_features, device=self._held()[0].device)
        if self.kernel_layout == "cpu-lanes16":
            layout = self._lanes_layout()
            if self.pattern == "2:4":
                return LANES_BACKENDS.select(x, layout.values, layout.meta, layout.scale, layout.n,
                                             self.bias, self.activation).name
            return BSR_LANES_BACKENDS.select(x, layout.values, layout.col_indices, layout.row_ptr,
                                             layout.bk, self.bias, self.activation).name
        if self.pattern == "2:4":
            return S24_BACKENDS.select(x, self.values, self.meta, self.scale, self.bias,
                                       self.activation).name
        return BSR_BACKENDS.select(x, self.values, self.col_indices, self.row_ptr, self.bias,
                                   self.activation).name

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        layout = self.kernel_layout
        with self._float_copy_rebuilt():
            self.use_kernel_layout("canonical")  # load into canonical buffers, with their checks
            try:
                super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # BSR: _take_block_count first
            finally:  # a layout chosen by hand stays; otherwise the device's
                self.use_kernel_layout(layout if layout != "canonical" else self._preferred_layout())

    def get_extra_state(self) -> dict:
        return {"format": f"sparse-{self.pattern}{'-int8' if self.int8 else ''}", "version": PACKED_VERSION,
                "block": list(self.block) if self.block else None, "activation": self.activation}

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        if state != mine:
            raise ValueError(f"bigperf.nn.SparseLinear: state_dict was saved as {state}, this layer is {mine}")

    def extra_repr(self) -> str:
        fmt = f"block {self.block}" if self.pattern == "block" else ("2:4 int8" if self.int8 else "2:4")
        values = self._held()[0]
        held = "" if self.kernel_layout == "canonical" else f", held as {self.kernel_layout}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {fmt}, "
                f"values={str(values.dtype).replace('torch.', '')}, activation={self.activation}{held}")


def _take_block_count(layer: SparseLinear, state_dict, prefix, *_) -> None:
    """A BSR layer's block count is data: its buffers take the incoming ones' sizes (dtypes are
    checked by the copy). A load pre-hook, so that it reads the names and shapes a sharded
    layer's own hook gives (bigperf/distributed/state.py, which runs first)."""
    for name in ("values", "col_indices"):
        incoming = state_dict.get(prefix + name)
        if isinstance(incoming, torch.Tensor) and incoming.shape != getattr(layer, name).shape:
            if incoming.dtype != getattr(layer, name).dtype:
                raise ValueError(f"bigperf.nn.SparseLinear: state_dict {prefix + name} is {incoming.dtype}, "
                                 f"this layer stores {getattr(layer, name).dtype}")
            with torch.inference_mode(False):  # see _make_buffers
                setattr(layer, name, torch.empty(incoming.shape, dtype=incoming.dtype, device=layer.row_ptr.device))
