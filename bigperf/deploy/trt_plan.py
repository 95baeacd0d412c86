"""Everything around a TensorRT build that is plain Python: what to build (a BuildPlan, as
data), where it goes (atomic writes, the versions record next to the engine), whether an
engine may be loaded here, how call arguments bind to engine tensors, and the progress
display. bigperf/deploy/tensorrt.py only turns these into TensorRT API calls, so all of
this is tested on machines without TensorRT.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bigperf.deploy.profiles import (
    Profile,
    check_profile,
    derive_profile,
    dims_from_metadata,
    shape_in_profile,
)

INSTALL_HINT = ("pip install 'bigperf[tensorrt]' on a machine that can reach NVIDIA's package index "
                "(pypi.nvidia.com) and has an NVIDIA GPU and driver")
# Builder flags per precision name; fp32 needs none (TensorRT always has fp32 kernels).
PRECISION_FLAGS = {"fp32": None, "tf32": "TF32", "fp16": "FP16", "bf16": "BF16", "int8": "INT8", "fp8": "FP8"}
# TensorRT DataType names → torch dtypes, for binding engine tensors to torch tensors.
TRT_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
              "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
              "FP8": torch.float8_e4m3fn}


class TensorRTUnavailable(ImportError):
    """TensorRT's Python package is not importable here."""


class EngineVersionError(RuntimeError):
    """The engine was built for another TensorRT version or GPU than the one here."""


def require_tensorrt(function: str):
    """The tensorrt module, or TensorRTUnavailable saying what to install."""
    try:
        import tensorrt
    except ImportError as error:
        raise TensorRTUnavailable(f"{function} needs TensorRT, which is not importable here ({error}). "
                                  f"Install it with: {INSTALL_HINT}. Exporting and linting ONNX files "
                                  f"(bigperf export onnx, bigperf trt lint) work without it.") from None
    return tensorrt


# ----------------------------------------------------------------------------- the plan

@dataclass
class BuildPlan:
    """What build_engine asks TensorRT for, decided before TensorRT is touched."""

    onnx_path: Path
    engine_path: Path
    precision: tuple[str, ...]
    flags: tuple[str, ...]  # BuilderFlag names
    profiles: list[Profile] = field(default_factory=list)
    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    notes: list[str] = field(default_factory=list)  # advice worth printing before a long build

    @property
    def versions_path(self) -> Path:
        return versions_path(self.engine_path)

    def to_json(self) -> dict:
        return {"onnx": str(self.onnx_path), "precision": list(self.precision), "flags": list(self.flags),
                "profiles": [p.to_json() for p in self.profiles], "workspace_bytes": self.workspace_bytes,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None}


