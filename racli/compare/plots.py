"""`ra compare --plot`: loss curves, one colour per variant and one line per run; the
whole run on the left, its second half on the right (where the verdict's final values
and the budget check's slopes come from), each run's final value marked."""

from __future__ import annotations

import math
from pathlib import Path

from racli.text.plots import Curve, check_path, colours, figure, save

MARKERS = ("o", "s", "^", "D", "v")


def _finite(points: Curve) -> list[tuple[float, float]]:
    return sorted((s, v) for s, v in points if v is not None and math.isfinite(v))


def plot_loss_curves(
    curves: dict[str, list[tuple[int, Curve]]],
    path: str | Path,
    title: str = "Validation loss",
    *,
    ylabel: str = "val_loss",
    xlabel: str = "step",
) -> Path:
    """Draw ``variant -> [(run_id, [(step, value)])]`` to an image at ``path`` (``xlabel``:
    what the steps count, e.g. a calibration's rounds)."""
    p = check_path(path)
    drawn = {v: [(i, _finite(pts)) for i, pts in runs] for v, runs in curves.items()}
    if not any(pts for runs in drawn.values() for _, pts in runs):
        raise ValueError("no loss curves to plot")
    half = max(s for runs in drawn.values() for _, pts in runs for s, _ in pts) / 2
    fig = figure(13, 5.5)
    whole, end = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for n, (colour, (variant, runs)) in enumerate(
        zip(colours(len(drawn)), drawn.items(), strict=True)
    ):
        label = f"{variant} ({len(runs)} run{'s' if len(runs) != 1 else ''})"
        # a shape of its own, hollow after the first variant: a point where both sides
        # ended alike (paired seeds) shows both markers, not the later one alone
        shape = dict(marker=MARKERS[n % len(MARKERS)], markerfacecolor=None if n == 0 else "none")
        style = dict(color=colour, alpha=0.8, linewidth=1.4, markersize=3 if n == 0 else 5)
        for k, pts in enumerate(pts for _run_id, pts in runs if pts):
            xs, ys = zip(*pts, strict=True)
            few = shape if len(pts) < 3 else {"marker": None}
            whole.plot(xs, ys, label=None if k else label, **few, **style)
            late = [(s, v) for s, v in pts if s >= half] or pts[-1:]
            xs, ys = zip(*late, strict=True)
            end.plot(xs, ys, **(shape if len(late) < 3 else {"marker": None}), **style)
            end.plot(  # the final value
                xs[-1:], ys[-1:], color=colour, markersize=5 if n == 0 else 8, **shape
            )
    fig.suptitle(title, fontsize="medium")  # the whole width: a long title spans both panels
    whole.set_title("whole run", fontsize="medium")
    end.set_title(f"second half ({xlabel}s >= {half:,.0f}), final values marked", fontsize="medium")
    for ax in (whole, end):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    whole.legend(loc="best")
    fig.tight_layout()
    save(fig, p)
    return p
