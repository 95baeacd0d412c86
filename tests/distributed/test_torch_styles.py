"""torch's own ColwiseParallel / RowwiseParallel take bigperf's layers once swap (or load)
has run (bigperf/distributed/styles.py), whether torch.distributed.tensor.parallel was imported
before or is after; swap itself imports nothing of torch.distributed.tensor (half a second). Each check runs in a fresh
interpreter: the extension is process-wide. Sharding itself is checked on gloo ranks
(cases_layers.py: case_torch_entry_point, case_layouts; cases_llama.py: case_llama_orders)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch.distributed.tensor.parallel", reason="this torch has no torch.distributed")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


SETUP = """
    import sys, tempfile, torch
    from torch import nn
    import bigperf
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 64))
    def extended():
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel
        return [getattr(s._apply, "bigperf_extended", False) for s in (ColwiseParallel, RowwiseParallel)]
"""


def test_swap_extends_torch_styles_when_they_are_imported():
    out = _run(SETUP + """
    import torch.distributed.tensor.parallel
    print(extended())
    bigperf.swap(model(), "int8")
    print(extended())
    from torch.distributed.tensor.parallel import ColwiseParallel
    try:  # anything but bigperf's layers still goes to torch's code
        ColwiseParallel()._apply(nn.Conv1d(2, 2, 1), None)
    except NotImplementedError as error:
        print("torch:", error)
    """)
    lines = out.splitlines()
    assert lines[0] == "[False, False]" and lines[1] == "[True, True]", out
    assert lines[2].startswith("torch: ColwiseParallel currently only support nn.Linear"), out


def test_torch_tensor_parallel_imported_after_the_swap_is_extended_too():
    out = _run(SETUP + """
    bigperf.swap(model(), "int8")
    print("torch.distributed.tensor.parallel" in sys.modules)
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module
    print(extended())
    print(sum(type(f).__name__ == "_ExtendWhenImported" for f in sys.meta_path))
    """)
    assert out.splitlines() == ["False", "[True, True]", "0"], out


def test_load_extends_torch_styles_too():
    out = _run(SETUP + """
    swapped = model(); bigperf.swap(swapped, "int8")
    with tempfile.TemporaryDirectory() as path:
        bigperf.save(swapped, path)
        import torch.distributed.tensor.parallel
        bigperf.load(model(), path)
    print(extended())
    """)
    assert out.splitlines()[-1] == "[True, True]", out


def test_swap_without_torch_tensor_parallel_imports_none_of_it():
    out = _run(SETUP + """
    bigperf.swap(model(), "int8")
    print(sorted(m for m in sys.modules if m.startswith("torch.distributed.tensor")))
    """)
    assert out.splitlines()[-1] == "[]", out
