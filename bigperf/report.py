"""SwapReport: what bigperf.swap did (or would do), as a rich table and as JSON."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

# A swapped layer counts as slower than the original below this speedup at every batch size
# tuned (swap's default min_speedup: such a layer is kept): swap's timing of each layer is a
# ratio of medians of alternating samples, within ~5 % of itself.
SLOWER_BELOW = 0.95


@dataclass
class LayerChange:
    name: str
    old: str
    new: str
    activation: str
    bytes_before: int
    bytes_after: int
    backend: str
    sqnr_db: float | None = None  # on the calibration data, when given
    config: str = ""
    # swap(batch_sizes=...): per M, {"path": what runs, "speedup": over the original layer}
    by_batch: dict[int, dict] = field(default_factory=dict)

    def paths_text(self) -> str:
        return ", ".join(f"M={m}: {r['path']} {r['speedup']:.2f}x" for m, r in sorted(self.by_batch.items()))

    @property
    def saved_fraction(self) -> float:
        return 1 - self.bytes_after / self.bytes_before if self.bytes_before else 0.0


@dataclass
class SwapReport:
    config: str
    dry_run: bool
    changes: list[LayerChange] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (name, why it was kept)
    tuning_seconds: float | None = None  # swap(batch_sizes=...): time spent measuring
    tune_cache: str | None = None        # where the measured choices are kept

    @property
    def slower_layers(self) -> list[str]:
        """Swapped layers that ran slower than the layer they replaced at every batch size
        tuned (swap(batch_sizes=...)), by more than the timing's noise: small layers, where
        the call costs more than the arithmetic (README: per-call cost). swap keeps such
        layers unless told min_speedup=None (or a lower one)."""
        return [c.name for c in self.changes
                if c.by_batch and all(r["speedup"] < SLOWER_BELOW for r in c.by_batch.values())]

    @property
    def bytes_before(self) -> int:
        return sum(c.bytes_before for c in self.changes)

    @property
    def bytes_after(self) -> int:
        return sum(c.bytes_after for c in self.changes)

    def to_dict(self) -> dict:
        return {"config": self.config, "dry_run": self.dry_run,
                "changes": [asdict(c) for c in self.changes],
                "kept": [{"name": n, "reason": r} for n, r in self.kept],
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "tuning_seconds": self.tuning_seconds, "tune_cache": self.tune_cache,
                "slower_layers": self.slower_layers}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def __rich__(self):
        from rich.markup import escape
        from rich.table import Table

        # Names, recipes and reasons are text: a regex such as "[/_]" is not rich markup.
        title = f"bigperf.swap {self.config}" + (" (dry run: nothing changed)" if self.dry_run else "")
        table = Table(title=escape(title))
        tuned = any(c.by_batch for c in self.changes)
        columns = ["layer", "old → new", "activation", "weight bytes", "SQNR dB", "backend / reason"]
        for column in columns + (["path and speedup per batch size"] if tuned else []):
            table.add_column(column)
        for c in self.changes:
            sqnr = "-" if c.sqnr_db is None else f"{c.sqnr_db:.1f}"
            table.add_row(escape(c.name), escape(f"{c.old} → {c.new}"), c.activation,
                          f"{c.bytes_before:,} → {c.bytes_after:,}", sqnr, escape(c.backend),
                          *([escape(c.paths_text())] if tuned else []))
        for name, reason in self.kept:
            table.add_row(escape(name), "kept", "", "", "", escape(reason), *([""] if tuned else []))
        table.caption = (f"{len(self.changes)} layer(s) swapped; weight bytes "
                         f"{self.bytes_before:,} → {self.bytes_after:,}")
        if self.tuning_seconds is not None:
            table.caption += f"; tuned in {self.tuning_seconds:.1f} s (cache: {escape(str(self.tune_cache))})"
        slower = self.slower_layers
        if slower:
            names = ", ".join(slower[:5]) + (f" and {len(slower) - 5} more" if len(slower) > 5 else "")
            table.caption += (f"\n{len(slower)} layer(s) ran slower than the original at every batch size tuned "
                              f"({escape(names)}); swap keeps them unless min_speedup=None")
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        Console(width=120, file=buffer).print(self)
        return buffer.getvalue()
