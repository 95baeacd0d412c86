"""Int8Linear: int8 weights (per channel or per group) with float or int8 activations."""

from __future__ import annotations

import torch
from torch import nn

from bigperf.formats import int8_rowmajor, w8a8_cpu, w8a16_cpu, w8a16_cuda
from bigperf.formats.w8a8_cpu import W8A8CpuLayout, pack_w8a8_cpu, unpack_w8a8_cpu
from bigperf.formats.w8a16_cpu import W8A16CpuLayout, pack_w8a16_cpu, unpack_w8a16_cpu
from bigperf.formats.w8a16_cuda import W8A16Layout, pack_w8a16, unpack_w8a16
from bigperf.nn._held import held_tensors
from bigperf.nn._layouts import FloatCopy, keeping_dtype, replace_buffers
from bigperf.ops.activations import activation_name
from bigperf.ops.int8_dynamic_layout_linear import W8A8_CPU_LAYOUT
from bigperf.ops.int8_layout_linear import int8_weight_linear_w8a16
from bigperf.ops.int8_linear import DYNAMIC, WEIGHT_ONLY, int8_dynamic_linear
from bigperf.ops.prepared import call_prepared
from bigperf.ops.int8_weight_cpu_layout_linear import W8A16_CPU_LAYOUT
from bigperf.quant import GROUP_SIZES, activation_qmax

# The packed form this layer stores: row-major [N, K] int8 codes, fp32 scales [N, G],
# optional int8 zero points. Bumped whenever that layout changes; load refuses others.
PACKED_FORMAT = int8_rowmajor.NAME
PACKED_VERSION = int8_rowmajor.VERSION

# How the layer holds its weight in memory (its state_dict is always PACKED_FORMAT):
#   "rowmajor"   qweight / scale / zero_point as above;
#   "w8a16-cuda" only the CUDA W8A16 kernel's layout (bigperf/formats/w8a16_cuda.py, versioned):
#                buffers w8a16_weight / w8a16_scale / w8a16_zero, qweight etc. None;
#   "w8a8-cpu"   only the CPU W8A8 kernels' panels (bigperf/formats/w8a8_cpu.py, versioned):
#                buffers w8a8_weight / w8a8_colsum / w8a8_scale, qweight etc. None;
#   "w8a16-cpu"  only the CPU W8A16 kernels' panels (bigperf/formats/w8a16_cpu.py, versioned):
#                buffers w8a16_cpu_weight / w8a16_cpu_scale / w8a16_cpu_zero.
# A weight-only layer settles on "w8a16-cuda" whenever it moves to a GPU where that kernel
# is built and on "w8a16-cpu" on a CPU that runs the AVX2 or AVX-512 kernels, a W8A8 layer
# on "w8a8-cpu" there, and either on "rowmajor" elsewhere, so no device holds the weight
# twice. int8_weight() gives the row-major tensors whatever the layout.
KERNEL_LAYOUTS = ("rowmajor", "w8a16-cuda", "w8a8-cpu", "w8a16-cpu")
_BUFFERS = {"rowmajor": int8_rowmajor.BUFFERS, "w8a16-cuda": w8a16_cuda.BUFFERS, "w8a8-cpu": w8a8_cpu.BUFFERS,
            "w8a16-cpu": w8a16_cpu.BUFFERS}
# What forward reads per call (held_tensors): the layout's buffers, then the bias.
_TENSORS = {layout: (*names, "bias") for layout, names in _BUFFERS.items()}
# The fp32 tensors of each layout that keep their dtype through .half() / .to(bfloat16).
_SCALES = {"rowmajor": ("scale",), "w8a16-cuda": ("w8a16_scale", "w8a16_zero"), "w8a8-cpu": ("w8a8_scale",),
           "w8a16-cpu": ("w8a16_cpu_scale",)}


