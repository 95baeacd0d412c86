"""Cases run on every gloo rank (tests/distributed/spawn.py): single layers of every config,
sharded column- and row-wise, against the unsharded swapped layer; both orders of shard and
swap; torch's parallelize_module with torch's and bigperf's styles; state dicts and
torch.distributed.checkpoint; plans that must be refused."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel as TorchColwise
from torch.distributed.tensor.parallel import RowwiseParallel as TorchRowwise
from torch.distributed.tensor.parallel import parallelize_module

import bigperf
import bigperf.distributed as tp
from bigperf.sparsity import block_mask, nm_mask

N, K = 128, 256

CONFIGS = {
    "fused-fp32": bigperf.FusedMixedPrecision(torch.float32),
    "fused-bf16": bigperf.FusedMixedPrecision(torch.bfloat16),
    "int8-channel": bigperf.Int8WeightOnly(),
    "int8-group32": bigperf.Int8WeightOnly(group_size=32),
    "int8-group64-asym": bigperf.Int8WeightOnly(group_size=64, symmetric=False),
    "int8-dynamic": bigperf.Int8Dynamic(),
    "sparse24": bigperf.Sparse24(),
    "block16": bigperf.BlockSparse(block=(16, 16)),
    "sparse24-int8": bigperf.Sparse24Int8(),
}
# Shards that quantise differently from the whole, row-wise, when sharded before the swap: a
# per-channel int8 weight scale (or the per-row scale of int8 2:4 values) is then taken over
# K/world inputs. (W8A8's per-token activation scales are the whole token's in either order:
# the row-wise shard all-reduces its absmax.)
ROWWISE_REQUANTISES = {"int8-channel", "int8-dynamic", "sparse24-int8"}
QUANTISATION_TOLERANCE = 3e-2  # relative Frobenius error between two int8 quantisations


def rel_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected.double()).norm() / expected.double().norm())


def plain_model(name: str, seed: int = 0) -> nn.Module:
    """Linear(K, N) + SiLU (swap fuses it: row-wise, it must run after the all-reduce), its
    weight pruned to the sparse configs' pattern, the same on every rank."""
    torch.manual_seed(seed)
    linear = nn.Linear(K, N)
    with torch.no_grad():
        if name.startswith("sparse24"):
            linear.weight.mul_(nm_mask(linear.weight))
        elif name.startswith("block"):
            linear.weight.mul_(block_mask(linear.weight, (16, 16), 0.5))
    return nn.Sequential(linear, nn.SiLU()).eval()


def swapped(model: nn.Module, config) -> nn.Module:
    report = bigperf.swap(model, config)
    assert len(report.changes) == 1 and report.changes[0].activation == "silu", report
    return model


