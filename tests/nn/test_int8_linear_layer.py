import copy
import dataclasses
import io

import pytest
import torch
from torch import nn

import bigperf
from bigperf.accuracy import sqnr_db
from bigperf.formats import w8a16_cpu
from bigperf.nn import Int8Linear
from bigperf.quant import dequantize_weight
from tests.helpers import fused_linear_fp64, rel_error


def gaussian_linear(k=1024, n=256, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(k, n)
    with torch.no_grad():
        linear.weight.normal_(0, k ** -0.5)
    return linear


def layer_sqnr(linear, layer, m=16):
    x = torch.randn(m, linear.in_features, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return sqnr_db(linear(x), layer(x))


def test_sqnr_floors_on_gaussian_weights():
    linear = gaussian_linear()
    per_channel = layer_sqnr(linear, Int8Linear.from_linear(linear))
    per_group = layer_sqnr(linear, Int8Linear.from_linear(linear, group_size=128))
    dynamic = layer_sqnr(linear, Int8Linear.from_linear(linear, weight_only=False))
    assert per_channel >= 38
    assert per_group > per_channel
    assert dynamic >= 30


def test_sqnr_of_7_bit_activations():
    """Measured on this layer (K = 1024, N = 256, 3 seeds, M = 16 and 64): 8-bit 39.0-39.3
    dB, 7-bit 35.0-35.1 dB (x's share of the error grows 4x, the weight's stays)."""
    linear = gaussian_linear()
    a8 = layer_sqnr(linear, Int8Linear.from_linear(linear, weight_only=False))
    a7 = layer_sqnr(linear, Int8Linear.from_linear(linear, weight_only=False, act_bits=7))
    assert a7 >= 32
    assert a8 > a7 + 2


@pytest.mark.parametrize("kwargs", [{}, {"group_size": 64}, {"group_size": 32, "symmetric": False},
                                    {"weight_only": False}, {"weight_only": False, "act_bits": 7}])
def test_state_dict_round_trip(kwargs):
    linear = gaussian_linear(256, 64)
    layer = Int8Linear.from_linear(linear, activation="gelu", **kwargs)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    fresh = Int8Linear(256, 64, activation="gelu", **kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(3, 256)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


def test_state_dict_from_another_format_or_config_is_refused():
    layer = Int8Linear.from_linear(gaussian_linear(256, 64))
    state = layer.state_dict()
    state["_extra_state"] = dict(state["_extra_state"], version=99)
    with pytest.raises(ValueError, match="packed format"):
        Int8Linear(256, 64).load_state_dict(state)
    with pytest.raises(ValueError, match="group_size"):
        Int8Linear(256, 64, group_size=128).load_state_dict(layer.state_dict())
    w8a8 = Int8Linear.from_linear(gaussian_linear(256, 64), weight_only=False)
    with pytest.raises(ValueError, match="act_bits=8.*act_bits=7"):
        Int8Linear(256, 64, weight_only=False, act_bits=7).load_state_dict(w8a8.state_dict())
    # State saved before act_bits was recorded is 8-bit.
    old = w8a8.state_dict()
    old["_extra_state"] = {key: v for key, v in old["_extra_state"].items() if key != "act_bits"}
    Int8Linear(256, 64, weight_only=False).load_state_dict(old)
    with pytest.raises(ValueError, match="act_bits"):
        Int8Linear(256, 64, weight_only=False, act_bits=7).load_state_dict(old)


def test_act_bits_is_shown_and_used():
    linear = gaussian_linear(128, 16)
    layer = Int8Linear.from_linear(linear, weight_only=False, act_bits=7)
    assert layer.act_bits == 7 and "act_bits=7" in repr(layer)
    assert "act_bits" not in repr(Int8Linear.from_linear(linear))  # W8A16: float activations
    x = torch.randn(10, 128)
    from bigperf.ops.int8_linear import dynamic_reference
    with torch.no_grad():
        qweight, scale, _ = layer.int8_weight()
        assert torch.equal(layer(x), dynamic_reference(x, qweight, scale, layer.bias, "none", 7))


def test_memory_is_about_a_quarter():
    model = nn.Sequential(*(gaussian_linear(512, 512, seed=i) for i in range(4)))
    fp32_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bigperf.swap(model, bigperf.Int8WeightOnly())
    int8_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    assert int8_bytes <= 0.27 * fp32_bytes


def test_swap_configs_and_activation_fusion():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.SiLU(), nn.Linear(256, 64))
    x = torch.randn(4, 128)
    with torch.no_grad():
        expected = model(x)
    for config in (bigperf.Int8WeightOnly(group_size=128), bigperf.Int8Dynamic(), bigperf.Int8Dynamic(act_bits=7),
                   "int8-dynamic-7bit"):
        swapped = copy.deepcopy(model)
        report = bigperf.swap(swapped, config)
        assert [c.new for c in report.changes] == ["Int8Linear", "Int8Linear"]
        assert swapped[0].activation == "silu" and isinstance(swapped[1], nn.Identity)
        with torch.no_grad():
            assert sqnr_db(expected, swapped(x)) > 30


@pytest.mark.parametrize("call,error,word", [
    (lambda: Int8Linear.from_linear(nn.Conv1d(2, 2, 1)), TypeError, "'linear'"),
    (lambda: Int8Linear(100, 4, group_size=64), ValueError, "group_size"),
    (lambda: Int8Linear(128, 4, weight_only=False, group_size=64), ValueError, "W8A8"),
    (lambda: Int8Linear.from_linear(nn.Linear(100, 4), group_size=128), ValueError, "does not divide"),
    (lambda: Int8Linear(128, 4, weight_only=False, act_bits=6), ValueError, "'act_bits' must be 7 or 8"),
    (lambda: Int8Linear(128, 4, act_bits=7), ValueError, "'act_bits' applies to W8A8"),
    (lambda: bigperf.Int8Dynamic(act_bits=4), ValueError, "bigperf.Int8Dynamic: argument 'act_bits'"),
])
def test_bad_construction_is_refused(call, error, word):
    with pytest.raises(error, match=word):
        call()


@pytest.mark.parametrize("config", [bigperf.Int8WeightOnly(group_size=64), bigperf.Int8Dynamic(),
                                    bigperf.Int8Dynamic(act_bits=7)])
def test_swapped_int8_model_compiles_and_exports(config):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    bigperf.swap(model, config)
    x = torch.randn(4, 64)
    with torch.no_grad():
        eager = model(x)
        assert torch.allclose(torch.compile(model, fullgraph=True)(x), eager, rtol=1e-5, atol=1e-5)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), eager, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- kernel layouts

@pytest.mark.parametrize("group_size, symmetric", [(None, True), (32, False), (128, True)])
def test_w8a16_kernel_layout_is_exact_and_holds_one_copy(group_size, symmetric):
    """The GPU form (cuda_layouts' W8A16 order, chosen by hand here on the CPU) gives the
    same outputs and state dict as the row-major form, without keeping the row-major copy."""
    layer = Int8Linear.from_linear(gaussian_linear(k=256, n=96), group_size=group_size, symmetric=symmetric,
                                   activation="gelu")
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(3))
    # On the CPU the w8a16-cuda form runs on PyTorch's paths only; the row-major form would
    # be timed against our kernel, whose sums round differently: compare path with path
    # (torch:fp32: torch:bf16 also serves int8 weights and may be timed faster for one form).
    with bigperf.use_backend("torch:fp32"):
        expected, saved = layer(x), copy.deepcopy(layer.state_dict())
        rowmajor_bytes = sum(b.numel() * b.element_size() for b in layer.buffers())
        layer.use_kernel_layout("w8a16-cuda")
        assert layer.kernel_layout == "w8a16-cuda" and layer.qweight is None
        assert {name for name, _ in layer.named_buffers()} <= {"w8a16_weight", "w8a16_scale", "w8a16_zero"}
        zero_growth = 0 if symmetric else layer.w8a16_zero.numel() * 3  # fp32 zero points instead of int8
        assert sum(b.numel() * b.element_size() for b in layer.buffers()) <= rowmajor_bytes + zero_growth
        assert torch.equal(layer(x), expected)
        state = layer.state_dict()
        assert state.keys() == saved.keys()
        assert all(torch.equal(state[k], saved[k]) for k in saved if isinstance(saved[k], torch.Tensor))
        assert "held as w8a16-cuda" in repr(layer)
        layer.use_kernel_layout("rowmajor")
        assert layer.kernel_layout == "rowmajor" and torch.equal(layer(x), expected)


