"""The TensorRT calls: build_engine and TRTModule, kept thin.

Decisions (flags, profiles, file names, version checks, argument binding) are made in
trt_plan.py and profiles.py, which run without TensorRT; this module only hands them to
the TensorRT Python API (8.6+, written for 10.x). Without TensorRT importable, both raise
TensorRTUnavailable saying what to install.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bigperf.deploy.trt_plan import (
    BuildPlan,
    BuildProgress,
    OnnxParseError,
    bind_inputs,
    check_binding,
    check_engine_versions,
    choose_profile,
    format_parse_errors,
    make_build_plan,
    require_tensorrt,
    torch_dtype,
    versions_record,
    write_atomic,
    write_versions,
)
from bigperf.deploy.profiles import Profile


class EngineBuildError(RuntimeError):
    """TensorRT could not build an engine (its log above says why)."""


def _device_info() -> tuple[str | None, str | None]:
    if not torch.cuda.is_available():
        return None, None
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def _parse(trt, network, logger, onnx_path: Path):
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return parser
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        errors.append({"node": e.node(), "node_name": getattr(e, "node_name", lambda: "")(),
                       "operator": getattr(e, "node_operator", lambda: "")(), "desc": e.desc(), "code": str(e.code())})
    raise OnnxParseError(format_parse_errors(onnx_path, errors))


def _progress_monitor(trt, display: BuildProgress):
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            display.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return display.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            display.phase_finish(phase_name)

    return Monitor()


def build_engine(onnx_path, engine_path, *, precision=("fp16",), sparse_weights: bool = False, profiles=None,
                 workspace_gb: float | None = None, timing_cache=None, min_shapes=None, opt_shapes=None,
                 max_shapes=None, console=None) -> BuildPlan:
    """Build a TensorRT engine from an ONNX file; returns the BuildPlan that was built.

    precision: names from ("fp32", "tf32", "fp16", "bf16", "int8", "fp8"), each enabling
    that precision's kernels. sparse_weights: let TensorRT use 2:4 sparse tactics where
    the weights are 2:4. profiles: a list of Profile or {input: (min, opt, max)}; without
    them one is derived (profiles.py). timing_cache: a file read if present and written
    after the build. The engine is written atomically with `<engine>.json` (versions,
    flags, profiles) next to it.
    """
    trt = require_tensorrt("bigperf.deploy.build_engine")
    plan = make_build_plan(onnx_path, engine_path, precision=precision, sparse_weights=sparse_weights,
                           profiles=profiles, workspace_gb=workspace_gb, timing_cache=timing_cache,
                           min_shapes=min_shapes, opt_shapes=opt_shapes, max_shapes=max_shapes)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; 8.x must be asked for it.
    explicit = 0
    if int(trt.__version__.split(".")[0]) < 10:
        explicit = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(explicit)
    parser = _parse(trt, network, logger, plan.onnx_path)
    config = builder.create_builder_config()
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for profile in plan.profiles:
        trt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.shapes.items():
            trt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(trt_profile)
    if plan.timing_cache is not None:
        cached = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(cached), False)
    display = BuildProgress(console)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt, display)
    with display:
        serialized = builder.build_serialized_network(network, config)
    del parser  # only now: the network reads weights that the parser owns
    if serialized is None:
        raise EngineBuildError(f"bigperf.deploy.build_engine: TensorRT could not build {plan.onnx_path} with "
                               f"flags {list(plan.flags)}; its log above says why")
    write_atomic(plan.engine_path, bytes(serialized))
    if plan.timing_cache is not None:
        write_atomic(plan.timing_cache, bytes(config.get_timing_cache().serialize()))
    device, capability = _device_info()
    write_versions(plan, versions_record(plan, tensorrt_version=trt.__version__, device_name=device,
                                         compute_capability=capability))
    return plan


class TRTModule(torch.nn.Module):
    """Runs a TensorRT engine on torch CUDA tensors: module(x) or module(input_name=x).

    Inputs bind to engine tensors by name (positional arguments in the engine's input
    order), shapes are set per call, outputs are allocated as torch tensors and returned
    (one tensor, or a tuple in the engine's output order). Work goes on torch's current
    CUDA stream.
    """

    def __init__(self, engine_path):
        super().__init__()
        trt = require_tensorrt("bigperf.deploy.TRTModule")
        self._trt = trt
        _, capability = _device_info()
        record = check_engine_versions(engine_path, tensorrt_version=trt.__version__, compute_capability=capability)
        self.profiles = [Profile.from_json(p) for p in (record or {}).get("profiles", [])]
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"bigperf.deploy.TRTModule: TensorRT {trt.__version__} could not load {engine_path} "
                               f"(no versions record beside it to say what built it); if another TensorRT version "
                               f"or GPU built it, rebuild it here with bigperf trt build")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n).name) for n in names}

    def forward(self, *args, **kwargs):
        bound = bind_inputs(self.input_names, args, kwargs)
        for name, tensor in bound.items():
            check_binding(name, tensor, self.dtypes[name], self.profiles)
        device = next(iter(bound.values())).device
        stream = torch.cuda.current_stream(device)
        profile = choose_profile(self.profiles, {n: tuple(t.shape) for n, t in bound.items()})
        if len(self.profiles) > 1 and profile != self.context.active_optimization_profile:
            self.context.set_optimization_profile_async(profile, stream.cuda_stream)
        for name, tensor in bound.items():
            tensor = tensor.contiguous()
            bound[name] = tensor  # keep the contiguous copy alive until the engine has run
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"bigperf.deploy.TRTModule: TensorRT refused shape {list(tensor.shape)} for input "
                                 f"{name!r} (outside the engine's profiles?)")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = []
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device=device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("bigperf.deploy.TRTModule: TensorRT failed to enqueue the engine (see its log)")
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