def shard_slice(size: int, rank: int, world: int) -> slice:
    return slice(rank * size // world, (rank + 1) * size // world)


def inputs() -> torch.Tensor:
    return torch.randn(3, 5, K, generator=torch.Generator().manual_seed(11))


def case_layers(rank: int, world: int) -> None:
    """Every config: col-wise gives this rank's slice of the unsharded output, row-wise the
    whole output from this rank's slice of the input; shard-then-swap equals swap-then-shard."""
    mesh = init_device_mesh("cpu", (world,))
    x = inputs()
    cols, rows = shard_slice(N, rank, world), shard_slice(K, rank, world)
    failures = []
    with bigperf.use_backend("cpu"), bigperf.fp32_compute(), torch.no_grad():
        for name, config in CONFIGS.items():
            expected = swapped(plain_model(name), config)(x)
            for style, x_in, want in (("colwise", x, expected[..., cols]), ("rowwise", x[..., rows], expected)):
                swap_first = tp.parallelize(swapped(plain_model(name), config), mesh, {"0": style})
                got = swap_first(x_in)
                if got.shape != want.shape or rel_error(got, want) > 1e-5:
                    failures.append(f"{name} {style} swap first: shape {tuple(got.shape)}, "
                                    f"error {rel_error(got, want) if got.shape == want.shape else None}")
                shard_first = swapped(tp.parallelize(plain_model(name), mesh, {"0": style}), config)
                again = shard_first(x_in)
                if style == "rowwise" and name in ROWWISE_REQUANTISES:
                    ok = rel_error(again, got) < QUANTISATION_TOLERANCE
                else:
                    ok = torch.equal(again, got)
                if not ok:
                    failures.append(f"{name} {style} shard first differs from swap first: "
                                    f"error {rel_error(again, got)}")
    assert not failures, "\n".join(failures)


def case_layer_state(rank: int, world: int) -> None:
    """A shard holds only its part (N/world x K or N x K/world), re-derives its kernel layout,
    keeps its identity, hooks and swap_record, and the bias is added once (rank 0)."""
    mesh = init_device_mesh("cpu", (world,))
    for name in ("int8-group32", "sparse24", "block16"):
        model = swapped(plain_model(name), CONFIGS[name])
        layer = model[0]
        seen = []
        layer.register_forward_hook(lambda *args: seen.append(1))
        before = sum(t.numel() * t.element_size() for t in layer.state_dict().values() if isinstance(t, torch.Tensor))
        layout = getattr(layer, "kernel_layout", None)
        tp.parallelize(model, mesh, {"0": "rowwise"})
        assert model[0] is layer and layer.in_features == K // world and layer.out_features == N
        assert layer.tensor_parallel.in_features == K and layer.tensor_parallel.activation == "silu"
        assert layer.activation == "none" and layer.kernel_layout == layout and layer.swap_record
        assert (layer.bias is not None) == (rank == 0)
        after = sum(t.numel() * t.element_size() for t in layer.state_dict().values() if isinstance(t, torch.Tensor)
                    for t in [t.to_local() if isinstance(t, DTensor) else t])  # the rank's own part of each
        assert after < before / world * 1.1, (name, before, after)
        x = inputs()[..., shard_slice(K, rank, world)]
        with torch.no_grad():
            out = model(x)
            assert seen == [1]  # the user's hook still fires
            copied = copy.deepcopy(model)  # shares the process group; its hooks are its own
            assert torch.equal(copied(x), out) and len(copied[0]._forward_hooks) == len(layer._forward_hooks)
    copying = swapped(plain_model("int8-group32"), bigperf.Int8WeightOnly(group_size=32, float_copy=True))
    tp.parallelize(copying, mesh, {"0": "colwise"})
    assert copying[0].keeps_float_copy and copying[0].float_copy.shape == (N // world, K)  # the opt-in copy, sharded
    fused = tp.parallelize(swapped(plain_model("fused-fp32"), CONFIGS["fused-fp32"]), mesh, {"0": "rowwise"})[0]
    x = inputs()[..., shard_slice(K, rank, world)]
    try:
        fused(x, torch.ones(3, 5, N))
    except ValueError as error:
        assert "takes no 'residual' argument" in str(error), str(error)
    else:
        raise AssertionError("a row-wise FusedLinear took a residual (each rank would add it)")


def case_torch_entry_point(rank: int, world: int) -> None:
    """torch's parallelize_module shards swapped layers as bigperf.distributed.parallelize
    does, bit for bit: with torch's own ColwiseParallel / RowwiseParallel (which bigperf
    extends to its layers once swap has run with torch.distributed.tensor.parallel imported),
    with bigperf's subclasses of them, and with torch's style objects as values of a
    parallelize plan. Plain nn.Linear layers still go to torch's own code (DTensor weights)."""
    mesh = init_device_mesh("cpu", (world,))
    x = inputs()
    styles = {"colwise": (TorchColwise, tp.ColwiseParallel), "rowwise": (TorchRowwise, tp.RowwiseParallel)}
    with bigperf.use_backend("cpu"), bigperf.fp32_compute(), torch.no_grad():
        for name in CONFIGS:
            for style, x_in in (("colwise", x), ("rowwise", x[..., shard_slice(K, rank, world)])):
                ours = tp.parallelize(swapped(plain_model(name), CONFIGS[name]), mesh, {"0": style})
                expected = ours(x_in)
                for make in styles[style]:
                    entry = f"{make.__module__}.{make.__name__}"
                    theirs = parallelize_module(swapped(plain_model(name), CONFIGS[name]), mesh, {"0": make()})
                    assert type(theirs[0]) is type(ours[0]), (name, style, entry)
                    assert torch.equal(theirs(x_in), expected), (name, style, entry)
                    assert _same(_fingerprint(theirs), _fingerprint(ours)), (name, style, entry)
                    torch_valued = tp.parallelize(swapped(plain_model(name), CONFIGS[name]), mesh, {"0": make()})
                    assert torch.equal(torch_valued(x_in), expected), (name, style, entry)
        # Ranks whose weights differ: torch's src_data_rank (0 by default) makes every rank cut
        # rank 0's layer, as torch's distribute_tensor does; None keeps each rank's own.
        for name in ("int8-group32", "block16", "sparse24-int8", "fused-bf16"):
            for style, x_in in (("colwise", x), ("rowwise", x[..., shard_slice(K, rank, world)])):
                rank0 = tp.parallelize(swapped(plain_model(name, seed=0), CONFIGS[name]), mesh, {"0": style})
                own = tp.parallelize(swapped(plain_model(name, seed=rank), CONFIGS[name]), mesh, {"0": style})
                for make in styles[style]:
                    model = swapped(plain_model(name, seed=rank), CONFIGS[name])
                    broadcast = parallelize_module(model, mesh, {"0": make()})
                    assert _same(_fingerprint(broadcast), _fingerprint(rank0)), (name, style, make)
                    assert torch.equal(broadcast(x_in), rank0(x_in)), (name, style, make)
                    kept = parallelize_module(swapped(plain_model(name, seed=rank), CONFIGS[name]), mesh,
                                              {"0": make()}, src_data_rank=None)
                    assert _same(_fingerprint(kept), _fingerprint(own)), (name, style, make)
        plain = parallelize_module(plain_model("int8-channel"), mesh, {"0": TorchColwise()})
        assert isinstance(plain[0].weight, DTensor), "torch's ColwiseParallel no longer shards nn.Linear itself"
        # A split the format cannot take (K / world cuts a quantisation group in two): a clear
        # error naming torch's style, and the layer as it was.
        model = nn.Sequential(nn.Linear(64 * world + 32, N))
        bigperf.swap(model, bigperf.Int8WeightOnly(group_size=32))
        before = _fingerprint(model)
        try:
            parallelize_module(model, mesh, {"0": TorchRowwise()})
        except ValueError as error:
            assert "torch.distributed.tensor.parallel.style.RowwiseParallel" in str(error), error
        else:
            raise AssertionError("a row-wise split that cuts a quantisation group was taken")
        assert _same(_fingerprint(model), before)


def case_torch_shards_first(rank: int, world: int) -> None:
    """torch's own parallelize_module and styles on the plain model, then bigperf.swap: every
    config gives the shard (and the outputs, bit for bit) of swap then
    bigperf.distributed.parallelize, with torch's hooks still moving the activations (a
    sequence-sharded input, a reduce-scatter); what a format cannot split, or a placement
    that is not a column- or row-wise shard, is kept with the reason, and the model works."""
    mesh = init_device_mesh("cpu", (world,))
    x = inputs()
    torch_styles = {"colwise": TorchColwise, "rowwise": TorchRowwise}
    with bigperf.use_backend("cpu"), bigperf.fp32_compute(), torch.no_grad():
        for name, config in CONFIGS.items():
            for style, x_in in (("colwise", x), ("rowwise", x[..., shard_slice(K, rank, world)])):
                ours = tp.parallelize(swapped(plain_model(name), config), mesh, {"0": style})
                theirs = parallelize_module(plain_model(name), mesh, {"0": torch_styles[style]()})
                swapped(theirs, config)
                layer = theirs[0]
                assert type(layer) is type(ours[0]) and layer.tensor_parallel.style == style, (name, style, layer)
                mine, its = ours[0].state_dict(), layer.state_dict()
                assert mine.keys() == its.keys(), (name, style)
                assert all(torch.equal(mine[k], its[k]) if isinstance(mine[k], torch.Tensor) else mine[k] == its[k]
                           for k in mine), (name, style)
                got = theirs(x_in)
                assert type(got) is torch.Tensor and torch.equal(got, ours(x_in)), (name, style)
        # Where the layer's hooks are not torch's (here: wrapped) or its forward is replaced
        # (transformers' tensor parallelism does that), how activations move is unknown: kept.
        for change in ("wrapped hooks", "own forward"):
            theirs = parallelize_module(plain_model("int8-group32"), mesh, {"0": TorchColwise()})
            if change == "wrapped hooks":
                for hooks in (theirs[0]._forward_pre_hooks, theirs[0]._forward_hooks):
                    for hook_id, hook in list(hooks.items()):
                        hooks[hook_id] = lambda *args, hook=hook: hook(*args)
            else:
                theirs[0].forward = lambda x, layer=theirs[0]: nn.Linear.forward(layer, x)
            before = theirs(x)
            report = bigperf.swap(theirs, CONFIGS["int8-group32"])
            reason = "not the hooks torch's ColwiseParallel" if change == "wrapped hooks" else "forward is replaced"
            assert report.changes == [] and reason in dict(report.kept)["0"], (change, report.kept)
            assert type(theirs[0]) is nn.Linear and torch.equal(theirs(x), before), change
        # Sequence parallel: the input arrives sharded along tokens and the row-wise sum leaves
        # the same way (reduce-scatter), as torch's styles say; against bigperf's own styles.
        name = "int8-group32"
        plan = {"0": TorchColwise(input_layouts=Shard(1)), "2": TorchRowwise(output_layouts=Shard(1))}

        def two_layers():
            torch.manual_seed(3)
            return nn.Sequential(nn.Linear(K, N), nn.SiLU(), nn.Linear(N, K)).eval()
        ours = two_layers()
        bigperf.swap(ours, CONFIGS[name])
        tp.parallelize(ours, mesh, {"0": tp.ColwiseParallel(input_layouts=Shard(1)),
                                    "2": tp.RowwiseParallel(output_layouts=Shard(1))})
        theirs = parallelize_module(two_layers(), mesh, plan)
        bigperf.swap(theirs, CONFIGS[name])
        x_local = torch.randn(3, 4, K, generator=torch.Generator().manual_seed(rank))  # this rank's tokens
        got, expected = theirs(x_local), ours(x_local)
        assert got.shape == (3, 4, K) and torch.allclose(got, expected, rtol=1e-5, atol=1e-6), \
            float((got - expected).abs().max())
        # Splits the format cannot take (a quantisation group cut in two; torch's uneven
        # chunks of 127 outputs): kept, and the torch-sharded layer still computes.
        model = parallelize_module(plain_model("int8-channel"), mesh, {"0": TorchRowwise()})
        before = model(x[..., shard_slice(K, rank, world)])
        report = bigperf.swap(model, bigperf.Int8WeightOnly(group_size=K))
        assert report.changes == [] and "group_size" in dict(report.kept)["0"], report.kept
        assert type(model[0]) is nn.Linear and torch.equal(model(x[..., shard_slice(K, rank, world)]), before)
        torch.manual_seed(0)
        model = parallelize_module(nn.Sequential(nn.Linear(K, 127)), mesh, {"0": TorchColwise()})
        report = bigperf.swap(model, "int8")
        reason = dict(report.kept).get("0", "")
        assert report.changes == [] and f"127 does not split into {world} equal shards" in reason, report.kept
        # A replicated weight is no shard: kept, naming the placements.
        model = plain_model("int8-channel")
        model[0].weight = nn.Parameter(torch.distributed.tensor.distribute_tensor(model[0].weight.detach(), mesh,
                                                                                  [Replicate()]))
        model[0].bias = nn.Parameter(torch.distributed.tensor.distribute_tensor(model[0].bias.detach(), mesh,
                                                                                [Replicate()]))
        report = bigperf.swap(model, "int8")
        assert report.changes == [] and "Replicate()" in dict(report.kept)["0"], report.kept
        # Calibration runs the model on DTensors: refused before anything changes.
        model = parallelize_module(plain_model("int8-channel"), mesh, {"0": TorchColwise()})
        try:
            bigperf.swap(model, "int8", calibration=[x], min_sqnr=20)
        except ValueError as error:
            assert "calibration" in str(error), error
        else:
            raise AssertionError("swap measured SQNR on a torch-sharded layer")
        assert type(model[0]) is nn.Linear
        # bigperf's parallelize on what torch sharded: refused, nothing changes.
        for entry in (lambda: tp.parallelize(model, mesh, {"0": "rowwise"}),
                      lambda: parallelize_module(model, mesh, {"0": tp.RowwiseParallel()})):
            try:
                entry()
            except ValueError as error:
                assert "already sharded by torch's parallelize_module" in str(error), error
            else:
                raise AssertionError("a layer torch sharded was sharded again")
            assert type(model[0]) is nn.Linear and tuple(model[0].weight.placements) == (Shard(0),)


def case_layouts(rank: int, world: int) -> None:
    """torch's layout options, through DTensor, against the unsharded swapped model: a
    sequence-sharded input all-gathered into a column-wise shard, a row-wise sum
    reduce-scattered to a sequence-sharded output (sequence parallelism's MLP), DTensor
    outputs handed to the next layer; by torch's parallelize_module with torch's and with
    bigperf's styles, and by bigperf.distributed.parallelize with torch's style objects."""
    mesh = init_device_mesh("cpu", (world,))
    x = torch.randn(3, 2 * world, K, generator=torch.Generator().manual_seed(12))  # the sequence splits evenly
    seq, cols = shard_slice(x.shape[1], rank, world), shard_slice(N, rank, world)
    failures = []

    def check(what, got, want):
        if got.shape != want.shape or rel_error(got, want) > 1e-5:
            failures.append(f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}, "
                            f"error {rel_error(got, want) if got.shape == want.shape else None}")

    with bigperf.use_backend("cpu"), bigperf.fp32_compute(), torch.no_grad():
        for name in ("int8-dynamic", "fused-bf16", "block16", "int8-group32"):
            config = CONFIGS[name]
            expected = swapped_mlp(name, config)(x)
            first = swapped_mlp(name, config)[0](x)  # layer 0 (SiLU fused) alone
            # Sequence parallelism: Shard(1) in, all-gathered; reduce-scattered to Shard(1) out.
            torch_entry = lambda m, plan: parallelize_module(m, mesh, plan)  # noqa: E731
            for entry, make, colwise, rowwise in (
                    ("parallelize_module, bigperf's styles", torch_entry, tp.ColwiseParallel, tp.RowwiseParallel),
                    ("parallelize_module, torch's styles", torch_entry, TorchColwise, TorchRowwise),
                    ("parallelize", lambda m, plan: tp.parallelize(m, mesh, plan), TorchColwise, TorchRowwise)):
                model = make(swapped_mlp(name, config), {"0": colwise(input_layouts=Shard(1)),
                                                         "2": rowwise(output_layouts=Shard(1))})
                check(f"{name} {entry} sequence parallel", model(x[:, seq]), expected[:, seq])
                # A column-wise DTensor output (Shard(-1)) handed on to a default row-wise layer.
                model = make(swapped_mlp(name, config), {"0": colwise(use_local_output=False), "2": rowwise()})
                middle = model[0](x)
                if not isinstance(middle, DTensor) or tuple(middle.placements) != (Shard(middle.ndim - 1),):
                    failures.append(f"{name} {entry}: column-wise output {type(middle).__name__} "
                                    f"{getattr(middle, 'placements', None)}, not a Shard(-1) DTensor")
                else:
                    check(f"{name} {entry} column-wise DTensor out", middle.full_tensor(), first)
                check(f"{name} {entry} DTensor into a row-wise layer", model(x), expected)
                # A column-wise output gathered whole (the lm_head's logits), locally and as a DTensor.
                for local in (True, False):
                    model = make(swapped_mlp(name, config), {"0": colwise(output_layouts=Replicate(),
                                                                          use_local_output=local)})
                    whole = model[0](x)
                    if isinstance(whole, DTensor) == local or (not local and whole.placements != (Replicate(),)):
                        failures.append(f"{name} {entry}: gathered column-wise output {type(whole).__name__}")
                    else:
                        check(f"{name} {entry} gathered column-wise output", whole if local else whole.to_local(),
                              first)
                # A row-wise output as a replicated DTensor.
                model = make(swapped_mlp(name, config), {"0": colwise(), "2": rowwise(use_local_output=False)})
                out = model(x)
                if not isinstance(out, DTensor) or tuple(out.placements) != (Replicate(),):
                    failures.append(f"{name} {entry}: row-wise output {type(out).__name__}, not a Replicate DTensor")
                else:
                    check(f"{name} {entry} row-wise DTensor out", out.to_local(), expected)
    assert not failures, "\n".join(failures)


def swapped_mlp(name: str, config) -> nn.Module:
    model = mlp_model(name)
    bigperf.swap(model, config)
    return model


def _fingerprint(model: nn.Module) -> list:
    return [(name, type(m).__name__, {k: v.clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)},
             len(m._forward_hooks), "tensor_parallel" in m.__dict__) for name, m in model.named_modules()]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and x[1] == y[1] and x[3:] == y[3:] and x[2].keys() == y[2].keys()
        and all(torch.equal(x[2][k], y[2][k]) for k in x[2]) for x, y in zip(a, b))