def test_state_dict_loads_into_a_layer_held_in_the_kernel_layout():
    source = Int8Linear.from_linear(gaussian_linear(k=128, n=64, seed=4))
    target = Int8Linear(128, 64).use_kernel_layout("w8a16-cuda")
    target.load_state_dict(source.state_dict())
    assert target.kernel_layout == "w8a16-cuda", "a layout chosen by hand must survive a load"
    x = torch.randn(2, 128)
    with bigperf.use_backend("torch:fp32"):  # the same path for both forms (see above)
        assert torch.equal(target(x), source(x))
    buffer = io.BytesIO()
    torch.save(target.state_dict(), buffer)
    buffer.seek(0)
    again = Int8Linear(128, 64)
    again.load_state_dict(torch.load(buffer))
    assert torch.equal(again(x), source(x))


def test_moving_a_layer_settles_its_layout_for_the_device():
    layer = Int8Linear.from_linear(gaussian_linear(k=64, n=32)).use_kernel_layout("w8a16-cuda")
    layer.to("cpu")  # the AVX2 kernels read their panels (w8a16-cpu), the others row-major
    if w8a16_cpu.why_not_hold(torch.device("cpu"), True) is None:
        assert layer.kernel_layout == "w8a16-cpu" and layer.qweight is None
    else:
        assert layer.kernel_layout == "rowmajor" and layer.qweight is not None
    dynamic = Int8Linear.from_linear(gaussian_linear(k=64, n=32), weight_only=False).use_kernel_layout("rowmajor")
    assert dynamic.to("cpu").kernel_layout in ("w8a8-cpu", "rowmajor"), "a W8A8 layer never holds W8A16 panels"


