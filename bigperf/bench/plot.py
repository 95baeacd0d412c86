"""PNG charts of benchmark records (matplotlib, headless).

speedup-<family>-<machine>.png   speedup over torch (same dtype) vs batch size, one panel per
                                 layer, one line per variant and dtype, IQR as error bars
history-<family>-<machine>.png   geometric-mean speedup of each variant over the records
                                 given (one point per run, labelled by commit)
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # no display on CI machines; must precede the pyplot import
    import matplotlib.pyplot as plt
    return plt


def _speedup_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.axhline(1.0, color="grey", lw=1, ls=":")


def _grouped(results, key):
    groups = defaultdict(list)
    for r in results:
        groups[key(r)].append(r)
    return groups


def plot_speedups(record: dict, out_dir: str | Path) -> list[Path]:
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = record["fingerprint"].get("machine_kind", record["device"])
    paths = []
    families = _grouped([r for r in record["results"] if r["role"] != "baseline"], lambda r: r["family"])
    for fam, results in sorted(families.items()):
        layers = sorted({r["layer"] for r in results})
        cols = min(3, len(layers))
        rows = math.ceil(len(layers) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
        for ax, layer in zip(axes.flat, layers):
            lines = _grouped([r for r in results if r["layer"] == layer], lambda r: (r["variant"], r["dtype"]))
            for (variant, dtype), points in sorted(lines.items()):
                points.sort(key=lambda r: r["m"])
                m = [p["m"] for p in points]
                y = [p["speedup"] for p in points]
                err = [[p["speedup"] - p["speedup_q1"] for p in points], [p["speedup_q3"] - p["speedup"] for p in points]]
                style = "-" if points[0]["role"] == "ours" else "--"
                ax.errorbar(m, y, yerr=err, fmt=f"o{style}", ms=4, capsize=2, label=f"{variant} {dtype}")
            _speedup_axis(ax)
            ms = sorted({r["m"] for r in results if r["layer"] == layer})
            ax.set_xscale("log", base=2)
            ax.set_xticks(ms, [str(m) for m in ms])
            ax.set_xticks([], minor=True)
            if len(ms) == 1:
                ax.set_xlim(ms[0] / 2, ms[0] * 2)
            shape = next(r for r in results if r["layer"] == layer)
            ax.set_title(f"{layer} ({shape['k']}→{shape['n']})", fontsize=9)
            ax.set_xlabel("batch rows M")
            ax.set_ylabel("speedup vs torch.linear (same dtype)")
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(layers):]:
            ax.axis("off")
        fig.suptitle(f"{fam} on {kind}  ({record['created']}, commit {_commit(record)})", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"speedup-{_slug(fam)}-{_slug(kind)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_history(records: list[dict], out_dir: str | Path) -> list[Path]:
    """One chart per family and machine kind; records from other machines are not mixed in."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    by_kind = _grouped(records, lambda rec: rec["fingerprint"].get("machine_kind", rec["device"]))
    for kind, runs in sorted(by_kind.items()):
        runs.sort(key=lambda rec: rec["created"])
        families = sorted({r["family"] for rec in runs for r in rec["results"] if r["role"] != "baseline"})
        for fam in families:
            fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(runs) + 3), 4.2))
            series = defaultdict(dict)  # (variant, dtype) -> run index -> geomean speedup
            for i, rec in enumerate(runs):
                lines = _grouped([r for r in rec["results"] if r["family"] == fam and r["role"] != "baseline"],
                                 lambda r: (r["variant"], r["dtype"]))
                for line, results in lines.items():
                    series[line][i] = math.exp(sum(math.log(r["speedup"]) for r in results) / len(results))
            for (variant, dtype), values in sorted(series.items()):
                xs = sorted(values)
                ax.plot(xs, [values[x] for x in xs], "o-", ms=4, label=f"{variant} {dtype}")
            _speedup_axis(ax)
            ax.set_xticks(range(len(runs)))
            ax.set_xticklabels([f"{_commit(rec)}\n{rec['created'][:10]}" for rec in runs], fontsize=7)
            ax.set_ylabel("geomean speedup vs torch.linear")
            ax.set_title(f"{fam} on {kind}: history over {len(runs)} runs", fontsize=10)
            ax.legend(fontsize=6)
            fig.tight_layout()
            path = out_dir / f"history-{_slug(fam)}-{_slug(kind)}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def _commit(record: dict) -> str:
    git = record["fingerprint"].get("git") or {}
    sha = (git.get("commit") or "unknown")[:8]
    return sha + ("+" if git.get("dirty") else "")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