def case_bad_plans(rank: int, world: int) -> None:
    """Each bad plan raises a clear error naming parallelize, and the model is bitwise as it was."""
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 192), nn.ReLU(), nn.Linear(192, 64))
    bigperf.swap(model, bigperf.Int8WeightOnly(group_size=64))
    before = _fingerprint(model)
    bad = [
        ({"0": "colwise", "3": "rowwise"}, ValueError, r"plan entries \['3'\] match no module"),
        ({"0": "sideways"}, ValueError, "plan value for '0' must be one of"),
        ({"0": TorchColwise(input_layouts=(Replicate(), Replicate()))}, ValueError,
         "input_layouts .* must be one placement for the 1-D mesh"),
        ({"0": 3}, TypeError, "plan value for '0' must be one of"),
        ({"(": "colwise"}, ValueError, "bad regex"),
        ({"1": "colwise"}, TypeError, r"matches '1' \(Identity\)"),
        ({"": "colwise"}, TypeError, r"matches '' \(Sequential\)"),
        # layer 0 would take its shard, layer 2 cannot: K = 192 over the ranks cuts a group of 64
        ({"0": "colwise", "2": "rowwise"}, ValueError,
         r"layer '2' \(rowwise\): bigperf.formats.int8_rowmajor.shard_rows: a shard of K .* group of 64"),
        ({}, TypeError, "argument 'plan' must be a non-empty"),
    ]
    for plan, error, match in bad:
        try:
            tp.parallelize(model, mesh, plan)
        except error as raised:
            assert "bigperf.distributed.parallelize" in str(raised) and __import__("re").search(match, str(raised)), \
                (plan, str(raised))
        else:
            raise AssertionError(f"plan {plan} was accepted")
        assert _same(_fingerprint(model), before), f"plan {plan} changed the model"
    for args, match in (((model, "cpu", {"0": "colwise"}), "argument 'mesh' must be a torch.distributed DeviceMesh"),
                        (("model", mesh, {"0": "colwise"}), "argument 'model' must be an nn.Module")):
        try:
            tp.parallelize(*args)
        except TypeError as raised:
            assert match in str(raised), str(raised)
        else:
            raise AssertionError(f"{match}: accepted")
    tp.parallelize(model, mesh, {"0": "colwise"})
    try:
        tp.parallelize(model, mesh, {"0": "colwise"})
    except ValueError as raised:
        assert "layer '0' is already sharded" in str(raised)
    else:
        raise AssertionError("a layer was sharded twice")


