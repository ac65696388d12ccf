"""`ra gates`: does the model use its reciprocal term, and where?

One run (`--run`): its gate values and reciprocity measures per layer and
head, their movement from init, which heads use reciprocity (by the
scale-free measure when recorded, else by raw gate, with a note). Several runs
(`--runs 12,14,16`, or `--tag T [--attn A]`): the mean and spread of the
measure per layer and head, and whether the same heads use it from seed to
seed. Reads the store through :mod:`racli.store.queries`, analyses with
:mod:`racli.gates.analysis`, prints with :mod:`racli.gates.tables`; no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from racli.commands import common
from racli.errors import BadInput
from racli.names import check_plot_path, check_run_id
from racli.text.terminal import visible


def parse_run_ids(text: str) -> list[int]:
    """'12,14,16' or '12-16' (or a mix) -> sorted unique ids; BadInput otherwise."""
    ids: set[int] = set()
    for item in common.parse_csv_list(text):
        lo, sep, hi = item.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise BadInput(f"--runs: {item!r} is not a run id or a range like 12-16") from None
        if a < 1 or b < a:
            raise BadInput(f"--runs: {item!r} is not a run id or a range like 12-16")
        check_run_id(b, "--runs")
        ids.update(range(a, b + 1))
    if not ids:
        raise BadInput("--runs: give run ids, e.g. --runs 12,14,16")
    return sorted(ids)


def _train_run(store, run_id: int):
    from racli.store.queries import get_run

    r = get_run(store, run_id)
    if r.kind != "train":
        raise BadInput(
            f"run {run_id} is a {r.kind} run: gate values are recorded by train runs "
            "(see `ra runs --kind train`)"
        )
    return r


def gates(
    run: Annotated[
        int | None,
        typer.Option("--run", help="Id of a train run (see `ra runs`).", show_default=False),
    ] = None,
    runs: Annotated[
        str | None,
        typer.Option(
            "--runs",
            help="Several train runs to aggregate (seeds): ids like 12,14,16 or 12-16.",
            show_default=False,
        ),
    ] = None,
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag", help="Aggregate the finished train runs with this tag.", show_default=False
        ),
    ] = None,
    attn: Annotated[
        str | None,
        typer.Option("--attn", help="With --tag: only runs of this attention.", show_default=False),
    ] = None,
    step: Annotated[
        int | None,
        typer.Option(
            "--step",
            help="Recorded step to show (default: the last; --run only).",
            show_default=False,
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write a heatmap (and, for one run, trajectories): .png, .pdf or .svg.",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Which heads use the reciprocal term (rec_share), raw gates and their movement;
    across seeds with --runs or --tag."""
    chosen = [name for name, v in (("--run", run), ("--runs", runs), ("--tag", tag)) if v]
    if len(chosen) != 1:
        raise BadInput(
            "give one of --run ID, --runs IDS or --tag TAG"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if attn is not None and tag is None:
        raise BadInput("--attn goes with --tag (to pick runs); --run and --runs name them")
    if attn is not None:
        from racli.names import check_attention

        check_attention(attn)
    if step is not None and run is None:
        raise BadInput("--step goes with --run: several runs are read at their last step")
    if run is not None:
        check_run_id(run, "--run")
    check_plot_path(plot)
    cfg = common.config(config)
    store = common.open_db(db, cfg, readonly=True)
    if run is not None:
        show_run(store, cfg, run, step=step, plot=plot, json=json)
    else:
        ids = parse_run_ids(runs) if runs else _tagged(store, tag, attn)
        show_runs(store, cfg, ids, plot=plot, json=json, label=f"tag {tag!r}" if tag else None)


def _tagged(store, tag: str, attn: str | None) -> list[int]:
    from racli.store.queries import list_runs

    found = list_runs(store, kind="train", tag=tag, attn=attn, status="finished")
    if not found:
        what = f" of attention {attn}" if attn else ""
        raise BadInput(f"no finished train runs{what} with tag {tag!r}")
    return sorted(r.id for r in found)


def show_run(store, cfg, run_id: int, *, step, plot, json) -> None:
    from racli.gates.analysis import analyse_gates, trajectories
    from racli.gates.tables import gate_tables
    from racli.store.queries import gate_rows

    r = _train_run(store, run_id)
    rows = gate_rows(store, run_id)
    if not rows:
        attn = r.attn or "?"
        why = (
            f"the {attn} attention has no gates"
            if attn == "baseline"
            else f"none recorded (status {r.status}): gated variants record them at step 0"
        )
        raise BadInput(f"run {run_id} ({attn}) has no gate values: {why}")
    try:
        report = analyse_gates(
            rows,
            step=step,
            ratio_threshold=cfg.gates.reciprocity_threshold,
            moved_tolerance=cfg.gates.moved_tolerance,
            use_threshold=cfg.gates.use_threshold,
        )
    except ValueError as exc:
        raise BadInput(f"run {run_id}: {exc}") from exc

    written = None
    if plot is not None:
        from racli.gates.plots import plot_gates

        try:
            written = plot_gates(
                report,
                plot,
                trajectories=trajectories(rows),
                title=f"run {run_id} ({r.attn}): gates and reciprocity measures",
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from exc

    if json:
        data = report.to_dict(run_id, r.attn)
        data["plot"] = str(written) if written else None
        common.print_json(data)
        return
    title = f"LEARNED GATES: run {run_id} ({r.attn}, {r.status}) at step {report.step}"
    if len(report.steps) > 1:
        title += f" ({len(report.steps)} snapshots, steps {report.steps[0]}..{report.steps[-1]})"
    _write(gate_tables(report, title=title), written)


def show_runs(store, cfg, ids: list[int], *, plot, json, label: str | None) -> None:
    from racli.gates.aggregate import aggregate_runs
    from racli.gates.tables import runs_tables
    from racli.store.queries import gate_rows_by_run

    found = {run_id: _train_run(store, run_id) for run_id in ids}
    attns = sorted({r.attn or "?" for r in found.values()})
    if len(attns) > 1:
        by = ", ".join(
            f"{a}: {', '.join(str(i) for i, r in found.items() if r.attn == a)}" for a in attns
        )
        raise BadInput(f"the runs mix attentions ({by}): aggregate one attention at a time")
    attn = attns[0]
    rows = gate_rows_by_run(store, ids)
    try:
        rep = aggregate_runs(
            {run_id: rows.get(run_id, []) for run_id in ids},
            use_threshold=cfg.gates.use_threshold,
            ratio_threshold=cfg.gates.reciprocity_threshold,
            moved_tolerance=cfg.gates.moved_tolerance,
        )
    except ValueError as exc:
        raise BadInput(f"runs {', '.join(map(str, ids))} ({attn}): {exc}") from exc
    title = (
        f"RECIPROCITY ACROSS RUNS: {rep.measure} of {attn} runs "
        f"{', '.join(map(str, rep.runs))}"
        + (f" ({label})" if label else "")
        + ", each at its last step"
    )
    written = None
    if plot is not None:
        from racli.gates.plots import plot_gates_runs

        try:
            written = plot_gates_runs(rep, plot, title=title)
        except ValueError as exc:
            raise BadInput(str(exc)) from exc
    if json:
        data = rep.to_dict(attn)
        data["plot"] = str(written) if written else None
        common.print_json(data)
        return
    _write(runs_tables(rep, title=title), written)


def _write(text: str, written) -> None:
    from racli.text.terminal import for_stream

    if written:
        text += f"\n\nPlot written to {written}"
    sys.stdout.write(for_stream(visible(text), sys.stdout.encoding) + "\n")
