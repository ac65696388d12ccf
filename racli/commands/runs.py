"""`ra runs`: list, show, diff, tag, exclude / include, delete and export runs.

Parse -> call -> print over racli.runs (details, view, export) and
racli.store (queries, manage). Those are imported when a command runs, so
that `ra --help` loads no database code; no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from racli.commands import common, completers, sample
from racli.errors import BadInput
from racli.names import check_run_id
from racli.text.terminal import one_line, visible

app = typer.Typer(
    help="List recorded runs (newest first by start time); show, diff, tag, exclude, include, "
    "delete, export.",
    invoke_without_command=True,
)

KindOpt = Annotated[
    Optional[str],
    typer.Option(
        "--kind",
        help="bench, train or calibration.",
        show_default=False,
        autocompletion=completers.complete_kind,
    ),
]
AttnOpt = Annotated[
    Optional[str],
    typer.Option(
        "--attn",
        help="Attention variant (train runs).",
        show_default=False,
        autocompletion=completers.complete_attention,
    ),
]
StatusOpt = Annotated[
    Optional[str],
    typer.Option(
        "--status",
        help="running, finished, failed, interrupted, diverged or crashed.",
        show_default=False,
        autocompletion=completers.complete_status,
    ),
]
TagOpt = Annotated[
    Optional[str],
    typer.Option(
        "--tag",
        help="Only runs with this tag.",
        show_default=False,
        autocompletion=completers.complete_tag,
    ),
]
IdsArg = Annotated[
    list[int],
    typer.Argument(
        help="Run id(s).", show_default=False, autocompletion=completers.complete_run_id
    ),
]
RunArg = Annotated[int, typer.Argument(help="Run id.", autocompletion=completers.complete_run_id)]


def _store(ctx: typer.Context, db, config, *, readonly: bool):
    """The store of `--db` (given here or before the subcommand); writing: must exist."""
    parent = ctx.obj or {}
    cfg = common.config(config or parent.get("config"))
    db = db or parent.get("db")
    return (
        common.open_db(db, cfg, readonly=True)
        if readonly
        else common.open_db(db, cfg, create=False)
    )


def _check_ids(run_ids) -> None:
    for run_id in run_ids:
        check_run_id(run_id)


@app.callback(invoke_without_command=True)
def runs(
    ctx: typer.Context,
    kind: KindOpt = None,
    attn: AttnOpt = None,
    status: StatusOpt = None,
    tag: TagOpt = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Show at most N runs (0: all).", min=0)
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
    from racli.runs.view import print_runs_table
    from racli.store.filters import check_kind_status
    from racli.store.queries import parse_sort, run_rows

    check_kind_status(kind, status)
    parse_sort(sort)
    if json and tsv:
        raise BadInput("give --json or --tsv, not both")
    store = _store(ctx, db, config, readonly=True)
    rows = run_rows(
        store, kind=kind, attn=attn, status=status, tag=tag, limit=limit or None, sort=sort
    )
    if json:
        common.print_json(rows)
    elif not rows:
        filtered = any((kind, attn, status, tag))
        typer.echo("no runs recorded" + (" match the filters" if filtered else ""))
    else:
        print_runs_table(rows, sort=sort, tsv=tsv)


@app.command("show")
def show(
    ctx: typer.Context,
    run_id: RunArg,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Everything about one run: figures, code, environment, metrics, timings, config."""
    from racli.runs import details
    from racli.runs.view import show_text

    check_run_id(run_id)
    d = details.show(_store(ctx, db, config, readonly=True), run_id)
    if json:
        common.print_json(d)
    else:
        typer.echo(visible(show_text(d)))