def case_smoke(rank: int, world: int) -> None:
    """Any number of ranks: a colwise -> rowwise MLP (the transformer block's pattern) gives
    the unsharded swapped model's output; a 2-D mesh is refused (1-D tensor parallelism)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K, N), nn.GELU(), nn.Linear(N, 64)).eval()
    bigperf.swap(model, bigperf.Int8WeightOnly(group_size=32))
    x = inputs()
    plan = {"0": "colwise", "2": "rowwise"}
    with bigperf.use_backend("cpu"), bigperf.fp32_compute(), torch.no_grad():
        expected = model(x)
        two_d = init_device_mesh("cpu", (2, world // 2)) if world % 2 == 0 and world > 2 else None
        if two_d is not None:
            try:
                tp.parallelize(model, two_d, plan)
            except ValueError as error:
                assert "argument 'mesh' must be 1-D" in str(error), str(error)
            else:
                raise AssertionError("a 2-D mesh was accepted")
        got = tp.parallelize(model, init_device_mesh("cpu", (world,)), plan)(x)
    assert rel_error(got, expected) < 1e-5, rel_error(got, expected)


def mlp_model(name: str) -> nn.Module:
    """Linear(K, N) + SiLU + Linear(N, 64), pruned to the sparse configs' pattern."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(K, N), nn.SiLU(), nn.Linear(N, 64)).eval()
    with torch.no_grad():
        for linear in (model[0], model[2]):
            if name.startswith("sparse24"):
                linear.weight.mul_(nm_mask(linear.weight))
            elif name.startswith("block"):
                linear.weight.mul_(block_mask(linear.weight, (16, 16), 0.5))
    return model


