"""Text blocks users read, PNG plots, and no torch import from these modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from racli.bench.ranking import TimingRow, best_vs_best
from racli.bench.text import bench_progress_line, bench_results, fair_comparison
from racli.compare.plots import plot_loss_curves
from racli.compare.text import final_comparison
from racli.compare.verdict import Sample, compare_runs
from racli.gates.analysis import analyse_gates, trajectories
from racli.gates.plots import plot_gates
from racli.gates.tables import gate_tables
from racli.text.terminal import for_stream

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]


def test_no_torch_import():
    code = (
        "import racli.compare.verdict, racli.compare.text, racli.gates.analysis, racli.gates.tables, "
        "racli.gates.plots, racli.compare.plots, racli.bench.text, racli.bench.ranking, "
        "racli.bench.plots, sys; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- bench

ROWS = [
    TimingRow("baseline", "eager", "fwd", 1.33, 1.30, 1.36, "ok", tflops=52.1),
    TimingRow("baseline", "compile", "fwd", 1.15, 1.12, 1.18, "ok"),
    TimingRow("baseline", "cuda_graph", "fwd", 1.06, 1.05, 1.08, "ok"),
    TimingRow("ra_v5", "eager", "fwd", 1.33, 1.31, 1.35, "ok"),
    TimingRow("ra_v5", "compile", "fwd", 1.15, 1.13, 1.17, "ok"),
    TimingRow("ra_v5", "cuda_graph", "fwd", None, None, None, "skipped", reason="no CUDA device"),
]


def test_bench_progress_line():
    line = bench_progress_line(1, "baseline", "eager", "fwd", 0.219, "ok", None)
    assert line.startswith("1. baseline eager fwd ...") and line.endswith("0.219 ms/iter")
    line2 = bench_progress_line(12, "ra_v5", "cuda_graph", "fwd_bwd", 0.5, "ok", None)
    assert line.index("0.219") == line2.index("0.500")  # dots align the figures
    skipped = bench_progress_line(
        6, "ra_v5", "cuda_graph", "fwd", None, "skipped", "no CUDA device"
    )
    assert "skipped (no CUDA device)" in skipped
    failed = bench_progress_line(7, "ra_v5", "compile", "fwd", None, "failed", "OOM")
    assert "FAILED (OOM)" in failed
    withratio = bench_progress_line(2, "baseline", "compile", "fwd", 1.15, "ok", None, ratio=0.8647)
    assert withratio.endswith("(0.86x)")


def test_bench_results_table():
    text = bench_results(
        ROWS, {"batch": 8, "seq": 1024, "heads": 12, "head_dim": 64, "dtype": "float16"}
    )
    assert text.startswith("RESULTS")
    assert "B=8 T=1024 H=12 D=64 float16" in text
    lines = text.splitlines()
    compile_line = next(ln for ln in lines if "baseline" in ln and "compile" in ln)
    assert "0.86x" in compile_line  # 1.15 / 1.33, the seed's "(0.87x)"
    graph_line = next(ln for ln in lines if "baseline" in ln and "cuda_graph" in ln)
    assert "0.80x" in graph_line
    assert "52.1" in text
    assert "skipped: no CUDA device" in text


def test_fair_comparison_block():
    text = fair_comparison(best_vs_best(ROWS))
    assert "FAIR COMPARISON (Best vs Best)" in text
    assert "Best Baseline:  1.060ms (cuda_graph)" in text
    assert "Best RA v5:     1.150ms (compile)" in text
    assert "RA v5 / Baseline: 1.08x" in text and "acceptable overhead" in text


def test_fair_comparison_missing_baseline():
    rows = [TimingRow("ra_v5", "eager", "fwd", 1.0, 1.0, 1.0, "ok")]
    text = fair_comparison(best_vs_best(rows))
    assert "no Baseline timing" in text
    assert "No successful timings" in fair_comparison([])


# ---------------------------------------------------------------- compare


def seed_example():
    c = [Sample(2, None, 3.3912, 512_000.0, iterations=12480)]
    b = [Sample(1, None, 3.4521, 512_000.0, iterations=12500)]
    return compare_runs(c, b, curves=[[(100, 3.6), (200, 3.5), (300, 3.4521)]])


def test_final_comparison_seed_example():
    text = final_comparison(seed_example(), "ra_v5", "baseline")
    for heading in (
        "FINAL COMPARISON (Matched Speed)",
        "VERDICT",
        "Iterations completed",
        "Validation loss",
        "Throughput (tok/s)",
        "Difference",
    ):
        assert heading in text
    assert "3.4521" in text and "3.3912" in text and "-1.8%" in text
    assert "✅ Speed gap: RA v5 runs at 1.000x Baseline's tokens/s" in text
    # one run a side, no history: the seed's 1.8% is not a verdict
    assert "❓ INCONCLUSIVE: RA v5 vs Baseline on validation loss is not settled" in text
    assert "Seeds needed: about" in text
    assert "Recommendation: Run more seeds" in text
    assert "\ufffd" not in text and "\u201a" not in text


def _multi(effect, noise, tps_c=500_000.0, epochs=None, paired=True):
    rng = np.random.default_rng(3)
    b = [
        Sample(i, i, 3.0 * (1 + noise * rng.standard_normal()), 500_000.0, 1000, epochs)
        for i in range(5)
    ]
    c = [
        Sample(
            10 + i,
            i if paired else 50 + i,
            3.0 * (1 + effect) * (1 + noise * rng.standard_normal()),
            tps_c,
            1000,
            epochs,
        )
        for i in range(5)
    ]
    curve = [(100, 3.6), (200, 3.3), (300, 3.0)]
    return compare_runs(c, b, curves=[curve] * 5)


@pytest.mark.parametrize(
    "effect, noise, tps_c, headline, extra",
    [
        (-0.03, 0.005, 500_000.0, "RA v5 WINS", "Welch, unpaired"),
        (0.03, 0.005, 500_000.0, "RA v5 LOSES", "Tune initialisation"),
        (0.0, 0.0005, 500_000.0, "PARITY", "8+ hours"),
        (0.0, 0.05, 500_000.0, "INCONCLUSIVE", "Seeds needed: about"),
        (-0.03, 0.005, 400_000.0, "INVALID", "❌ Speed gap"),
    ],
)
def test_final_comparison_outcomes(effect, noise, tps_c, headline, extra):
    v = _multi(effect, noise, tps_c)
    text = final_comparison(v)
    assert headline in text and extra in text
    assert f"Recommendation: {v.recommendation}" in text
    if v.interval is not None:
        assert "95% interval" in text


def test_final_comparison_epochs_invalid_and_labelled():
    v = _multi(-0.03, 0.005, epochs=3.0, paired=False)
    text = final_comparison(v)
    assert "INVALID: past one epoch" in text and "one epoch" in v.recommendation
    c = [Sample(s, s, 2.9, 500_000.0, 1000, 3.0) for s in range(3)]
    b = [Sample(9 + s, s, 3.0 + 0.01 * s, 500_000.0, 1000, 3.0) for s in range(3)]
    text = final_comparison(compare_runs(c, b, allow_epochs=True, wall_clock=False))
    assert "⚠️ Labelled: past one epoch" in text and "WINS" in text


def test_final_comparison_other_candidate_name():
    c = [Sample(10 + i, 50 + i, 2.9 + 0.001 * i, 500_000.0) for i in range(4)]
    b = [Sample(i, i, 3.0 + 0.001 * i, 500_000.0) for i in range(4)]
    v = compare_runs(c, b, candidate_attn="ra_beta", wall_clock=False)
    text = final_comparison(v)
    assert "ra_beta WINS" in text and "INTEGRATE ra_beta" in text
    assert v.to_dict()["recommendation"] == "INTEGRATE ra_beta into the training pipeline"


def test_ascii_fallback():
    text = final_comparison(seed_example())
    ascii_text = for_stream(text, "ascii")
    ascii_text.encode("ascii")
    assert "[OK] Speed gap" in ascii_text
    assert for_stream(text, "utf-8") == text


# ---------------------------------------------------------------- gates


def gate_rows(dead=False):
    rows = []
    for step in (0, 50, 100):
        for layer in range(2):
            for head in range(4):
                f = 0.0 if dead else step / 100
                rows.append((step, layer, head, "w_std", 1.0 - 0.05 * f))
                rows.append((step, layer, head, "w_rec", 0.02 * f * (layer * 4 + head + 1)))
    return rows


def test_gate_tables():
    text = gate_tables(analyse_gates(gate_rows()))
    assert "w_rec" in text and "w_std" in text
    assert "layer" in text and "h3" in text
    assert "Δ from init" in text
    assert "*" in text  # heads using reciprocity are marked
    assert "w_rec: 6/8 heads above 0.05" in text
    assert "DEAD" not in text


def test_gate_tables_dead_gates_are_loud():
    text = gate_tables(analyse_gates(gate_rows(dead=True)))
    first = text.splitlines()[2]
    assert "DEAD GATES" in first and "never moved" in first


# ---------------------------------------------------------------- plots


def test_plot_loss_curves(tmp_path):
    curves = {
        "baseline": [(1, [(0, 5.0), (100, 4.0), (200, 3.5)]), (2, [(0, 5.1), (100, 4.1)])],
        "ra_v5": [(3, [(0, 5.0), (100, 3.9), (200, float("nan"))])],
    }
    out = plot_loss_curves(curves, tmp_path / "loss.png", "Validation loss")
    assert out.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_loss_curves_zooms_on_the_second_half(tmp_path):
    """Two panels: the whole run and its second half with the final values marked; a run
    that stopped in the first half shows its last point there, a lone step-0 point too."""
    from PIL import Image

    curves = {
        "baseline": [(1, [(s, 5.0 - s / 1000) for s in range(0, 2001, 100)])],
        "ra_v5": [(2, [(0, 5.0), (300, 4.6)]), (3, [(0, 5.1)])],
    }
    out = plot_loss_curves(curves, tmp_path / "loss.png", "Validation loss")
    assert Image.open(out).size == (1300, 550)  # 13 x 5.5 inches at 100 dpi: two panels
    assert plot_loss_curves({"a": [(1, [(0, 2.0)])]}, tmp_path / "one.png").is_file()


def test_plot_loss_curves_shows_both_sides_where_they_end_alike(tmp_path):
    """Paired runs can end on the same value: the later variant's hollow marker leaves the
    earlier one's visible (it hid it before), in both panels."""
    from PIL import Image

    from racli.text.plots import colours

    curves = {"baseline": [(1, [(3, 5.0)])], "ra_v5": [(2, [(3, 5.0)])]}
    out = plot_loss_curves(curves, tmp_path / "alike.png")
    image = Image.open(out).convert("RGB")
    width, height = image.size
    for colour in colours(2):
        rgb = tuple(round(255 * c) for c in colour[:3])
        near = [
            x
            for x in range(width)
            for y in range(60, height - 60)  # the axes, not the title or the legend
            if max(abs(a - b) for a, b in zip(image.getpixel((x, y)), rgb, strict=True)) < 40
        ]
        assert near and min(near) < width / 2 < max(near), rgb  # drawn in either panel


