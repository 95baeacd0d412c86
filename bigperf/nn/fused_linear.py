"""FusedLinear: nn.Linear with a fused epilogue and, optionally, lower-precision weights."""

from __future__ import annotations

import torch
from torch import nn

from bigperf.formats import dense
from bigperf.nn._held import held_tensors
from bigperf.nn._layouts import FloatCopy
from bigperf.ops.activations import activation_name
from bigperf.ops.fused_linear import FUSED_LINEAR, fused_linear
from bigperf.ops.prepared import call_prepared
from bigperf.ops.validation import FLOAT_DTYPES


class FusedLinear(FloatCopy, nn.Module):
    """y = act(x @ W^T + b) (+ residual), W stored in `weight_dtype`, output in x's dtype.

    The bias is kept in fp32 (it is N numbers, and the kernels add it in fp32).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 activation="none", weight_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if weight_dtype not in FLOAT_DTYPES:
            raise TypeError(f"bigperf.nn.FusedLinear: argument 'weight_dtype' must be one of "
                            f"{FLOAT_DTYPES}, got {weight_dtype}")
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"bigperf.nn.FusedLinear: in_features and out_features must be positive, "
                             f"got {in_features} and {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation_name(activation, "bigperf.nn.FusedLinear")
        # Never inference tensors, even when built under torch.inference_mode(): a float copy
        # is tied to its weight's version (ops/torch_paths.attach_float_copy), which inference
        # tensors lack (see _layouts.ordinary). from_linear and loads copy into these.
        with torch.inference_mode(False):
            self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=weight_dtype, device=device))
            if bias:
                self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.float32, device=device))
            else:
                self.register_parameter("bias", None)
            nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self._init_float_copy()

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation="none", weight_dtype: torch.dtype | None = None):
        """A FusedLinear computing act(linear(x)), with the weight cast to `weight_dtype`."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"bigperf.nn.FusedLinear.from_linear: argument 'linear' must be nn.Linear, "
                            f"got {type(linear).__name__}")
        weight_dtype = weight_dtype or linear.weight.dtype
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    activation=activation, weight_dtype=weight_dtype, device=linear.weight.device)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = held_tensors(self, ("weight", "bias"))
        if residual is None:  # the common call: validated and dispatched once per form of x
            return call_prepared(self, FUSED_LINEAR, x, (weight, bias, None, self.activation))
        return fused_linear(x, weight, bias, residual, self.activation)

    def _float_copy_key(self) -> torch.Tensor:
        return self.weight

    def _float_weight(self) -> torch.Tensor | None:
        # An fp32 weight is its own float copy: torch:fp32 already multiplies by it.
        return None if self.weight.dtype == torch.float32 else dense.float_weight(self.weight)

    def _apply(self, fn, recurse=True):
        with self._float_copy_rebuilt():
            with torch.inference_mode(False):  # moved weights are never inference tensors: see __init__
                super()._apply(fn, recurse)
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        with self._float_copy_rebuilt():
            super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, activation={self.activation}, "
                f"weight_dtype={str(self.weight.dtype).replace('torch.', '')}")

    def backend(self) -> str:
        """The backend a 1-row call on this layer's device would use (NoBackendError if none)."""
        from bigperf.ops.fused_linear import BACKENDS

        x = torch.empty(1, self.in_features, device=self.weight.device)
        return BACKENDS.select(x, self.weight, self.bias, None, self.activation).name