def case_save(rank: int, world: int) -> None:
    """bigperf.distributed.save writes a sharded model (col-wise then row-wise, swapped, and
    one plain nn.Linear left unswapped) as a checkpoint that bigperf.load reads in one
    process: the loaded model computes bitwise what the unsharded swapped model computes, and
    the sharded model keeps its shards."""
    mesh = init_device_mesh("cpu", (world,))
    plan = {"0": "colwise", "2": "rowwise"}
    x = inputs()
    with bigperf.use_backend("cpu"), bigperf.fp32_compute(), torch.no_grad():
        for name in ("int8-group32", "int8-channel", "sparse24-int8", "block16", "fused-bf16", "plain-row"):
            config = CONFIGS.get(name) or {"0": CONFIGS["int8-group64-asym"], "2": None}
            expected = mlp_model(name)
            bigperf.swap(expected, config)
            sharded = mlp_model(name)
            bigperf.swap(sharded, config)
            tp.parallelize(sharded, mesh, plan)
            before = sharded(x)
            path = Path(tempfile.gettempdir(), f"bigperf-tp-save-{os.environ['MASTER_PORT']}-{name}")
            try:
                bigperf.save(sharded, path)
            except ValueError as error:
                assert "is a tensor-parallel shard; save a sharded model with bigperf.distributed.save" in str(error)
            else:
                raise AssertionError("bigperf.save wrote one rank's shards as a model")
            written = tp.save(sharded, path)
            assert (written is not None) == (rank == 0)
            dist.barrier()
            loaded = bigperf.load(mlp_model(name), path)
            assert torch.equal(loaded(x), expected(x)), name
            assert torch.equal(sharded(x), before), name  # the shards are back
            assert sharded[0].out_features == N // world and sharded[2].in_features == N // world
            # The checkpoint read straight into a sharded model: the same shards, bitwise.
            loaded_sharded = tp.load(mlp_model(name), path, mesh, plan)
            assert torch.equal(loaded_sharded(x), before), name
            assert loaded_sharded[0].out_features == N // world and loaded_sharded[2].in_features == N // world
            assert all(t.shape == u.shape for t, u in zip(loaded_sharded.state_dict().values(),
                                                          sharded.state_dict().values()) if isinstance(t, torch.Tensor))
            # Into a model built with its parameters on meta: nothing full-size is ever built.
            with tp.meta_parameters():
                empty = mlp_model(name)
            assert all(p.is_meta for p in empty.parameters())
            loaded_empty = tp.load(empty, path, mesh, plan)
            assert not any(t.is_meta for t in list(loaded_empty.parameters()) + list(loaded_empty.buffers()))
            assert torch.equal(loaded_empty(x), before), name
            if name == "int8-group32":  # refused after the model was sharded: put back as it was
                for on_meta in (False, True):
                    with tp.meta_parameters() if on_meta else contextlib.nullcontext():
                        other = mlp_model(name)
                    other[1] = nn.ReLU()  # the checkpoint fused a SiLU there
                    before_refusal = None if on_meta else _fingerprint(other)
                    try:
                        tp.load(other, path, mesh, plan)
                    except ValueError as error:
                        assert "fused a silu there" in str(error), str(error)
                    else:
                        raise AssertionError("a checkpoint fusing SiLU loaded into a ReLU model")
                    if on_meta:  # its tensors are back on meta
                        assert type(other[0]) is nn.Linear and other[0].weight.shape == (N, K)
                        assert all(p.is_meta for p in other.parameters())
                    else:
                        assert _same(_fingerprint(other), before_refusal)
            dist.barrier()  # every rank has read the checkpoint
            if rank == 0:
                shutil.rmtree(path)
    try:
        tp.save(mlp_model("fused-fp32"), Path(tempfile.gettempdir(), "bigperf-tp-never"))
    except ValueError as error:
        assert "bigperf.distributed.save: the model has no layer sharded" in str(error), str(error)
    else:
        raise AssertionError("an unsharded model was saved by bigperf.distributed.save")


