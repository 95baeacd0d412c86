import gc

import torch

from bigperf.ops.tensor_keys import ConvertedOnce, OncePerData, data_key


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


def test_converted_once_follows_the_tensors_data_and_keeps_no_history():
    convert = ConvertedOnce()
    bias = torch.randn(8, requires_grad=True)
    first = convert(bias, torch.bfloat16)
    assert first.dtype == torch.bfloat16 and torch.equal(first, bias.detach().to(torch.bfloat16))
    assert convert(bias, torch.bfloat16) is first, "the same data is converted once"
    assert first.grad_fn is None and not first.requires_grad and not first.is_inference()
    assert convert(bias, torch.float32) is bias, "a tensor already in the dtype is itself"
    with torch.no_grad():
        bias.add_(1)  # an in-place write: converted again
    second = convert(bias, torch.bfloat16)
    assert second is not first and torch.equal(second, bias.detach().to(torch.bfloat16))
    bias.data = torch.full((8,), 3.0)  # a new address at the same version
    assert torch.equal(convert(bias, torch.bfloat16), torch.full((8,), 3.0, dtype=torch.bfloat16))
    assert convert(bias, torch.float16).dtype == torch.float16
    with torch.inference_mode():
        frozen = torch.ones(8)
        assert torch.equal(convert(frozen, torch.bfloat16), torch.ones(8, dtype=torch.bfloat16))
        frozen.mul_(2)  # no version to see this by: inference tensors are converted every call
        assert torch.equal(convert(frozen, torch.bfloat16), torch.full((8,), 2.0, dtype=torch.bfloat16))
    held = len(convert)
    del bias
    gc.collect()
    assert len(convert) == held - 1, "an entry goes with its tensor"
