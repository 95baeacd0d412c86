"""Cases run on every gloo rank (tests/distributed/spawn.py): a 2-layer Llama-style decoder
built by transformers from a config, sharded with the common plan (q/k/v/gate/up column-wise,
o/down row-wise), against the unsharded swapped model: logits and greedy tokens."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import transformers
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

import bigperf
import bigperf.distributed as tp

PLAN = {r"model\.layers\.\d+\.self_attn\.(q|k|v)_proj": "colwise",
        r"model\.layers\.\d+\.self_attn\.o_proj": "rowwise",
        r"model\.layers\.\d+\.mlp\.(gate|up)_proj": "colwise",
        r"model\.layers\.\d+\.mlp\.down_proj": "rowwise"}
# The same plan in torch's own spelling (fnmatch per path component), with bigperf's styles.
TORCH_PLAN = {f"model.layers.*.{path}": style() for path, style in (
    ("self_attn.q_proj", tp.ColwiseParallel), ("self_attn.k_proj", tp.ColwiseParallel),
    ("self_attn.v_proj", tp.ColwiseParallel), ("self_attn.o_proj", tp.RowwiseParallel),
    ("mlp.gate_proj", tp.ColwiseParallel), ("mlp.up_proj", tp.ColwiseParallel),
    ("mlp.down_proj", tp.RowwiseParallel))}
# And with torch's own styles: on the plain model's nn.Linear layers (swap after), or on the
# swapped model's layers (styles.py extends them).
TORCH_OWN_PLAN = {f"model.layers.*.{path}": style() for path, style in (
    ("self_attn.q_proj", ColwiseParallel), ("self_attn.k_proj", ColwiseParallel),
    ("self_attn.v_proj", ColwiseParallel), ("self_attn.o_proj", RowwiseParallel),
    ("mlp.gate_proj", ColwiseParallel), ("mlp.up_proj", ColwiseParallel), ("mlp.down_proj", RowwiseParallel))}

CONFIGS = {
    "fused-bf16": bigperf.FusedMixedPrecision(torch.bfloat16),
    "int8-channel": bigperf.Int8WeightOnly(),
    "int8-group32": bigperf.Int8WeightOnly(group_size=32),
    "int8-group64": bigperf.Int8WeightOnly(group_size=64),
    "int8-dynamic": bigperf.Int8Dynamic(),
    "sparse24": bigperf.Sparse24(prune=True),
    "block16": bigperf.BlockSparse(block=(16, 16), density=0.5, prune=True),
    "sparse24-int8": bigperf.Sparse24Int8(prune=True),
}
# fp32 model: the row-wise sums are added in another order. W8A8 is held to it too: its
# row-wise shards quantise each token against the whole token's absmax (all-reduced).
FLOAT_TOLERANCE = 1e-4


def tiny_llama() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1, initializer_range=0.1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def prompt() -> torch.Tensor:
    return torch.randint(2, 256, (2, 7), generator=torch.Generator().manual_seed(1))


def rel_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected.double()).norm() / expected.double().norm())


def run(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the prompt, greedy continuation of 6 tokens, through generate's KV cache)."""
    ids = prompt()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        tokens = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)[:, ids.shape[1]:]
    return logits, tokens


def compare(name: str, sharded, expected_logits, expected_tokens, failures: list) -> None:
    logits, tokens = run(sharded)
    error = rel_error(logits, expected_logits)
    if error > FLOAT_TOLERANCE:
        failures.append(f"{name}: logits differ by {error:.2e}")
    if not torch.equal(tokens, expected_tokens):
        failures.append(f"{name}: greedy tokens {tokens.tolist()} != {expected_tokens.tolist()}")


def case_llama(rank: int, world: int) -> None:
    """Swap then shard, every config: the same logits and greedy tokens as the unsharded swapped model."""
    mesh = init_device_mesh("cpu", (world,))
    failures = []
    with bigperf.use_backend("cpu"), bigperf.fp32_compute():
        for name, config in CONFIGS.items():
            model = tiny_llama()
            report = bigperf.swap(model, config)
            assert len(report.changes) == 2 * 7 + 1, (name, report.kept)
            expected = run(model)
            sharded = tp.parallelize(copy.deepcopy(model), mesh, PLAN)
            compare(name, sharded, *expected, failures)
    assert not failures, "\n".join(failures)


