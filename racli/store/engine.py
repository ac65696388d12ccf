"""Opening the results store: the checks before it, read-only opening, creation and
migration on open.

Writing opens migrate (racli/store/migrate.py); `open_store(db, readonly=True)` never
changes the store; a newer schema is refused untouched. How read-only opening works on
SQLite: docs/store.md. Engines: racli/store/connection.py; names and URLs:
racli/store/urls.py.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sqlite3
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import DateTime, Engine, column, event, inspect, select, table
from sqlalchemy.exc import DBAPIError, OperationalError

from racli.errors import BadInput, first_line
from racli.store.chunks import in_chunks
from racli.store.connection import BUSY_TIMEOUT_MS, Store, db_error, enable_wal, make_engine
from racli.store.migrate import (
    HEAD_REVISION,
    current_revision,
    known_revisions,
    upgrade,
    upgraded_copy,
)
from racli.store.urls import (
    SQLITE_SIDE_FILES,
    refuse_in_memory,
    shown,
    sqlite_path,
    sqlite_ro_uri,
)


class Damaged(BadInput):
    """A SQLite file that is damaged or not a database; `detail` is what SQLite says."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


def is_damage(detail: str) -> bool:
    """Whether a SQLite error says the file is damaged or not a database."""
    return "malformed" in detail or "file is not a database" in detail


def damaged(db: str, detail: str) -> Damaged:
    """The error for the store at `db` that SQLite finds damaged or not a database."""
    if "malformed" not in detail:
        return Damaged(f"cannot open database {shown(db)}: {detail}", detail)
    path = sqlite_path(db)
    where = shlex.quote(str(path)) if path is not None else shown(db)
    return Damaged(
        f"database {shown(db)} is damaged ({detail}): "
        f"`sqlite3 {where} .recover > saved.sql` saves what can still be read",
        detail,
    )


