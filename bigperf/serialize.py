"""bigperf.save / bigperf.load: safetensors for the tensors, a JSON manifest for the rest.

No pickle anywhere. The manifest records, per swapped layer, the config, the fused
activation it absorbed and its packed format, and for every tensor its shape and dtype.
load() redoes the same swaps on a freshly built model, checks every tensor's name, shape
and dtype against the manifest and the model, and only then loads them; on any mismatch
it raises and leaves the model as it was.
"""

from __future__ import annotations

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
from bigperf.discovery import LinearMap, linear_orientation
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


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write model (swapped or not) to the directory `path`: model.safetensors + manifest.json."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"bigperf.save: argument 'model' must be an nn.Module, got {type(model).__name__}")
    directory = Path(path)
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
    return manifest


def _plan_from_manifest(model: nn.Module, layers: list[dict]) -> list[PlannedSwap]:
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
        config = config_from_dict(entry["config"])
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
    """Swap a freshly built `model` as the saved one was, then load its tensors (in place)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"bigperf.load: argument 'model' must be an nn.Module, got {type(model).__name__}")
    directory = Path(path)
    manifest = _read_manifest(directory)
    planned = _plan_from_manifest(model, manifest["layers"])
    loaded = load_file(str(directory / TENSORS))
    undo = apply_swaps(model, planned)
    try:
        _check_tensors(model, manifest, loaded)
        state = dict(loaded)
        state.update({alias: loaded[target] for alias, target in manifest["aliases"].items()})
        state.update(manifest["extra_states"])
        model.load_state_dict(state, strict=True)
    except BaseException:
        restore_modules(model, undo)
        raise
    return model
