"""Swap configs: what each linear map becomes. Plain frozen dataclasses that build
layers, describe themselves, and round-trip through JSON (for bigperf.save/load)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from bigperf.nn.fused_linear import FusedLinear
from bigperf.nn.int8_linear import Int8Linear
from bigperf.nn.sparse_linear import SparseLinear
from bigperf.ops.validation import FLOAT_DTYPES
from bigperf.quant import GROUP_SIZES, activation_qmax

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- field checks
# Each config checks its fields when it is built, so a bad value is an error at the line that
# wrote it, not a reason repeated for every layer at swap time (or a failure at load).

def _field_error(config, field: str, expected: str) -> ValueError:
    return ValueError(f"bigperf.{type(config).__name__}: field '{field}' must be {expected}, "
                      f"got {getattr(config, field)!r}")


def _check_bool(config, *fields: str) -> None:
    for field in fields:
        if not isinstance(getattr(config, field), bool):
            raise _field_error(config, field, "True or False")


def _check_float_dtype(config, field: str) -> None:
    if getattr(config, field) not in FLOAT_DTYPES:
        raise _field_error(config, field, "one of " + ", ".join(f"torch.{_dtype_name(d)}" for d in FLOAT_DTYPES))


def with_float_copy(config, layer: nn.Module) -> nn.Module:
    """The layer, told to keep a float copy of its weight where the config asks for one."""
    return layer.keep_float_copy() if config.float_copy else layer


def _float_copy_note(config) -> str:
    return " + float copy" if config.float_copy else ""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class FusedMixedPrecision:
    """Fused linear with weights stored in `weight_dtype` (bf16 by default), fp32 accumulate."""

    weight_dtype: torch.dtype = torch.bfloat16
    fuse_activations: bool = True
    float_copy: bool = False  # also keep the weight in fp32 (opt in: torch:copy, N x K x 4 bytes)

    def __post_init__(self):
        _check_float_dtype(self, "weight_dtype")
        _check_bool(self, "fuse_activations", "float_copy")

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        layer = FusedLinear.from_linear(linear, activation=activation, weight_dtype=self.weight_dtype)
        return with_float_copy(self, layer)

    def empty_layer(self, in_features: int, out_features: int, bias: bool, activation: str, device) -> nn.Module:
        layer = FusedLinear(in_features, out_features, bias, activation=activation, weight_dtype=self.weight_dtype,
                            device=device)
        return with_float_copy(self, layer)

    def describe(self) -> str:
        return f"FusedMixedPrecision({_dtype_name(self.weight_dtype)})" + _float_copy_note(self)


@dataclass(frozen=True)
class Int8WeightOnly:
    """W8A16: int8 weights per channel (group_size=None) or per group along K; float activations."""

    group_size: int | None = None
    symmetric: bool = True
    fuse_activations: bool = True
    float_copy: bool = False  # also keep the weight in fp32 (opt in: torch:copy, N x K x 4 bytes)

    def __post_init__(self):
        if self.group_size is not None and not (_is_int(self.group_size) and self.group_size in GROUP_SIZES):
            raise _field_error(self, "group_size", f"None (per channel) or one of {GROUP_SIZES}")
        _check_bool(self, "symmetric", "fuse_activations", "float_copy")

    def why_not_layer(self, in_features: int, out_features: int) -> str | None:
        if self.group_size is not None and in_features % self.group_size:
            return f"group_size {self.group_size} does not divide in_features {in_features}"
        return None

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        layer = Int8Linear.from_linear(linear, weight_only=True, group_size=self.group_size,
                                       activation=activation, symmetric=self.symmetric)
        return with_float_copy(self, layer)

    def empty_layer(self, in_features: int, out_features: int, bias: bool, activation: str, device) -> nn.Module:
        layer = Int8Linear(in_features, out_features, bias, weight_only=True, group_size=self.group_size,
                           symmetric=self.symmetric, activation=activation, device=device)
        return with_float_copy(self, layer)

    def describe(self) -> str:
        grouping = "per-channel" if self.group_size is None else f"group {self.group_size}"
        asymmetric = "" if self.symmetric else ", asymmetric"
        return f"Int8WeightOnly({grouping}{asymmetric})" + _float_copy_note(self)


@dataclass(frozen=True)
class Int8Dynamic:
    """W8A8: int8 per-channel weights, activations quantised per token at run time to
    act_bits = 8 (codes in [-127, 127]) or 7 ([-63, 63]: fbgemm's reduce_range accuracy
    class, ~7 dB less SQNR, faster on AVX2 CPUs)."""

    act_bits: int = 8
    fuse_activations: bool = True
    float_copy: bool = False  # also keep the weight in fp32 (opt in: torch:copy, N x K x 4 bytes)

    def __post_init__(self):
        activation_qmax(self.act_bits, "bigperf.Int8Dynamic", "act_bits")
        _check_bool(self, "fuse_activations", "float_copy")

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        layer = Int8Linear.from_linear(linear, weight_only=False, activation=activation, act_bits=self.act_bits)
        return with_float_copy(self, layer)

    def empty_layer(self, in_features: int, out_features: int, bias: bool, activation: str, device) -> nn.Module:
        layer = Int8Linear(in_features, out_features, bias, weight_only=False, activation=activation, device=device,
                           act_bits=self.act_bits)
        return with_float_copy(self, layer)

    def describe(self) -> str:
        bits = "" if self.act_bits == 8 else f"act_bits={self.act_bits}"
        return f"Int8Dynamic({bits})" + _float_copy_note(self)


@dataclass(frozen=True)
class Sparse24:
    """2:4 semi-structured weights, compressed (values + 2-bit positions). Layers whose
    weight is not 2:4 are kept (and reported) unless prune=True prunes them by magnitude."""

    values_dtype: torch.dtype = torch.bfloat16
    prune: bool = False
    fuse_activations: bool = True
    float_copy: bool = False  # also keep the weight in fp32 (opt in: torch:copy, N x K x 4 bytes)

    def __post_init__(self):
        _check_float_dtype(self, "values_dtype")
        _check_bool(self, "prune", "fuse_activations", "float_copy")

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        layer = SparseLinear.from_linear(linear, "2:4", values_dtype=self.values_dtype, prune=self.prune,
                                         activation=activation)
        return with_float_copy(self, layer)

    def empty_layer(self, in_features: int, out_features: int, bias: bool, activation: str, device) -> nn.Module:
        layer = SparseLinear(in_features, out_features, bias, pattern="2:4", values_dtype=self.values_dtype,
                             activation=activation, device=device)
        return with_float_copy(self, layer)

    def describe(self) -> str:
        prune = ", prune" if self.prune else ""
        return f"Sparse24({_dtype_name(self.values_dtype)}{prune})" + _float_copy_note(self)


@dataclass(frozen=True)
class Sparse24Int8:
    """2:4 compressed weights with int8 values (per-row scales)."""

    prune: bool = False
    fuse_activations: bool = True
    float_copy: bool = False  # also keep the weight in fp32 (opt in: torch:copy, N x K x 4 bytes)

    def __post_init__(self):
        _check_bool(self, "prune", "fuse_activations", "float_copy")

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        layer = SparseLinear.from_linear(linear, "2:4", int8=True, prune=self.prune, activation=activation)
        return with_float_copy(self, layer)

    def empty_layer(self, in_features: int, out_features: int, bias: bool, activation: str, device) -> nn.Module:
        layer = SparseLinear(in_features, out_features, bias, pattern="2:4", int8=True, activation=activation,
                             device=device)
        return with_float_copy(self, layer)

    def describe(self) -> str:
        return f"Sparse24Int8({'prune' if self.prune else ''})" + _float_copy_note(self)


@dataclass(frozen=True)
class BlockSparse:
    """Block-sparse (BSR) weights with (bn, bk) blocks. With `density`, layers denser than
    that are kept, or pruned by block norm when prune=True."""

    block: tuple[int, int] = (16, 16)
    density: float | None = None
    values_dtype: torch.dtype = torch.bfloat16
    prune: bool = False
    fuse_activations: bool = True
    float_copy: bool = False  # also keep the weight in fp32 (opt in: torch:copy, N x K x 4 bytes)

    def __post_init__(self):
        block = self.block
        if not (isinstance(block, (tuple, list)) and len(block) == 2 and all(_is_int(b) and b > 0 for b in block)):
            raise _field_error(self, "block", "a pair of positive ints (bn, bk)")
        object.__setattr__(self, "block", tuple(block))  # frozen; a list from JSON becomes the tuple it was
        density = self.density
        if density is not None and not (isinstance(density, (int, float)) and not isinstance(density, bool)
                                        and 0 < density <= 1):
            raise _field_error(self, "density", "None or a number in (0, 1]")
        _check_float_dtype(self, "values_dtype")
        _check_bool(self, "prune", "fuse_activations", "float_copy")

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        layer = SparseLinear.from_linear(linear, "block", block=self.block, density=self.density,
                                         values_dtype=self.values_dtype, prune=self.prune, activation=activation)
        return with_float_copy(self, layer)

    def empty_layer(self, in_features: int, out_features: int, bias: bool, activation: str, device) -> nn.Module:
        layer = SparseLinear(in_features, out_features, bias, pattern="block", block=self.block,
                             values_dtype=self.values_dtype, activation=activation, device=device)
        return with_float_copy(self, layer)

    def describe(self) -> str:
        density = "" if self.density is None else f", density {self.density}"
        prune = ", prune" if self.prune else ""
        return f"BlockSparse({self.block[0]}x{self.block[1]}{density}{prune})" + _float_copy_note(self)


CONFIG_TYPES = {cls.__name__: cls for cls in (FusedMixedPrecision, Int8WeightOnly, Int8Dynamic, Sparse24,
                                                Sparse24Int8, BlockSparse)}

# Short names for the command line and for swap(model, "int8").
NAMED_CONFIGS = {
    "bf16": FusedMixedPrecision(torch.bfloat16),
    "fp16": FusedMixedPrecision(torch.float16),
    "fused": FusedMixedPrecision(torch.float32),
    "int8": Int8WeightOnly(),
    "int8-g128": Int8WeightOnly(group_size=128),
    "int8-dynamic": Int8Dynamic(),
    "int8-dynamic-7bit": Int8Dynamic(act_bits=7),
    "sparse24": Sparse24(),
    "sparse24-int8": Sparse24Int8(),
    "block": BlockSparse(),
}


def config_by_name(name: str):
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        raise ValueError(f"bigperf: unknown config name {name!r}; known: {', '.join(NAMED_CONFIGS)}") from None


def is_config(value) -> bool:
    return type(value) in CONFIG_TYPES.values() or (
        hasattr(value, "make_layer") and hasattr(value, "describe") and dataclasses.is_dataclass(value))


def config_to_dict(config) -> dict:
    fields = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        fields[field.name] = _dtype_name(value) if isinstance(value, torch.dtype) else value
    return {"type": type(config).__name__, "fields": fields}


def config_from_dict(data: dict, where: str = "bigperf"):
    """The config a config_to_dict record describes; ValueError naming the field otherwise
    (records come from files: bigperf.load, the CLI)."""
    if not isinstance(data, dict) or not isinstance(data.get("fields"), dict):
        raise ValueError(f"{where}: a config record must be {{'type': ..., 'fields': {{...}}}}, got {data!r}")
    cls = CONFIG_TYPES.get(data.get("type")) if isinstance(data.get("type"), str) else None
    if cls is None:
        raise ValueError(f"{where}: config field 'type' must be one of {', '.join(CONFIG_TYPES)}, "
                         f"got {data.get('type')!r}")
    fields = dict(data["fields"])
    known = {field.name: field for field in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"{where}: {cls.__name__} has no field {unknown[0]!r} (its fields: {', '.join(known)})")
    for name, value in fields.items():
        if known[name].type in ("torch.dtype", torch.dtype):
            if not isinstance(value, str) or value not in _DTYPES:  # (a list is not hashable)
                raise ValueError(f"{where}: {cls.__name__} field {name!r} must be one of {', '.join(_DTYPES)}, "
                                 f"got {value!r}")
            fields[name] = _DTYPES[value]
        elif isinstance(value, list):
            fields[name] = tuple(value)  # JSON has no tuples (e.g. block shapes)
    try:
        return cls(**fields)
    except (ValueError, TypeError) as error:  # the config's own field check, which names the field
        raise ValueError(f"{where}: {error}") from None