def store_file(db: str) -> Path | None:
    """The SQLite file of `db` (None for a server), refused before anything opens it
    when it is a directory or exists and is not a regular file (a device, pipe or
    socket, which SQLite would hang on or fail on late)."""
    path = sqlite_path(db)
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise BadInput(f"cannot use database {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(mode):
        raise BadInput(f"database path {path} is a directory")
    if not stat.S_ISREG(mode):
        raise BadInput(f"database {path} is not a regular file (a device, pipe or socket)")
    return path


def _connect(
    db: str, *, readonly: bool = False, immutable: bool = False
) -> tuple[Engine, str | None]:
    """An engine on `db` and its schema revision; bad input when it cannot be read.
    Damage SQLite meets later through the engine is bad input naming the store."""
    refuse_in_memory(db)
    store_file(db)
    try:
        engine = make_engine(db, readonly=readonly, immutable=immutable)
    except ModuleNotFoundError as exc:
        hint = " (pip install 'ra[postgres]')" if "psycopg" in str(exc) else ""
        raise BadInput(
            f"cannot open database {shown(db)}: the database driver is not installed: {exc}{hint}"
        ) from exc
    except Exception as exc:  # bad URL
        raise BadInput(f"cannot open database {shown(db)}: {exc}") from exc
    try:
        rev = current_revision(engine)
    except DBAPIError as exc:
        engine.dispose()
        if is_damage(db_error(exc)):
            raise damaged(db, db_error(exc)) from exc
        raise BadInput(f"cannot open database {shown(db)}: {db_error(exc)}") from exc
    _watch_damage(engine, db)
    return engine, rev


def _watch_damage(engine: Engine, db: str) -> None:
    """Make an error of a damaged SQLite store, met while a command works, bad input
    naming the store (not a failure of the command)."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "handle_error")
    def _damage(context) -> None:
        detail = first_line(context.original_exception)
        if isinstance(context.original_exception, sqlite3.DatabaseError) and is_damage(detail):
            raise damaged(db, detail)


def _probe_sqlite_ro(path: Path, immutable: bool) -> str | None:
    """None when SQLite can read `path` this way, else the error text."""
    try:
        conn = sqlite3.connect(
            sqlite_ro_uri(path, immutable), uri=True, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None


def readonly_mode(path: Path, name: str) -> bool:
    """How SQLite reads the file at `path` without writing: `mode=ro` (False) or
    `immutable=1` (True). BadInput naming it `name` when neither can: permission
    denied, damaged or not a database (`Damaged`), un-checkpointed WAL changes.

    `mode=ro` comes first (it sees committed changes of concurrent writers, WAL
    included). A WAL database whose folder the user cannot write opens in `mode=ro`
    only while its -shm file exists; otherwise `immutable=1` is used, which reads the
    main file alone: allowed only when no -wal file holds un-checkpointed changes
    (those would be invisible)."""
    if not os.access(path, os.R_OK):
        raise BadInput(f"cannot read database {name}: permission denied")
    error = _probe_sqlite_ro(path, immutable=False)
    if error is None:
        return False
    if is_damage(error):
        raise damaged(name, error)
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise BadInput(
            f"cannot read database {path} read-only ({error}): its -wal file holds "
            f"changes not yet in the main file; open it once with write access (or "
            f"copy the folder) to checkpoint them"
        )
    if _probe_sqlite_ro(path, immutable=True) is not None:
        raise BadInput(f"cannot open database {name}: {error}")
    return True


def _connect_readonly(db: str) -> tuple[Engine, str | None, bool]:
    """A read-only engine on an existing store, its revision, and whether it reads the
    file `immutable=1` (see `readonly_mode`); never writes."""
    path = store_file(db)
    if path is None:
        return (*_connect(db, readonly=True), False)
    if not path.exists():
        raise BadInput(
            f"no database at {path} (record a run with `ra bench` or `ra train`, "
            f"or create one with `ra db upgrade`)"
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadInput(f"cannot read database {path}: {exc.strerror}") from exc
    if size == 0:
        raise BadInput(f"database {path} is an empty file: not an ra store")
    immutable = readonly_mode(path, shown(db))
    return (*_connect(db, readonly=True, immutable=immutable), immutable)


def inspect_store(db: str) -> str | None:
    """The schema revision of an existing store, read-only (None: an empty
    PostgreSQL database). A missing, empty or foreign file is bad input."""
    engine, rev, _ = _connect_readonly(db)
    try:
        if rev is None:
            rev = _refuse_unversioned(engine, db, empty_ok=sqlite_path(db) is None)
        return rev
    finally:
        engine.dispose()


def check_writable(db: str) -> None:
    """BadInput, before anything is created anywhere, when the store at `db` could not be
    opened for writing: in memory, in a folder that does not exist, not a database (or a
    corrupt one), another program's database, a newer schema, a server that refuses the
    connection, a file or folder the user cannot write. Reads only; a SQLite file that
    does not exist yet is fine."""
    refuse_in_memory(db)
    path = store_file(db)
    if path is not None:
        _check_file_writable(path)
        if not path.exists() or path.stat().st_size == 0:
            return
    engine, rev, _ = _connect_readonly(db)
    try:
        _check_known(engine, db, rev)
        if rev is None:
            _refuse_unversioned(engine, db, empty_ok=True)  # a revision found then: known
    finally:
        engine.dispose()


def read_revision(db: str) -> str | None:
    """The schema revision of an existing database, reading only (None: no ra
    schema yet). Used before `ra db upgrade`: an empty file is not an error."""
    path = store_file(db)
    if path is not None and path.is_file() and path.stat().st_size == 0:
        return None
    engine, rev, _ = _connect_readonly(db)
    engine.dispose()
    return rev


def _refuse_unversioned(engine: Engine, db: str, *, empty_ok: bool) -> str | None:
    """BadInput for a database without an ra schema version (tables of someone
    else, or -- unless `empty_ok` -- nothing at all). The revision is read again after
    the tables: a process that created the schema between the first read and the tables'
    (several processes opening one fresh store at once) leaves it versioned, and that
    revision is returned (None: still empty)."""
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
    if tables:
        rev = current_revision(engine)
        if rev is not None:
            _check_known(engine, db, rev)
            return rev
        raise BadInput(
            f"database {shown(db)} holds tables ({', '.join(sorted(tables)[:4])}) "
            f"but no ra schema version: not an ra database"
        )
    if not empty_ok:
        raise BadInput(
            f"database {shown(db)} holds no ra store yet (record a run with `ra bench` or "
            f"`ra train`, or create the schema with `ra db upgrade`)"
        )
    return None


def _check_known(engine: Engine, db: str, rev: str | None) -> None:
    if rev is not None and rev != HEAD_REVISION and rev not in known_revisions():
        engine.dispose()
        raise BadInput(
            f"database {shown(db)} has schema revision {rev}, newer than this ra knows "
            f"(latest {HEAD_REVISION}): upgrade ra to use it"
        )


def _open_readonly(db: str) -> Store:
    engine, rev, immutable = _connect_readonly(db)
    try:
        _check_known(engine, db, rev)
        if rev is None:
            rev = _refuse_unversioned(engine, db, empty_ok=False)
        if rev != HEAD_REVISION:
            path = sqlite_path(db)
            if path is None:
                raise BadInput(
                    f"database {shown(db)} has schema revision {rev}, older than this "
                    f"ra's {HEAD_REVISION}: run `ra db upgrade --db {shown(db)}` once "
                    f"(read commands never change a store)"
                )
            engine.dispose()
            engine = upgraded_copy(path, immutable=immutable)
            sys.stderr.write(
                f"ra: note: {path} has schema revision {rev} (this ra: "
                f"{HEAD_REVISION}); read through an upgraded temporary copy, the "
                f"store itself is unchanged (`ra db upgrade` upgrades it)\n"
            )
    except BaseException:
        engine.dispose()
        raise
    return Store(db=db, engine=engine, readonly=True)


@contextlib.contextmanager
def before_migrating(db: str):
    """For a writing command's own checks before it migrates an older SQLite store: the
    store as the current schema has it, read through an upgraded temporary copy (the store
    itself untouched, no note), or None when no migration is pending (the store is current,
    new, empty, or behind a URL). A check that raises leaves the store at its revision."""
    path = store_file(db)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        yield None
        return
    engine, rev, immutable = _connect_readonly(db)
    engine.dispose()
    if rev is None or rev == HEAD_REVISION or rev not in known_revisions():
        yield None  # a newer or foreign schema: the writable open says so
        return
    store = Store(db=db, engine=upgraded_copy(path, immutable=immutable), readonly=True)
    try:
        yield store
    finally:
        store.close()


def check_recorded(db: str, run_ids: Sequence[int]) -> None:
    """BadInput unless the store at `db` holds every run of `run_ids`, read without
    changing the store (no migration, no journal-mode switch)."""
    engine, rev, _ = _connect_readonly(db)
    try:
        _check_known(engine, db, rev)
        if rev is None:
            _refuse_unversioned(engine, db, empty_ok=False)
        _check_run_ids(engine, db, run_ids)
    except (DBAPIError, sqlite3.Error) as exc:
        raise BadInput(f"cannot read database {shown(db)}: {db_error(exc)}") from exc
    finally:
        engine.dispose()


def open_store(
    db: str,
    *,
    create: bool = True,
    migrate: bool = True,
    readonly: bool = False,
    run_ids: Sequence[int] = (),
    run_check: Callable[[dict[int, RunBrief]], None] | None = None,
) -> Store:
    """Open (and by default create and migrate) the results store at `db`.

    `create=False` refuses a SQLite file that does not exist. `readonly=True`
    (read commands) opens an existing store at the current schema without
    changing anything (see the module's doc). A schema newer than this
    program, or a file that is not a database, is bad input: nothing is touched.
    `run_ids`: the runs a writing command works on; one the store does not hold is
    bad input found before any migration, so an older store given a wrong id stays
    at its schema; `run_check` then gets their (kind, status) for the command's own
    refusals, also before the migration.
    """
    if readonly:
        return _open_readonly(db)
    path = store_file(db)
    created = path is not None and not path.exists()
    try:
        return _open_writable(
            db, path, create=create, migrate=migrate, run_ids=run_ids, run_check=run_check
        )
    except BaseException:
        if created:
            remove_if_empty(path)
        raise


def remove_if_empty(path: Path) -> None:
    """Remove a SQLite database that this process created and that holds no table (its
    creation failed, e.g. on a full disk), with its side files: a failed creation must
    not leave an empty store behind. A database another process has meanwhile filled,
    or one that cannot be read now, is left alone."""
    try:
        if path.stat().st_size > 0:
            conn = sqlite3.connect(sqlite_ro_uri(path, immutable=False), uri=True, timeout=1)
            try:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    return
            finally:
                conn.close()
    except (OSError, sqlite3.Error):
        return
    for p in (path, *(Path(f"{path}{s}") for s in SQLITE_SIDE_FILES)):
        try:
            p.unlink()
        except OSError:
            pass


def _check_file_writable(path: Path) -> None:
    """BadInput when the SQLite file at `path` (or the file to create there) could not be
    written: the file is read-only, or its folder is, where SQLite must create the
    store's -wal and -shm files (or its rollback journal) to write it."""
    folder = path.parent
    if not path.exists():
        if not folder.is_dir():
            raise BadInput(f"cannot create database {path}: directory {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BadInput(f"cannot create database {path}: its folder {folder} is read-only")
        return
    if not os.access(path, os.W_OK):
        raise BadInput(
            f"cannot write database {path}: the database file is read-only (read commands "
            "still work on it)"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(
            f"cannot write database {path}: its folder {folder} is read-only (SQLite "
            f"writes the store's -wal and -shm files there; read commands still work on it)"
        )


#: what a check before migrating gets of each run: columns every schema revision has
class RunBrief(NamedTuple):
    """What a writing command may check of a run before a migration."""

    kind: str
    status: str
    live: bool  # `running` with a fresh heartbeat: a process is writing it now


def _check_run_ids(
    engine: Engine,
    db: str,
    run_ids: Sequence[int],
    check: Callable[[dict[int, RunBrief]], None] | None = None,
) -> None:
    """BadInput naming the first of `run_ids` that the store does not hold, then `check`
    (given {id: RunBrief}) for a command's own refusals. It reads `runs.id`, `kind`,
    `status`, `started_at` and `heartbeat_at` alone, which every revision of the schema
    has, so it runs before a migration (one that would change the tables under a live
    run's writer, perhaps an older ra)."""
    ids = list(dict.fromkeys(int(i) for i in run_ids))
    found: dict[int, RunBrief] = {}
    with engine.connect() as conn:
        if inspect(conn).has_table("runs"):
            for chunk in in_chunks(ids):
                found.update(_briefs(conn, _RUNS.c.id.in_(chunk)))
    missing = [i for i in ids if i not in found]
    if missing:
        raise unknown_runs(db, missing)
    if check is not None:
        check(found)


# the columns of `runs` that every revision of the schema has, read before a migration
_RUNS = table(
    "runs",
    column("id"),
    column("kind"),
    column("status"),
    column("started_at", DateTime()),
    column("heartbeat_at", DateTime()),
)


def _briefs(conn, where) -> dict[int, RunBrief]:
    """{id: RunBrief} of the runs `where` selects (a condition on `_RUNS`)."""
    from racli.store.models import Run
    from racli.store.recorder import is_stale

    out = {}
    for i, kind, status, started_at, heartbeat_at in conn.execute(select(_RUNS).where(where)):
        view = Run(status=status, started_at=started_at, heartbeat_at=heartbeat_at)
        out[i] = RunBrief(kind, status, status == "running" and not is_stale(view))
    return out


def _refuse_live_writers(engine: Engine, db: str, rev: str) -> None:
    """BadInput before a migration while a run of the store is being written (fresh
    heartbeat): its writer, an ra of the store's revision, would meet changed tables
    (a new column it does not fill, a table rebuilt) and its run would stop."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("runs"):
            return
        live = sorted(i for i, b in _briefs(conn, _RUNS.c.status == "running").items() if b.live)
    if live:
        more = f" and {len(live) - 1} more" if len(live) > 1 else ""
        raise BadInput(
            f"cannot migrate database {shown(db)} from revision {rev} to {HEAD_REVISION}: "
            f"run {live[0]}{more} is still being written (fresh heartbeat), perhaps by an "
            f"older ra, whose run would stop on the changed tables; run this again when "
            f"it has ended (nothing was changed)"
        )


def unknown_runs(db: str, missing: Sequence[int]) -> BadInput:
    """The one line for run ids a store does not hold (the first named, the rest counted)."""
    more = f" (and {len(missing) - 1} more unknown id(s))" if len(missing) > 1 else ""
    return BadInput(f"no run with id {missing[0]} in {db}{more}")


def _open_writable(
    db: str,
    path: Path | None,
    *,
    create: bool,
    migrate: bool,
    run_ids: Sequence[int] = (),
    run_check: Callable[[dict[int, RunBrief]], None] | None = None,
) -> Store:
    if path is not None:
        if not path.exists() and not create:
            raise BadInput(
                f"no database at {path} (record a run with `ra bench` or "
                f"`ra train`, or create one with `ra db upgrade`)"
            )
        if not create and path.stat().st_size == 0:
            # a command that works on recorded runs: an empty file holds none to work on
            raise BadInput(
                f"{path} is an empty file, not an ra store (record a run with `ra bench` or "
                f"`ra train`, or create one with `ra db upgrade`)"
            )
        _check_file_writable(path)
    engine, rev = _connect(db)
    _check_known(engine, db, rev)
    try:
        if rev is None:
            rev = _refuse_unversioned(engine, db, empty_ok=True)
        if run_ids:
            _check_run_ids(engine, db, run_ids, run_check)
        if migrate and rev is not None and rev != HEAD_REVISION:
            _refuse_live_writers(engine, db, rev)
        enable_wal(engine)
    except BadInput:
        engine.dispose()
        raise
    except (DBAPIError, sqlite3.Error) as exc:
        engine.dispose()
        if is_damage(db_error(exc)):
            raise damaged(db, db_error(exc)) from exc
        raise BadInput(f"cannot open database {shown(db)}: {db_error(exc)}") from exc
    if migrate and rev != HEAD_REVISION:
        try:
            upgrade(engine)
        except (OperationalError, sqlite3.OperationalError) as exc:
            engine.dispose()
            raise BadInput(f"cannot migrate database {shown(db)}: {db_error(exc)}") from exc
        except BaseException:
            engine.dispose()
            raise
    return Store(db=db, engine=engine)


def upgrade_store(db: str) -> tuple[str | None, str]:
    """Apply pending migrations (`ra db upgrade`); returns (revision before, revision after)."""
    path = store_file(db)
    before = None
    if path is None or path.exists():
        before = read_revision(db)
    store = open_store(db)
    try:
        return before, current_revision(store.engine)
    finally:
        store.close()
