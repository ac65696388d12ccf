"""`ra runs`: list, show, diff, tag, exclude / include, delete and export runs.

Parse -> call -> print over racli.store (queries, run_details, run_diff, manage) and
racli.text.runs (the table and the page). Those are imported when a command runs, so
that `ra --help` loads no database code; no torch. `export` is in runs_export.py,
the commands that change runs in runs_manage.py, their shared options in
runs_common.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from racli.commands import common, completers, runs_common, runs_export, runs_manage, sample
from racli.errors import BadInput
from racli.names import MAX_RUN_ID, check_run_id
from racli.text.outputs import check_plot_path
from racli.text.terminal import visible

app = typer.Typer(
    help="List recorded runs (newest first by start time); show, diff, tag, exclude, include, "
    "delete, export.",
    invoke_without_command=True,
)


@app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    kind: runs_common.KindOpt = None,
    attn: runs_common.AttnOpt = None,
    status: runs_common.StatusOpt = None,
    tag: runs_common.TagOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Show at most N runs (0: all).", min=0, max=MAX_RUN_ID)
    ] = 50,
    sort: Annotated[
        Optional[str],
        typer.Option(
            "--sort",
            help="Order by FIELD, ascending; -FIELD descends (default -started: newest "
            "first). Fields: started, finished, id, kind, attn, status, seed, tag, val_loss, "
            "tokens_per_s, iterations, tokens, epochs, train_seconds.",
            metavar="[-]FIELD",
            show_default=False,
            autocompletion=completers.complete_sort,
        ),
    ] = None,
    tsv: Annotated[
        bool,
        typer.Option(
            "--tsv",
            help="Tab-separated values with raw numbers, also on a terminal (a pipe gets "
            "them anyway).",
        ),
    ] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """List runs, newest first by start time (a `running` run with a stale heartbeat shows
    as crashed); --sort orders by another field."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"db": db, "config": config}
        return
    from racli.store.filters import check_filter_text, check_kind_status
    from racli.store.queries import parse_sort, run_rows
    from racli.text.runs import print_runs_table

    check_kind_status(kind, status)
    check_filter_text(attn=attn, tag=tag, sort=sort)
    parse_sort(sort)
    if json and tsv:
        raise BadInput("give --json or --tsv, not both")
    store = runs_common.open_store(ctx, db, config, readonly=True)
    rows = run_rows(
        store, kind=kind, attn=attn, status=status, tag=tag, limit=limit or None, sort=sort
    )
    if json:
        common.print_json(rows)
    elif not rows:
        filtered = any((kind, attn, status, tag))
        note = "no runs recorded" + (" match the filters" if filtered else "")
        if tsv:  # a script reads the header alone; the note goes to stderr
            print_runs_table(rows, sort=sort, tsv=True)
        typer.echo(note, err=tsv)
    else:
        print_runs_table(rows, sort=sort, tsv=tsv)