def case_llama_orders(rank: int, world: int) -> None:
    """Shard then swap (with bigperf's parallelize or torch's own styles), and torch's
    parallelize_module after the swap (with torch's own or bigperf's styles), give what swap
    then parallelize gives; each
    rank holds about 1/world of the sharded layers' weights."""
    mesh = init_device_mesh("cpu", (world,))
    failures = []
    config = CONFIGS["int8-group32"]
    with bigperf.use_backend("cpu"), bigperf.fp32_compute():
        swapped = tiny_llama()
        bigperf.swap(swapped, config)
        expected = run(swapped)
        full_bytes = _sharded_bytes(swapped)
        swap_first = tp.parallelize(copy.deepcopy(swapped), mesh, PLAN)
        assert _sharded_bytes(swap_first) <= full_bytes / world * 1.05, (full_bytes, _sharded_bytes(swap_first))
        shard_first = tp.parallelize(tiny_llama(), mesh, PLAN)
        bigperf.swap(shard_first, config)
        compare("shard then swap", shard_first, *expected, failures)
        logits, _ = run(shard_first)
        if not torch.equal(logits, run(swap_first)[0]):
            failures.append("shard then swap: logits not bitwise those of swap then shard")
        compare("torch parallelize_module", parallelize_module(copy.deepcopy(swapped), mesh, TORCH_PLAN),
                *expected, failures)
        # Swap, then torch's own styles (styles.py extends them to bigperf's layers).
        torch_after = parallelize_module(copy.deepcopy(swapped), mesh, TORCH_OWN_PLAN)
        _same_as(swap_first, "swap then torch's own styles", torch_after, expected, failures)
        # torch.distributed.checkpoint round trip of that model, into a fresh one sharded alike.
        checkpoint = str(Path(tempfile.gettempdir(), f"bigperf-tp-llama-dcp-{os.environ['MASTER_PORT']}"))
        dcp.save(torch_after.state_dict(), checkpoint_id=checkpoint)
        fresh = tiny_llama()
        with torch.no_grad():
            for parameter in fresh.parameters():
                parameter.mul_(0.5)
        bigperf.swap(fresh, config)
        parallelize_module(fresh, mesh, TORCH_OWN_PLAN)
        state = fresh.state_dict()
        dcp.load(state, checkpoint_id=checkpoint)
        fresh.load_state_dict(state)
        if not torch.equal(run(fresh)[0], run(torch_after)[0]):
            failures.append("torch.distributed.checkpoint: the reloaded sharded model's logits differ")
        dist.barrier()
        if rank == 0:
            shutil.rmtree(checkpoint, ignore_errors=True)
        # torch's own styles on the plain model, then swap: each layer gathered, swapped, cut.
        torch_first = parallelize_module(tiny_llama(), mesh, TORCH_OWN_PLAN)
        report = bigperf.swap(torch_first, config)
        if len(report.changes) != 2 * 7 + 1:
            failures.append(f"torch's styles then swap: kept {report.kept}")
        _same_as(swap_first, "torch's styles then swap", torch_first, expected, failures)
        # ... and bigperf.distributed.save writes it as the unsharded swapped model.
        saved = Path(tempfile.gettempdir(), f"bigperf-tp-llama-torch-{os.environ['MASTER_PORT']}")
        tp.save(torch_first, saved)
        if rank == 0:
            reloaded = tiny_llama()
            bigperf.load(reloaded, saved)
            if not torch.equal(run(reloaded)[0], expected[0]):
                failures.append("torch's styles then swap, saved and loaded whole: logits not bitwise the swapped "
                                "model's")
            shutil.rmtree(saved)
        dist.barrier()
        # A whole checkpoint (bigperf.save of the unsharded swapped model) read into a sharded model.
        path = Path(tempfile.gettempdir(), f"bigperf-tp-llama-{os.environ['MASTER_PORT']}")
        if rank == 0:
            bigperf.save(swapped, path)
        dist.barrier()
        loaded = tp.load(tiny_llama(), path, mesh, PLAN)
        if not torch.equal(run(loaded)[0], run(swap_first)[0]):
            failures.append("bigperf.distributed.load: logits not bitwise those of swap then shard")
        if _sharded_bytes(loaded) != _sharded_bytes(swap_first):
            failures.append(f"bigperf.distributed.load holds {_sharded_bytes(loaded)} bytes of sharded layers, "
                            f"parallelize {_sharded_bytes(swap_first)}")
        # Built with its parameters on meta (no rank holds the full model), then loaded.
        with tp.meta_parameters():
            empty = tiny_llama()
        if not torch.equal(run(tp.load(empty, path, mesh, PLAN))[0], run(swap_first)[0]):
            failures.append("bigperf.distributed.load into a meta_parameters() model: logits not bitwise those of "
                            "swap then shard")
        # torch.device("meta") puts the rotary buffers there too, which no checkpoint holds.
        with torch.device("meta"):
            all_meta = tiny_llama()
        try:
            tp.load(all_meta, path, mesh, PLAN)
            failures.append("bigperf.distributed.load filled a model whose unsaved buffers are on meta")
        except ValueError as error:
            if "model.rotary_emb.inv_freq" not in str(error) or "meta_parameters()" not in str(error):
                failures.append(f"refusal of meta buffers does not name them or the way out: {error}")
        if any(not t.is_meta for t in list(all_meta.parameters()) + list(all_meta.buffers())):
            failures.append("a refused load of a meta model gave some of its tensors memory")
        dist.barrier()
        if rank == 0:
            shutil.rmtree(path)
    assert not failures, "\n".join(failures)


def _same_as(swap_first, what: str, model, expected, failures: list) -> None:
    """`model` computes what the unsharded swapped model does, bitwise what swap then
    parallelize (`swap_first`) does, and holds the same bytes of sharded layers."""
    compare(what, model, *expected, failures)
    if not torch.equal(run(model)[0], run(swap_first)[0]):
        failures.append(f"{what}: logits not bitwise those of swap then parallelize")
    if _sharded_bytes(model) != _sharded_bytes(swap_first):
        failures.append(f"{what}: holds {_sharded_bytes(model)} bytes of sharded layers, parallelize "
                        f"{_sharded_bytes(swap_first)}")


def _sharded_bytes(model) -> int:
    """Bytes of the tensors of the layers PLAN shards (what each rank holds of them)."""
    import re

    return sum(t.numel() * t.element_size() for name, m in model.named_modules()
               if any(re.fullmatch(p, name) for p in PLAN)
               for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)))


CASES = {"llama": case_llama, "llama_orders": case_llama_orders}
