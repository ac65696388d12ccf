"""`ra gates --plot` draws a share in one unit, percent, whether one run or several, and
its colour bars say so."""

from __future__ import annotations

import numpy as np
import pytest

from racli.gates import plots
from racli.gates.aggregate import aggregate_runs
from racli.gates.analysis import analyse_gates, trajectories

SHARES = {(0, 0): 0.0016, (0, 1): 0.25, (1, 0): 0.03, (1, 1): 0.0}


def rows(scale: float = 1.0) -> list[tuple]:
    out = []
    for step, f in ((0, 0.5), (10, 1.0)):
        for (layer, head), v in SHARES.items():
            out.append((step, layer, head, "rec_share", v * f * scale))
            out.append((step, layer, head, "w_std", 1.0))
            out.append((step, layer, head, "w_rec", 0.1 + step / 100))
    return out


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots would save."""
    figs = []
    monkeypatch.setattr(plots, "save", lambda fig, p: figs.append(fig))
    return figs


def _panel(fig, title_start: str):
    (ax,) = [a for a in fig.axes if a.get_title().startswith(title_start)]
    return ax


def _colour_bar_label(fig, ax) -> str:
    """The label of the colour bar drawn for `ax`'s image."""
    (im,) = ax.images
    return im.colorbar.ax.get_ylabel()


def test_one_run_and_several_runs_colour_rec_share_in_percent(tmp_path, drawn):
    one = rows()
    plots.plot_gates(analyse_gates(one), tmp_path / "one.png", trajectories=trajectories(one))
    rep = aggregate_runs(
        {1: rows(), 2: rows(), 3: rows()}, use_threshold=0.05, ratio_threshold=0.05
    )
    plots.plot_gates_runs(rep, tmp_path / "many.png")
    fig_one, fig_many = drawn

    ax = _panel(fig_one, "rec_share (%) at step")
    grid = np.asarray(ax.images[0].get_array())
    assert grid[0, 0] == pytest.approx(0.16) and grid[0, 1] == pytest.approx(25.0)
    assert _colour_bar_label(fig_one, ax) == "rec_share (%)"
    traj = _panel(fig_one, "rec_share over steps")
    assert traj.get_ylabel() == "rec_share (%)"
    assert max(max(line.get_ydata()) for line in traj.lines) == pytest.approx(25.0)

    mean = _panel(fig_many, "mean rec_share")
    grid_many = np.asarray(mean.images[0].get_array())
    np.testing.assert_allclose(grid_many, grid)  # the same heads, the same numbers
    assert _colour_bar_label(fig_many, mean) == "mean rec_share (%)"
    above = _panel(fig_many, "runs above 5%")
    assert _colour_bar_label(fig_many, above) == "runs above the threshold (%)"
    assert np.asarray(above.images[0].get_array())[0, 1] == pytest.approx(100.0)
    assert above.images[0].get_clim() == (0.0, 100.0)


def test_raw_gates_keep_their_own_scale(tmp_path, drawn):
    plots.plot_gates(analyse_gates(rows()), tmp_path / "one.png")
    (fig,) = drawn
    ax = _panel(fig, "w_rec at step")
    assert _colour_bar_label(fig, ax) == "w_rec"
    assert np.nanmax(np.asarray(ax.images[0].get_array())) == pytest.approx(0.2)
    assert plots.unit("rec_share") == (100.0, "%") and plots.unit("rec_effect") == (1.0, "")
