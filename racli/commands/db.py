"""`ra db`: the schema of the results store, and merging other stores into it."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from racli.commands import common

app = typer.Typer(
    help="Results database: upgrade, current revision, merge other stores.", no_args_is_help=True
)


@app.command("upgrade")
def upgrade(db: common.DbOpt = None, config: common.ConfigOpt = None) -> None:
    """Apply pending migrations. Writing commands (bench, train, experiment, runs tag /
    exclude / include / delete, db merge) also do it; read commands never change a
    store: they read an older SQLite store through an upgraded temporary copy."""
    from racli.store.engine import upgrade_store

    cfg = common.config(config)
    location = common.db_location(db, cfg)
    before, after = upgrade_store(location)
    where = common.location_text(location)
    if before == after:
        typer.echo(f"{where}: schema at revision {after} (up to date)")
    else:
        typer.echo(f"{where}: schema upgraded from {before or 'empty'} to {after}")


@app.command("current")
def current(
    db: common.DbOpt = None, config: common.ConfigOpt = None, json: common.JsonOpt = False
) -> None:
    """Show the database's schema revision and this ra's newest."""
    from racli.store.engine import inspect_store
    from racli.store.migrate import HEAD_REVISION

    cfg = common.config(config)
    location = common.db_location(db, cfg)
    rev = inspect_store(location)
    if json:
        common.print_json(
            {
                "db": common.location_text(location),
                "revision": rev,
                "head": HEAD_REVISION,
                "up_to_date": rev == HEAD_REVISION,
            }
        )
    else:
        state = "up to date" if rev == HEAD_REVISION else f"this ra's newest is {HEAD_REVISION}"
        typer.echo(f"{common.location_text(location)}: revision {rev or 'none'} ({state})")


@app.command("merge")
def merge(
    sources: Annotated[
        list[str],
        typer.Argument(
            metavar="SOURCE",
            help="Stores to import runs from: SQLite paths or SQLAlchemy URLs.",
            show_default=False,
        ),
    ],
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Import the runs of other stores (with metrics, timings, gate values), matched by run
    uuid: merging twice changes nothing; a run that is newer in a source (an interrupted run
    finished since) replaces the older copy. One transaction per run; sources are only read."""
    from racli.store.merge import merge_stores, report_lines, totals
    from racli.store.urls import shown

    cfg = common.config(config)
    target = common.db_location(db, cfg)
    quiet = json or not sys.stderr.isatty()
    results = merge_stores(
        target, sources, progress=None if quiet else lambda msg: typer.echo(msg, err=True)
    )
    if json:
        common.print_json(
            {
                "target": shown(target),
                "sources": [r.to_dict() for r in results],
                "total": totals(results),
            }
        )
        return
    for line in report_lines(results, target):
        typer.echo(line)
