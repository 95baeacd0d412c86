"""The backends of a layout op (an op whose weight is a kernel layout of another op's
weight: bigperf/ops/*_lanes_linear.py, int8_layout_linear.py) other than the one that reads
the layout directly.

Each is the canonical op's path of the same name (and variant), on the weight unpacked for
the call, and says why it cannot serve a call with that path's own why_not. So the backend
a layer reports is the one that runs, and a path the canonical op refuses (no GPU, module
not built, wrong dtype) is refused here too instead of passing blindly.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from bigperf.ops.registry import OpBackends


def register_unpacked_paths(layout: OpBackends, canonical: OpBackends, own: tuple[str, ...],
                            stand_ins: Callable[..., tuple], unpack: Callable[..., tuple]) -> None:
    """Give `layout` every path of `canonical` whose backend is not in `own`.

    `unpack(*args)` turns a layout call's arguments into the canonical call's (run on the
    chosen path only); `stand_ins(*args)` gives the canonical arguments with meta tensors of
    the canonical shapes and dtypes for the weight, so a why_not never unpacks anything.
    The canonical path is looked up per call, under the key it is registered with.
    """
    for key, path in canonical.backends.items():
        if path.name in own:
            continue

        def why_not(*args, key=key):
            return canonical.backends[key].why_not(*stand_ins(*args))

        def run(*args, key=key):
            return canonical.backends[key].run(*unpack(*args))

        layout.backends[key] = dataclasses.replace(path, why_not=why_not, run=run)
