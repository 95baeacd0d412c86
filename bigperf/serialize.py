"""bigperf.save / bigperf.load: safetensors for the tensors, a JSON manifest for the rest.

No pickle anywhere. The manifest records, per swapped layer, the config, the fused
activation it absorbed and its packed format, and for every tensor its shape and dtype.
load() checks the manifest's fields, redoes the same swaps on a freshly built model
(refusing one where a module an activation absorbed is not that activation, or not the
linear's only consumer), checks every tensor's name, shape and dtype against the manifest
and the model, and only then loads them; on any mismatch it raises and leaves every
parameter and buffer of the model as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from bigperf._files import write_atomically as _write_atomically
from bigperf.configs import config_from_dict
from bigperf.discovery import LinearMap, activation_name, find_activation_fusions, linear_orientation
from bigperf.ops.activations import ACTIVATIONS
from bigperf.swap import PlannedSwap, apply_swaps, restore_modules

MANIFEST = "manifest.json"
TENSORS = "model.safetensors"
EMBEDDED_MANIFEST = "bigperf_manifest"  # the manifest's copy inside the tensor file's metadata
FORMAT, VERSION = "bigperf-checkpoint", 1


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _split_state(model: nn.Module) -> tuple[dict, dict, dict]:
    """(unique tensors, aliases {name: name it shares storage with}, JSON extra states)."""
    tensors, aliases, extra = {}, {}, {}
    seen: dict[tuple, str] = {}
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            extra[name] = value
            continue
        key = (value.data_ptr(), value.dtype, tuple(value.shape), tuple(value.stride()), value.device)
        if value.numel() and key in seen:  # tied weights: store once (safetensors refuses shared storage)
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = value.detach().contiguous()
    return tensors, aliases, extra


def check_save_path(path: str | os.PathLike) -> Path:
    """The folder save() would write; an existing file there is refused (the CLI asks before
    it swaps, so a long swap is not lost to a typo)."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"bigperf.save: argument 'path' {str(directory)!r} is a file; a checkpoint is a "
                                 f"folder ({TENSORS} + {MANIFEST}), give a new or existing folder")
    return directory


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write model (swapped or not) to the directory `path`: model.safetensors + manifest.json."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"bigperf.save: argument 'model' must be an nn.Module, got {type(model).__name__}")
    directory = check_save_path(path)
    sharded = next((name for name, module in model.named_modules() if "tensor_parallel" in module.__dict__), None)
    if sharded is not None:  # its tensors are one rank's shards: no process could load them as a model
        raise ValueError(f"bigperf.save: layer {sharded!r} is a tensor-parallel shard; save a sharded model with "
                         f"bigperf.distributed.save (on every rank)")
    directory.mkdir(parents=True, exist_ok=True)
    tensors, aliases, extra = _split_state(model)
    try:
        json.dumps(extra)
    except TypeError as error:
        raise ValueError(f"bigperf.save: a module's extra state is not JSON-serialisable ({error})") from None
    layers = []
    for name, module in model.named_modules():
        record = getattr(module, "swap_record", None)
        if record is not None:
            layers.append({"name": name, "class": type(module).__name__, "activation": getattr(module, "activation", "none"),
                           "in_features": module.in_features, "out_features": module.out_features,
                           "bias": getattr(module, "bias", None) is not None, **record})
    manifest = {
        "format": FORMAT, "version": VERSION, "layers": layers, "aliases": aliases, "extra_states": extra,
        "tensors": {n: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)} for n, t in tensors.items()},
    }
    # One rename commits the checkpoint: the tensor file carries the manifest in its own
    # metadata, so it is complete by itself and replaces the old one atomically; a failure or
    # Ctrl-C before that rename leaves the previous checkpoint as it was. manifest.json,
    # written after, is the readable copy load uses unless it belongs to another save (a
    # failure between the two renames): then the tensor file's own manifest is the truth.
    manifest["checkpoint_id"] = uuid.uuid4().hex  # pairs manifest.json with its tensor file
    manifest_text = json.dumps(manifest, indent=2)
    _write_atomically(directory / TENSORS, lambda f: save_file(
        {n: t.cpu() for n, t in tensors.items()}, f, metadata={EMBEDDED_MANIFEST: manifest_text}))
    _write_atomically(directory / MANIFEST, lambda f: Path(f).write_text(manifest_text))
    return directory


