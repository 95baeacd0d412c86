"""bigperf.swap: replace a model's linear layers by bigperf layers, all or nothing.

The swap is planned first (every replacement built without touching the model), then
applied; if building or applying anything fails, the model is restored exactly as it was.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from bigperf.accuracy import measure_sqnr
from bigperf.nn.fused_linear import FusedLinear
from bigperf.nn.int8_linear import Int8Linear
from bigperf.ops.activations import activation_of_module


@dataclass(frozen=True)
class FusedMixedPrecision:
    """Fused linear with weights stored in `weight_dtype` (bf16 by default), fp32 accumulate."""

    weight_dtype: torch.dtype = torch.bfloat16
    fuse_activations: bool = True

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        return FusedLinear.from_linear(linear, activation=activation, weight_dtype=self.weight_dtype)

    def describe(self) -> str:
        return f"FusedMixedPrecision({str(self.weight_dtype).replace('torch.', '')})"


@dataclass(frozen=True)
class Int8WeightOnly:
    """W8A16: int8 weights per channel (group_size=None) or per group along K; float activations."""

    group_size: int | None = None
    symmetric: bool = True
    fuse_activations: bool = True

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        return Int8Linear.from_linear(linear, weight_only=True, group_size=self.group_size,
                                      activation=activation, symmetric=self.symmetric)

    def describe(self) -> str:
        grouping = "per-channel" if self.group_size is None else f"group {self.group_size}"
        return f"Int8WeightOnly({grouping}{'' if self.symmetric else ', asymmetric'})"


@dataclass(frozen=True)
class Int8Dynamic:
    """W8A8: int8 per-channel weights, activations quantised per token at run time."""

    fuse_activations: bool = True

    def make_layer(self, linear: nn.Linear, activation: str) -> nn.Module:
        return Int8Linear.from_linear(linear, weight_only=False, activation=activation)

    def describe(self) -> str:
        return "Int8Dynamic()"


@dataclass
class LayerChange:
    name: str
    old: str
    new: str
    activation: str
    bytes_before: int
    bytes_after: int
    backend: str
    sqnr_db: float | None = None  # on the calibration data, when given

    @property
    def saved_fraction(self) -> float:
        return 1 - self.bytes_after / self.bytes_before if self.bytes_before else 0.0


@dataclass
class SwapReport:
    config: str
    dry_run: bool
    changes: list[LayerChange] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why it was kept)

    @property
    def bytes_before(self) -> int:
        return sum(c.bytes_before for c in self.changes)

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.changes)

    def to_dict(self) -> dict:
        return {"config": self.config, "dry_run": self.dry_run,
                "changes": [asdict(c) for c in self.changes],
                "kept": [{"name": n, "reason": r} for n, r in self.kept],
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __rich__(self):
        from rich.table import Table

        title = f"bigperf.swap {self.config}" + (" (dry run: nothing changed)" if self.dry_run else "")
        table = Table(title=title)
        for column in ("layer", "old → new", "activation", "weight bytes", "SQNR dB", "backend / reason"):
            table.add_column(column)
        for c in self.changes:
            sqnr = "-" if c.sqnr_db is None else f"{c.sqnr_db:.1f}"
            table.add_row(c.name, f"{c.old} → {c.new}", c.activation,
                          f"{c.bytes_before:,} → {c.bytes_after:,}", sqnr, c.backend)
        for name, reason in self.kept:
            table.add_row(name, "kept", "", "", "", reason)
        table.caption = (f"{len(self.changes)} layer(s) swapped; weight bytes "
                         f"{self.bytes_before:,} → {self.bytes_after:,}")
        return table

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        console.print(self)
        return console.export_text()


def _module_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _config_for(name: str, config) -> object | None:
    if isinstance(config, dict):
        for pattern, chosen in config.items():
            if re.fullmatch(pattern, name):
                return chosen
        return None
    return config


def _backend_for(layer: nn.Module) -> str:
    """Which backend would run this layer's op for a 1-row input on its device."""
    from bigperf.ops.fused_linear import BACKENDS
    from bigperf.ops.registry import NoBackendError

    from bigperf.ops.int8_linear import DYNAMIC_BACKENDS, WEIGHT_ONLY_BACKENDS

    try:
        if isinstance(layer, FusedLinear):
            x = torch.empty(1, layer.in_features, device=layer.weight.device)
            return BACKENDS.select(x.device, x, layer.weight, layer.bias, None, layer.activation).name
        if isinstance(layer, Int8Linear):
            x = torch.empty(1, layer.in_features, device=layer.qweight.device)
            if layer.weight_only:
                return WEIGHT_ONLY_BACKENDS.select(x.device, x, layer.qweight, layer.scale, layer.zero_point,
                                                   layer.bias, layer.activation).name
            return DYNAMIC_BACKENDS.select(x.device, x, layer.qweight, layer.scale, layer.bias, layer.activation).name
    except NoBackendError as error:
        return f"none ({error})"
    return "-"


