"""What `bigperf swap TARGET` and `bigperf export TARGET` accept: `package.module:factory`
(a callable returning an nn.Module) or a local transformers model directory."""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn


def load_target(target: str) -> nn.Module:
    path = Path(target)
    if path.is_dir():
        return _load_transformers_dir(path)
    module_name, sep, factory_name = target.partition(":")
    if not sep or not module_name or not factory_name:
        raise ValueError(f"bigperf: target {target!r} is neither a local model directory nor 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"bigperf: cannot import {module_name!r} for target {target!r}: {error}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"bigperf: {module_name!r} has no callable {factory_name!r}")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"bigperf: {target!r} returned {type(model).__name__}, not an nn.Module")
    return model.eval()


def _load_transformers_dir(path: Path) -> nn.Module:
    if not (path / "config.json").exists():
        raise ValueError(f"bigperf: {path} has no config.json; expected a transformers model directory")
    try:
        import transformers
    except ImportError:
        raise ValueError(f"bigperf: {path} looks like a transformers model, but transformers is not installed") from None
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            return auto.from_pretrained(path, local_files_only=True).eval()
        except ValueError:
            continue  # not a causal LM: try the plain model class
    raise ValueError(f"bigperf: transformers could not load a model from {path}")
