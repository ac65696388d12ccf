"""`ra compare --plot`: loss curves, one colour per variant and one line per run."""

from __future__ import annotations

import math
from pathlib import Path

from racli.text.plots import Curve, check_path, colours, figure, save


def plot_loss_curves(
    curves: dict[str, list[tuple[int, Curve]]],
    path: str | Path,
    title: str = "Validation loss",
    *,
    ylabel: str = "val_loss",
) -> Path:
    """Draw ``variant -> [(run_id, [(step, value)])]`` to a PNG at ``path``."""
    p = check_path(path)
    if not any(points for runs in curves.values() for _, points in runs):
        raise ValueError("no loss curves to plot")
    fig = figure(9, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for colour, (variant, runs) in zip(colours(len(curves)), curves.items(), strict=True):
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
    save(fig, p)
    return p