@dataclass
class _Planned:
    parent: nn.Module
    attr: str
    name: str
    old: nn.Module
    new: nn.Module
    activation: str
    # A fused activation module whose slot becomes nn.Identity (Sequential fusion).
    absorbed_attr: str | None = None
    absorbed_old: nn.Module | None = None


def _plan(model: nn.Module, config, filter: Callable | None) -> tuple[list[_Planned], list[tuple[str, str]]]:
    planned: list[_Planned] = []
    kept: list[tuple[str, str]] = []
    for name, child in model.named_modules():  # model order, so the report reads top-down
        if type(child) is not nn.Linear:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        chosen = _config_for(name, config)
        if chosen is None:
            kept.append((name, "no config matched (or the recipe says None)"))
            continue
        if filter is not None and not filter(child, name):
            kept.append((name, "excluded by filter"))
            continue
        activation, absorbed = "none", None
        # Linear → activation inside nn.Sequential: the activation runs in the epilogue.
        if isinstance(parent, nn.Sequential) and getattr(chosen, "fuse_activations", False):
            children = list(parent.named_children())
            index = [a for a, _ in children].index(attr)
            if index + 1 < len(children):
                next_attr, next_child = children[index + 1]
                fused = activation_of_module(next_child)
                if fused is not None:
                    activation, absorbed = fused, (next_attr, next_child)
        new = chosen.make_layer(child, activation)
        planned.append(_Planned(parent, attr, name, child, new, activation,
                                absorbed[0] if absorbed else None, absorbed[1] if absorbed else None))
    return planned, kept


def swap(model: nn.Module, config, *, filter: Callable | None = None, calibration=None,
         min_sqnr: float | None = None, dry_run: bool = False) -> SwapReport:
    """Replace the model's nn.Linear layers according to `config`; returns a SwapReport.

    config: a config object (e.g. FusedMixedPrecision()) or a {fqn regex: config | None}
    dict (first full match wins; None keeps the layer). filter(module, fqn) narrows further.
    Nothing is changed when dry_run is True or when any step fails.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bigperf.swap: argument 'model' must be an nn.Module, got {type(model).__name__}")
    configs = config.values() if isinstance(config, dict) else [config]
    for c in configs:
        if c is not None and not hasattr(c, "make_layer"):
            raise TypeError(f"bigperf.swap: argument 'config' must be a bigperf config (e.g. "
                            f"bigperf.FusedMixedPrecision()) or a dict of them, got {c!r}")
    if min_sqnr is not None and calibration is None:
        raise ValueError("bigperf.swap: argument 'min_sqnr' needs 'calibration' batches to measure SQNR on")

    planned, kept = _plan(model, config, filter)  # builds new layers; the model is untouched
    sqnr = measure_sqnr(model, planned, calibration) if calibration is not None else {}
    report = SwapReport(config=_describe(config), dry_run=dry_run, kept=kept)
    accepted = []
    for p in planned:
        layer_sqnr = sqnr.get(p.name)
        if min_sqnr is not None and layer_sqnr < min_sqnr:
            report.kept.append((p.name, f"SQNR {layer_sqnr:.1f} dB < min_sqnr {min_sqnr} dB"))
            continue
        accepted.append(p)
        report.changes.append(LayerChange(p.name, type(p.old).__name__, type(p.new).__name__, p.activation,
                                          _module_bytes(p.old), _module_bytes(p.new), _backend_for(p.new),
                                          layer_sqnr))
    planned = accepted
    if dry_run:
        return report
    applied: list[_Planned] = []
    try:
        for p in planned:
            setattr(p.parent, p.attr, p.new)
            if p.absorbed_attr is not None:
                setattr(p.parent, p.absorbed_attr, nn.Identity())
            applied.append(p)
    except BaseException:
        for p in reversed(applied):
            setattr(p.parent, p.attr, p.old)
            if p.absorbed_attr is not None:
                setattr(p.parent, p.absorbed_attr, p.absorbed_old)
        raise
    return report


def _describe(config) -> str:
    if isinstance(config, dict):
        return "{" + ", ".join(f"{k!r}: {v.describe() if v else None}" for k, v in config.items()) + "}"
    return config.describe()