def test_plot_bench_draws_repeats_figures_and_what_did_not_run(tmp_path):
    """Rows with repeats, rows recorded without them (only median and p10-p90), skipped
    and failed rows: drawn, one panel per phase; nothing timed is a ValueError."""
    from PIL import Image

    from racli.bench.plots import plot_bench
    from racli.bench.ranking import TimingRow

    rows = [
        TimingRow("baseline", "eager", "fwd", 1.0, 0.9, 1.2, samples=[0.9, 1.0, 1.1, 1.2]),
        TimingRow("ra_v5", "eager", "fwd", 1.1, 1.0, 1.3),  # recorded before samples
        TimingRow("baseline", "cuda_graph", "fwd", status="skipped", reason="no CUDA"),
        TimingRow("ra_v5", "cuda_graph", "fwd", status="failed", reason="boom"),
        TimingRow("baseline", "eager", "fwd_bwd", 3.0, 2.9, 3.1, samples=[2.9, 3.0, 3.1]),
    ]
    out = plot_bench(rows, tmp_path / "bench.png", "bench run 1")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert Image.open(out).size[0] >= 650
    with pytest.raises(ValueError, match="no timed configuration"):
        plot_bench(rows[2:4], tmp_path / "none.png", "t")
    assert not (tmp_path / "none.png").exists()


