"""The `bigperf` command: doctor | demo (bench, swap, export and trt land with their issues)."""

from __future__ import annotations

import argparse
import sys


def _wide_console():
    from rich.console import Console

    console = Console()
    # Piped output (CI logs, files) would otherwise be cut to 80 columns.
    return console if console.is_terminal else Console(width=160)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bigperf", description="Compiled-kernel performance toolkit for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="what this machine can run, and why not the rest")
    demo = commands.add_parser("demo", help="swap a transformer-shaped model and compare speed and accuracy")
    demo.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median is shown)")
    demo.add_argument("--small", action="store_true", help="a small model (for smoke tests)")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from bigperf.doctor import run_doctor
        return run_doctor(_wide_console())
    if args.command == "demo":
        from bigperf.demo import run_demo
        sizes = {"d_model": 128, "d_ff": 256, "n_layers": 2, "vocab": 256} if args.small else None
        run_demo(console=_wide_console(), repeats=args.repeats, sizes=sizes)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
