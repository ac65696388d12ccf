"""`ra runs export`: runs as CSV or JSON, their curves (--metrics), or TensorBoard event
files (--tensorboard); racli/store/export.py and racli/store/tensorboard_export.py do the
work."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from racli.commands import common, runs_common
from racli.text.terminal import visible


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
    kind: runs_common.KindOpt = None,
    attn: runs_common.AttnOpt = None,
    status: runs_common.StatusOpt = None,
    tag: runs_common.TagOpt = None,
    tensorboard: Annotated[
        Optional[str],
        typer.Option(
            "--tensorboard",
            metavar="DIR",
            help="Write train runs as TensorBoard event files, DIR/run_<id>_<attn> "
            "(pip install 'ra\\[tb]').",
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
    from racli.store import export as exporting
    from racli.store.filters import check_filter_text, check_kind_status
    from racli.text.outputs import atomic_write

    check_filter_text(attn=attn, tag=tag, name=names)
    if tensorboard is not None or run_ids:
        from racli.store.tensorboard_export import check_request, export_runs

        check_request(tensorboard, run_ids, kind, metrics or output is not None)
        check_kind_status(kind, status)
        store = runs_common.open_store(ctx, db, config, readonly=True)
        filters = {"attn": attn, "status": status, "tag": tag}
        done = export_runs(store, tensorboard, run_ids, **filters)
        for d in done:
            typer.echo(visible(d.line()))
        if not done:
            typer.echo("ra: no train runs match: nothing written", err=True)
        return
    exporting.check_request(fmt, metrics=metrics, names=names)
    check_kind_status(kind, status)
    exporting.check_output(output, fmt)
    runs_common.check_not_input(ctx, db, config, output, "--output")
    store = runs_common.open_store(ctx, db, config, readonly=True)
    filters = {"kind": kind, "attn": attn, "status": status, "tag": tag}
    if metrics:
        wanted = common.parse_csv_list(names) or None
        if output is None:
            exporting.write_metrics(store, sys.stdout, fmt, names=wanted, **filters)
            return
        with atomic_write(output) as fh:
            n = exporting.write_metrics(store, fh, fmt, names=wanted, **filters)
        typer.echo(visible(f"wrote {n} metric value(s) to {output}"), err=True)
        return
    text, n = exporting.runs_text(store, fmt, **filters)
    if output is None:
        typer.echo(text, nl=False)
    else:
        with atomic_write(output) as fh:
            fh.write(text)
        typer.echo(visible(f"wrote {n} run(s) to {output}"), err=True)