def test_plot_best_vs_best_panels_and_nothing_to_draw(tmp_path):
    from racli.bench.plots import plot_best_vs_best
    from racli.bench.ranking import TimingRow

    rows = [
        TimingRow("baseline", "eager", "fwd", 1.0, 0.9, 1.2, samples=[0.9, 1.0, 1.2]),
        TimingRow("ra_v5", "compile", "fwd", 1.1, 1.0, 1.3),
    ]
    out = plot_best_vs_best([("group\nfwd", rows, "1.10x: overhead")] * 4, tmp_path / "b.png", "t")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    empty = [("g", [TimingRow("ra_v5", "eager", "fwd", status="failed")], "")]
    with pytest.raises(ValueError, match="no best timings"):
        plot_best_vs_best(empty, tmp_path / "none.png", "t")


def test_bench_plot_axis_turns_logarithmic_when_whiskers_span_decades():
    """A busy machine's p90 can be 100x its median (seen: 0.33 ms median, 137 ms p90): on
    a linear axis from 0 every box is a line at the bottom, so such a panel is logarithmic."""
    from racli.bench.plots import LOG_SPAN, _scale
    from racli.text.plots import figure

    def box(lo, hi):
        return {"med": lo, "q1": lo, "q3": hi, "whislo": lo, "whishi": hi, "fliers": []}

    ax = figure(4, 3).add_subplot(1, 1, 1)
    assert _scale(ax, [box(0.2, 0.3), box(0.5, 0.8)]) == pytest.approx(0.8 * 0.02)
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    ax = figure(4, 3).add_subplot(1, 1, 1)
    bottom = _scale(ax, [box(0.22, 137.5), box(0.25, 250.0)])
    assert ax.get_yscale() == "log" and 0 < bottom < 0.22 and 137.5 / 0.22 > LOG_SPAN


def test_plot_gates(tmp_path):
    rows = gate_rows()
    rep = analyse_gates(rows)
    p1 = plot_gates(rep, tmp_path / "gates.png", trajectories=trajectories(rows))
    assert p1.read_bytes()[:8] == PNG_SIGNATURE
    p2 = plot_gates(rep, tmp_path / "heat.png")
    assert p2.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        plot_loss_curves({"a": [(1, [(0, 1.0)])]}, tmp_path / "nope" / "x.png", "t")
    with pytest.raises(ValueError, match="does not exist"):
        plot_gates(analyse_gates(gate_rows()), tmp_path / "nope" / "g.png")


def test_plot_nothing_to_draw(tmp_path):
    with pytest.raises(ValueError, match="no loss curves"):
        plot_loss_curves({}, tmp_path / "x.png", "t")
