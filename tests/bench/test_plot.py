import pytest

pytest.importorskip("matplotlib", reason="plots need matplotlib (a dependency of bigperf)")

from bigperf.bench.cli import main as bench_main
from bigperf.bench.plot import plot_history, plot_speedups
from bigperf.bench.store import append_history
from tests.bench.records import record, result

PNG = b"\x89PNG\r\n\x1a\n"


def _sweep(scale=1.0, **kw):
    out = []
    for layer in ("a.proj", "b.proj"):
        for m in (1, 16, 128):
            out.append(result(speedup=scale * 4 / m ** 0.3, m=m, layer=layer, **kw))
            out.append(result("aten._weight_int8pack_mm", scale * 1.5, role="peer", m=m, layer=layer,
                              family="int8_weight_linear"))
    return out


def test_speedup_plot_per_family_is_a_png(tmp_path):
    paths = plot_speedups(record(_sweep()), tmp_path)
    assert sorted(p.name for p in paths) == ["speedup-fused_linear-cpu-x86_64-avx2-1t.png",
                                             "speedup-int8_weight_linear-cpu-x86_64-avx2-1t.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000


def test_history_plot_over_commits(tmp_path):
    runs = [record(_sweep(s), created=f"2026-11-0{i + 1}T00:00:00+00:00", commit=f"{i:040x}")
            for i, s in enumerate((1.0, 1.1, 0.9))]
    paths = plot_history(runs, tmp_path)
    assert {p.name for p in paths} == {"history-fused_linear-cpu-x86_64-avx2-1t.png",
                                       "history-int8_weight_linear-cpu-x86_64-avx2-1t.png"}
    assert all(p.read_bytes()[:8] == PNG for p in paths)


def test_cli_plot_from_a_history_file(tmp_path, capsys):
    history = tmp_path / "h.jsonl"
    append_history(record(_sweep(), created="2026-11-01T00:00:00+00:00"), history)
    append_history(record(_sweep(1.2), created="2026-11-02T00:00:00+00:00"), history)
    assert bench_main(["plot", str(history), "-o", str(tmp_path / "plots")]) == 0
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert "speedup-fused_linear-cpu-x86_64-avx2-1t.png" in names and "history-fused_linear-cpu-x86_64-avx2-1t.png" in names
    assert "wrote" in capsys.readouterr().out