def versions_path(engine_path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def precision_flags(precision) -> tuple[str, ...]:
    if isinstance(precision, str):
        precision = (precision,)
    unknown = [p for p in precision if p not in PRECISION_FLAGS]
    if unknown or not precision:
        raise ValueError(f"bigperf.deploy.build_engine: argument 'precision' must name some of "
                         f"{tuple(PRECISION_FLAGS)}, got {tuple(precision)!r}")
    return tuple(dict.fromkeys(PRECISION_FLAGS[p] for p in precision if PRECISION_FLAGS[p]))


def read_onnx_io(onnx_path) -> tuple[dict[str, list], dict[str, str], set[str]]:
    """(inputs {name: dims}, metadata_props, op types) of an ONNX file, without its weights."""
    import onnx

    from bigperf.deploy.onnx import graph_inputs

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and kin: not an ONNX file
        raise ValueError(f"{onnx_path}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    if not model.ir_version:  # what an empty file, or bytes that happen to parse, give
        raise ValueError(f"{onnx_path}: not an ONNX model (no IR version: empty, or another kind of file)")
    metadata = {p.key: p.value for p in model.metadata_props}
    ops = {n.op_type for n in model.graph.node}
    return graph_inputs(model), metadata, ops


def make_build_plan(onnx_path, engine_path, *, precision=("fp16",), sparse_weights: bool = False, profiles=None,
                    workspace_gb: float | None = None, timing_cache=None, min_shapes=None, opt_shapes=None,
                    max_shapes=None) -> BuildPlan:
    """Check the arguments and the ONNX file's inputs; derive profiles when none are given.

    profiles: a list of Profile (or of {name: (min, opt, max)} dicts). Without them, one
    profile is derived from the explicit min/opt/max shapes and the file's `bigperf.dims`
    metadata (see profiles.py); a file without dynamic inputs needs none.
    """
    where = "bigperf.deploy.build_engine"
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{where}: ONNX file {onnx_path} does not exist")
    flags = list(precision_flags(precision))
    if sparse_weights:
        flags.append("SPARSE_WEIGHTS")
    if workspace_gb is not None and (not isinstance(workspace_gb, (int, float)) or workspace_gb <= 0):
        raise ValueError(f"{where}: argument 'workspace_gb' must be a positive number, got {workspace_gb!r}")
    inputs, metadata, ops = read_onnx_io(onnx_path)
    if profiles:
        profiles = [p if isinstance(p, Profile) else Profile({k: tuple(map(tuple, v)) for k, v in p.items()})
                    for p in profiles]
        for profile in profiles:
            check_profile(profile, inputs)
    else:
        derived = derive_profile(inputs, dims_from_metadata(metadata), min_shapes=min_shapes,
                                 opt_shapes=opt_shapes, max_shapes=max_shapes)
        profiles = [derived] if derived is not None else []
    notes = []
    if "DequantizeLinear" in ops and not {"INT8", "FP8"} & set(flags):
        notes.append("the file holds Q/DQ (int8) nodes: add int8 to the precisions (--int8) so TensorRT may "
                     "run them with int8 kernels")
    if sparse_weights and not {"FP16", "BF16", "INT8", "FP8"} & set(flags):
        notes.append("sparse tactics exist for fp16/bf16/int8/fp8 only: --sparse has no effect in fp32")
    return BuildPlan(onnx_path, engine_path, tuple(precision) if not isinstance(precision, str) else (precision,),
                     tuple(flags), profiles, int(workspace_gb * 1024 ** 3) if workspace_gb else None,
                     Path(timing_cache) if timing_cache else None, notes)


# ----------------------------------------------------------------------------- files

def write_atomic(path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, then rename: readers never see half an engine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions_record(plan: BuildPlan, *, tensorrt_version: str, device_name: str | None,
                    compute_capability: str | None) -> dict:
    import bigperf

    return {"tensorrt": tensorrt_version, "bigperf": bigperf.__version__, "torch": torch.__version__,
            "device": device_name, "compute_capability": compute_capability,
            "onnx_sha256": file_sha256(plan.onnx_path), "built": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"), **plan.to_json()}


def write_versions(plan: BuildPlan, record: dict) -> Path:
    return write_atomic(plan.versions_path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def check_engine_versions(engine_path, *, tensorrt_version: str, compute_capability: str | None) -> dict | None:
    """The engine's versions record, after checking it matches this TensorRT and GPU.

    Returns None when the engine has no record (built elsewhere): TensorRT's own check at
    deserialisation then decides. Raises EngineVersionError with what to do otherwise.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise FileNotFoundError(f"bigperf.deploy.TRTModule: engine {engine_path} does not exist")
    record_path = versions_path(engine_path)
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise EngineVersionError(f"bigperf.deploy.TRTModule: cannot read {record_path}: {error}") from None
    rebuild = f"rebuild it here: bigperf trt build {record.get('onnx', 'MODEL.onnx')} -o {engine_path}"
    built_with = record.get("tensorrt")
    if built_with != tensorrt_version:
        raise EngineVersionError(
            f"bigperf.deploy.TRTModule: {engine_path} was built with TensorRT {built_with}, this is TensorRT "
            f"{tensorrt_version}. A TensorRT engine loads only in the TensorRT version that built it; {rebuild}")
    built_for = record.get("compute_capability")
    if built_for and compute_capability and built_for != compute_capability:
        raise EngineVersionError(
            f"bigperf.deploy.TRTModule: {engine_path} was built for a GPU of compute capability {built_for} "
            f"({record.get('device')}), this GPU is {compute_capability}. Engines hold kernels for one "
            f"architecture; {rebuild}")
    return record


# ----------------------------------------------------------------------------- running

def bind_inputs(input_names: list[str], args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """Call arguments → {engine input name: tensor}: positional in engine order, or by name."""
    where = "bigperf.deploy.TRTModule"
    if len(args) > len(input_names):
        raise TypeError(f"{where}: the engine takes {len(input_names)} inputs {input_names}, got {len(args)} "
                        f"positional arguments")
    bound = dict(zip(input_names, args))
    for name, value in kwargs.items():
        if name not in input_names:
            raise TypeError(f"{where}: the engine has no input {name!r} (inputs: {input_names})")
        if name in bound:
            raise TypeError(f"{where}: input {name!r} given both by position and by name")
        bound[name] = value
    missing = [n for n in input_names if n not in bound]
    if missing:
        raise TypeError(f"{where}: missing engine inputs {missing}")
    return bound


def check_binding(name: str, tensor, expected: torch.dtype, profiles: list[Profile]) -> None:
    where = "bigperf.deploy.TRTModule"
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{where}: input {name!r} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cuda":
        raise ValueError(f"{where}: input {name!r} is on {tensor.device}; TensorRT runs on CUDA tensors "
                         f"(move it with .cuda())")
    if tensor.dtype != expected:
        raise TypeError(f"{where}: input {name!r} must be {expected} (the engine's binding), got {tensor.dtype}")
    shaped = [p for p in profiles if name in p.shapes]
    if shaped and not any(shape_in_profile(p, name, tuple(tensor.shape)) for p in shaped):
        bounds = "; ".join(f"{list(p.shapes[name][0])}..{list(p.shapes[name][2])}" for p in shaped)
        raise ValueError(f"{where}: input {name!r} has shape {list(tensor.shape)}, outside the engine's "
                         f"optimisation profile(s) {bounds}; rebuild with a wider --min/--max")


def choose_profile(profiles: list[Profile], shapes: dict[str, tuple]) -> int:
    """Index of the first profile that holds every input shape (0 when there are none)."""
    for index, profile in enumerate(profiles):
        if all(name not in profile.shapes or shape_in_profile(profile, name, shape) for name, shape in shapes.items()):
            return index
    return 0


def torch_dtype(trt_dtype_name: str) -> torch.dtype:
    try:
        return TRT_DTYPES[trt_dtype_name]
    except KeyError:
        raise TypeError(f"bigperf.deploy.TRTModule: engine tensors of TensorRT type {trt_dtype_name} have no "
                        f"torch dtype here") from None


# ----------------------------------------------------------------------------- progress

class BuildProgress:
    """A rich progress display fed with TensorRT's IProgressMonitor callbacks."""

    def __init__(self, console=None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console)
        self.tasks: dict[str, tuple[int, int]] = {}  # phase → (task id, steps)
        self.depth: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
        self.depth[phase_name] = depth
        steps = max(num_steps, 1)
        self.tasks[phase_name] = (self.progress.add_task("  " * depth + phase_name, total=steps), steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        if phase_name in self.tasks:
            self.progress.update(self.tasks[phase_name][0], completed=step + 1)
        return True  # False would ask TensorRT to cancel the build

    def phase_finish(self, phase_name: str) -> None:
        if phase_name not in self.tasks:
            return
        task, steps = self.tasks.pop(phase_name)
        self.progress.update(task, completed=steps)
        if self.depth.get(phase_name, 0) > 0:
            self.progress.remove_task(task)  # nested phases come and go; the top level stays


# ----------------------------------------------------------------------------- parse errors

class OnnxParseError(RuntimeError):
    """TensorRT's ONNX parser refused the file; the message names each failing node."""


def format_parse_errors(onnx_path, errors: list[dict]) -> str:
    """One line per parser error: node index, name, operator, TensorRT's description.

    errors: {"node": index or -1, "node_name", "operator", "desc", "code"} as read from
    TensorRT's ParserError; a missing node name is looked up in the ONNX file by index.
    """
    names = {}
    if any(e.get("node", -1) >= 0 and not e.get("node_name") for e in errors):
        import onnx

        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        names = {i: (n.name, n.op_type) for i, n in enumerate(graph.node)}
    lines = [f"TensorRT's ONNX parser rejected {onnx_path} ({len(errors)} error(s)):"]
    for e in errors:
        index = e.get("node", -1)
        known_name, known_op = names.get(index, ("?", "?"))
        name, op = e.get("node_name") or known_name, e.get("operator") or known_op
        where = f"node {index} {name!r} ({op})" if index >= 0 else "model"
        lines.append(f"  {where}: {e.get('desc', '').strip()} [{e.get('code', '')}]")
    lines.append(f"Run `bigperf trt lint {onnx_path}` for what TensorRT supports and how to fix the graph.")
    return "\n".join(lines)
