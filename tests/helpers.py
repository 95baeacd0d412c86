"""Shared test helpers: float64 references and error measures."""

from __future__ import annotations

import torch

from bigperf.ops.activations import apply_activation

# Relative Frobenius error tolerated for an output of this dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def fused_linear_fp64(x, weight, bias=None, residual=None, activation="none") -> torch.Tensor:
    """The float64 oracle: the same (low-precision) inputs, exact math."""
    y = x.double() @ weight.double().t()
    if bias is not None:
        y = y + bias.double()
    y = apply_activation(y, activation)
    if residual is not None:
        y = y + residual.double()
    return y


def random_tensor(*shape, dtype=torch.float32, seed=0, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def assert_compile_export_deepcopy(model, x) -> None:
    """torch.compile (fullgraph), copy.deepcopy and torch.export of `model` agree with eager."""
    import copy

    with torch.no_grad():
        eager = model(x)
        assert torch.allclose(torch.compile(model, fullgraph=True)(x), eager, rtol=1e-5, atol=1e-5)
        assert torch.equal(copy.deepcopy(model)(x), eager)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), eager, rtol=1e-5, atol=1e-5)


def without_cpu_kernel(monkeypatch, kernel: str) -> None:
    """Make bigperf._C look like an older build that lacks `kernel` (for the rest of the test)."""
    from bigperf import _ext

    real = _ext.cpu_module()

    class OlderBuild:
        def __getattr__(self, name):
            if name == kernel:
                raise AttributeError(name)
            return getattr(real, name)

    monkeypatch.setattr(_ext, "cpu_module", lambda: OlderBuild())


def assert_paths_answer_as_canonical(layout_table, canonical_table, own: str, layout_args, canonical_args) -> None:
    """A layout op's paths other than its `own` backend are the canonical op's paths of the
    same key, with the same why_not for the same call (bigperf/ops/layout_paths.py)."""
    others = [key for key, path in canonical_table.backends.items() if path.name != own]
    assert sorted(others) == sorted(key for key, path in layout_table.backends.items() if path.name != own)
    for key in others:
        assert layout_table.backends[key].why_not(*layout_args) == \
            canonical_table.backends[key].why_not(*canonical_args), key
