"""Plots (PNG, PDF or SVG, by the file's suffix) with matplotlib's Agg canvas (lazy; no pyplot).

* :func:`plot_loss_curves` -- validation-loss curves, one colour per variant,
  one line per run.
* :func:`plot_gates` -- a heatmap of the gate values at the report's step
  (layers x heads, one panel per gate name) and, when trajectories are given,
  each gate's value over the recorded steps.
* :func:`plot_gates_runs` -- several runs: a heatmap of the mean of the
  reciprocity measure (layers x heads) and of the share of runs above the
  threshold.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from racli.gate_report import GateReport, RunsReport

Curve = list[tuple[int, float]]


def _check_path(path: str | Path) -> Path:
    from racli.errors import BadInput
    from racli.names import check_plot_path

    try:
        return check_plot_path(path)
    except BadInput as exc:
        raise ValueError(str(exc)) from None


def _save(fig, p: Path) -> None:
    """Write the figure in the format of the file's suffix (checked by `_check_path`)."""
    from racli.names import PLOT_FORMATS

    fig.savefig(p, format=PLOT_FORMATS[p.suffix.lower()])


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_loss_curves(
    curves: dict[str, list[tuple[int, Curve]]],
    path: str | Path,
    title: str = "Validation loss",
    *,
    ylabel: str = "val_loss",
) -> Path:
    """Draw ``variant -> [(run_id, [(step, value)])]`` to a PNG at ``path``."""
    p = _check_path(path)
    if not any(points for runs in curves.values() for _, points in runs):
        raise ValueError("no loss curves to plot")
    fig = _figure(9, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for colour, (variant, runs) in zip(_colours(len(curves)), curves.items(), strict=True):
        labelled = False
        for _run_id, points in runs:
            pts = sorted((s, v) for s, v in points if v is not None and math.isfinite(v))
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            label = (
                None if labelled else f"{variant} ({len(runs)} run{'s' if len(runs) != 1 else ''})"
            )
            ax.plot(
                xs,
                ys,
                color=colour,
                alpha=0.8,
                linewidth=1.4,
                label=label,
                marker="o" if len(pts) < 3 else None,
                markersize=3,
            )
            labelled = True
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    _save(fig, p)
    return p


def plot_gates(
    report: GateReport,
    path: str | Path,
    *,
    trajectories: dict[str, dict[tuple[int, int], Curve]] | None = None,
    title: str | None = None,
) -> Path:
    """Heatmaps of the report's gate values (layers x heads, one panel per
    gate name) and, with ``trajectories`` (from
    :func:`racli.gate_report.trajectories`), their values over steps below."""
    import numpy as np

    p = _check_path(path)
    names = report.names or sorted({e.name for e in report.entries})
    if not names:
        raise ValueError("no gate values to plot")
    layers, heads = report.layers, report.heads
    n_rows = 2 if trajectories else 1
    ncol = len(names)
    fig = _figure(max(5.0, 4.6 * ncol), 4.2 * n_rows)
    li = {la: i for i, la in enumerate(layers)}
    hi = {h: i for i, h in enumerate(heads)}
    for k, name in enumerate(names):
        grid = np.full((len(layers), len(heads)), np.nan)
        for e in report.entries:
            if e.name == name:
                grid[li[e.layer], hi[e.head]] = e.value
        ax = fig.add_subplot(n_rows, ncol, k + 1)
        finite = grid[np.isfinite(grid)]
        if finite.size and finite.min() < 0 < finite.max():
            m = float(np.abs(finite).max())
            im = ax.imshow(grid, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto")
        else:
            im = ax.imshow(grid, cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(f"{name} at step {report.step}")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)), [str(h) for h in heads])
        ax.set_yticks(range(len(layers)), [str(la) for la in layers])
        if trajectories and name in trajectories:
            ax2 = fig.add_subplot(n_rows, ncol, ncol + k + 1)
            per_head = trajectories[name]
            colours = _colours(max(1, len(layers)))
            seen: set[int] = set()
            for (layer, _head), series in per_head.items():
                if not series:
                    continue
                xs, ys = zip(*series, strict=True)
                c = colours[li.get(layer, 0) % len(colours)]
                ax2.plot(
                    xs,
                    ys,
                    color=c,
                    alpha=0.6,
                    linewidth=1,
                    label=f"layer {layer}" if layer not in seen else None,
                )
                seen.add(layer)
            ax2.set_title(f"{name} over steps")
            ax2.set_xlabel("step")
            ax2.set_ylabel(name)
            ax2.grid(True, alpha=0.3)
            if 0 < len(seen) <= 12:
                ax2.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, p)
    return p


def plot_gates_runs(rep: RunsReport, path: str | Path, *, title: str | None = None) -> Path:
    """Two heatmaps (layers x heads) of several runs: the mean of the measure and
    the fraction of runs where the head is above the threshold."""
    import numpy as np

    p = _check_path(path)
    if not rep.heads:
        raise ValueError("no heads to plot")
    layers, heads = rep.layers, rep.head_ids
    li = {la: i for i, la in enumerate(layers)}
    hi = {h: i for i, h in enumerate(heads)}
    mean = np.full((len(layers), len(heads)), np.nan)
    above = np.full_like(mean, np.nan)
    for h in rep.heads:
        mean[li[h.layer], hi[h.head]] = h.mean
        above[li[h.layer], hi[h.head]] = h.above / max(1, h.n)
    scale = 100.0 if rep.by_measure else 1.0
    fig = _figure(max(9.0, 0.5 * len(heads) * 2 + 3), max(4.0, 0.35 * len(layers) + 2))
    panels = (
        (mean * scale, f"mean {rep.measure}{' (%)' if rep.by_measure else ''}", "viridis", None),
        (
            above,
            f"runs above {rep.threshold * scale:g}{'%' if rep.by_measure else ''}",
            "Greys",
            (0.0, 1.0),
        ),
    )
    for k, (grid, name, cmap, lim) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
        im = ax.imshow(grid, cmap=cmap, aspect="auto", **kw)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)), [str(h) for h in heads])
        ax.set_yticks(range(len(layers)), [str(la) for la in layers])
    fig.suptitle(title or f"{rep.measure} over runs {', '.join(map(str, rep.runs))}")
    fig.tight_layout()
    _save(fig, p)
    return p
