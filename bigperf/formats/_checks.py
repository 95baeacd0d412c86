"""Argument checks and size arithmetic shared by the weight formats' pack/unpack functions."""

from __future__ import annotations

import torch

INTS = (int, torch.SymInt)  # sizes may be symbolic while torch.compile / torch.export trace


def round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def check_arg(function: str, name: str, t, dtypes, dims: int) -> None:
    """`t` is a tensor of one of `dtypes` with `dims` dimensions, else TypeError/ValueError
    naming the function and the argument."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{function}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{function}: argument '{name}' must have dtype {allowed}, got {t.dtype}")
    if t.dim() != dims:
        raise ValueError(f"{function}: argument '{name}' must be {dims}-D, got shape {tuple(t.shape)}")


def check_layout_version(function: str, layout, kind: type, version: int) -> None:
    """A `kind` layout written in `version`, the one this bigperf reads, else TypeError/ValueError."""
    if not isinstance(layout, kind):
        raise TypeError(f"{function}: argument 'layout' must be a {kind.__module__}.{kind.__name__}, "
                        f"got {type(layout).__name__}")
    if layout.version != version:
        raise ValueError(f"{function}: layout version {layout.version} is not the version {version} this "
                         f"bigperf reads; re-pack the weight")


def check_same_device(function: str, named, device: torch.device, reference: str = "values") -> None:
    for name, t in named:
        if t is not None and t.device != device:
            raise ValueError(f"{function}: argument '{name}' is on {t.device} but '{reference}' is on {device}")