def _embedded_manifest(directory: Path) -> dict | None:
    """The manifest the tensor file carries (checkpoints since it has one), or None."""
    try:
        with safe_open(str(directory / TENSORS), framework="pt") as f:
            manifest = json.loads((f.metadata() or {})[EMBEDDED_MANIFEST])
    except Exception:  # noqa: BLE001 - none, or a missing or damaged file: manifest.json decides
        return None
    return manifest if isinstance(manifest, dict) else None


def _read_manifest(directory: Path) -> dict:
    embedded = _embedded_manifest(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        if embedded is None:
            raise FileNotFoundError(f"bigperf.load: no {MANIFEST} in {directory} "
                                    f"(was it written by bigperf.save?)") from None
        manifest = embedded
    except ValueError as error:
        if embedded is None:
            raise ValueError(f"bigperf.load: {directory / MANIFEST} is not valid JSON ({error})") from None
        manifest = embedded
    if not isinstance(manifest, dict):
        raise ValueError(f"bigperf.load: {directory / MANIFEST} must hold a JSON object")
    if embedded is not None and embedded.get("checkpoint_id") != manifest.get("checkpoint_id"):
        manifest = embedded  # a save that committed its tensor file but not manifest.json
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"bigperf.load: {directory} holds format {manifest.get('format')!r} "
                         f"v{manifest.get('version')}; this bigperf reads {FORMAT!r} v{VERSION}")
    _check_manifest(manifest)
    return manifest


# What each manifest field must hold: a crafted or damaged manifest is refused with the
# field's name before anything reads it (never a KeyError or TypeError from deep inside).
_LAYER_FIELDS = {"name": str, "class": str, "activation": str, "in_features": int, "out_features": int,
                 "bias": bool, "config": dict, "absorbed": (str, type(None)), "source": str, "transposed": bool}


def _field(container: dict, key: str, kind, where: str):
    if key not in container:
        raise ValueError(f"bigperf.load: the manifest has no field {where}{key!r}")
    value = container[key]
    exact_int = kind is int and isinstance(value, bool)  # JSON true is not a size
    if not isinstance(value, kind) or exact_int:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"bigperf.load: manifest field {where}{key!r} must be {names}, got {value!r}")
    return value


def _check_manifest(manifest: dict) -> None:
    for key, kind in (("layers", list), ("aliases", dict), ("extra_states", dict), ("tensors", dict)):
        _field(manifest, key, kind, "")
    for i, entry in enumerate(manifest["layers"]):
        if not isinstance(entry, dict):
            raise ValueError(f"bigperf.load: manifest field 'layers'[{i}] must be an object, got {entry!r}")
        for key, kind in _LAYER_FIELDS.items():
            _field(entry, key, kind, f"'layers'[{i}].")
        if entry["activation"] not in ACTIVATIONS:
            raise ValueError(f"bigperf.load: manifest field 'layers'[{i}].'activation' must be one of "
                             f"{ACTIVATIONS}, got {entry['activation']!r}")
        if entry["in_features"] <= 0 or entry["out_features"] <= 0:
            raise ValueError(f"bigperf.load: manifest fields 'layers'[{i}].'in_features'/'out_features' must be "
                             f"positive, got {entry['in_features']}, {entry['out_features']}")
    replaced = [entry["name"] for entry in manifest["layers"]] + [
        entry["absorbed"] for entry in manifest["layers"] if entry["absorbed"] is not None]
    twice = sorted({name for name in replaced if replaced.count(name) > 1})
    if twice:
        raise ValueError(f"bigperf.load: the manifest replaces module {twice[0]!r} twice")
    for name, meta in manifest["tensors"].items():
        where = f"'tensors'.{name!r}."
        if not isinstance(meta, dict):
            raise ValueError(f"bigperf.load: manifest field 'tensors'.{name!r} must be an object, got {meta!r}")
        shape = _field(meta, "shape", list, where)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"bigperf.load: manifest field {where}'shape' must be a list of sizes, got {shape!r}")
        if not isinstance(getattr(torch, str(_field(meta, "dtype", str, where)), None), torch.dtype):
            raise ValueError(f"bigperf.load: manifest field {where}'dtype' is not a torch dtype: {meta['dtype']!r}")
    for alias, target in manifest["aliases"].items():
        if not isinstance(target, str) or target not in manifest["tensors"]:
            raise ValueError(f"bigperf.load: manifest field 'aliases'.{alias!r} must name a saved tensor, "
                             f"got {target!r}")


