"""Cases run on every NCCL rank, one GPU each (tests/gpu/test_tensor_parallel_nccl.py):
swapped bf16 layers on the GPU, sharded column- and row-wise, against the unsharded swapped
layer; the shards re-derive the GPU kernel layouts (Int8Linear's w8a16-cuda tiles); the
same layers sharded by torch's own styles and swapped after give the same outputs."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import bigperf
import bigperf.distributed as tp
from bigperf.sparsity import nm_mask

N, K = 256, 512
CONFIGS = {
    "fused-bf16": bigperf.FusedMixedPrecision(torch.bfloat16),
    "int8-channel": bigperf.Int8WeightOnly(),
    "int8-group64": bigperf.Int8WeightOnly(group_size=64),
    "sparse24": bigperf.Sparse24(),
}
BF16_TOLERANCE = 1e-2


def case_cuda_layers(rank: int, world: int) -> None:
    mesh = init_device_mesh("cuda", (world,))
    device = torch.device("cuda", torch.cuda.current_device())
    x = torch.randn(4, K, generator=torch.Generator().manual_seed(1)).to(device, torch.bfloat16)
    cols = slice(rank * N // world, (rank + 1) * N // world)
    rows = slice(rank * K // world, (rank + 1) * K // world)
    failures = []
    with torch.no_grad():
        for name, config in CONFIGS.items():
            def model(swap=True):
                torch.manual_seed(0)
                linear = nn.Linear(K, N)
                if name == "sparse24":
                    linear.weight.mul_(nm_mask(linear.weight))
                built = nn.Sequential(linear).to(device, torch.bfloat16)
                if swap:
                    bigperf.swap(built, config)
                return built

            expected = model()(x).float()
            for style, x_in, want in (("colwise", x, expected[:, cols]), ("rowwise", x[:, rows], expected)):
                sharded = tp.parallelize(model(), mesh, {"0": style})
                layout = getattr(sharded[0], "kernel_layout", None)
                if name.startswith("int8") and layout != "w8a16-cuda":
                    failures.append(f"{name} {style}: holds {layout}, not the GPU's w8a16-cuda layout")
                got = sharded(x_in).float()
                error = float((got - want).norm() / want.norm())
                if error > BF16_TOLERANCE:
                    failures.append(f"{name} {style}: error {error:.2e}")
                # torch's own style on the plain layer, swapped after (distributed/adopt.py).
                torch_style = ColwiseParallel() if style == "colwise" else RowwiseParallel()
                theirs = parallelize_module(model(swap=False), mesh, {"0": torch_style})
                bigperf.swap(theirs, config)
                if type(theirs[0]) is nn.Linear:
                    failures.append(f"{name} {style}: swap kept the torch-sharded layer")
                else:  # the same shard and kernels; split-K sums may add in another order
                    ours = sharded(x_in).float()
                    error = float((theirs(x_in).float() - ours).norm() / ours.norm())
                    if error > 1e-3:
                        failures.append(f"{name} {style}: torch's style then swap differs from swap then "
                                        f"parallelize by {error:.2e}")
    assert not failures, "\n".join(failures)


CASES = {"cuda_layers": case_cuda_layers}
