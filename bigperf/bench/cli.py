"""`bigperf bench`: run a suite, compare two runs (a CI gate), plot runs.

    bigperf bench [--suite quick|full] [--ops OP...] [--out FILE]
    bigperf bench compare OLD NEW [--threshold PCT]     exit 1 on a regression
    bigperf bench floor RUN [RUN...] [--floor PCT]      exit 1 if an auto-dispatched op is slower than torch
    bigperf bench plot FILE... [-o DIR]

Also runnable before the `bench` command is wired: python -m bigperf.bench.cli [ARGS].
Exit codes: 0 fine, 1 regression (compare) or slower than torch (floor), 2 unusable input (bad file,
unknown op, a run with nothing to check).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    bench = subparsers.add_parser(
        "bench", help="benchmark bigperf ops against PyTorch on real-model shapes; compare; plot",
        description="Time every bigperf op x backend x dtype against torch.nn.functional.linear (same dtype "
                    "and fp32) and peers, in the same rounds, on real-model linear shapes.")
    bench.add_argument("--suite", default="quick", help="quick (CI gate, <2 min on 2 cores), full, or smoke (tests)")
    bench.add_argument("--ops", nargs="+", metavar="OP",
                       help="op families to run (default: all): fused_linear int8_weight_linear int8_dynamic_linear "
                            "sparse24_linear block_sparse_linear")
    bench.add_argument("--backends", nargs="+", metavar="NAME",
                       help="backends to time (default: all but reference)")
    bench.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if available)")
    bench.add_argument("--threads", type=int, default=None,
                       help="torch threads while timing (inputs are prepared with all of them)")
    bench.add_argument("--max-seconds", type=float, default=None,
                       help="stop starting new points after this long (the rest are recorded as skipped)")
    bench.add_argument("--out", metavar="FILE", help="write the run's record (JSON) here")
    bench.add_argument("--repeat", type=int, default=1, metavar="N",
                       help="run the suite N times and keep, per entry, the run with the (lower) median speedup "
                            "(for committed baselines)")
    bench.add_argument("--history", metavar="FILE", help="history file to append to (default: "
                       "$BIGPERF_BENCH_HISTORY or ~/.cache/bigperf/bench-history.jsonl)")
    bench.add_argument("--no-history", action="store_true", help="do not append to the history file")
    sub = bench.add_subparsers(dest="bench_command", metavar="{compare,floor,plot}")
    compare = sub.add_parser("compare", help="exit 1 if a kernel's speedup fell by > threshold and > noise",
                             description="Compare two records (or the newest record of .jsonl histories).")
    compare.add_argument("old")
    compare.add_argument("new", nargs="+", help="one run, or several: an entry then counts as slower only if it "
                                                "is slower in every one (a re-run confirms a regression)")
    compare.add_argument("--threshold", type=float, default=10.0, metavar="PCT",
                         help="a speedup must fall by more than this many percent (default 10) to count")
    compare.add_argument("--fail-on-missing", action="store_true",
                         help="also exit 1 when one of our entries in OLD is absent from NEW")
    compare.add_argument("--all", action="store_true", help="list unchanged entries too")
    floor = sub.add_parser("floor", help="exit 1 if an op dispatched automatically is slower than the fastest "
                                         "PyTorch path timed beside it (no baseline needed)",
                           description="Check every 'auto' variant of a run against the fastest torch baseline "
                                       "of its point: speedup >= 1 - max(floor, measured noise).")
    floor.add_argument("runs", nargs="+", metavar="RUN",
                       help="one run, or several: an entry then fails only if it fails in every one")
    floor.add_argument("--floor", type=float, default=None, metavar="PCT",
                       help="the least tolerance in percent, whatever the noise (default 5)")
    floor.add_argument("--all", action="store_true", help="list passing entries too")
    plot = sub.add_parser("plot", help="PNG charts: speedup vs batch size; history over commits")
    plot.add_argument("files", nargs="+", metavar="FILE", help="records (.json) and/or histories (.jsonl)")
    plot.add_argument("-o", "--out-dir", default="bench-plots", metavar="DIR")
    return bench


def run_bench_command(args: argparse.Namespace) -> int:
    """Runs the command; a user's mistake (a bad file, a bad option) raises ValueError or
    OSError, which bigperf.cli.main turns into a message and exit code 2."""
    console = _console()
    if args.bench_command == "compare":
        return _compare(args, console)
    if args.bench_command == "floor":
        return _floor(args, console)
    if args.bench_command == "plot":
        return _plot(args, console)
    return _run(args, console)


def _console():
    from rich.console import Console

    console = Console()
    # Piped output (CI logs, files) would otherwise be cut to 80 columns.
    return console if console.is_terminal else Console(width=170)


# ----------------------------------------------------------------------------- run

def _run(args, console) -> int:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bigperf.bench import store
    from bigperf.bench.cases import family_names
    from bigperf.bench.compare import merge_records
    from bigperf.bench.runner import run_suite
    from bigperf.bench.suites import SUITES

    for option, value in (("--out", args.out), ("--history", args.history)):
        if value and Path(value).is_dir():  # refused now, not after the whole run
            raise IsADirectoryError(f"bigperf bench: {option} {value} is a folder; give a file name")
    if args.suite not in SUITES:
        console.print(f"[red]bigperf bench: unknown suite {args.suite!r}; choose from {sorted(SUITES)}[/red]")
        return 2
    unknown = sorted(set(args.ops or ()) - set(family_names()))
    if unknown:
        console.print(f"[red]bigperf bench: unknown op(s) {unknown}; choose from {family_names()}[/red]")
        return 2
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, ValueError):
        raise ValueError(f"bigperf bench: --device {args.device!r} is not a device (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        console.print("[red]bigperf bench: --device cuda, but torch sees no CUDA device[/red]")
        return 2
    points = SUITES[args.suite].points_for(device)
    console.print(f"bigperf bench: suite [bold]{args.suite}[/bold], {len(points)} points on {device}, "
                  f"{args.threads or torch.get_num_threads()} threads; measuring the machine's ceilings first")
    started = time.monotonic()
    repeat = max(1, args.repeat)
    total = len(points) * repeat
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=console.is_terminal) as progress:
        task = progress.add_task("ceilings", total=total)
        runs: list[dict] = []

        def on_start(index, point):
            done = len(runs) * len(points) + index
            progress.update(task, completed=done, description=point.id)
            if not console.is_terminal:
                console.print(f"  [{done + 1}/{total}] {point.id}  ({time.monotonic() - started:.0f} s)")

        def on_ceilings(ceilings):
            console.print("ceilings: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in ceilings.items()))

        def on_point_done(partial):
            if args.out and repeat == 1:  # a run killed by an outer time limit keeps what it measured
                store.save_record(partial, args.out)

        for _ in range(repeat):
            runs.append(run_suite(args.suite, device, ops=args.ops, backends=args.backends,
                                  max_seconds=args.max_seconds, on_start=on_start, on_ceilings=on_ceilings,
                                  on_point_done=on_point_done, threads=args.threads))
        record = merge_records(runs, pick="median")
        progress.update(task, completed=total, description="done")
    print_results(record, console)
    if args.out:
        console.print(f"record written to {store.save_record(record, args.out)}")
    if not args.no_history:
        console.print(f"appended to history {store.append_history(record, args.history or store.default_history_path())}")
    console.print(f"{len(record['results'])} results, {len(record['skipped'])} skipped, in {record['duration_s']} s")
    return 0


def _pct(value) -> str:
    return f"{100 * value:.0f}%" if value is not None else "-"


def print_results(record: dict, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    ceilings = record["ceilings"]
    table = Table(title=escape(f"{record['suite']} suite on {record['fingerprint'].get('machine_kind')}: speedup = "
                               "torch.linear (same dtype) time / variant time, per round; [q1–q3] over rounds; "
                               "vs fastest torch: the same over the fastest torch.linear path (fp32, bf16, x's dtype)"))
    for name, justify in (("point", "left"), ("variant", "left"), ("median", "right"), ("speedup", "right"),
                          (escape("[q1–q3]"), "right"), ("vs fp32", "right"), ("GB/s", "right"),
                          (f"of {ceilings.get('read_gbps', 0):.0f}", "right"), ("GFLOP/s", "right"),
                          (f"of {ceilings.get('matmul_gflops', 0):.0f}", "right"), ("vs fastest torch", "right"),
                          ("rel err", "right")):
        table.add_column(name, justify=justify)
    last_point = None
    for r in record["results"]:
        if last_point is not None and r["point"] != last_point:
            table.add_section()
        style = {"ours": "bold", "auto": "bold cyan", "peer": "", "baseline": "dim"}.get(r["role"], "")
        table.add_row(
            r["point"] if r["point"] != last_point else "", escape(r["variant"]), _time(r["median_s"]),
            f"{r['speedup']:.2f}x", f"{r['speedup_q1']:.2f}–{r['speedup_q3']:.2f}",
            f"{r['speedup_vs_fp32']:.2f}x" if r.get("speedup_vs_fp32") else "",
            f"{r.get('gbps', 0):.1f}", _pct(r.get("frac_bw")), f"{r.get('gflops', 0):.1f}", _pct(r.get("frac_flops")),
            f"{r['speedup_vs_fastest']:.2f}x" if r.get("speedup_vs_fastest") is not None else "",
            f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else "", style=style)
        last_point = r["point"]
    console.print(table)
    reasons = Counter((s["key"].split("/", 3)[-1] if s["key"].count("/") >= 3 else s["key"], s["reason"])
                      for s in record["skipped"])
    if reasons:
        skipped = Table(title="not measured", show_lines=False)
        skipped.add_column("variant")
        skipped.add_column("points", justify="right")
        skipped.add_column("why")
        for (vid, reason), count in sorted(reasons.items()):
            skipped.add_row(escape(vid), str(count), escape(reason))
        console.print(skipped)


def _time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


# ----------------------------------------------------------------------------- compare, plot

def _compare(args, console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from bigperf.bench.compare import check_threshold, compare_files

    check_threshold(args.threshold, "--threshold")
    result = compare_files(args.old, args.new, args.threshold)
    for warning in result.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    table = Table(title=escape(f"bench compare: {args.old} → {' + '.join(args.new)} (slower = speedup fell > "
                               f"{args.threshold:g}% and > noise; only 'ours' and 'auto' gate)"))
    for name in ("entry", "role", "old", "new", "change", "noise", "status"):
        table.add_column(name, justify="left" if name in ("entry", "role", "status") else "right")
    colours = {"slower": "red", "faster": "green", "missing": "yellow", "new": "cyan", "same": ""}
    for row in sorted(result.rows, key=lambda r: (r.status == "same", r.key)):
        if row.status == "same" and not args.all:
            continue
        status = row.status + ("" if row.gates or row.status not in ("slower", "missing") else " (not gating)")
        if row.reason:
            status += f": {row.reason}"
        table.add_row(escape(row.key), row.role, f"{row.old:.2f}x" if row.old else "", f"{row.new:.2f}x" if row.new else "",
                      f"{row.change:+.1%}" if row.change is not None else "",
                      f"±{row.noise:.2f}" if row.noise is not None else "", escape(status), style=colours[row.status])
    console.print(table)
    counts = Counter(r.status for r in result.rows)
    console.print("summary: " + ", ".join(f"{counts[s]} {s}" for s in ("slower", "faster", "same", "missing", "new")))
    if result.failed(args.fail_on_missing):
        what = [f"{len(result.regressions)} regression(s)"]
        if args.fail_on_missing and result.missing:
            what.append(f"{len(result.missing)} missing entr(ies)")
        console.print(f"[red bold]FAIL: {' and '.join(what)}[/red bold]")
        return 1
    console.print("[green]OK: no regression[/green]")
    return 0


def _floor(args, console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from bigperf.bench.floor import DEFAULT_FLOOR_PCT, check_runs
    from bigperf.bench.store import load_record

    floor_pct = DEFAULT_FLOOR_PCT if args.floor is None else args.floor
    if not 0 <= floor_pct < 100:  # 100 % or more (or NaN) would pass any speed
        raise ValueError(f"bigperf bench floor: --floor must be a percentage in [0, 100), got {floor_pct:g}")
    result = check_runs([load_record(path) for path in args.runs], floor_pct)
    for warning in result.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    shown = [r for r in result.rows if args.all or r.status != "ok"]
    if shown:
        table = Table(title=escape(
            f"bench floor: ops as dispatched automatically vs the fastest PyTorch path at the point "
            f"(fails below 1 - tolerance; tolerance = max({floor_pct:g}%, measured noise))"))
        for name in ("point", "variant", "fastest torch path", "speedup", "[q1–q3]", "runs", "tolerance", "status"):
            table.add_column(escape(name), justify="left" if name in ("point", "variant", "fastest torch path",
                                                                      "status") else "right")
        colours = {"ok": "", "slower": "red", "failed": "red", "no baseline": "yellow", "not measured": "yellow"}
        for row in sorted(result.rows, key=lambda r: (not r.fails, r.status == "ok", r.key)):
            if row not in shown:
                continue
            status = row.status + (f": {row.reason}" if row.reason else "")
            table.add_row(
                escape(row.point), escape(row.variant), escape(row.fastest or ""),
                f"{row.speedup:.2f}x" if row.speedup is not None else "",
                f"{row.q1:.2f}–{row.q3:.2f}" if row.q1 is not None else "",
                " ".join(f"{s:.2f}" for s in row.runs) if len(row.runs) > 1 else "",
                f"{row.tolerance:.0%}" if row.tolerance is not None else "",
                escape(status), style=colours[row.status])
        console.print(table)
    counts = Counter(r.status for r in result.rows)
    console.print("floor summary: " + ", ".join(f"{counts[s]} {s}" for s in
                                                ("ok", "slower", "failed", "no baseline", "not measured")))
    if result.failed():
        console.print(f"[red bold]FAIL: {len(result.failures)} op(s) dispatched automatically are slower than the "
                      f"fastest PyTorch path (or failed to run)[/red bold]")
        return 1
    if not result.judged:
        console.print("[red]bigperf bench floor: nothing to check (no auto variant measured against torch)[/red]")
        return 2
    console.print("[green]OK: no op dispatched automatically is slower than PyTorch[/green]")
    return 0


def _plot(args, console) -> int:
    from bigperf.bench.plot import plot_history, plot_speedups
    from bigperf.bench.store import load_records

    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise NotADirectoryError(f"bigperf bench plot: -o {args.out_dir} is a file; give a folder for the charts")
    records = [rec for path in args.files for rec in load_records(path)]
    paths = plot_speedups(max(records, key=lambda rec: rec["created"]), args.out_dir)
    if len(records) > 1:
        paths += plot_history(records, args.out_dir)
    for path in paths:
        console.print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bigperf")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    from bigperf.cli import run_guarded

    return run_guarded(run_bench_command, args, _console())


if __name__ == "__main__":
    sys.exit(main())
