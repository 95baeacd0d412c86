"""TensorRT optimisation profiles as plain data: derived, parsed, checked (no TensorRT here).

An engine built from a model with dynamic dimensions serves the shapes of its profiles:
per dynamic input a (min, opt, max) triple; opt is the shape the kernels are tuned for.
Profiles come from, in order of precedence:
1. explicit shapes (`--min/--opt/--max name:1x16,other:1x16`, or Profile objects);
2. the `bigperf.dims` metadata export_onnx writes: for each named dynamic dimension, the
   torch.export.Dim bounds (min, max) and the size it was traced with (opt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

Shape = tuple[int, ...]
METADATA_DIMS = "bigperf.dims"


class ProfileError(ValueError):
    """The shapes given or derived do not make a valid optimisation profile."""


@dataclass
class Profile:
    """{input name: (min, opt, max)} for every input with a dynamic dimension."""

    shapes: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {name: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])} for name, s in self.shapes.items()}

    @classmethod
    def from_json(cls, data: dict) -> "Profile":
        return cls({name: (tuple(v["min"]), tuple(v["opt"]), tuple(v["max"])) for name, v in data.items()})


def is_dynamic(dims: list) -> bool:
    return any(not isinstance(d, int) or d < 1 for d in dims)


def dims_from_metadata(metadata: dict[str, str]) -> dict[str, dict]:
    raw = metadata.get(METADATA_DIMS)
    if not raw:
        return {}
    try:
        dims = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ProfileError(f"the ONNX metadata {METADATA_DIMS!r} is not valid JSON: {error}") from None
    return dims if isinstance(dims, dict) else {}


def parse_shape(text: str) -> Shape:
    """'1x16x256' → (1, 16, 256)."""
    try:
        shape = tuple(int(part) for part in text.strip().lower().split("x"))
    except ValueError:
        raise ProfileError(f"shape {text!r} is not of the form 1x16x256") from None
    if not shape or any(d < 0 for d in shape):
        raise ProfileError(f"shape {text!r} must list non-negative sizes")
    return shape


def parse_shapes(text: str | None, inputs: dict[str, list]) -> dict[str, Shape]:
    """'name:1x16,mask:1x16' (trtexec's syntax), or a bare '1x16' when one input is dynamic."""
    if not text:
        return {}
    dynamic = [name for name, dims in inputs.items() if is_dynamic(dims)]
    shapes = {}
    for item in text.split(","):
        name, sep, shape = item.strip().rpartition(":")
        if not sep:
            if len(dynamic) != 1:
                raise ProfileError(f"shape {item!r} has no input name; the dynamic inputs are {dynamic}: "
                                   f"write name:{item.strip()}")
            name = dynamic[0]
        if name not in inputs:
            raise ProfileError(f"shape given for {name!r}, which is not an input of the model (inputs: {list(inputs)})")
        shapes[name] = parse_shape(shape)
    return shapes


def _derived(name: str, dims: list, known: dict[str, dict], which: str, problems: list[str]) -> Shape | None:
    shape = []
    for axis, d in enumerate(dims):
        if isinstance(d, int) and d >= 1:
            shape.append(d)
            continue
        value = known.get(d, {}).get(which) if isinstance(d, str) else None
        if value is None:
            label = f"dimension {d!r}" if isinstance(d, str) else "an unnamed dimension"
            problems.append(f"{name}[{axis}] ({label}) has no {which}")
            return None
        shape.append(int(value))
    return tuple(shape)


def derive_profile(inputs: dict[str, list], dims: dict[str, dict], *, min_shapes=None, opt_shapes=None,
                   max_shapes=None) -> Profile | None:
    """One profile for every dynamic input (None when the model has none).

    Explicit shapes win over the metadata; a missing opt defaults to max (TensorRT tunes
    for opt, and the largest shape is the usual production case for a fixed batch budget).
    """
    explicit = {"min": min_shapes or {}, "opt": opt_shapes or {}, "max": max_shapes or {}}
    profile, problems = Profile(), []
    for name, input_dims in inputs.items():
        if not is_dynamic(input_dims):
            continue
        triple = {}
        for which in ("min", "max", "opt"):
            if name in explicit[which]:
                triple[which] = tuple(explicit[which][name])
            else:
                triple[which] = _derived(name, input_dims, dims, which, [] if which == "opt" else problems)
        if triple["opt"] is None:
            triple["opt"] = triple["max"]
        if triple["min"] is None or triple["max"] is None:
            continue
        profile.shapes[name] = (triple["min"], triple["opt"], triple["max"])
    if problems:
        raise ProfileError("cannot derive an optimisation profile: " + "; ".join(problems) +
                           ". Give the shapes (--min/--opt/--max name:1x16,...) or export with "
                           "torch.export.Dim(name, min=..., max=...) in dynamic_shapes")
    if not profile.shapes:
        return None
    check_profile(profile, inputs)
    return profile


def check_profile(profile: Profile, inputs: dict[str, list]) -> None:
    """Raise ProfileError naming the input and axis of anything TensorRT would reject."""
    for name, dims in inputs.items():
        if is_dynamic(dims) and name not in profile.shapes:
            raise ProfileError(f"input {name!r} has dynamic dimensions {dims} but the profile gives no shapes for it")
    for name, (lo, opt, hi) in profile.shapes.items():
        if name not in inputs:
            raise ProfileError(f"the profile names {name!r}, which is not an input (inputs: {list(inputs)})")
        dims = inputs[name]
        for label, shape in (("min", lo), ("opt", opt), ("max", hi)):
            if len(shape) != len(dims):
                raise ProfileError(f"{label} shape {shape} of input {name!r} has rank {len(shape)}, "
                                   f"the input has rank {len(dims)}")
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d >= 1 and not lo[axis] == opt[axis] == hi[axis] == d:
                raise ProfileError(f"input {name!r} axis {axis} is fixed at {d}, the profile gives "
                                   f"{lo[axis]}/{opt[axis]}/{hi[axis]}")
            if not lo[axis] <= opt[axis] <= hi[axis]:
                raise ProfileError(f"input {name!r} axis {axis}: need min <= opt <= max, got "
                                   f"{lo[axis]} / {opt[axis]} / {hi[axis]}")


def shape_in_profile(profile: Profile, name: str, shape: Shape) -> bool:
    lo, _, hi = profile.shapes[name]
    return len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
