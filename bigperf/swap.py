"""bigperf.swap: replace a model's linear maps by bigperf layers, all or nothing.

The swap is planned first (every replacement built and checked against a backend without
touching the model), optionally gated on per-layer SQNR, then applied; if anything fails,
the model is restored exactly as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bigperf.accuracy import gate_reason, measure_sqnr
from bigperf.configs import config_by_name, config_to_dict, is_config
from bigperf.discovery import LinearMap, find_activation_fusions, find_linear_maps
from bigperf.distributed import extend_torch_styles
from bigperf.distributed.adopt import adopt, is_dtensor, local_tensor
from bigperf.errors import LayerRefused
from bigperf.ops.registry import NoBackendError
from bigperf.report import SLOWER_BELOW, LayerChange, SwapReport
from bigperf.swap_hooks import carry_hooks, has_hooks
from bigperf.tune_swap import (cache_location, check_batch_sizes, check_min_speedup, slower_reason,
                               tune_planned)


@dataclass
class PlannedSwap:
    name: str
    config: object
    linear: LinearMap
    new: nn.Module
    activation: str
    absorbed: str | None  # fqn of a fused activation module, replaced by nn.Identity
    # A layer torch's parallelize_module sharded (distributed/adopt.py): what to attach to
    # its shard. A layer bigperf.distributed sharded carries its own (old.tensor_parallel).
    tensor_parallel: object = None

    @property
    def sharded(self) -> bool:
        return self.tensor_parallel is not None or "tensor_parallel" in self.old.__dict__

    @property
    def old(self) -> nn.Module:
        return self.linear.module


def _module_bytes(module: nn.Module) -> int:
    """Bytes this process holds (of a DTensor, its local shard)."""
    tensors = [local_tensor(t) for t in list(module.parameters()) + list(module.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


def normalize_config(config):
    """A config object, or a list of (compiled regex, config | None) for a recipe dict."""
    if isinstance(config, str):
        return config_by_name(config)
    if isinstance(config, dict):
        recipe = []
        for pattern, chosen in config.items():
            try:
                compiled = re.compile(pattern)
            except (re.error, TypeError) as error:
                raise ValueError(f"bigperf.swap: argument 'config' has a bad regex {pattern!r}: {error}") from None
            recipe.append((compiled, normalize_config(chosen) if chosen is not None else None))
        return recipe
    if not is_config(config):
        raise TypeError(f"bigperf.swap: argument 'config' must be a bigperf config (e.g. "
                        f"bigperf.Int8WeightOnly()), a config name, or a {{regex: config}} dict; got {config!r}")
    return config


def config_for(name: str, config):
    if isinstance(config, list):
        for pattern, chosen in config:
            if pattern.fullmatch(name):
                return chosen
        return None
    return config


def describe(config) -> str:
    if isinstance(config, list):
        return "{" + ", ".join(f"{p.pattern!r}: {c.describe() if c else None}" for p, c in config) + "}"
    return config.describe()


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def plan_swaps(model: nn.Module, config, filter: Callable | None) -> tuple[list[PlannedSwap], list[tuple[str, str]]]:
    """Build every replacement (the model is not touched). Returns (planned, kept with reasons)."""
    linears = find_linear_maps(model)
    fusions = find_activation_fusions(model, {lm.name for lm in linears})
    planned, kept = [], []
    for lm in linears:
        chosen = config_for(lm.name, config)
        if chosen is None:
            kept.append((lm.name, "no config matched (or the recipe says None)"))
            continue
        if filter is not None and not filter(lm.module, lm.name):
            kept.append((lm.name, "excluded by filter"))
            continue
        why_not = getattr(chosen, "why_not_layer", lambda *_: None)(lm.in_features, lm.out_features)
        if why_not is not None:
            kept.append((lm.name, why_not))
            continue
        if "forward" in lm.module.__dict__:  # accelerate's offload hooks, some tensor parallelism
            kept.append((lm.name, "its forward is replaced on the module (accelerate, a tensor-parallel wrapper): "
                                  "a new layer would drop that code"))
            continue
        absorbed, activation = fusions.get(lm.name, (None, "none"))
        if not chosen.fuse_activations or (absorbed is not None and (
                has_hooks(lm.module, output_only=True) or has_hooks(model.get_submodule(absorbed)))):
            absorbed, activation = None, "none"  # a hook would see another output, or be dropped
        tensor_parallel = None  # what a shard of torch's styles attaches
        try:
            if is_dtensor(lm.module.weight):  # sharded by torch's parallelize_module
                new, tensor_parallel = adopt(lm.name, lm.module, lambda whole: chosen.make_layer(whole, activation))
            else:
                new = chosen.make_layer(lm.as_linear(), activation)
        except LayerRefused as refusal:  # e.g. a dense weight offered to a sparse format, a split it cannot take
            kept.append((lm.name, str(refusal)))
            continue
        try:
            new.backend()  # refuse a layer that nothing can run on this device, before any change
        except NoBackendError as error:
            raise ValueError(f"bigperf.swap: {chosen.describe()} cannot serve layer {lm.name!r} on "
                             f"{lm.module.weight.device}:\n{error}") from None
        why_not = _probe_forward(new, lm)
        if why_not is not None:
            kept.append((lm.name, why_not))
            continue
        planned.append(PlannedSwap(lm.name, chosen, lm, new, activation, absorbed, tensor_parallel))
    return planned, kept


def _probe_forward(new: nn.Module, lm: LinearMap) -> str | None:
    """Why `new` cannot replace lm (None if it can): it is run once on one row in the model's
    own dtype and sizes, so a layer swap accepts is one that runs (a float64 model, or a
    size beyond a kernel's limit, is found here and not at the user's first forward)."""
    weight = lm.module.weight
    if weight.device.type == "meta":
        return None  # nothing can run there; backend() has already answered for the device
    # A shard (distributed/adopt.py) takes and gives its own slice of the features.
    in_features, out_features = (new.in_features, new.out_features) if is_dtensor(weight) else \
        (lm.in_features, lm.out_features)
    x = torch.randn(1, in_features, dtype=weight.dtype, device=weight.device)
    try:
        with torch.no_grad():
            out = new.eval()(x)
    except Exception as error:  # noqa: BLE001 - any failure means this layer cannot take the model
        return f"the new layer cannot run on this model's {str(weight.dtype).replace('torch.', '')} inputs: {error}"
    if not isinstance(out, torch.Tensor) or out.shape != (1, out_features):
        return f"the new layer gave {getattr(out, 'shape', type(out).__name__)} for one row, not (1, {out_features})"
    return None


def apply_swaps(model: nn.Module, planned: list[PlannedSwap]) -> list[tuple[str, nn.Module]]:
    """Put the planned layers in place; on any failure, put every original back.

    Returns the undo list for restore_modules() (for callers with later steps that may fail).
    """
    undo: list[tuple[str, nn.Module]] = []
    try:
        for p in planned:
            # What bigperf.save needs to redo this swap on a freshly built model.
            p.new.swap_record = {"config": config_to_dict(p.config), "absorbed": p.absorbed,
                                 "source": type(p.old).__name__, "transposed": p.linear.transposed}
            undo.append((p.name, p.old))
            p.new.train(p.old.training)  # the new layer is in the mode of the one it replaces
            carry_hooks(p.old, p.new)
            tensor_parallel = p.tensor_parallel or p.old.__dict__.get("tensor_parallel")  # a shard stays one
            if tensor_parallel is not None:
                tensor_parallel.attach(p.new)
            set_submodule(model, p.name, p.new)
            if p.absorbed is not None:
                absorbed = model.get_submodule(p.absorbed)
                undo.append((p.absorbed, absorbed))
                set_submodule(model, p.absorbed, nn.Identity().train(absorbed.training))
    except BaseException:
        restore_modules(model, undo)
        raise
    if planned:  # torch's own parallelize_module styles then take the new layers too
        extend_torch_styles()
    return undo


def restore_modules(model: nn.Module, undo: list[tuple[str, nn.Module]]) -> None:
    for name, original in reversed(undo):
        set_submodule(model, name, original)


def swap(model: nn.Module, config, *, filter: Callable | None = None, calibration=None,
         min_sqnr: float | None = None, dry_run: bool = False, batch_sizes=None,
         min_speedup: float | None = SLOWER_BELOW) -> SwapReport:
    """Replace the model's linear maps according to `config`; returns a SwapReport.

    config: a config (e.g. bigperf.Int8WeightOnly(group_size=128)), a config name
    ("int8", "bf16", ...), or a {fqn regex: config | None} dict (first full match wins;
    None keeps the layer). filter(module, fqn) narrows further. With `calibration` (an
    iterable of model inputs: tensors, tuples of args, or dicts of kwargs) each layer's
    SQNR is measured on the activations it really sees, and layers below `min_sqnr` dB
    are kept. Nothing changes when dry_run is True or when any step fails.

    batch_sizes (e.g. (1, 16, 128)): tune every swapped layer for these numbers of rows
    now (bigperf/tune.py measures which path is fastest on this machine and caches it), and
    report per layer the path and the speedup over the original layer at each size. Without
    it, each new batch size is tuned at its first call, within a small budget. A layer whose
    swap runs below `min_speedup` times the original's speed at every one of these sizes is
    kept (small layers, where a call costs more than its arithmetic; the report says how
    fast each size ran); min_speedup=None swaps it anyway. A sharded layer is never kept for
    speed (ranks time alone, and all of them must hold the same layers).

    A model torch's parallelize_module sharded (ColwiseParallel / RowwiseParallel on a 1-D
    mesh) is swapped shard by shard, on every rank at once (bigperf/distributed/adopt.py).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bigperf.swap: argument 'model' must be an nn.Module, got {type(model).__name__}")
    config = normalize_config(config)
    if min_sqnr is not None and calibration is None:
        raise ValueError("bigperf.swap: argument 'min_sqnr' needs 'calibration' batches to measure SQNR on")

    sizes = check_batch_sizes(batch_sizes) if batch_sizes is not None else None
    check_min_speedup(min_speedup)

    planned, kept = plan_swaps(model, config, filter)
    if calibration is not None and any(p.tensor_parallel is not None for p in planned):
        raise ValueError("bigperf.swap: argument 'calibration' cannot be measured on layers torch's "
                         "parallelize_module sharded (their inputs are DTensors); measure SQNR on the unsharded "
                         "model, or swap before sharding")
    sqnr = measure_sqnr(model, planned, calibration) if calibration is not None else {}
    report = SwapReport(config=describe(config), dry_run=dry_run, kept=kept)
    accepted = []
    for p in planned:
        layer_sqnr = sqnr.get(p.name)
        refusal = gate_reason(layer_sqnr, min_sqnr) if min_sqnr is not None else None
        if refusal is not None:
            report.kept.append((p.name, refusal))
            continue
        accepted.append(p)
    per_layer = {}
    if sizes:
        per_layer, report.tuning_seconds = tune_planned(accepted, sizes)
        report.tune_cache = cache_location()
        if min_speedup is not None:  # not for shards: every rank must keep the same layers
            slower = {p.name: reason for p in accepted if not p.sharded
                      and (reason := slower_reason(per_layer[p.name], min_speedup)) is not None}
            report.kept.extend(slower.items())
            accepted = [p for p in accepted if p.name not in slower]
    for p in accepted:
        report.changes.append(LayerChange(p.name, type(p.old).__name__, type(p.new).__name__, p.activation,
                                          _module_bytes(p.old), _module_bytes(p.new), p.new.backend(),
                                          sqnr.get(p.name), config=p.config.describe(),
                                          by_batch=per_layer.get(p.name, {})))
    if not dry_run:
        apply_swaps(model, accepted)
    return report