def show(
    ctx: typer.Context,
    run_id: runs_common.RunArg,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot",
            help="Also draw the run: a bench run's repeats (a panel per phase), a train "
            "run's train and val loss curves, a calibration's seconds per step by round "
            "(.png, .pdf or .svg).",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Everything about one run: figures, code, environment, metrics, timings, config."""
    from racli.store import run_details
    from racli.store.columns import ENV_SHOWN, SHOW_FIELDS
    from racli.text.runs import show_text

    check_run_id(run_id)
    check_plot_path(plot)
    runs_common.check_not_input(ctx, db, config, plot, "--plot")
    store = runs_common.open_store(ctx, db, config, readonly=True)
    try:
        d = run_details.show(store, run_id)
        written = _plot_run(store, d, plot) if plot is not None else None
    finally:
        store.close()
    if json:
        common.print_json({**d, "plot": str(written)} if written else d)
    else:
        typer.echo(visible(show_text(d, fields=SHOW_FIELDS, env_fields=ENV_SHOWN)))
        if written:
            typer.echo(visible(f"Plot written to {written}"))


def _plot_run(store, d: dict, path: Path) -> Path:
    """`runs show --plot`: a bench run's timings, a calibration's rounds, or a train run's
    loss curves; BadInput when the run holds nothing to draw."""
    from racli.store.queries import metric_points

    run_id = d["id"]
    try:
        if d["kind"] == "bench":
            from racli.bench.plots import plot_bench, title
            from racli.bench.ranking import TimingRow

            rows = [TimingRow(**t) for t in d["timings"]]
            return plot_bench(rows, path, title(run_id, rows))
        if d["kind"] == "calibration":
            return _plot_calibration(store, d, path)
        from racli.compare.plots import plot_loss_curves

        curves = {
            name: [(run_id, points)]
            for name in ("train_loss", "val_loss")
            if (points := metric_points(store, [run_id], name)[run_id])
        }
        if not curves:
            raise BadInput(f"run {run_id} has no loss curve recorded: no plot written")
        label = f"run {run_id} ({d['kind']}, {d.get('attn') or '-'}, {d['status']})"
        return plot_loss_curves(curves, path, label, ylabel="loss")
    except ValueError as exc:
        raise BadInput(f"run {run_id}: {exc}: no plot written") from exc


def _plot_calibration(store, d: dict, path: Path) -> Path:
    """A calibration run: each arm's seconds per step, round by round (the warm-up the
    ratio's rounds were cut for shows as a drift), the ratios and their intervals in the
    title."""
    from racli.compare.plots import plot_loss_curves
    from racli.store.queries import metric_points

    run_id = d["id"]
    arms = sorted(n.split(":", 1)[1] for n in d["metrics"] if n.startswith("s_per_step:"))
    if not arms:
        raise BadInput(f"run {run_id} has no timed rounds recorded: no plot written")
    curves = {
        a: [(run_id, metric_points(store, [run_id], f"s_per_step:{a}")[run_id])] for a in arms
    }
    last = {n: m.get("last") for n, m in d["metrics"].items()}
    ratios = [
        f"{a} x{last[f'speed_ratio:{a}']:.4f} [{last[f'speed_ratio_lo:{a}']:.4f}, "
        f"{last[f'speed_ratio_hi:{a}']:.4f}]"
        for a in arms
        if all(
            last.get(f"{k}:{a}") is not None
            for k in ("speed_ratio", "speed_ratio_lo", "speed_ratio_hi")
        )
        and last[f"speed_ratio:{a}"] != 1.0
    ]
    title = f"calibration run {run_id}: seconds per step by round" + (
        f"; {', '.join(ratios)}" if ratios else ""
    )
    return plot_loss_curves(curves, path, title, ylabel="s per step", xlabel="round")


def diff_cmd(
    ctx: typer.Context,
    run_a: Annotated[
        int,
        typer.Argument(metavar="A", help="Run id.", autocompletion=completers.complete_run_id),
    ],
    run_b: Annotated[
        int,
        typer.Argument(metavar="B", help="Run id.", autocompletion=completers.complete_run_id),
    ],
    only: Annotated[
        bool, typer.Option("--only-differences", help="Show the differing rows only.")
    ] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Two runs side by side (run, code, environment, config, final figures), differences marked *."""
    from racli.store import run_details
    from racli.store.run_diff import diff_text, only_differing

    runs_common.check_ids([run_a, run_b])
    diff = run_details.diff(runs_common.open_store(ctx, db, config, readonly=True), run_a, run_b)
    if json:
        common.print_json(only_differing(diff) if only else diff)
    else:
        typer.echo(visible(diff_text(diff, only_differences=only)))


# the subcommands in the order `ra runs --help` lists them
app.command("show")(show)
app.command("export")(runs_export.export)
app.command("tag")(runs_manage.tag_cmd)
app.command("exclude")(runs_manage.exclude_cmd)
app.command("include")(runs_manage.include_cmd)
app.command("delete")(runs_manage.delete_cmd)
app.command("diff")(diff_cmd)
# `ra runs export-weights RUN --out DIR`: with `ra sample`, in racli/commands/sample.py
app.command("export-weights")(sample.export_weights)
