"""`ra db`: the schema of the results store."""
from __future__ import annotations

import typer

from racli.commands import common

app = typer.Typer(help="Results database schema: upgrade, current revision.", no_args_is_help=True)


def read_revision(db: str) -> str | None:
    """The schema revision of an existing database (reads only); a file that is
    not a database, or one that cannot be opened, is bad input."""
    from sqlalchemy.exc import DBAPIError

    from racli.errors import BadInput
    from racli.store.engine import current_revision, make_engine, sqlite_path

    path = sqlite_path(db)
    if path is not None and path.is_dir():
        raise BadInput(f"database path {path} is a directory")
    try:
        engine = make_engine(db)
    except Exception as exc:  # bad URL, missing driver
        raise BadInput(f"cannot open database {db}: {exc}") from exc
    try:
        return current_revision(engine)
    except DBAPIError as exc:
        msg = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise BadInput(f"cannot open database {db}: {msg}") from exc
    finally:
        engine.dispose()


def upgrade_db(db: str) -> tuple[str | None, str]:
    """Apply pending migrations; returns (revision before, revision after)."""
    from racli.store.engine import current_revision, open_store, sqlite_path

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
    from racli.errors import BadInput
    from racli.store.engine import HEAD_REVISION, sqlite_path

    cfg = common.config(config)
    location = common.db_location(db, cfg)
    path = sqlite_path(location)
    if path is not None and not path.exists():
        raise BadInput(f"no database at {path}")
    rev = read_revision(location)
    if json:
        common.print_json({"db": location, "revision": rev, "head": HEAD_REVISION,
                           "up_to_date": rev == HEAD_REVISION})
    else:
        state = "up to date" if rev == HEAD_REVISION else f"this ra's newest is {HEAD_REVISION}"
        typer.echo(f"{location}: revision {rev or 'none'} ({state})")
