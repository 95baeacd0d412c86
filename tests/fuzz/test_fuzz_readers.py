"""Fuzzing the file readers: benchmark records and baselines (bigperf.bench.store /
compare) and checkpoint manifests (bigperf.load). A damaged file, of any shape, is either
read (and then used without a traceback) or refused with a clear error that names the file
or the reader and the field; never a KeyError, TypeError or AttributeError from inside.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from hypothesis import event, given
from hypothesis import strategies as st
from torch import nn

import bigperf
from bigperf.bench.compare import compare_files, compare_records
from bigperf.bench.store import BenchFileError, load_record, load_records
from tests.fuzz.support import seeds

ROOT = Path(__file__).resolve().parents[2]
BASELINE = json.loads(next((ROOT / "benchmarks" / "baselines").glob("*.json")).read_text())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def paths_of(value, prefix=()):
    """Every (path, container) inside a JSON value, so a mutation can aim anywhere."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value[:4]):  # a few results are enough
            yield from paths_of(item, prefix + (i,))


@st.composite
def mutated(draw, document):
    """A deep copy of `document` with 1-3 mutations: a value replaced, a key dropped, a list
    emptied or the whole thing swapped for another JSON value."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in paths_of(doc) if p]
        if not paths or draw(st.integers(0, 20)) == 0:
            return draw(json_values)
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(("replace", "replace", "drop", "empty")))
        if action == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "empty" and isinstance(parent[path[-1]], (list, dict)):
            parent[path[-1]] = type(parent[path[-1]])()
        else:
            parent[path[-1]] = draw(json_values)
    return doc


def clear_file_error(error: Exception, path: Path) -> None:
    assert isinstance(error, ValueError), f"{type(error).__name__} from a damaged file: {error}"
    assert str(path) in str(error) or path.name in str(error), f"the error does not name the file: {error}"


@given(record=mutated(BASELINE), raw=st.sampled_from(("json", "jsonl", "truncated")))
def test_bench_record_readers(tmp_path_factory, record, raw):
    folder = tmp_path_factory.mktemp("records")
    good = folder / "good.json"
    good.write_text(json.dumps(BASELINE))
    text = json.dumps(record, allow_nan=True)
    path = folder / ("bad.jsonl" if raw == "jsonl" else "bad.json")
    path.write_text(text[: len(text) // 2] if raw == "truncated" else text)
    try:
        records = load_records(path)
        loaded = load_record(path) if raw != "jsonl" else records[0]
    except BenchFileError as error:
        clear_file_error(error, path)
        event("record refused")
        return
    except Exception as error:  # noqa: BLE001 - the point: nothing else may escape
        raise AssertionError(f"{type(error).__name__} from a damaged record: {error}") from error
    event("record read")
    # A record the reader accepted is one compare can use, either way round.
    for old, new in ((BASELINE, loaded), (loaded, BASELINE)):
        compare_records(old, new, 30.0)
    try:
        compare_files(good, [path], 30.0)
    except ValueError as error:
        clear_file_error(error, path)


def small_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 48), nn.GELU(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 16)).eval()


def saved_checkpoint(folder: Path, config: str, seed: int) -> tuple[nn.Module, dict]:
    model = small_model(seed)
    bigperf.swap(model, config)
    bigperf.save(model, folder)
    return model, json.loads((folder / "manifest.json").read_text())


CONFIGS = ("int8", "bf16", "sparse24", "int8-dynamic")


@given(data=st.data(), config=st.sampled_from(CONFIGS), seed=seeds)
def test_checkpoint_manifest_reader(tmp_path_factory, data, config, seed):
    """A damaged manifest loads into an identical model or is refused naming the field, and
    a refused load leaves every parameter and buffer of the model as it was."""
    folder = tmp_path_factory.mktemp("ckpt")
    saved, manifest = saved_checkpoint(folder, config, seed % 1000)
    damaged = data.draw(mutated(manifest))
    (folder / "manifest.json").write_text(json.dumps(damaged, allow_nan=True))
    target = small_model(seed % 1000 + 1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    try:
        bigperf.load(target, folder)
    except (ValueError, TypeError, FileNotFoundError) as error:
        assert "bigperf.load" in str(error), f"{type(error).__name__} without the reader's name: {error}"
        after = target.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), \
            "a refused load changed the model"
        event("manifest refused")
        return
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"{type(error).__name__} from a damaged manifest: {error}") from error
    event("manifest loaded")
    x = torch.randn(5, 32)
    with torch.no_grad():
        assert torch.equal(target(x), saved(x)), "a damaged manifest loaded into a model that computes otherwise"


@given(data=st.data(), config=st.sampled_from(CONFIGS), how=st.sampled_from(("truncate", "flip", "empty")))
def test_checkpoint_tensor_file_damage(tmp_path_factory, data, config, how):
    folder = tmp_path_factory.mktemp("ckpt")
    saved, _ = saved_checkpoint(folder, config, 0)
    tensors = folder / "model.safetensors"
    blob = bytearray(tensors.read_bytes())
    at = data.draw(st.integers(0, len(blob) - 1))
    if how == "truncate":
        blob = blob[:at]
    elif how == "flip":
        blob[at] ^= 1 << data.draw(st.integers(0, 7))
    else:
        blob = bytearray()
    tensors.write_bytes(bytes(blob))
    target = small_model(1)
    try:
        bigperf.load(target, folder)
    except (ValueError, TypeError) as error:
        assert "bigperf.load" in str(error), f"{type(error).__name__} without the reader's name: {error}"
        return
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"{type(error).__name__} from a damaged tensor file: {error}") from error
    # A flipped bit inside tensor data is not detectable without a checksum: the load may succeed.
    assert how == "flip", f"a {how} tensor file loaded"
