"""`ra gates`: what the learned gates of one train run did.

Reads the run's `gate_values` rows, analyses them with
:mod:`racli.gate_report` and prints the layer x head tables (or JSON, or a
PNG heatmap with trajectories). Only reads the store; no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from racli.commands import common
from racli.commands.compare import check_plot_path
from racli.errors import BadInput
from racli.runid import check_run_id
from racli.textsafe import visible


def load_gate_rows(store, run_id: int) -> list[tuple[int, int, int, str, float]]:
    """(step, layer, head, name, value) rows of one run, in recording order."""
    from sqlalchemy import select

    from racli.store.models import GateValue

    q = (
        select(GateValue.step, GateValue.layer, GateValue.head, GateValue.name, GateValue.value)
        .where(GateValue.run_id == run_id)
        .order_by(GateValue.step, GateValue.id)
    )
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]


def gates(
    run: Annotated[int, typer.Option("--run", help="Id of a train run (see `ra runs`).")],
    step: Annotated[
        int | None,
        typer.Option(
            "--step", help="Recorded step to show (default: the last).", show_default=False
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a heatmap of the values and their trajectories (.png, .pdf or .svg).",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Learned gate values of a run per layer and head, their movement, dead gates."""
    from racli import gate_report, render
    from racli.store.queries import get_run

    check_run_id(run, "--run")
    check_plot_path(plot)
    cfg = common.config(config)
    store = common.open_db(db, cfg, create=False)
    r = get_run(store, run)
    if r.kind != "train":
        raise BadInput(
            f"run {run} is a {r.kind} run: gate values are recorded by train runs "
            "(see `ra runs --kind train`)"
        )
    rows = load_gate_rows(store, run)
    if not rows:
        attn = r.attn or "?"
        why = (
            f"the {attn} attention has no gates"
            if attn == "baseline"
            else f"none recorded (status {r.status}): gated variants record them at step 0"
        )
        raise BadInput(f"run {run} ({attn}) has no gate values: {why}")
    try:
        report = gate_report.analyse_gates(
            rows,
            step=step,
            ratio_threshold=cfg.gates.reciprocity_threshold,
            moved_tolerance=cfg.gates.moved_tolerance,
        )
    except ValueError as exc:
        raise BadInput(f"run {run}: {exc}") from exc

    written = None
    if plot is not None:
        from racli import plots

        try:
            written = plots.plot_gates(
                report,
                plot,
                trajectories=gate_report.trajectories(rows),
                title=f"run {run} ({r.attn}): learned gates",
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from exc

    if json:
        data = report.to_dict(run, r.attn)
        data["plot"] = str(written) if written else None
        common.print_json(data)
        return
    title = f"LEARNED GATES: run {run} ({r.attn}, {r.status}) at step {report.step}"
    if len(report.steps) > 1:
        title += f" ({len(report.steps)} snapshots, steps {report.steps[0]}..{report.steps[-1]})"
    text = render.gate_tables(report, title=title)
    if written:
        text += f"\n\nPlot written to {written}"
    sys.stdout.write(render.for_stream(visible(text), sys.stdout.encoding) + "\n")