def case_state_dict(rank: int, world: int) -> None:
    """A sharded model's state_dict in DTensor's terms (bigperf/distributed/state.py), every
    config, column- then row-wise: each canonical tensor is a DTensor whose full_tensor() is
    the unsharded swapped layer's, bitwise (the format's cut is the placement it claims);
    torch.distributed.checkpoint saves it and loads it back into another sharded model
    (outputs bitwise), and one process reads it into the unsharded model (no_dist). BSR
    tensors go per rank (same number of ranks only)."""
    mesh = init_device_mesh("cpu", (world,))
    plan = {"0": "colwise", "2": "rowwise"}
    x = inputs()
    failures = []
    root = Path(tempfile.gettempdir(), f"bigperf-tp-dcp-{os.environ['MASTER_PORT']}")
    with bigperf.use_backend("cpu"), bigperf.fp32_compute(), torch.no_grad():
        for name, config in CONFIGS.items():
            unsharded = swapped_mlp(name, config)
            sharded = tp.parallelize(swapped_mlp(name, config), mesh, plan)
            expected = sharded(x)
            whole, state = unsharded.state_dict(), sharded.state_dict()
            block = name.startswith("block")
            for key, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if block and "@rank" in key:
                    continue
                if key == "2.bias":  # row-wise: rank 0 adds it, and alone holds it
                    if not isinstance(value, DTensor) and (rank == 0) and torch.equal(value, whole[key]):
                        continue
                if not isinstance(value, DTensor) or not torch.equal(value.full_tensor(), whole[key]):
                    failures.append(f"{name} {key}: {type(value).__name__}, not the unsharded tensor as a DTensor")
            by_rank = sorted(f"{k}@rank{rank}of{world}" for k in whole
                             if k.split(".")[-1] in ("values", "col_indices", "row_ptr"))
            if block and sorted(k for k in state if "@rank" in k) != by_rank:
                failures.append(f"{name}: BSR keys {sorted(state)}")
            if (rank != 0) == ("2.bias" in state):
                failures.append(f"{name}: row-wise bias on rank {rank}: {'2.bias' in state}")
            path = str(root / name)
            dcp.save(state, checkpoint_id=path)
            other = tp.parallelize(_zeroed(swapped_mlp(name, config)), mesh, plan)
            fresh = other.state_dict()
            dcp.load(fresh, checkpoint_id=path)
            other.load_state_dict(fresh)
            if not torch.equal(other(x), expected):
                failures.append(f"{name}: the model DCP loaded computes otherwise")
            sharded.load_state_dict(sharded.state_dict())  # the round trip through DTensors, in place
            if not torch.equal(sharded(x), expected):
                failures.append(f"{name}: load_state_dict(state_dict()) changed the model")
            dist.barrier()
            if rank == 0 and not block:  # one process reads the shards into the unsharded model
                single = _zeroed(swapped_mlp(name, config))
                full = single.state_dict()
                dcp.load(full, checkpoint_id=path, no_dist=True)
                single.load_state_dict(full)
                if not torch.equal(single(x), unsharded(x)):
                    failures.append(f"{name}: the unsharded model DCP loaded computes otherwise")
            dist.barrier()
        block_layer = tp.parallelize(swapped_mlp("block16", CONFIGS["block16"]), mesh, plan)
        try:
            block_layer.load_state_dict(swapped_mlp("block16", CONFIGS["block16"]).state_dict())
        except ValueError as error:
            if "a BSR shard takes its rank's own tensors" not in str(error):
                failures.append(f"BSR shard, unsharded state: {error}")
        else:
            failures.append("a BSR shard took the unsharded layer's blocks")
    if rank == 0:
        shutil.rmtree(root, ignore_errors=True)
    assert not failures, "\n".join(failures)


def _zeroed(model: nn.Module) -> nn.Module:
    """The model with every floating tensor of its state zeroed (the load must bring them all)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.zero_()
    return model


CASES = {"smoke": case_smoke, "save": case_save, "layers": case_layers, "layer_state": case_layer_state,
         "torch_entry_point": case_torch_entry_point, "bad_plans": case_bad_plans, "layouts": case_layouts,
         "torch_shards_first": case_torch_shards_first, "state_dict": case_state_dict}