class Int8Linear(FloatCopy, nn.Module):
    """y = act(x @ dequant(W)^T + b): W8A16 (weight_only=True) or W8A8 with per-token
    dynamic activation quantisation (weight_only=False) to act_bits = 8 (codes in
    [-127, 127]) or 7 ([-63, 63]: ~7 dB less SQNR, faster on AVX2). Output in x's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_only: bool = True,
                 group_size: int | None = None, symmetric: bool = True, activation="none", device=None,
                 act_bits: int = 8):
        super().__init__()
        where = "bigperf.nn.Int8Linear"
        if not weight_only and (group_size is not None or not symmetric):
            raise ValueError(f"{where}: W8A8 (weight_only=False) takes symmetric per-channel weights; "
                             f"got group_size={group_size}, symmetric={symmetric}")
        activation_qmax(act_bits, where, "act_bits")
        if weight_only and act_bits != 8:
            raise ValueError(f"{where}: argument 'act_bits' applies to W8A8 (weight_only=False) only; "
                             f"W8A16 keeps float activations, got act_bits={act_bits}")
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"{where}: in_features and out_features must be positive, got {in_features}, {out_features}")
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                       or group_size not in GROUP_SIZES):
            raise ValueError(f"{where}: argument 'group_size' must be None (per channel) or one of {GROUP_SIZES}, "
                             f"got {group_size!r}")
        if group_size is not None and in_features % group_size:
            raise ValueError(f"{where}: argument 'group_size' {group_size} does not divide in_features {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_only, self.group_size, self.symmetric = weight_only, group_size, symmetric
        self.act_bits = act_bits
        self.activation = activation_name(activation, where)
        groups = 1 if group_size is None else in_features // group_size
        # Never inference tensors, even when built under torch.inference_mode(): see
        # _layouts.ordinary (from_linear and loads copy into these; layouts and moves keep it).
        with torch.inference_mode(False):
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scale", torch.ones(out_features, groups, dtype=torch.float32, device=device))
            if symmetric:
                self.zero_point = None
            else:
                self.register_buffer("zero_point", torch.zeros(out_features, groups, dtype=torch.int8, device=device))
            if bias:
                self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.float32, device=device),
                                         requires_grad=False)
            else:
                self.register_parameter("bias", None)
        self.kernel_layout = "rowmajor"
        self._init_float_copy()

    @classmethod
    def from_linear(cls, linear: nn.Linear, weight_only: bool = True, group_size: int | None = None,
                    activation=None, symmetric: bool = True, act_bits: int = 8) -> "Int8Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"bigperf.nn.Int8Linear.from_linear: argument 'linear' must be nn.Linear, "
                            f"got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, weight_only=weight_only,
                    group_size=group_size, symmetric=symmetric, activation=activation, device=linear.weight.device,
                    act_bits=act_bits)
        qweight, scale, zero_point = int8_rowmajor.pack(linear.weight.detach(), group_size, symmetric)
        with torch.no_grad():
            layer.qweight.copy_(qweight)
            layer.scale.copy_(scale)
            if zero_point is not None:
                layer.zero_point.copy_(zero_point)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer.use_kernel_layout(layer._preferred_layout())

    def forward(self, x: torch.Tensor, act_absmax: torch.Tensor | None = None) -> torch.Tensor:
        """act_absmax (W8A8 only): the absmax each token of x is quantised against, fp32 of
        x's leading shape, instead of its own (a row-wise shard's all-reduced one)."""
        if act_absmax is not None and self.weight_only:
            raise ValueError("bigperf.nn.Int8Linear: argument 'act_absmax' applies to W8A8 (weight_only=False) only")
        if self.kernel_layout == "w8a16-cuda":
            return int8_weight_linear_w8a16(x, self._w8a16_layout(), self.bias, self.activation)
        # The CPU layouts' ops take the buffers as they are (no layout object built per call: a
        # frozen dataclass costs ~3 us, a tenth of a small layer's call).
        # Each call with the layer's own arguments only is validated and dispatched once per
        # form of x (ops/prepared.py).
        if self.kernel_layout == "w8a16-cpu":
            weight, scale, zero, bias = held_tensors(self, _TENSORS["w8a16-cpu"])
            return call_prepared(self, W8A16_CPU_LAYOUT, x, (
                weight, scale, zero, self.out_features, self.in_features, self.group_size or 0, bias, self.activation))
        if self.kernel_layout == "w8a8-cpu":
            weight, colsum, scale, bias = held_tensors(self, _TENSORS["w8a8-cpu"])
            if act_absmax is not None:
                return W8A8_CPU_LAYOUT(x, weight, colsum, scale, self.out_features, self.in_features, bias,
                                       self.activation, self.act_bits, act_absmax)
            return call_prepared(self, W8A8_CPU_LAYOUT, x, (
                weight, colsum, scale, self.out_features, self.in_features, bias, self.activation, self.act_bits, None))
        qweight, scale, zero_point, bias = held_tensors(self, _TENSORS["rowmajor"])
        if self.weight_only:
            return call_prepared(self, WEIGHT_ONLY, x, (qweight, scale, zero_point, bias, self.activation))
        if act_absmax is not None:
            return int8_dynamic_linear(x, qweight, scale, bias, self.activation, self.act_bits, act_absmax)
        return call_prepared(self, DYNAMIC, x, (qweight, scale, bias, self.activation, self.act_bits, None))

    # ------------------------------------------------------------------------- layouts

    def _w8a16_layout(self) -> W8A16Layout:
        return W8A16Layout(self.w8a16_weight, self.w8a16_scale, self.w8a16_zero, self.out_features,
                           self.in_features, self.group_size)

    def _w8a8_layout(self) -> W8A8CpuLayout:
        return W8A8CpuLayout(self.w8a8_weight, self.w8a8_colsum, self.w8a8_scale, self.out_features,
                             self.in_features, self.act_bits)

    def _w8a16_cpu_layout(self) -> W8A16CpuLayout:
        return W8A16CpuLayout(self.w8a16_cpu_weight, self.w8a16_cpu_scale, self.w8a16_cpu_zero, self.out_features,
                              self.in_features, self.group_size)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(qweight [N, K] int8, scale [N, G] fp32, zero_point [N, G] int8 or None): the weight
        in int8_rowmajor form whatever layout the layer holds (unpacked copies where it holds
        a kernel layout; the layer's own buffers where it holds row-major)."""
        if self.kernel_layout == "w8a16-cuda":
            return unpack_w8a16(self._w8a16_layout())
        if self.kernel_layout == "w8a8-cpu":
            return unpack_w8a8_cpu(self._w8a8_layout())
        if self.kernel_layout == "w8a16-cpu":
            return unpack_w8a16_cpu(self._w8a16_cpu_layout())
        return self.qweight, self.scale, self.zero_point

    def use_kernel_layout(self, layout: str) -> "Int8Linear":
        """Hold the weight as `layout` (KERNEL_LAYOUTS), converting exactly; returns self.
        Moves between devices choose the layout by themselves (see KERNEL_LAYOUTS)."""
        where = "bigperf.nn.Int8Linear.use_kernel_layout"
        if layout not in KERNEL_LAYOUTS:
            raise ValueError(f"{where}: argument 'layout' must be one of {KERNEL_LAYOUTS}, got {layout!r}")
        if layout == self.kernel_layout:
            return self
        if layout == "w8a16-cuda" and not self.weight_only:
            raise ValueError(f"{where}: layout 'w8a16-cuda' holds W8A16 weights; this layer is W8A8 "
                             f"(weight_only=False)")
        if layout == "w8a8-cpu" and self.weight_only:
            raise ValueError(f"{where}: layout 'w8a8-cpu' holds W8A8 weights; this layer is W8A16 "
                             f"(weight_only=True)")
        if layout == "w8a16-cpu" and not self.weight_only:
            raise ValueError(f"{where}: layout 'w8a16-cpu' holds W8A16 weights; this layer is W8A8 "
                             f"(weight_only=False)")
        with torch.inference_mode(False):  # packed as ordinary tensors, not copied out of inference later
            qweight, scale, zero_point = self.int8_weight()
            if layout == "w8a16-cuda":
                packed = pack_w8a16(qweight, scale, zero_point)
                tensors = (packed.weight, packed.scale, packed.zero)
            elif layout == "w8a8-cpu":
                packed = pack_w8a8_cpu(qweight, scale, self.act_bits)
                tensors = (packed.weight, packed.colsum, packed.scale)
            elif layout == "w8a16-cpu":
                packed = pack_w8a16_cpu(qweight, scale, zero_point)
                tensors = (packed.weight, packed.scale, packed.zero)
            else:
                tensors = (qweight, scale, zero_point)
        replace_buffers(self, _BUFFERS[self.kernel_layout], dict(zip(_BUFFERS[layout], tensors)),
                        persistent=layout == "rowmajor")
        self.kernel_layout = layout
        self._refresh_float_copy()  # attached to the tensor the new layout's op receives
        return self

    def _held_weight(self) -> torch.Tensor:
        """The tensor the layout's op receives as its weight (qweight, or a layout's weight)."""
        return getattr(self, _BUFFERS[self.kernel_layout][0])

    def _float_copy_key(self) -> torch.Tensor:
        return self._held_weight()

    def _float_weight(self) -> torch.Tensor:
        if self.kernel_layout == "w8a16-cuda":
            return w8a16_cuda.float_weight(self._w8a16_layout())
        if self.kernel_layout == "w8a8-cpu":
            return w8a8_cpu.float_weight(self._w8a8_layout())
        if self.kernel_layout == "w8a16-cpu":
            return w8a16_cpu.float_weight(self._w8a16_cpu_layout())
        return int8_rowmajor.float_weight(self.qweight, self.scale, self.zero_point, self.weight_only)

    def _preferred_layout(self) -> str:
        device = self._held_weight().device
        for layout, format_ in (("w8a16-cuda", w8a16_cuda), ("w8a8-cpu", w8a8_cpu), ("w8a16-cpu", w8a16_cpu)):
            if format_.why_not_hold(device, self.weight_only) is None:
                return layout
        return "rowmajor"

    def _apply(self, fn, recurse=True):
        scales = [getattr(self, name) for name in _SCALES[self.kernel_layout]]
        with self._float_copy_rebuilt():
            with torch.inference_mode(False):  # moved buffers are never inference tensors: see __init__
                super()._apply(keeping_dtype(fn, scales), recurse)
            self.use_kernel_layout(self._preferred_layout())
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.kernel_layout != "rowmajor":  # the saved form is always row-major
            qweight, scale, zero_point = self.int8_weight()
            for name, t in (("qweight", qweight), ("scale", scale), ("zero_point", zero_point)):
                if t is not None:
                    destination[prefix + name] = t

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        layout = self.kernel_layout
        with self._float_copy_rebuilt():
            self.use_kernel_layout("rowmajor")  # load into row-major buffers, with their checks
            try:
                super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
            finally:  # a layout chosen by hand stays; otherwise the device's
                self.use_kernel_layout(layout if layout != "rowmajor" else self._preferred_layout())

    def backend(self) -> str:
        """The backend a 1-row call on this layer's device would use (NoBackendError if none)."""
        from bigperf.ops.int8_dynamic_layout_linear import LAYOUT_BACKENDS as W8A8_CPU_BACKENDS
        from bigperf.ops.int8_layout_linear import LAYOUT_BACKENDS
        from bigperf.ops.int8_linear import DYNAMIC_BACKENDS, WEIGHT_ONLY_BACKENDS

        if self.kernel_layout == "w8a8-cpu":
            layout = self._w8a8_layout()
            x = torch.empty(1, self.in_features)
            return W8A8_CPU_BACKENDS.select(x, layout.weight, layout.colsum, layout.scale, layout.n,
                                            layout.k, self.bias, self.activation, layout.act_bits, None).name
        if self.kernel_layout == "w8a16-cuda":
            layout = self._w8a16_layout()
            x = torch.empty(1, self.in_features, device=layout.weight.device, dtype=torch.bfloat16)
            return LAYOUT_BACKENDS.select(x, layout.weight, layout.scale, layout.zero, layout.n,
                                          layout.k, layout.group_size or 0, self.bias, self.activation).name
        if self.kernel_layout == "w8a16-cpu":
            from bigperf.ops.int8_weight_cpu_layout_linear import LAYOUT_BACKENDS as W8A16_CPU_BACKENDS

            layout = self._w8a16_cpu_layout()
            x = torch.empty(1, self.in_features)
            return W8A16_CPU_BACKENDS.select(x, layout.weight, layout.scale, layout.zero, layout.n, layout.k,
                                             layout.group_size or 0, self.bias, self.activation).name
        x = torch.empty(1, self.in_features, device=self.qweight.device)
        if self.weight_only:
            return WEIGHT_ONLY_BACKENDS.select(x, self.qweight, self.scale, self.zero_point,
                                               self.bias, self.activation).name
        return DYNAMIC_BACKENDS.select(x, self.qweight, self.scale, self.bias, self.activation,
                                       self.act_bits).name

    def get_extra_state(self) -> dict:
        return {"format": PACKED_FORMAT, "version": PACKED_VERSION, "weight_only": self.weight_only,
                "group_size": self.group_size, "symmetric": self.symmetric, "activation": self.activation,
                "act_bits": self.act_bits}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"bigperf.nn.Int8Linear: state_dict's extra state must be a dict, got {type(state).__name__}")
        if state.get("format") != PACKED_FORMAT or state.get("version") != PACKED_VERSION:
            raise ValueError(f"bigperf.nn.Int8Linear: state_dict holds packed format {state.get('format')!r} "
                             f"v{state.get('version')}, this version reads {PACKED_FORMAT!r} v{PACKED_VERSION}")
        mine = self.get_extra_state()
        # State saved before act_bits existed was 8-bit: the packed tensors are the same.
        state = {"act_bits": 8, **state}
        for key in ("weight_only", "group_size", "symmetric", "activation", "act_bits"):
            if state.get(key) != mine[key]:
                raise ValueError(f"bigperf.nn.Int8Linear: state_dict was saved with {key}={state.get(key)!r}, "
                                 f"this layer has {key}={mine[key]!r}")

    def extra_repr(self) -> str:
        kind = "W8A16" if self.weight_only else f"W8A8 dynamic, act_bits={self.act_bits}"
        grouping = "per-channel" if self.group_size is None else f"group_size={self.group_size}"
        held = "" if self.kernel_layout == "rowmajor" else f", held as {self.kernel_layout}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, {kind}, {grouping}, "
                f"{'symmetric' if self.symmetric else 'asymmetric'}, activation={self.activation}{held}")
