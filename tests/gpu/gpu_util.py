"""Helpers shared by the GPU test modules (plain functions: the pytest-free runner has no fixtures)."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def pointer_checks(cuda_ext):
    """bigperf._C_cuda checks each pointer's device only when asked: the ops hand over
    tensors they have checked, and the check costs a driver call per pointer per launch."""
    before = cuda_ext.pointer_checks()
    cuda_ext.set_pointer_checks(True)
    try:
        yield
    finally:
        cuda_ext.set_pointer_checks(before)
