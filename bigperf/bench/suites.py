"""What the suites measure: linear layers of real models at batch sizes per regime.

The suites live in the package (not in benchmarks/) so that an installed `bigperf bench`
finds them. A point is (layer, M, dtype); every registered op family contributes its
variants to each point (bigperf/bench/cases.py).

M regimes: 1 (decode, one token), 16 (small-batch decode), 128 (short prefill / batched
serving), 2048 (prefill, training): memory-bound to compute-bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bigperf.bench.harness import TimingPlan

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BATCH_SIZES = (1, 16, 128, 2048)


@dataclass(frozen=True)
class Layer:
    name: str
    n: int  # out_features
    k: int  # in_features
    bias: bool
    activation: str  # fused into our ops; applied after F.linear in the baselines
    models: str      # where the shape occurs (ViT-B's MLP has BERT-base's shapes: measured once)


LAYERS = {layer.name: layer for layer in (
    Layer("llama3-8b.qo_proj", 4096, 4096, False, "none", "Llama-3-8B q_proj, o_proj"),
    Layer("llama3-8b.kv_proj", 1024, 4096, False, "none", "Llama-3-8B k_proj, v_proj (GQA)"),
    Layer("llama3-8b.gate_up_proj", 14336, 4096, False, "none", "Llama-3-8B gate_proj, up_proj"),
    Layer("llama3-8b.down_proj", 4096, 14336, False, "none", "Llama-3-8B down_proj"),
    Layer("bert-base.ffn_up", 3072, 768, True, "gelu", "BERT-base intermediate; ViT-B/16 MLP fc1"),
    Layer("bert-base.ffn_down", 768, 3072, True, "none", "BERT-base output; ViT-B/16 MLP fc2"),
    Layer("tiny.proj", 80, 96, True, "gelu", "a toy shape for the smoke suite (tests)"),
)}


@dataclass(frozen=True)
class Point:
    layer: Layer
    m: int
    dtype: str

    @property
    def id(self) -> str:
        return f"{self.layer.name}/m={self.m}/{self.dtype}"


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    points: dict[str, tuple[Point, ...]]  # per device type
    plan: TimingPlan = field(default_factory=TimingPlan)
    ceiling_repeats: int = 7  # best-of-N for the machine's ceilings

    def points_for(self, device: torch.device) -> tuple[Point, ...]:
        return self.points.get(device.type, ())


def _grid(layers, batch_sizes, dtypes) -> tuple[Point, ...]:
    # dtype outermost: a run cut short by --max-seconds has covered every layer in the first dtype.
    return tuple(Point(LAYERS[name], m, dtype) for dtype in dtypes for name in layers for m in batch_sizes)


_REAL_LAYERS = tuple(name for name in LAYERS if not name.startswith("tiny."))

SUITES = {suite.name: suite for suite in (
    Suite(
        "quick",
        "a few points per regime; < 2 minutes on 2 CPU cores, the CI gate",
        {
            # CPU GEMMs at M=2048 take seconds here (bf16 without AVX512-BF16: ~9 GFLOP/s):
            # the quick suite stays in the regimes where our kernels differ from torch's.
            "cpu": (_grid(["llama3-8b.qo_proj"], (1, 16), ("fp32", "bf16"))
                    + _grid(["bert-base.ffn_up"], (1, 128), ("fp32", "bf16"))
                    + _grid(["llama3-8b.down_proj"], (1,), ("bf16",))),
            "cuda": _grid(["llama3-8b.qo_proj", "llama3-8b.gate_up_proj", "bert-base.ffn_up"], BATCH_SIZES, ("bf16",)),
        },
        TimingPlan(budget_s=3.5, min_rounds=6, max_rounds=40, max_call_s=2.0, cuda_rep_ms=10.0),
    ),
    Suite(
        "full",
        "every layer x batch size x dtype",
        {
            "cpu": _grid(_REAL_LAYERS, BATCH_SIZES, ("fp32", "bf16")),
            "cuda": _grid(_REAL_LAYERS, BATCH_SIZES, ("bf16", "fp16")),
        },
        TimingPlan(budget_s=4.0, min_rounds=5, max_rounds=40, max_call_s=10.0),
    ),
    Suite(
        "smoke",
        "one toy shape, seconds: exercises the whole pipeline (tests)",
        {device: _grid(["tiny.proj"], (1, 8), ("fp32",)) for device in ("cpu", "cuda")},
        TimingPlan(budget_s=0.05, min_rounds=4, max_rounds=4, block_s=0.001, warmup_calls=1, cuda_rep_ms=2.0,
                   cuda_warmup_ms=1.0),
        ceiling_repeats=2,
    ),
)}
