"""The `bigperf` command: doctor | demo | swap | tune | bench | export | trt."""

from __future__ import annotations

import argparse
import sys

from bigperf.bench.cli import add_bench_parser, run_bench_command
from bigperf.deploy.cli import add_deploy_parsers, run_deploy_command
from bigperf.configs import NAMED_CONFIGS
from bigperf.report import SLOWER_BELOW


# Errors a user's input causes, as opposed to bugs: bigperf's own checks raise ValueError
# (naming the function and argument; BenchFileError is one) and files give OSError (exists,
# is a folder, unreadable). run_guarded shows them as a message and exit code 2.
USER_ERRORS = (ValueError, OSError)


def print_error(console, error) -> None:
    """'error: <message>'; the message is text, never rich markup (it may quote brackets)."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)


def run_guarded(command, args, console) -> int:
    """command(args), with a user's mistake shown as a message and exit code 2, never a traceback."""
    try:
        return command(args)
    except USER_ERRORS as error:
        print_error(console, error)
        return 2


def _wide_console():
    from rich.console import Console

    console = Console()
    # Piped output (CI logs, files) would otherwise be cut to 80 columns.
    return console if console.is_terminal else Console(width=160)


def _config(args):
    """The named config, with float_copy=True under --float-copy."""
    import dataclasses

    from bigperf.configs import config_by_name

    config = config_by_name(args.config)
    return dataclasses.replace(config, float_copy=True) if args.float_copy else config


def _swap_command(args) -> int:
    import bigperf
    from bigperf.serialize import check_save_path
    from bigperf.targets import load_target

    console = _wide_console()
    if args.save and not args.dry_run:
        check_save_path(args.save)  # before the work, not after it
    model = load_target(args.target)
    report = bigperf.swap(model, _config(args), dry_run=args.dry_run, batch_sizes=args.batch,
                          min_speedup=args.min_speedup)
    if args.json:
        print(report.to_json())
    else:
        console.print(report)
    if args.save and not args.dry_run:
        console.print(f"saved to {bigperf.save(model, args.save)}", markup=False, highlight=False)
    return 0


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch takes comma-separated positive ints, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"--batch takes comma-separated positive ints, got {text!r}")
    return sizes


def _min_speedup(text: str) -> float | None:
    from bigperf.tune_swap import check_min_speedup

    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
        check_min_speedup(value)  # swap's own bounds
    except ValueError:
        raise argparse.ArgumentTypeError(f"--min-speedup takes a positive number or 'none', got {text!r}") from None
    return value


MIN_SPEEDUP_HELP = ("keep a layer whose swap runs below this times the original's speed at every --batch size "
                    f"(default {SLOWER_BELOW}; 'none' swaps every layer)")


def _tune_command(args) -> int:
    """Swap (without saving) at the given batch sizes: the measured choices land in the
    tuning cache, where every later process on this machine finds them."""
    import bigperf
    from bigperf.targets import load_target

    console = _wide_console()
    model = load_target(args.target)
    report = bigperf.swap(model, _config(args), batch_sizes=args.batch, min_speedup=args.min_speedup)
    if args.json:
        print(report.to_json())
    else:
        console.print(report)
    return 0


FLOAT_COPY_HELP = ("also keep each weight in fp32 (N x K x 4 bytes more per layer) so large batches run at the "
                   "original fp32 layer's speed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bigperf", description="Compiled-kernel performance toolkit for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="what this machine can run, and why not the rest")
    demo = commands.add_parser("demo", help="swap a transformer-shaped model and compare speed and accuracy")
    demo.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median is shown)")
    demo.add_argument("--small", action="store_true", help="a small model (for smoke tests)")
    swap_cmd = commands.add_parser("swap", help="swap a model's linear layers and print the report")
    swap_cmd.add_argument("target", help="package.module:factory (imports and runs it), or a local transformers "
                                         "model directory")
    swap_cmd.add_argument("--config", default="int8", help=f"one of: {', '.join(NAMED_CONFIGS)} (default int8)")
    swap_cmd.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    swap_cmd.add_argument("--float-copy", action="store_true", help=FLOAT_COPY_HELP)
    swap_cmd.add_argument("--batch", type=_batch_sizes, default=None,
                          help="also tune every layer at these comma-separated numbers of rows and keep those it "
                               "would slow (see --min-speedup)")
    swap_cmd.add_argument("--min-speedup", type=_min_speedup, default=SLOWER_BELOW, help=MIN_SPEEDUP_HELP)
    swap_cmd.add_argument("--save", metavar="DIR", help="write the swapped model with bigperf.save")
    swap_cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    tune_cmd = commands.add_parser("tune", help="measure the fastest path of every layer at given batch sizes "
                                                "and keep the choices in the tuning cache")
    tune_cmd.add_argument("target", help="package.module:factory (imports and runs it), or a local transformers "
                                         "model directory")
    tune_cmd.add_argument("--config", default="int8", help=f"one of: {', '.join(NAMED_CONFIGS)} (default int8)")
    tune_cmd.add_argument("--batch", type=_batch_sizes, default=(1, 16, 128),
                          help="comma-separated numbers of rows (tokens) per call, default 1,16,128")
    tune_cmd.add_argument("--min-speedup", type=_min_speedup, default=SLOWER_BELOW, help=MIN_SPEEDUP_HELP)
    tune_cmd.add_argument("--float-copy", action="store_true", help=FLOAT_COPY_HELP)
    tune_cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    add_bench_parser(commands)
    add_deploy_parsers(commands)
    args = parser.parse_args(argv)
    return run_guarded(_run_command, args, _wide_console())


def _run_command(args) -> int:
    if args.command == "doctor":
        from bigperf.doctor import run_doctor
        return run_doctor(_wide_console())
    if args.command == "demo":
        from bigperf.demo import run_demo
        sizes = {"d_model": 128, "d_ff": 256, "n_layers": 2, "vocab": 256} if args.small else None
        run_demo(console=_wide_console(), repeats=args.repeats, sizes=sizes)
        return 0
    if args.command == "swap":
        return _swap_command(args)
    if args.command == "tune":
        return _tune_command(args)
    if args.command == "bench":
        return run_bench_command(args)
    return run_deploy_command(args)  # export, trt


if __name__ == "__main__":
    sys.exit(main())
