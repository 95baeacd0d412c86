"""What `bigperf swap TARGET` and `bigperf export TARGET` accept: `package.module:factory`
(a callable returning an nn.Module; it is imported and run, so it runs that code) or a local
transformers model directory."""

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
    except Exception as error:  # noqa: BLE001 - ImportError, or whatever the module raises as it loads
        raise ValueError(f"bigperf: cannot import {module_name!r} for target {target!r}: {error}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"bigperf: {module_name!r} has no callable {factory_name!r}")
    try:
        model = factory()  # the user's own code: whatever it raises is about the target
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"bigperf: target {target!r} raised {type(error).__name__}: {error}") from None
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
    reasons = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        try:
            return auto.from_pretrained(path, local_files_only=True).eval()
        except (ValueError, OSError) as error:  # not a causal LM (try the plain class); no weights
            reasons.append(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    raise ValueError(f"bigperf: transformers could not load a model from {path}: {reasons[-1]}")