def _check_absorbed(model: nn.Module, layers: list[dict]) -> None:
    """The module each saved layer's activation absorbed must be, in this model, that same
    activation and the linear's only consumer: loading turns it into nn.Identity and fuses
    the saved activation, so any other module there would make the model compute another
    function."""
    fused = [entry for entry in layers if entry["absorbed"] is not None or entry["activation"] != "none"]
    if not fused:
        return
    fusions = find_activation_fusions(model, {entry["name"] for entry in layers})
    for entry in fused:
        name, absorbed, activation = entry["name"], entry["absorbed"], entry["activation"]
        if absorbed is None:
            raise ValueError(f"bigperf.load: the manifest fuses {activation} into {name!r} but names no module "
                             f"it absorbed")
        try:
            module = model.get_submodule(absorbed)
        except AttributeError:
            raise ValueError(f"bigperf.load: the checkpoint fused module {absorbed!r} ({activation}) into "
                             f"{name!r}, but the model has no module {absorbed!r}") from None
        found = activation_name(module)
        if found != activation:
            raise ValueError(f"bigperf.load: module {absorbed!r} is {module!r} in the model, but the checkpoint "
                             f"fused a {activation} there into {name!r}; this model computes another function")
        if fusions.get(name) != (absorbed, activation):
            raise ValueError(f"bigperf.load: the checkpoint fused module {absorbed!r} ({activation}) into "
                             f"{name!r}, but in this model {absorbed!r} is not the only consumer of "
                             f"{name!r}'s output")


