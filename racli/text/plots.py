"""What every plot shares: the output path check, the figure, the colours, saving
(matplotlib's Agg canvas, imported lazily; PNG, PDF or SVG by the file's suffix)."""

from __future__ import annotations

from pathlib import Path

from racli.errors import BadInput
from racli.text.outputs import PLOT_FORMATS, check_plot_path

Curve = list[tuple[int, float]]


def check_path(path: str | Path) -> Path:
    try:
        return check_plot_path(path)
    except BadInput as exc:
        raise ValueError(str(exc)) from None


def save(fig, p: Path) -> None:
    """Write the figure in the format of the file's suffix (checked by `check_path`), whole
    or not at all (racli.text.outputs.atomic_write)."""
    from racli.text.outputs import atomic_write

    with atomic_write(p, "wb") as fh:
        fig.savefig(fh, format=PLOT_FORMATS[p.suffix.lower()])


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
