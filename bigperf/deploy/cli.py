"""`bigperf export onnx` and `bigperf trt lint|build`, wired into bigperf/cli.py."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
from pathlib import Path

import torch
from torch import nn

from bigperf.configs import NAMED_CONFIGS


def add_deploy_parsers(subparsers) -> None:
    export = subparsers.add_parser("export", help="export a (swapped) model to ONNX")
    export_sub = export.add_subparsers(dest="export_format", required=True, metavar="{onnx}")
    onnx_cmd = export_sub.add_parser("onnx", help="standard ONNX for onnxruntime and TensorRT")
    onnx_cmd.add_argument("target", help="package.module:factory, or a local transformers model directory")
    onnx_cmd.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    onnx_cmd.add_argument("--config", default=None,
                          help=f"swap first with one of: {', '.join(NAMED_CONFIGS)} (default: export as is)")
    onnx_cmd.add_argument("--batch", type=int, default=1, help="example batch size (default 1)")
    onnx_cmd.add_argument("--seq", type=int, default=128, help="example sequence length (default 128)")
    onnx_cmd.add_argument("--dynamic", action="store_true",
                          help="make batch and sequence dynamic, bounded by --max-batch/--max-seq")
    onnx_cmd.add_argument("--max-batch", type=int, default=64, help="upper bound of a dynamic batch (default 64)")
    onnx_cmd.add_argument("--max-seq", type=int, default=None,
                          help="upper bound of a dynamic sequence (default: the model's max positions, else 2048)")
    onnx_cmd.add_argument("--opset", type=int, default=None, help="ONNX opset (default 20, 21 for per-group int8)")
    onnx_cmd.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")

    trt = subparsers.add_parser("trt", help="TensorRT: lint an ONNX file, build an engine")
    trt_sub = trt.add_subparsers(dest="trt_command", required=True, metavar="{lint,build}")
    lint_cmd = trt_sub.add_parser("lint", help="what TensorRT would reject in an ONNX file, and how to fix it")
    lint_cmd.add_argument("file", help="the .onnx file")
    build_cmd = trt_sub.add_parser("build", help="build a TensorRT engine (needs TensorRT and a GPU)")
    build_cmd.add_argument("file", help="the .onnx file")
    build_cmd.add_argument("-o", "--output", required=True, metavar="PLAN", help="the engine file to write")
    for name in ("fp16", "bf16", "int8", "fp8"):
        build_cmd.add_argument(f"--{name}", action="store_true", help=f"allow {name} kernels")
    build_cmd.add_argument("--sparse", action="store_true", help="allow 2:4 sparse tactics (SPARSE_WEIGHTS)")
    build_cmd.add_argument("--workspace", type=float, default=None, metavar="GB", help="workspace memory limit")
    build_cmd.add_argument("--timing-cache", default=None, metavar="FILE", help="timing cache to reuse and update")
    for command in (lint_cmd, build_cmd):
        for bound in ("min", "opt", "max"):
            command.add_argument(f"--{bound}", default=None, metavar="SHAPES",
                                 help=f"{bound} shapes of the profile, e.g. input_ids:1x16 (several: comma-separated)")


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def _error(console, error) -> None:
    from bigperf.cli import print_error

    print_error(console, error)


# ----------------------------------------------------------------------------- export

def _first_input_module(model: nn.Module) -> nn.Module | None:
    from bigperf.nn import FusedLinear, Int8Linear, SparseLinear

    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.Linear, FusedLinear, Int8Linear, SparseLinear)):
            return module
    return None


def example_inputs_for(model: nn.Module, batch: int, seq: int) -> tuple[torch.Tensor, ...]:
    """Inputs for models given on the command line: token ids for a transformers model or a
    model starting with an embedding, [batch, seq, features] floats for one starting with a
    linear layer, or whatever the model's own `example_inputs(batch, seq)` returns."""
    if callable(getattr(model, "example_inputs", None)):
        inputs = model.example_inputs(batch, seq)
        return inputs if isinstance(inputs, tuple) else (inputs,)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    first = _first_input_module(model)
    if vocab is None and isinstance(first, nn.Embedding):
        vocab = first.num_embeddings
    generator = torch.Generator().manual_seed(0)
    if vocab is not None:
        return (torch.randint(0, vocab, (batch, seq), generator=generator),)
    if first is not None and hasattr(first, "in_features"):
        return (torch.randn(batch, seq, first.in_features, generator=generator),)
    raise ValueError("bigperf export: cannot tell what input this model takes; give the model an "
                     "example_inputs(batch, seq) method that returns a tuple of tensors")


def _dynamic_shapes(model: nn.Module, inputs, args):
    if not args.dynamic:
        return None
    max_seq = args.max_seq or getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048
    batch = torch.export.Dim("batch", min=1, max=max(args.max_batch, args.batch))
    seq = torch.export.Dim("seq", min=1, max=max(max_seq, args.seq))
    return tuple({0: batch, 1: seq} if t.dim() >= 2 else {0: batch} for t in inputs)


