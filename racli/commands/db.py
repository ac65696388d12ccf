"""`ra db`: the schema of the results store."""
from __future__ import annotations

import typer

from racli.commands import common

app = typer.Typer(help="Results database schema: upgrade, current revision.", no_args_is_help=True)


def upgrade_db(db: str) -> tuple[str | None, str]:
    """Apply pending migrations; returns (revision before, revision after)."""
    from racli.store.engine import current_revision, open_store, read_revision, sqlite_path

    path = sqlite_path(db)
    before = None
    if path is None or path.exists():
        before = read_revision(db)
    store = open_store(db)
    try:
        return before, current_revision(store.engine)
    finally:
        store.close()


@app.command("upgrade")
def upgrade(db: common.DbOpt = None, config: common.ConfigOpt = None) -> None:
    """Apply pending migrations (ra also does this whenever it opens a database)."""
    cfg = common.config(config)
    location = common.db_location(db, cfg)
    before, after = upgrade_db(location)
    if before == after:
        typer.echo(f"{location}: schema at revision {after} (up to date)")
    else:
        typer.echo(f"{location}: schema upgraded from {before or 'empty'} to {after}")


@app.command("current")
def current(db: common.DbOpt = None, config: common.ConfigOpt = None,
            json: common.JsonOpt = False) -> None:
    """Show the database's schema revision and this ra's newest."""
    from racli.store.engine import HEAD_REVISION, inspect_store

    cfg = common.config(config)
    location = common.db_location(db, cfg)
    rev = inspect_store(location)
    if json:
        common.print_json({"db": location, "revision": rev, "head": HEAD_REVISION,
                           "up_to_date": rev == HEAD_REVISION})
    else:
        state = "up to date" if rev == HEAD_REVISION else f"this ra's newest is {HEAD_REVISION}"
        typer.echo(f"{location}: revision {rev or 'none'} ({state})")
