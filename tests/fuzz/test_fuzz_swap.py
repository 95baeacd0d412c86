"""Fuzzing swap and save/load on drawn models: stacks of linears (odd sizes, with and
without bias, in drawn dtypes) with activations between them, swapped with a drawn config
or per-layer recipe, as a dry run or for real, in train or eval mode.

Properties: every linear is either swapped or kept with a reason; a dry run changes nothing
(bitwise, flags included); the swapped model runs on an input the original takes, its layers
follow the model's training flag; and save then load into a fresh copy of the original
gives a model that computes bitwise the same.
"""

from __future__ import annotations

import torch
from hypothesis import event, given
from hypothesis import strategies as st
from torch import nn

import bigperf
from bigperf.configs import NAMED_CONFIGS
from tests.fuzz.support import name_check, seeds

widths = st.sampled_from([1, 3, 8, 16, 17, 32, 48])
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "none": None}


@st.composite
def models(draw):
    """(a function that builds the model afresh, its input width, dtype)."""
    sizes = draw(st.lists(widths, min_size=2, max_size=4))
    acts = draw(st.lists(st.sampled_from(sorted(ACTIVATIONS)), min_size=len(sizes) - 1, max_size=len(sizes) - 1))
    biases = draw(st.lists(st.booleans(), min_size=len(sizes) - 1, max_size=len(sizes) - 1))
    dtype = draw(st.sampled_from((torch.float32, torch.bfloat16)))
    seed = draw(seeds)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        layers = []
        for i, (k, n) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(k, n, bias=biases[i]))
            if ACTIVATIONS[acts[i]] is not None:
                layers.append(ACTIVATIONS[acts[i]]())
        return nn.Sequential(*layers).to(dtype).eval()

    return build, sizes[0], dtype


configs = st.one_of(
    st.sampled_from(sorted(NAMED_CONFIGS)),
    st.dictionaries(st.sampled_from([r"0", r"2", r"4", r".*"]), st.sampled_from([None, *sorted(NAMED_CONFIGS)]),
                    min_size=1, max_size=2).map(lambda d: {k: NAMED_CONFIGS[v] if v else None for k, v in d.items()}),
)


def snapshot(model: nn.Module) -> dict:
    state = {k: (v.clone(), v.dtype) for k, v in model.state_dict().items()}
    flags = [(name, type(m).__name__, m.training) for name, m in model.named_modules()]
    return {"state": state, "flags": flags}


def same(a: dict, b: dict) -> bool:
    return (a["flags"] == b["flags"] and a["state"].keys() == b["state"].keys()
            and all(torch.equal(a["state"][k][0], b["state"][k][0]) and a["state"][k][1] == b["state"][k][1]
                    for k in a["state"]))


@given(model=models(), config=configs, dry_run=st.booleans(), training=st.booleans(), m=st.sampled_from([1, 3]))
def test_swap_save_load(tmp_path_factory, model, config, dry_run, training, m):
    build, k, dtype = model
    original = build().train(training)
    linears = [name for name, mod in original.named_modules() if isinstance(mod, nn.Linear)]
    before = snapshot(original)
    try:
        report = bigperf.swap(original, config, dry_run=dry_run)
    except (ValueError, TypeError) as error:
        name_check(error, "bigperf.swap", ("config", "model"))
        assert same(before, snapshot(original)), "a refused swap changed the model"
        event("swap refused")
        return
    swapped_names = [c.name for c in report.changes]
    kept_names = [name for name, _ in report.kept]
    assert sorted(swapped_names + kept_names) == sorted(linears), (swapped_names, kept_names, linears)
    assert all(reason for _, reason in report.kept), "a layer was kept without a reason"
    if dry_run:
        assert same(before, snapshot(original)), "a dry run changed the model"
        event("dry run")
        return
    for name, module in original.named_modules():
        assert module.training == training, f"{name} ({type(module).__name__}) does not follow the model's mode"
    x = torch.randn(m, k).to(dtype)
    with torch.no_grad():
        out = original(x)
    assert out.shape[0] == m and out.dtype == dtype
    if not swapped_names:
        event("nothing swapped")
        return
    folder = tmp_path_factory.mktemp("swapped")
    bigperf.save(original, folder)
    fresh = build().train(training)
    bigperf.load(fresh, folder)
    with torch.no_grad():
        again = fresh(x)
    assert torch.equal(torch.nan_to_num(again), torch.nan_to_num(out)), "save/load changed what the model computes"
    event(f"saved and loaded ({len(swapped_names)} swapped)")
