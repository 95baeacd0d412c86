import json

import pytest
import torch

from bigperf.bench.store import (
    SCHEMA,
    SCHEMA_VERSION,
    BenchFileError,
    append_history,
    fingerprint,
    load_records,
    machine_kind,
    save_record,
    validate_record,
)
from tests.bench.records import record, result


def test_fingerprint_describes_the_machine_and_the_software():
    fp = fingerprint(torch.device("cpu"))
    cpu = fp["cpu"]
    assert cpu["model"] and cpu["arch"]
    assert cpu["logical_cores"] >= 1 and cpu["usable_cores"] >= 1 and cpu["torch_threads"] >= 1
    assert cpu["torch_capability"]
    if cpu["features"] is not None:  # bigperf._C built: its ISA detection is recorded
        assert "avx2" in cpu["features"] and cpu["isa"] in cpu["runnable_isas"]
    assert fp["gpu"] is None
    versions = fp["versions"]
    assert versions["torch"] == torch.__version__ and versions["bigperf"] and versions["python"]
    assert "commit" in fp["git"] and "dirty" in fp["git"]
    assert fp["machine_kind"] == machine_kind(fp) and fp["machine_kind"].startswith("cpu-")
    assert isinstance(cpu["amx"], bool)
    json.dumps(fp)  # a record must serialise as is


def test_machine_kind_separates_isa_threads_and_gpus():
    base = {"cpu": {"arch": "x86_64", "isa": "avx2", "torch_threads": 2}, "gpu": None}
    assert machine_kind(base) == "cpu-x86_64-avx2-2t"
    assert machine_kind({**base, "cpu": {**base["cpu"], "isa": "avx512"}}) == "cpu-x86_64-avx512-2t"
    assert machine_kind({**base, "gpu": {"name": "NVIDIA H200"}}) == "cuda-nvidia-h200"
    # An AMX Xeon and a Zen 4 both run our 'avx512' path, but torch's GEMMs differ: their
    # baselines must not be shared.
    amx = {**base, "cpu": {**base["cpu"], "isa": "avx512", "amx": True}}
    assert machine_kind(amx) == "cpu-x86_64-avx512-amx-2t"


def test_record_round_trips_and_history_appends(tmp_path):
    rec = record([result()])
    path = save_record(rec, tmp_path / "sub" / "run.json")
    assert load_records(path) == [rec]
    history = tmp_path / "history.jsonl"
    append_history(rec, history)
    append_history(record([result(speedup=3.0)]), history)
    assert [r["results"][1]["speedup"] for r in load_records(history)] == [2.0, 3.0]
    assert len(history.read_text().splitlines()) == 2


def test_schema_and_version_are_checked():
    rec = record([result()])
    assert rec["schema"] == SCHEMA and rec["version"] == SCHEMA_VERSION
    assert validate_record(rec, "x") is rec
    for field, value, message in (("version", SCHEMA_VERSION + 1, "upgrade bigperf"), ("version", "1", "positive"),
                                  ("schema", "other", "not a bigperf"), ("results", {}, "must be list")):
        with pytest.raises(BenchFileError, match=message):
            validate_record({**rec, field: value}, "x")
    bad = record([result(role="winner")])
    with pytest.raises(BenchFileError, match="role must be one of"):
        validate_record(bad, "x")
    for field in ("median_s", "speedup_q1", "rounds", "key"):
        broken = record([result()])
        del broken["results"][1][field]
        with pytest.raises(BenchFileError, match=f"results\\[1\\]: missing field '{field}'"):
            validate_record(broken, "x")