def meta_tensor_names(model: nn.Module) -> list[str]:
    """Names of `model`'s parameters and buffers on the meta device (tied ones under each name)."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return [name for name, t in named if t.is_meta]


def refuse_unsaved_meta(model: nn.Module, where: str) -> None:
    """A model built with its parameters on meta loads: each takes the checkpoint's tensor
    (assign). A meta tensor missing from the state_dict (a non-persistent buffer, which no
    checkpoint holds) would stay empty: refuse before anything changes."""
    unsaved = sorted(set(meta_tensor_names(model)) - set(model.state_dict()))
    if unsaved:
        raise ValueError(f"{where}: the model's tensors {unsaved[:5]} are on the meta device and no checkpoint holds "
                         f"them (buffers the model computes itself); build the model under "
                         f"bigperf.distributed.meta_parameters(), which keeps buffers real, not torch.device('meta')")


def _plan_from_manifest(model: nn.Module, layers: list[dict]) -> list[PlannedSwap]:
    """The swaps the manifest's layers ask for, each new layer empty on its module's device
    (on meta for a module built there: it takes the loaded tensors, _load_state)."""
    _check_absorbed(model, layers)
    planned = []
    for entry in layers:
        name = entry["name"]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"bigperf.load: the model has no module {name!r} (saved from a different model?)") from None
        transposed = linear_orientation(module)
        linear = LinearMap(name, module, bool(transposed)) if transposed is not None else None
        if (linear is None or transposed != entry["transposed"] or linear.in_features != entry["in_features"]
                or linear.out_features != entry["out_features"]):
            raise ValueError(f"bigperf.load: module {name!r} is {module!r}, but the checkpoint holds a "
                             f"{entry['in_features']}→{entry['out_features']} {entry['source']} there")
        config = config_from_dict(entry["config"], f"bigperf.load: layer {name!r}")
        new = config.empty_layer(entry["in_features"], entry["out_features"], entry["bias"], entry["activation"],
                                 module.weight.device)
        planned.append(PlannedSwap(name, config, linear, new, entry["activation"], entry["absorbed"]))
    return planned


def _check_tensors(model: nn.Module, manifest: dict, loaded: dict) -> None:
    expected = model.state_dict()
    saved = set(manifest["tensors"]) | set(manifest["aliases"]) | set(manifest["extra_states"])
    missing, unexpected = sorted(set(expected) - saved), sorted(saved - set(expected))
    if missing or unexpected:
        raise ValueError(f"bigperf.load: tensor names differ from the model's: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if set(loaded) != set(manifest["tensors"]):
        raise ValueError(f"bigperf.load: {TENSORS} does not hold the tensors its manifest lists")
    # Tensors whose shape is data (e.g. a block-sparse layer's block count) are checked
    # against the manifest only; the layer takes their size when it loads them.
    data_shaped = {f"{prefix}.{buffer}" if prefix else buffer for prefix, module in model.named_modules()
                   for buffer in getattr(module, "data_shaped_buffers", ())}
    for name, meta in manifest["tensors"].items():
        tensor, target = loaded[name], expected[name]
        for what, value in (("checkpoint file", tensor), ("model", target)):
            if what == "model" and name in data_shaped:
                if _dtype_name(value.dtype) != meta["dtype"]:
                    raise ValueError(f"bigperf.load: tensor {name!r} is {_dtype_name(value.dtype)} in the model, "
                                     f"but the manifest says {meta['dtype']}")
                continue
            if list(value.shape) != meta["shape"] or _dtype_name(value.dtype) != meta["dtype"]:
                raise ValueError(f"bigperf.load: tensor {name!r} is {_dtype_name(value.dtype)} {list(value.shape)} in "
                                 f"the {what}, but the manifest says {meta['dtype']} {meta['shape']}")


def load(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Swap a freshly built `model` as the saved one was, then load its tensors (in place).
    The model may be built with its parameters on meta (bigperf.distributed.meta_parameters())."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"bigperf.load: argument 'model' must be an nn.Module, got {type(model).__name__}")
    refuse_unsaved_meta(model, "bigperf.load")
    directory = Path(path)
    manifest = _read_manifest(directory)
    planned = _plan_from_manifest(model, manifest["layers"])
    try:
        loaded = load_file(str(directory / TENSORS))
    except Exception as error:  # noqa: BLE001 - missing, truncated, or not safetensors at all
        raise ValueError(f"bigperf.load: cannot read {directory / TENSORS}: {error}") from None
    return load_planned(model, manifest, planned, loaded)


def load_planned(model: nn.Module, manifest: dict, planned: list[PlannedSwap], loaded: dict) -> nn.Module:
    """The rest of load(), from a checked manifest, its planned swaps and the tensors it lists
    (bigperf.distributed.load gives a manifest and tensors cut to a rank's shards)."""
    undo = apply_swaps(model, planned)
    try:
        _check_tensors(model, manifest, loaded)
        state = dict(loaded)
        state.update({alias: loaded[target] for alias, target in manifest["aliases"].items()})
        state.update(manifest["extra_states"])
        _load_state(model, planned, state)
        left = meta_tensor_names(model)
        if left:  # refuse_unsaved_meta keeps this from happening; never hand back empty tensors
            raise ValueError(f"bigperf.load: tensors {left[:5]} are still on the meta device after the load")
    except BaseException:
        restore_modules(model, undo)
        raise
    return model


@contextlib.contextmanager
def _refused_as_load_error(module_name: str):
    """A module's refusal of its saved state (a damaged or foreign extra state: the layer's
    own ValueError, or whatever its checks trip over) as bigperf.load's ValueError, naming
    the module; torch's load_state_dict wraps its modules' errors in RuntimeError."""
    try:
        yield
    except (ValueError, TypeError, AttributeError, KeyError, RuntimeError) as error:
        raise ValueError(f"bigperf.load: module {module_name!r} refused its saved state: {error}") from error


def _load_state(model: nn.Module, planned: list[PlannedSwap], state: dict) -> None:
    """Load `state` (names, shapes and dtypes already checked) so that a failure part way
    leaves the user's own modules as they were: first the new layers, which are not yet the
    user's (their set_extra_state checks formats and may refuse); then the extra states of
    the other modules, the only step left that runs code that may refuse; then their tensors,
    copies of checked shapes and dtypes."""
    swapped = {p.name: p.new for p in planned}

    def owner(key: str) -> str | None:
        return next((name for name in swapped if key.startswith(name + ".")), None)

    # A tensor built on meta has no memory to copy into: it takes the checkpoint's (assign),
    # so a model built under meta_parameters() never holds a second copy of its weights.
    for name, layer in swapped.items():
        on_meta = any(t.is_meta for t in list(layer.parameters()) + list(layer.buffers()))
        with _refused_as_load_error(name):
            layer.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if owner(k) == name}, strict=True,
                                  assign=on_meta)
    rest = {k: v for k, v in state.items() if owner(k) is None}
    for key in [k for k in rest if k.rpartition(".")[2] == "_extra_state"]:
        module_name = key.rpartition(".")[0]
        with _refused_as_load_error(module_name):
            model.get_submodule(module_name).set_extra_state(rest.pop(key))
    current = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    on_meta = {k: v for k, v in rest.items() if k in current and current[k].is_meta}
    result = model.load_state_dict({k: v for k, v in rest.items() if k not in on_meta}, strict=False)
    if on_meta:
        model.load_state_dict(on_meta, strict=False, assign=True)
    if result.unexpected_keys:
        raise ValueError(f"bigperf.load: the model has no tensors {result.unexpected_keys[:5]}")
