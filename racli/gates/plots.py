"""`ra gates --plot`: a heatmap of one run's gates (and their trajectories), or of
several runs' reciprocity measure and the share of runs above the threshold.

One unit everywhere: a share (the use measures, rec_share and rec_norm_ratio, which
the tables print as percentages, and the share of runs above the threshold) is drawn
in percent in both plots, and every colour bar names its quantity and unit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from racli.gates.aggregate import RunsReport
from racli.gates.analysis import USE_MEASURES, GateReport
from racli.text.plots import Curve, check_path, colours, figure, save


def unit(name: str) -> tuple[float, str]:
    """How `name` is drawn: (factor applied to its values, unit); shares in percent."""
    return (100.0, "%") if name in USE_MEASURES else (1.0, "")


def label(name: str) -> str:
    """`name` with its unit, as a colour bar or an axis names it: "rec_share (%)"."""
    u = unit(name)[1]
    return f"{name} ({u})" if u else name


def plot_gates(
    report: GateReport,
    path: str | Path,
    *,
    trajectories: dict[str, dict[tuple[int, int], Curve]] | None = None,
    title: str | None = None,
) -> Path:
    """Heatmaps of the report's gate values (layers x heads, one panel per
    gate name) and, with ``trajectories`` (from
    :func:`racli.gates.analysis.trajectories`), their values over steps below."""
    p = check_path(path)
    names = report.names or sorted({e.name for e in report.entries})
    if not names:
        raise ValueError("no gate values to plot")
    layers, heads = report.layers, report.heads
    n_rows = 2 if trajectories else 1
    ncol = len(names)
    fig = figure(max(5.0, 4.6 * ncol), 4.2 * n_rows)
    li = {la: i for i, la in enumerate(layers)}
    hi = {h: i for i, h in enumerate(heads)}
    for k, name in enumerate(names):
        scale = unit(name)[0]
        grid = np.full((len(layers), len(heads)), np.nan)
        for e in report.entries:
            if e.name == name:
                grid[li[e.layer], hi[e.head]] = e.value * scale
        ax = fig.add_subplot(n_rows, ncol, k + 1)
        finite = grid[np.isfinite(grid)]
        if finite.size and finite.min() < 0 < finite.max():
            m = float(np.abs(finite).max())
            im = ax.imshow(grid, cmap="RdBu_r", vmin=-m, vmax=m, aspect="auto")
        else:
            im = ax.imshow(grid, cmap="viridis", aspect="auto")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(label(name))
        ax.set_title(f"{label(name)} at step {report.step}")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)), [str(h) for h in heads])
        ax.set_yticks(range(len(layers)), [str(la) for la in layers])
        if trajectories and name in trajectories:
            ax2 = fig.add_subplot(n_rows, ncol, ncol + k + 1)
            per_head = trajectories[name]
            palette = colours(max(1, len(layers)))
            seen: set[int] = set()
            for (layer, _head), series in per_head.items():
                if not series:
                    continue
                xs, ys = zip(*series, strict=True)
                c = palette[li.get(layer, 0) % len(palette)]
                ax2.plot(
                    xs,
                    [y * scale for y in ys],
                    color=c,
                    alpha=0.6,
                    linewidth=1,
                    label=f"layer {layer}" if layer not in seen else None,
                )
                seen.add(layer)
            ax2.set_title(f"{name} over steps")
            ax2.set_xlabel("step")
            ax2.set_ylabel(label(name))
            ax2.grid(True, alpha=0.3)
            if 0 < len(seen) <= 12:
                ax2.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save(fig, p)
    return p


def plot_gates_runs(rep: RunsReport, path: str | Path, *, title: str | None = None) -> Path:
    """Two heatmaps (layers x heads) of several runs: the mean of the measure (in the
    unit of :func:`unit`, as one run's plot) and the percentage of runs where the head
    is above the threshold."""
    p = check_path(path)
    if not rep.heads:
        raise ValueError("no heads to plot")
    layers, heads = rep.layers, rep.head_ids
    li = {la: i for i, la in enumerate(layers)}
    hi = {h: i for i, h in enumerate(heads)}
    mean = np.full((len(layers), len(heads)), np.nan)
    above = np.full_like(mean, np.nan)
    for h in rep.heads:
        mean[li[h.layer], hi[h.head]] = h.mean
        above[li[h.layer], hi[h.head]] = 100.0 * h.above / max(1, h.n)
    scale, u = unit(rep.measure)
    fig = figure(max(9.0, 0.5 * len(heads) * 2 + 3), max(4.0, 0.35 * len(layers) + 2))
    panels = (
        (mean * scale, f"mean {rep.measure}", f"mean {label(rep.measure)}", "viridis", None),
        (
            above,
            f"runs above {rep.threshold * scale:g}{u}",
            "runs above the threshold (%)",
            "Greys",
            (0.0, 100.0),
        ),
    )
    for k, (grid, name, bar, cmap, lim) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
        im = ax.imshow(grid, cmap=cmap, aspect="auto", **kw)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label(bar)
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(len(heads)), [str(h) for h in heads])
        ax.set_yticks(range(len(layers)), [str(la) for la in layers])
    fig.suptitle(title or f"{rep.measure} over runs {', '.join(map(str, rep.runs))}")
    fig.tight_layout()
    save(fig, p)
    return p