def _export_command(args, console) -> int:
    import bigperf
    from bigperf.deploy.lint import lint
    from bigperf.deploy.onnx import check_output_path, export_onnx
    from bigperf.targets import load_target

    # torch's exporter logs a line per torchvision op it cannot find; noise on a command line.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    if args.batch < 1 or args.seq < 1:
        _error(console, "--batch and --seq must be positive")
        return 2
    if args.dynamic:
        for option, value in (("--max-batch", args.max_batch), ("--max-seq", args.max_seq)):
            if value is not None and value < 2:
                raise ValueError(f"{option} must be at least 2 with --dynamic (a bound of {value} leaves "
                                 f"nothing dynamic), got {value}")
    check_output_path(args.output)  # before the work, not after it
    try:
        model = load_target(args.target)
        if args.config:
            report = bigperf.swap(model, args.config)
            console.print(f"swapped {len(report.changes)} layers with {report.config}", markup=False)
    except ValueError as error:
        _error(console, error)
        return 2
    if hasattr(getattr(model, "config", None), "use_cache"):
        model.config.use_cache = False  # a KV cache is an output TensorRT engines do not want
    # torch.export specialises a dimension traced at size 1; trace a dynamic one at 2.
    trace_batch = max(args.batch, 2) if args.dynamic else args.batch
    trace_seq = max(args.seq, 2) if args.dynamic else args.seq
    try:
        inputs = example_inputs_for(model, trace_batch, trace_seq)
        # torch logs and prints pages of graphs and guards when it cannot trace a model;
        # export_onnx says why in a line.
        torch._logging.set_logs(all=logging.CRITICAL)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = export_onnx(model, inputs, args.output, dynamic_shapes=_dynamic_shapes(model, inputs, args),
                                 opset=args.opset)
    except (ValueError, TypeError, ImportError) as error:
        _error(console, error)
        return 2
    finally:
        torch._logging.set_logs()  # torch's defaults again
    size = result.total_bytes / 1e6
    weights = f", weights in {result.data_path}" if result.data_path else ""
    console.print(f"wrote {result.path} ({size:.2f} MB{weights}), opset {result.opset}, inputs {result.inputs}",
                  markup=False)
    status = 0
    if not args.no_verify:
        try:
            from bigperf.deploy.verify import verify_onnx

            check = verify_onnx(result.path, model, inputs)
            console.print(str(check), style=None if check.passed else "red", markup=False)
            status = 0 if check.passed else 1
        except ImportError as error:
            console.print(f"not verified: {error}", markup=False)
    findings = lint(result.path)
    errors = sum(f.severity == "error" for f in findings)
    if findings:
        console.print(f"TensorRT lint: {errors} error(s), {len(findings) - errors} warning(s); "
                      f"details: bigperf trt lint {result.path}")
    return status


# ----------------------------------------------------------------------------- trt

def _shapes(args, inputs):
    from bigperf.deploy.profiles import parse_shapes

    return {bound: parse_shapes(getattr(args, bound), inputs) for bound in ("min", "opt", "max")}


def _lint_command(args, console) -> int:
    from rich.markup import escape

    from bigperf.deploy.lint import lint
    from bigperf.deploy.profiles import Profile, ProfileError, derive_profile
    from bigperf.deploy.trt_plan import read_onnx_io

    try:
        if not Path(args.file).is_file():
            raise FileNotFoundError(f"ONNX file {args.file} does not exist")
        inputs, _, _ = read_onnx_io(args.file)
        shapes = _shapes(args, inputs)
        profiles = None
        if any(shapes.values()):
            profile = derive_profile(inputs, {}, min_shapes=shapes["min"], opt_shapes=shapes["opt"],
                                     max_shapes=shapes["max"])
            profiles = [profile] if profile else [Profile()]
        findings = lint(args.file, profiles=profiles)
    except (FileNotFoundError, ProfileError) as error:
        _error(console, error)
        return 2
    if not findings:
        console.print(f"{args.file}: no findings; TensorRT's parser has the last word (bigperf trt build)",
                      markup=False)
        return 0
    for f in findings:
        colour = "red" if f.severity == "error" else "yellow"
        console.print(f"[{colour}]{f.severity}[/{colour}] [bold]{f.rule}[/bold] at {escape(f.node)}: "
                      f"{escape(f.message)}", highlight=False)
        console.print(f"    why: {f.explanation}", highlight=False, markup=False)
        console.print(f"    fix: {f.fix}", highlight=False, markup=False)
    errors = sum(f.severity == "error" for f in findings)
    console.print(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return 1 if errors else 0


def _build_command(args, console) -> int:
    from bigperf.deploy.profiles import ProfileError
    from bigperf.deploy.trt_plan import TensorRTUnavailable, make_build_plan, read_onnx_io

    precision = tuple(p for p in ("fp16", "bf16", "int8", "fp8") if getattr(args, p)) or ("fp32",)
    try:
        if not Path(args.file).is_file():
            raise FileNotFoundError(f"ONNX file {args.file} does not exist")
        inputs, _, _ = read_onnx_io(args.file)
        shapes = _shapes(args, inputs)
        options = dict(precision=precision, sparse_weights=args.sparse, workspace_gb=args.workspace,
                       timing_cache=args.timing_cache, min_shapes=shapes["min"], opt_shapes=shapes["opt"],
                       max_shapes=shapes["max"])
        plan = make_build_plan(args.file, args.output, **options)
    except (FileNotFoundError, ValueError) as error:
        _error(console, error)
        return 2
    console.print(f"building {plan.engine_path} from {plan.onnx_path}: flags {list(plan.flags) or ['(fp32)']}, "
                  f"profiles {[p.to_json() for p in plan.profiles] or 'none (static shapes)'}", markup=False)
    for note in plan.notes:
        console.print(f"note: {note}", style="yellow", markup=False)
    try:
        from bigperf.deploy.tensorrt import build_engine

        build_engine(args.file, args.output, console=console, **options)
    except TensorRTUnavailable as error:
        _error(console, error)
        return 2
    except (RuntimeError, ProfileError) as error:
        _error(console, error)
        return 1
    console.print(f"wrote {plan.engine_path} and {plan.versions_path}")
    return 0


def run_deploy_command(args: argparse.Namespace) -> int:
    console = _console()
    if args.command == "export":
        return _export_command(args, console)
    if args.trt_command == "lint":
        return _lint_command(args, console)
    return _build_command(args, console)