@app.command("export")
def export(
    ctx: typer.Context,
    fmt: Annotated[
        str,
        typer.Option("--format", help="csv or json (with --metrics: csv or jsonl, JSON Lines)."),
    ] = "csv",
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Write to FILE (default: stdout).", show_default=False),
    ] = None,
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics",
            help="Export the curves instead of the runs: one row per metric value "
            "(run_id, step, name, value, elapsed_s).",
        ),
    ] = False,
    names: Annotated[
        Optional[str],
        typer.Option(
            "--name",
            help="With --metrics: only these metric names (comma-separated).",
            show_default=False,
        ),
    ] = None,
    kind: KindOpt = None,
    attn: AttnOpt = None,
    status: StatusOpt = None,
    tag: TagOpt = None,
    tensorboard: Annotated[
        Optional[Path],
        typer.Option(
            "--tensorboard",
            metavar="DIR",
            help="Write train runs as TensorBoard event files, DIR/run_<id>_<attn> "
            "(pip install 'ra[tb]').",
            show_default=False,
        ),
    ] = None,
    run_ids: Annotated[
        Optional[list[int]],
        typer.Argument(
            metavar="[RUNS]...",
            help="With --tensorboard: these runs (default: the train runs the filters match).",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Export runs with their final figures as CSV or JSON, (--metrics) their curves, or
    (--tensorboard) TensorBoard event files."""
    from racli.runs import export as exporting
    from racli.store.filters import check_kind_status

    if tensorboard is not None or run_ids:
        from racli.runs.tensorboard import export_runs

        _check_tensorboard_request(tensorboard, run_ids, kind, metrics or output is not None)
        check_kind_status(kind, status)
        store = _store(ctx, db, config, readonly=True)
        filters = {"attn": attn, "status": status, "tag": tag}
        for done in export_runs(store, tensorboard, run_ids, **filters):
            typer.echo(visible(done.line()))
        return
    exporting.check_request(fmt, metrics=metrics, names=names)
    check_kind_status(kind, status)
    exporting.check_output(output, fmt)
    store = _store(ctx, db, config, readonly=True)
    filters = {"kind": kind, "attn": attn, "status": status, "tag": tag}
    if metrics:
        wanted = common.parse_csv_list(names) or None
        if output is None:
            exporting.write_metrics(store, sys.stdout, fmt, names=wanted, **filters)
            return
        with exporting.atomic_output(output) as fh:
            n = exporting.write_metrics(store, fh, fmt, names=wanted, **filters)
        typer.echo(f"wrote {n} metric value(s) to {output}", err=True)
        return
    text, n = exporting.runs_text(store, fmt, **filters)
    if output is None:
        typer.echo(text, nl=False)
    else:
        with exporting.atomic_output(output) as fh:
            fh.write(text)
        typer.echo(f"wrote {n} run(s) to {output}", err=True)


def _check_tensorboard_request(folder, run_ids, kind, other_output: bool) -> None:
    """BadInput for a --tensorboard export asked for with what does not go with it."""
    if folder is None:
        raise BadInput("run ids go with --tensorboard DIR (the other exports take filters)")
    if other_output:
        raise BadInput("--tensorboard writes event files: leave out --metrics and --output")
    if kind not in (None, "train"):
        raise BadInput(f"--tensorboard exports train runs, not --kind {kind}")
    _check_ids(run_ids or [])
    from racli.text.tensorboard import check_available

    check_available()


# ---- run management ----------------------------------------------------------------


@app.command("tag")
def tag_cmd(
    ctx: typer.Context,
    run_id: RunArg,
    new_tag: Annotated[
        Optional[str], typer.Argument(metavar="TAG", help="The new tag.", show_default=False)
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the run's tag.")] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Set (or replace) a run's tag; --clear removes it."""
    from racli.store.manage import set_tag

    if clear == (new_tag is not None):
        raise BadInput(
            "give either a TAG or --clear" if not clear else "give a TAG or --clear, not both"
        )
    check_run_id(run_id)
    old, new = set_tag(_store(ctx, db, config, readonly=False), run_id, new_tag)
    typer.echo(f"run {run_id}: tag {one_line(old or '(none)')} -> {one_line(new or '(none)')}")


@app.command("exclude")
def exclude_cmd(
    ctx: typer.Context,
    run_ids: IdsArg,
    reason: Annotated[
        str,
        typer.Option(
            "--reason", help="Why (shown by `ra runs` and `ra compare`).", show_default=False
        ),
    ],
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Leave runs out of every verdict; they stay recorded and shown (`ra runs include` undoes it)."""
    from racli.store.manage import set_excluded

    _check_ids(run_ids)
    for r in set_excluded(
        _store(ctx, db, config, readonly=False), run_ids, excluded=True, reason=reason
    ):
        typer.echo(f"run {r.id}: excluded from verdicts ({one_line(reason.strip())})")


@app.command("include")
def include_cmd(
    ctx: typer.Context,
    run_ids: IdsArg,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
) -> None:
    """Count excluded runs in verdicts again."""
    from racli.store.manage import set_excluded

    _check_ids(run_ids)
    for r in set_excluded(_store(ctx, db, config, readonly=False), run_ids, excluded=False):
        done = "included in verdicts again" if r.excluded else "was not excluded (nothing to do)"
        typer.echo(f"run {r.id}: {done}")


def confirm_delete(runs, counts: dict, *, yes: bool, interactive: bool | None = None) -> bool:
    """--yes, or a yes at the prompt; without a terminal on stdin and without --yes,
    bad input (a script must say --yes)."""
    if yes:
        return True
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    what = ", ".join(str(r.id) for r in runs[:10]) + (", ..." if len(runs) > 10 else "")
    if not interactive:
        raise BadInput(
            f"refusing to delete {len(runs)} run(s) ({what}) without confirmation: pass --yes"
        )
    return typer.confirm(
        f"Delete {len(runs)} run(s) ({what}) with {counts['metrics']} metric "
        f"value(s), {counts['timings']} timing(s), {counts['gate_values']} gate "
        f"value(s) and their checkpoints?",
        default=False,
    )


@app.command("delete")
def delete_cmd(
    ctx: typer.Context,
    run_ids: IdsArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    cascade: Annotated[
        bool,
        typer.Option(
            "--cascade",
            help="Also delete the runs that depend on these (train runs whose budget came "
            "from a calibration, runs resumed from one); without it such a run is refused.",
        ),
    ] = False,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Delete runs for good: their metrics, timings, gate values and checkpoint files too."""
    from racli.store.manage import check_deletable, delete_runs, row_counts

    _check_ids(run_ids)
    store = _store(ctx, db, config, readonly=False)
    runs = check_deletable(store, run_ids, cascade=cascade)
    if not confirm_delete(runs, row_counts(store, [r.id for r in runs]), yes=yes):
        typer.echo("nothing deleted", err=True)
        raise typer.Exit(1)
    out = delete_runs(store, [r.id for r in runs], cascade=cascade)
    if json:
        common.print_json(out.to_dict())
        return
    typer.echo(out.summary())
    for path in out.checkpoints:
        typer.echo(f"removed checkpoint {path}")


@app.command("diff")
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
    from racli.runs import details
    from racli.store.run_diff import diff_text

    _check_ids([run_a, run_b])
    diff = details.diff(_store(ctx, db, config, readonly=True), run_a, run_b)
    if json:
        common.print_json(diff)
    else:
        typer.echo(visible(diff_text(diff, only_differences=only)))


# `ra runs export-weights RUN --out DIR`: with `ra sample`, in racli/commands/sample.py
app.command("export-weights")(sample.export_weights)