def test_kernel_layout_refusals():
    with pytest.raises(ValueError, match=r"use_kernel_layout: argument 'layout'"):
        Int8Linear(64, 32).use_kernel_layout("column-major")
    with pytest.raises(ValueError, match=r"W8A8"):
        Int8Linear(64, 32, weight_only=False).use_kernel_layout("w8a16-cuda")


def test_layout_op_refuses_inconsistent_layout_tensors():
    from bigperf.ops.int8_layout_linear import int8_weight_linear_w8a16

    layer = Int8Linear(64, 32).use_kernel_layout("w8a16-cuda")
    layout = layer._w8a16_layout()
    with pytest.raises(ValueError, match=r"argument 'weight' must have shape"):
        int8_weight_linear_w8a16(torch.randn(2, 64), dataclasses.replace(layout, weight=layout.weight[:, :-32]))
    with pytest.raises(ValueError, match=r"argument 'x' has 63 features"):
        int8_weight_linear_w8a16(torch.randn(2, 63), layout)


@pytest.mark.parametrize("weight_only", [True, False])
@pytest.mark.parametrize("target", [torch.float16, torch.bfloat16])
def test_half_keeps_the_scale_fp32(weight_only, target):
    """model.half() converts the bias and leaves the int8 codes, and must leave the fp32
    scales too: the ops take fp32 scales (they refused the call before)."""
    linear = gaussian_linear(k=128, n=64, seed=3)
    layer = Int8Linear.from_linear(linear, weight_only=weight_only)
    x = torch.randn(4, 128)
    want = layer(x)
    scale_before = layer.int8_weight()[1].clone()
    layer.to(target)
    qweight, scale, _ = layer.int8_weight()  # whatever layout the layer holds (w8a8-cpu on AVX2)
    assert qweight.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(scale, scale_before)
    got = layer(x.to(target))
    assert got.dtype == target
    assert torch.allclose(got.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


# ----------------------------------------------------------------------------- the w8a8-cpu layout

def _avx2_runnable() -> bool:
    from bigperf import _ext
    return _ext.cpu_module() is not None and "avx2" in _ext.runnable_cpu_isas()


needs_avx2 = pytest.mark.skipif(not _avx2_runnable(), reason="the w8a8-cpu layout is the AVX2 kernel's")


@needs_avx2
@pytest.mark.parametrize("act_bits", [8, 7])
def test_w8a8_layer_holds_the_cpu_panels_where_the_avx2_path_runs(act_bits):
    """On the AVX2 path a W8A8 layer holds only the kernel's panels: same outputs (exact) and
    the same state dict as row-major, about the same bytes, and back to row-major exactly."""
    linear = gaussian_linear(k=200, n=70, seed=6)
    with bigperf.use_cpu_isa("avx2"):
        layer = Int8Linear.from_linear(linear, weight_only=False, act_bits=act_bits, activation="silu")
        assert layer.kernel_layout == "w8a8-cpu" and layer.qweight is None
        assert {name for name, _ in layer.named_buffers()} == {"w8a8_weight", "w8a8_colsum", "w8a8_scale"}
        assert "held as w8a8-cpu" in repr(layer) and layer.backend() == "cpu"
        held_bytes = sum(b.numel() * b.element_size() for b in layer.buffers())
        assert held_bytes <= 80 * 224 + 80 * 4 + 70 * 4  # panels padded to 16 x 32, column sums, scales
        x = torch.randn(3, 9, 200, generator=torch.Generator().manual_seed(2))
        qweight, scale, _ = layer.int8_weight()
        want = dynamic_reference_of(x, qweight, scale, layer.bias, "silu", act_bits)
        got = layer(x)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # exact sums; silu's last bits
        state = layer.state_dict()
        assert set(state) == {"qweight", "scale", "bias", "_extra_state"}
        rowmajor = Int8Linear.from_linear(linear, weight_only=False, act_bits=act_bits, activation="silu")
        rowmajor.use_kernel_layout("rowmajor")
        assert all(torch.equal(state[k], v) for k, v in rowmajor.state_dict().items() if isinstance(v, torch.Tensor))
        layer.use_kernel_layout("rowmajor")
        assert layer.kernel_layout == "rowmajor" and torch.equal(layer(x), rowmajor(x))
    with bigperf.use_cpu_isa("scalar"):  # elsewhere the layer keeps row-major
        assert Int8Linear.from_linear(linear, weight_only=False).kernel_layout == "rowmajor"


def dynamic_reference_of(x, qweight, scale, bias, activation, act_bits):
    from bigperf.ops.int8_linear import dynamic_reference
    return dynamic_reference(x, qweight, scale, bias, activation, act_bits)


@needs_avx2
def test_w8a8_panels_serve_every_cpu_path_and_row_wise_absmax():
    """Forced to another ISA path the layout's kernel refuses and a torch path serves the
    unpacked weight; act_absmax reaches the kernel (the row-wise tensor-parallel case)."""
    layer = Int8Linear.from_linear(gaussian_linear(k=96, n=40, seed=8), weight_only=False)
    layer.use_kernel_layout("w8a8-cpu")
    x = torch.randn(5, 96)
    qweight, scale, _ = layer.int8_weight()
    absmax = 2 * x.abs().amax(-1)
    from bigperf.ops.int8_linear import dynamic_reference
    assert torch.equal(layer(x, act_absmax=absmax), dynamic_reference(x, qweight, scale, layer.bias, "none", 8, absmax))
    with bigperf.use_cpu_isa("scalar"):
        assert layer.backend() == "torch"
        torch.testing.assert_close(layer(x), dynamic_reference_of(x, qweight, scale, layer.bias, "none", 8),
                                   rtol=1e-5, atol=1e-5)


@needs_avx2
def test_w8a8_panels_survive_save_load_and_moves():
    source = Int8Linear.from_linear(gaussian_linear(k=64, n=48, seed=9), weight_only=False, act_bits=7)
    source.use_kernel_layout("w8a8-cpu")
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    with bigperf.use_cpu_isa("avx2"):
        target = Int8Linear(64, 48, weight_only=False, act_bits=7)
        target.load_state_dict(torch.load(buffer))
        assert target.kernel_layout == "w8a8-cpu"
        x = torch.randn(4, 64)
        assert torch.equal(target(x), source(x))
        target.to(torch.bfloat16)  # the codes and fp32 scales stay; the bias converts
        assert target.w8a8_scale.dtype == torch.float32 and target.kernel_layout == "w8a8-cpu"
        assert target(x.bfloat16()).dtype == torch.bfloat16


def test_w8a8_layout_refusals():
    with pytest.raises(ValueError, match=r"layout 'w8a8-cpu' holds W8A8 weights"):
        Int8Linear(64, 32).use_kernel_layout("w8a8-cpu")
    from bigperf.formats.w8a8_cpu import pack_w8a8_cpu
    from bigperf.ops.int8_dynamic_layout_linear import int8_dynamic_linear_w8a8_cpu

    layer = Int8Linear(64, 32, weight_only=False)
    qweight, scale, _ = layer.int8_weight()
    layout = pack_w8a8_cpu(qweight, scale)
    op = "bigperf.int8_dynamic_linear_w8a8_cpu"
    with pytest.raises(ValueError, match=rf"{op}: argument 'weight' must have shape"):
        int8_dynamic_linear_w8a8_cpu(torch.randn(2, 64), dataclasses.replace(layout, weight=layout.weight[:, :-32]))
    with pytest.raises(ValueError, match=rf"{op}: argument 'colsum' must have shape"):
        int8_dynamic_linear_w8a8_cpu(torch.randn(2, 64), dataclasses.replace(layout, colsum=layout.colsum[:-1]))
    with pytest.raises(ValueError, match=rf"{op}: argument 'x' has 63 features"):
        int8_dynamic_linear_w8a8_cpu(torch.randn(2, 63), layout)
    with pytest.raises(ValueError, match=rf"{op}: argument 'act_absmax'"):
        int8_dynamic_linear_w8a8_cpu(torch.randn(2, 64), layout, act_absmax=torch.ones(3))
    with pytest.raises(ValueError, match=r"pack_w8a8_cpu: argument 'scale' must be per channel"):
        pack_w8a8_cpu(qweight, torch.ones(32, 2))


@pytest.mark.parametrize("kwargs", [dict(weight_only=True), dict(weight_only=True, group_size=32, symmetric=False),
                                    dict(weight_only=False)])
def test_layer_built_under_inference_mode_checks_its_scales_once(kwargs, monkeypatch):
    """A model swapped, loaded and cast under torch.inference_mode() must not re-check its
    scales on every call: its buffers stay ordinary tensors, with the version counter the
    ops' check cache keys on (an inference tensor has none)."""
    from bigperf.ops import validation

    checked = []
    cache = validation._FINITE_CHECKED
    monkeypatch.setattr(cache, "build", lambda t, key, _build=cache.build: checked.append((t,)) or _build(t, key))
    with torch.inference_mode():
        layer = Int8Linear.from_linear(nn.Linear(64, 32), **kwargs)
        fresh = Int8Linear(64, 32, **kwargs)
        fresh.load_state_dict(layer.state_dict())
        cast = Int8Linear.from_linear(nn.Linear(64, 32), **kwargs).to(torch.bfloat16)
        x = torch.randn(2, 64)
        for model, inputs in ((layer, x), (fresh, x), (cast, x.bfloat16())):
            assert not any(t.is_inference() for t in list(model.buffers()) + list(model.parameters()))
            outs = [model(inputs) for _ in range(3)]
            assert all(torch.equal(o, outs[0]) for o in outs)
        assert torch.equal(layer(x), fresh(x))
    held = {id(t) for model in (layer, fresh, cast) for t in model.buffers()}
    mine = [tensors for tensors in checked if id(tensors[0]) in held]
    assert len(mine) == 3, f"one scale check per layer expected, got {len(mine)}"


def test_float_copy_made_under_inference_mode_is_an_ordinary_tensor():
    with torch.inference_mode():
        layer = Int8Linear.from_linear(nn.Linear(64, 32)).keep_float_copy()
        assert layer.float_copy is not None and not layer.float_copy.is_inference()
        x = torch.randn(3, 64)
        with bigperf.use_backend("torch:copy"):
            assert torch.allclose(layer(x), x @ layer.float_copy.t() + layer.bias, atol=1e-5)


# ----------------------------------------------------------------------------- the w8a16-cpu layout

@needs_avx2
def test_w8a16_layer_holds_the_cpu_panels_where_the_avx2_path_runs():
    """On the AVX2 path a W8A16 layer (per channel or per group, symmetric or not) holds only
    the kernels' panels: outputs within float rounding of the float64 oracle, equal to the
    row-major layer's on the same path, the same state dict, about the same bytes, and back
    to row-major exactly."""
    linear = gaussian_linear(k=256, n=70, seed=6)
    for kwargs, zero_bytes in (({}, 0), ({"group_size": 64, "symmetric": False}, 4 * 80)):
        with bigperf.use_cpu_isa("avx2"):
            layer = Int8Linear.from_linear(linear, activation="silu", **kwargs)
            assert layer.kernel_layout == "w8a16-cpu" and layer.qweight is None
            buffers = {name for name, _ in layer.named_buffers()}
            assert buffers == {"w8a16_cpu_weight", "w8a16_cpu_scale"} | ({"w8a16_cpu_zero"} if zero_bytes else set())
            assert "held as w8a16-cpu" in repr(layer) and layer.backend() == "cpu"
            groups = 256 // kwargs.get("group_size", 256)
            held = sum(b.numel() * b.element_size() for b in layer.buffers())
            assert held <= 80 * 256 + groups * 80 * 4 + zero_bytes + 70 * 4  # panels of 16, group-major scales
            rowmajor = Int8Linear.from_linear(linear, activation="silu", **kwargs).use_kernel_layout("rowmajor")
            for shape in ((1, 256), (3, 9, 256), (40, 256)):  # the dot form, and the GEMM's rows
                x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
                qweight, scale, zero_point = layer.int8_weight()
                want = fused_linear_fp64(x, dequantize_weight(qweight, scale, zero_point).double(), layer.bias, None,
                                         "silu")
                assert rel_error(layer(x), want) < 1e-6
                with bigperf.use_backend("torch:fp32"):  # the same path for both forms: equal
                    assert torch.equal(layer(x), rowmajor(x))
            state = layer.state_dict()
            assert set(state) == set(rowmajor.state_dict())
            assert all(torch.equal(state[k], v) for k, v in rowmajor.state_dict().items()
                       if isinstance(v, torch.Tensor))
            layer.use_kernel_layout("rowmajor")
            assert layer.kernel_layout == "rowmajor" and torch.equal(layer.qweight, rowmajor.qweight)
    with bigperf.use_cpu_isa("scalar"):  # elsewhere the layer keeps row-major
        assert Int8Linear.from_linear(linear).kernel_layout == "rowmajor"


@needs_avx2
def test_w8a16_panels_serve_every_cpu_path_and_survive_save_load_and_moves():
    source = Int8Linear.from_linear(gaussian_linear(k=64, n=48, seed=9)).use_kernel_layout("w8a16-cpu")
    x = torch.randn(5, 64)
    qweight, scale, _ = source.int8_weight()
    want = fused_linear_fp64(x, dequantize_weight(qweight, scale).double(), source.bias, None, "none")
    with bigperf.use_cpu_isa("scalar"):  # the layout's kernels refuse; a torch path serves the unpacked weight
        assert source.backend() == "torch"
        assert rel_error(source(x), want) < 1e-6
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    with bigperf.use_cpu_isa("avx2"):
        target = Int8Linear(64, 48)
        target.load_state_dict(torch.load(buffer))
        assert target.kernel_layout == "w8a16-cpu" and torch.equal(target.w8a16_cpu_weight, source.w8a16_cpu_weight)
        assert rel_error(target(x), want) < 1e-6
        target.to(torch.bfloat16)  # the codes and fp32 scales stay; the bias converts
        assert target.w8a16_cpu_scale.dtype == torch.float32 and target.kernel_layout == "w8a16-cpu"
        assert rel_error(target(x.bfloat16()), want) < 1e-2


def test_w8a16_cpu_layout_refusals():
    with pytest.raises(ValueError, match=r"layout 'w8a16-cpu' holds W8A16 weights"):
        Int8Linear(64, 32, weight_only=False).use_kernel_layout("w8a16-cpu")
    from bigperf.formats.w8a16_cpu import pack_w8a16_cpu
    from bigperf.ops.int8_weight_cpu_layout_linear import int8_weight_linear_w8a16_cpu

    qweight, scale, _ = Int8Linear(64, 32).int8_weight()
    layout = pack_w8a16_cpu(qweight, scale)
    op = "bigperf.int8_weight_linear_w8a16_cpu"
    with pytest.raises(ValueError, match=rf"{op}: argument 'weight' must have shape"):
        int8_weight_linear_w8a16_cpu(torch.randn(2, 64), dataclasses.replace(layout, weight=layout.weight[:, :-16]))
    with pytest.raises(ValueError, match=rf"{op}: argument 'x' has 63 features"):
        int8_weight_linear_w8a16_cpu(torch.randn(2, 63), layout)
    with pytest.raises(ValueError, match=rf"{op}: argument 'scale' holds NaN"):
        int8_weight_linear_w8a16_cpu(torch.randn(2, 64), dataclasses.replace(layout, scale=torch.full((1, 32), float("nan"))))
    with pytest.raises(ValueError, match=rf"{op}: argument 'scale' must have shape \(2, 32\)"):
        int8_weight_linear_w8a16_cpu(torch.randn(2, 64), dataclasses.replace(layout, group_size=32))
    with pytest.raises(ValueError, match=rf"{op}: arguments 'n', 'k', 'group_size'"):
        int8_weight_linear_w8a16_cpu(torch.randn(2, 64), dataclasses.replace(layout, group_size=48))
    with pytest.raises(ValueError, match=r"pack_w8a16_cpu: argument 'scale' must be \[32, G\]"):
        pack_w8a16_cpu(qweight, torch.ones(32, 3))
    with pytest.raises(ValueError, match=r"pack_w8a16_cpu: argument 'zero_point' must have the shape"):
        pack_w8a16_cpu(qweight, torch.ones(32, 2), torch.zeros(32, 1, dtype=torch.int8))


@needs_avx2
def test_a_path_forced_by_an_isa_block_does_not_outlive_it():
    """Inside use_cpu_isa("scalar") the layout's AVX2 kernels refuse and a torch path serves;
    after the block the layer takes the path it took before (the selection memo is keyed by
    the forced ISA: it used to keep the torch path for that weight)."""
    from bigperf.ops.registry import record_paths

    layer = Int8Linear.from_linear(gaussian_linear(k=64, n=48, seed=12)).use_kernel_layout("w8a16-cpu")
    x = torch.randn(5, 64)
    with record_paths() as before:
        layer(x)
    with bigperf.use_cpu_isa("scalar"), record_paths() as inside:
        layer(x)
    with record_paths() as after:
        layer(x)
    assert inside[0][1].startswith("torch") and after == before
