import torch

from bigperf.ops.tensor_keys import OncePerData, data_key


def test_data_key_is_none_for_inference_tensors_and_follows_versions_otherwise():
    t = torch.zeros(4)
    key = data_key((t,))
    assert key is not None and data_key((t,)) == key
    t.add_(1)
    assert data_key((t,)) != key
    with torch.inference_mode():
        frozen = torch.zeros(4)
    assert data_key((t, frozen)) is None


def test_once_per_data_builds_once_per_version_and_every_time_without_one():
    cache = OncePerData()
    builds = []
    t = torch.zeros(4)
    for _ in range(3):
        assert cache.get((t,), lambda: builds.append(1) or "v") == "v"
    assert len(builds) == 1
    t[0] = 1  # an in-place write through torch bumps the version: built again
    cache.get((t,), lambda: builds.append(1) or "v")
    assert len(builds) == 2
    with torch.inference_mode():
        frozen = torch.zeros(4)
        for _ in range(2):
            cache.get((frozen,), lambda: builds.append(1) or "v")
    assert len(builds) == 4
