"""Finding what bigperf.swap can replace: linear maps and fusable activations.

By structure and behaviour, never by per-model tables:
- a linear map is a leaf module with a 2-D weight (and optional bias) whose forward is
  x @ W^T + b (nn.Linear orientation) or x @ W + b (the Conv1D of GPT-2 style models);
  anything but an exact nn.Linear is confirmed by running it on a probe input, on a
  private copy (see _probe_copy): discovery must not change the model or fire its hooks;
- an activation is a parameterless leaf module that computes relu, gelu (erf or tanh)
  or silu, again confirmed on a probe;
- a linear map's output is fused with an activation when torch.fx tracing of an
  enclosing module shows that the activation is the output's only consumer (and each
  module is used once). Modules that do not trace are searched child by child; what
  cannot be traced is simply not fused.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from bigperf.ops.activations import ACTIVATIONS, activation_of_module, apply_activation

_PROBE = torch.linspace(-6.0, 6.0, 97, dtype=torch.float64).reshape(1, 97)


@dataclass
class LinearMap:
    """A module computing an affine map, with its weight in nn.Linear orientation."""

    name: str
    module: nn.Module
    transposed: bool  # True for Conv1D-style modules that store W as [in, out]

    @property
    def in_features(self) -> int:
        return self.module.weight.shape[0 if self.transposed else 1]

    @property
    def out_features(self) -> int:
        return self.module.weight.shape[1 if self.transposed else 0]

    def as_linear(self) -> nn.Linear:
        """The module itself if it is an nn.Linear, else an equivalent nn.Linear (a copy)."""
        if not self.transposed and type(self.module) is nn.Linear:
            return self.module
        weight = self.module.weight.detach()
        bias = getattr(self.module, "bias", None)
        linear = nn.Linear(self.in_features, self.out_features, bias=bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight.t() if self.transposed else weight)
            if bias is not None:
                linear.bias.copy_(bias.detach())
        return linear


def _probe_copy(module: nn.Module) -> nn.Module:
    """A copy of a leaf module that a probe may run without side effects on the original:
    its own attribute dict (a counter in forward changes the copy), its own tensors (an
    in-place update, a running statistic), in eval mode. Callers run copy.forward directly,
    which fires none of the original's hooks nor global module hooks."""
    probe = copy.copy(module)  # a new __dict__ holding the same values
    probe.__dict__["_parameters"] = {name: None if p is None else nn.Parameter(p.detach().clone(), False)
                                     for name, p in module._parameters.items()}
    probe.__dict__["_buffers"] = {name: None if b is None else b.detach().clone()
                                  for name, b in module._buffers.items()}
    probe.__dict__["training"] = False
    return probe


def _computes(module: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            out = _probe_copy(module).forward(x.clone())
    except Exception:  # any failure means "not this kind of module"  # noqa: BLE001
        return False
    return isinstance(out, torch.Tensor) and out.shape == expected.shape and torch.allclose(
        out.double(), expected.double(), rtol=1e-4, atol=1e-5)


def linear_orientation(module: nn.Module) -> bool | None:
    """False: an nn.Linear-style map; True: a Conv1D-style (x @ W + b) map; None: neither."""
    if type(module) is nn.Linear:
        return False
    weight = getattr(module, "weight", None)
    if (not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point()
            or any(True for _ in module.children()) or weight.device.type == "meta"):
        return None
    bias = getattr(module, "bias", None)
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dim() != 1):
        return None
    generator = torch.Generator(device="cpu").manual_seed(0)
    for transposed in (False, True):
        in_features = weight.shape[0 if transposed else 1]
        out_features = weight.shape[1 if transposed else 0]
        if bias is not None and bias.shape[0] != out_features:
            continue
        x = torch.randn(2, in_features, generator=generator).to(weight.device, weight.dtype)
        w = weight.t() if transposed else weight
        expected = F.linear(x.double(), w.double(), None if bias is None else bias.double())
        if _computes(module, x, expected):
            return transposed
    return None


def find_linear_maps(model: nn.Module) -> list[LinearMap]:
    """Every linear map in model order (each module once, even if reachable twice)."""
    found = []
    for name, module in model.named_modules():
        if name == "":
            continue
        transposed = linear_orientation(module)
        if transposed is not None:
            found.append(LinearMap(name, module, transposed))
    return found


def activation_name(module: nn.Module) -> str | None:
    """relu / gelu / gelu_tanh / silu if the module computes it (probed), else None."""
    known = activation_of_module(module)
    if known is not None:
        return known
    if any(True for _ in module.parameters()) or any(True for _ in module.buffers()) or any(
            True for _ in module.children()):
        return None
    for name in ACTIVATIONS[1:]:
        if _computes(module, _PROBE, apply_activation(_PROBE, name)):
            return name
    return None


def _use_counts(model: nn.Module) -> dict[int, int]:
    """How many (parent, attribute) slots hold each module object."""
    counts: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        counts[id(module)] = counts.get(id(module), 0) + 1
    return counts


class _LeafTracer(torch.fx.Tracer):
    """Keeps every childless module as one call_module node (fx would otherwise inline
    activation classes that are not torch.nn's own, e.g. a library's SiLU module)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return not any(True for _ in module.children()) or super().is_leaf_module(module, qualified_name)

    def call_module(self, module, forward, args, kwargs):
        # fx would enter a traced module through Module.__call__, which fires the user's hooks
        # (with proxies); its forward alone computes the same graph.
        return super().call_module(module, module.forward, args, kwargs)


def find_activation_fusions(model: nn.Module, linear_names: set[str]) -> dict[str, tuple[str, str]]:
    """{linear fqn: (activation fqn, activation name)} for pairs proven safe by fx."""
    counts = _use_counts(model)
    fusions: dict[str, tuple[str, str]] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        def full_name(relative: str) -> str:
            return f"{prefix}.{relative}" if prefix else relative

        if not any(full_name(n) in linear_names for n, _ in module.named_modules() if n):
            return  # nothing to fuse below here
        try:
            graph = _LeafTracer().trace(module)
        except Exception:  # untraceable: look inside it instead  # noqa: BLE001
            for child_name, child in module.named_children():
                visit(full_name(child_name), child)
            return
        calls: dict[str, list[torch.fx.Node]] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls.setdefault(node.target, []).append(node)
        for target, nodes in calls.items():
            full = full_name(target)
            if full not in linear_names or len(nodes) != 1 or len(nodes[0].users) != 1:
                continue
            if counts.get(id(module.get_submodule(target)), 0) != 1:
                continue  # a shared linear is called from elsewhere too
            (user,) = nodes[0].users
            if user.op != "call_module" or len(calls.get(user.target, [])) != 1 or user.args != (nodes[0],) or user.kwargs:
                continue
            act_module = module.get_submodule(user.target)
            act = activation_name(act_module)
            if act is None or counts.get(id(act_module), 0) != 1:
                continue
            fusions[full] = (full_name(user.target), act)

    visit("", model)
    return fusions
