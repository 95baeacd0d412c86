"""Small models for the deployment tests (also a `bigperf export` target: tests.deploy.models:small_mlp)."""

from __future__ import annotations

import torch
from torch import nn

import bigperf

D_IN, D_HID, D_OUT = 128, 192, 72  # K and N not multiples of 16 where the formats allow it


def mlp(seed: int = 0, d_in: int = D_IN, d_hid: int = D_HID, d_out: int = D_OUT, acts=(nn.GELU, nn.SiLU)):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, d_hid), acts[0](), nn.Linear(d_hid, d_in), acts[1](),
                         nn.Linear(d_in, d_out)).eval()


class ResidualBlock(nn.Module):
    """A FusedLinear with its residual input, the one epilogue swap does not create."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = bigperf.nn.FusedLinear(D_IN, D_IN, activation="gelu_tanh")
        self.out = nn.Linear(D_IN, D_OUT)

    def forward(self, x):
        return self.out(self.fc(x, residual=x))


def small_mlp() -> nn.Sequential:
    return mlp()


# Each branch of the zoo is an MLP swapped with one config; one export covers them all
# (torch.onnx.export costs seconds, mostly rebuilding its registry per call).
ZOO_CONFIGS = {
    "plain": None,
    "bf16": "bf16",
    "int8": "int8",
    "int8_g64": bigperf.Int8WeightOnly(group_size=64),
    "int8_asym": bigperf.Int8WeightOnly(symmetric=False),
    "int8_dynamic": "int8-dynamic",
    "sparse24": bigperf.Sparse24(prune=True),
    "sparse24_int8": bigperf.Sparse24Int8(prune=True),
    "block_sparse": bigperf.BlockSparse(block=(8, 8), density=0.5, prune=True),
    "fused_residual": None,
}
# The other fusable activations, on a branch whose epilogues are fused.
ACTIVATIONS = {"bf16": (lambda: nn.GELU(approximate="tanh"), nn.ReLU)}


class Zoo(nn.Module):
    def __init__(self, configs=ZOO_CONFIGS):
        super().__init__()
        self.names = list(configs)
        self.branches = nn.ModuleDict()
        for i, name in enumerate(configs):
            acts = ACTIVATIONS.get(name, (nn.GELU, nn.SiLU))
            self.branches[name] = ResidualBlock(i) if name == "fused_residual" else mlp(seed=i, acts=acts)

    def forward(self, x: torch.Tensor):
        return tuple(self.branches[name](x) for name in self.names)


def zoo(configs=ZOO_CONFIGS) -> Zoo:
    model = Zoo(configs).eval()
    recipe = {rf"branches\.{name}\..*": config for name, config in configs.items()}
    bigperf.swap(model, recipe)
    return model
