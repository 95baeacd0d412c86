"""Runs the GPU test modules on a machine without pytest (the GPU check machine has no
internet to install it). Provides just the part of pytest's API those modules use:
skip / importorskip / param / raises / mark.parametrize / mark.skipif.

    python tests/gpu/run_without_pytest.py [tests/gpu/test_*.py ...]
"""
from __future__ import annotations

import importlib.util
import itertools
import re
import sys
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Skipped(Exception):
    pass


class _Param:
    def __init__(self, *values, id=None):  # noqa: A002 - pytest's keyword
        self.values, self.id = values, id


class _Raises:
    def __init__(self, exc, match=None):
        self.exc, self.match = exc, match

    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        if typ is None:
            raise AssertionError(f"DID NOT RAISE {self.exc.__name__}")
        if not issubclass(typ, self.exc):
            return False
        if self.match and not re.search(self.match, str(value)):
            raise AssertionError(f"{value!r} does not match {self.match!r}")
        return True


def _mark_parametrize(names, values, ids=None):
    def deco(fn):
        fn.__dict__.setdefault("_params", []).append((names, list(values), ids))
        return fn
    return deco


def _mark_skipif(condition, reason=""):
    def deco(fn):
        fn.__dict__.setdefault("_skips", []).append((condition, reason))
        return fn
    return deco


def _skip(reason="", allow_module_level=False):
    raise Skipped(reason)


def _importorskip(name, reason=None):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise Skipped(reason or str(exc)) from exc


def install_shim() -> None:
    shim = types.ModuleType("pytest")
    shim.skip = _skip
    shim.importorskip = _importorskip
    shim.param = _Param
    shim.raises = _Raises
    shim.mark = types.SimpleNamespace(parametrize=_mark_parametrize, skipif=_mark_skipif)
    sys.modules["pytest"] = shim


def _cases(fn):
    """(id, kwargs) for every combination of the function's parametrize marks."""
    axes = []
    for names, values, ids in reversed(fn.__dict__.get("_params", [])):
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        axis = []
        for i, v in enumerate(values):
            vals = v.values if isinstance(v, _Param) else ((v,) if len(names) == 1 else tuple(v))
            vid = v.id if isinstance(v, _Param) and v.id else (ids[i] if ids else str(i))
            axis.append((vid, dict(zip(names, vals))))
        axes.append(axis)
    for combo in itertools.product(*axes):
        kwargs = {}
        for _, kw in combo:
            kwargs.update(kw)
        yield "-".join(vid for vid, _ in combo), kwargs


def run_module(path: Path) -> tuple[int, int, int]:
    passed = failed = skipped = 0
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Skipped as exc:
        print(f"SKIPPED {path.name}: {exc}")
        return 0, 0, 1
    for name, fn in vars(module).items():
        if not name.startswith("test_") or not callable(fn):
            continue
        reasons = [r for cond, r in fn.__dict__.get("_skips", []) if cond]
        for case_id, kwargs in _cases(fn):
            label = f"{path.name}::{name}[{case_id}]"
            if reasons:
                skipped += 1
                print(f"SKIPPED {label}: {reasons[0]}")
                continue
            try:
                fn(**kwargs)
            except Skipped as exc:
                skipped += 1
                print(f"SKIPPED {label}: {exc}")
            except Exception:
                failed += 1
                print(f"FAILED {label}\n{traceback.format_exc()}")
            else:
                passed += 1
    return passed, failed, skipped


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    install_shim()
    paths = [Path(p) for p in argv] or sorted(Path(__file__).parent.glob("test_*.py"))
    totals = [0, 0, 0]
    for p in paths:
        for i, n in enumerate(run_module(p)):
            totals[i] += n
    print(f"{totals[0]} passed, {totals[1]} failed, {totals[2]} skipped (pytest-free runner)")
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
