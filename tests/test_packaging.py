"""The repo's layout must not change what Python imports.

Our Triton sources live in the top-level kernels/ folder and install as bigperf.kernels.
The PyPI distribution `kernels` (which transformers >= 5 imports) must still win when
Python runs in the repo root, where '' (the working directory) is first on sys.path:
so kernels/ is a namespace folder (no __init__.py), and a namespace portion loses to
any regular package later on the path. bigperf/kernels is a symlink to it.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _in_repo_root(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_top_level_kernels_folder_is_not_a_regular_package():
    assert not (ROOT / "kernels" / "__init__.py").exists(), (
        "kernels/__init__.py makes the repo's folder shadow the PyPI `kernels` distribution")


def test_kernels_in_repo_root_resolves_to_the_installed_distribution():
    origin = _in_repo_root(
        "import importlib.util as u; s = u.find_spec('kernels'); "
        "print(s.origin if s and s.origin else 'namespace:' + ';'.join(s.submodule_search_locations or []) if s else 'none')")
    installed = importlib.util.find_spec("kernels") is not None and (ROOT / "kernels") not in [
        Path(p) for p in (importlib.util.find_spec("kernels").submodule_search_locations or [])]
    assert not origin.startswith(str(ROOT / "kernels" / "__init__")), origin
    if installed:
        assert "site-packages" in origin or "dist-packages" in origin, origin


def test_bigperf_kernels_resolves_to_our_triton_sources():
    origin = _in_repo_root("import importlib.util as u; print(u.find_spec('bigperf.kernels.fused_matmul').origin)")
    assert Path(origin).resolve() == (ROOT / "kernels" / "fused_matmul.py").resolve()


def test_transformers_models_build_in_the_repo_root():
    pytest.importorskip("transformers", reason="transformers is not installed")
    out = _in_repo_root(
        "import transformers as t; c = t.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, "
        "num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2); "
        "m = t.LlamaForCausalLM(c); print(type(m).__name__)")
    assert out.endswith("LlamaForCausalLM"), out
