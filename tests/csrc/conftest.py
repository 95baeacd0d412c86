"""Fixtures shared by the C++ kernel tests."""

from __future__ import annotations

import pytest

try:
    from bigperf import _C
except ImportError:  # the modules that need it skip themselves
    _C = None

# The ISA paths whose kernels read the held CPU layouts (w8a8-cpu, w8a16-cpu).
LAYOUT_ISAS = [isa for isa in ("avx2", "avx512") if _C is not None and isa in _C.runnable_isas()]


@pytest.fixture(params=LAYOUT_ISAS or ["avx2"])
def layout_isa(request):
    """Runs a test once per layout ISA path, setting the module's _ISA (its _run reads it);
    a module opts in with pytestmark = pytest.mark.usefixtures("layout_isa")."""
    request.module._ISA = request.param
    return request.param
