"""The activations the fused epilogues support, with their PyTorch definitions.

The order of ACTIVATIONS gives the integer codes the C++/CUDA kernels use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")


def activation_code(name: str, function: str) -> int:
    try:
        return ACTIVATIONS.index(name)
    except ValueError:
        raise ValueError(
            f"{function}: argument 'activation' must be one of {ACTIVATIONS}, got {name!r}") from None


def apply_activation(t: torch.Tensor, name: str) -> torch.Tensor:
    if name == "none":
        return t
    if name == "relu":
        return F.relu(t)
    if name == "gelu":
        return F.gelu(t)
    if name == "gelu_tanh":
        return F.gelu(t, approximate="tanh")
    if name == "silu":
        return F.silu(t)
    raise ValueError(f"bigperf: unknown activation {name!r}")


def reference_activation(t: torch.Tensor, name: str) -> torch.Tensor:
    """act(t) for the reference paths, computed in float64 and returned in t's dtype.

    Not apply_activation in t's dtype: torch's vectorised fp32 erf GELU on AVX-512 maps +inf
    to NaN (torch 2.13 on Zen 4; its scalar tail and float64 give +inf), so an fp32 oracle
    would disagree with the float64 one on which outputs are infinite.
    """
    return apply_activation(t.double(), name).to(t.dtype)


def activation_derivative(z: torch.Tensor, name: str) -> torch.Tensor:
    """d act(z) / dz, for the backward of the fused ops."""
    if name == "none":
        return torch.ones_like(z)
    if name == "relu":
        return (z > 0).to(z.dtype)
    with torch.enable_grad():
        z_ = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(apply_activation(z_, name).sum(), z_)
    return grad


def pre_activation_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        name: str) -> torch.Tensor:
    """d loss / dz for y = act(z), z = x @ weight^T + bias, in fp32 and grad's shape, from
    d loss / dy: the backward of the linear ops (z is computed again, not saved)."""
    g = grad.float()
    if name == "none":
        return g
    z = x.float() @ weight.float().t()
    if bias is not None:
        z = z + bias.float()
    return g * activation_derivative(z, name)


def activation_name(activation, function: str) -> str:
    """The ACTIVATIONS name for a layer's `activation` argument: None, a name, or a module
    we fuse (nn.ReLU, nn.GELU, nn.SiLU); anything else raises, naming `function`."""
    if activation is None:
        return "none"
    if isinstance(activation, torch.nn.Module):
        name = activation_of_module(activation)
        if name is None:
            raise ValueError(f"{function}: argument 'activation' module {activation!r} is not one we fuse "
                             f"(ReLU, GELU, GELU(approximate='tanh'), SiLU)")
        return name
    if activation not in ACTIVATIONS:
        raise ValueError(f"{function}: argument 'activation' must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def activation_of_module(module: torch.nn.Module) -> str | None:
    """The fusable activation name of a module, or None if it is not one we fuse."""
    if type(module) is torch.nn.ReLU:
        return "relu"
    if type(module) is torch.nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    if type(module) is torch.nn.SiLU:
        return "silu"
    return None
