"""Opening the results store: the checks before it, read-only opening, creation and
migration on open.

Writing opens migrate (racli/store/migrate.py); `open_store(db, readonly=True)` never
changes the store; a newer schema is refused untouched. How read-only opening works on
SQLite: docs/store.md. Engines: racli/store/connection.py; names and URLs:
racli/store/urls.py.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import DBAPIError, OperationalError

from racli.errors import BadInput
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


def _connect(
    db: str, *, readonly: bool = False, immutable: bool = False
) -> tuple[Engine, str | None]:
    """An engine on `db` and its schema revision; bad input when it cannot be read."""
    refuse_in_memory(db)
    path = sqlite_path(db)
    if path is not None and path.is_dir():
        raise BadInput(f"database path {path} is a directory")
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
        return engine, current_revision(engine)
    except DBAPIError as exc:
        engine.dispose()
        raise BadInput(f"cannot open database {shown(db)}: {db_error(exc)}") from exc


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


def _connect_readonly(db: str) -> tuple[Engine, str | None]:
    """A read-only engine on an existing store and its revision; never writes.

    SQLite: `mode=ro` first (it sees committed changes of concurrent writers,
    WAL included). A WAL database whose folder the user cannot write opens in
    `mode=ro` only while its -shm file exists; otherwise `immutable=1` is used,
    which reads the main file alone: allowed only when no -wal file holds
    un-checkpointed changes (those would be invisible)."""
    path = sqlite_path(db)
    if path is None:
        return _connect(db, readonly=True)
    if path.is_dir():
        raise BadInput(f"database path {path} is a directory")
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
    if not os.access(path, os.R_OK):
        raise BadInput(f"cannot read database {path}: permission denied")
    error = _probe_sqlite_ro(path, immutable=False)
    if error is None:
        return _connect(db, readonly=True)
    wal = Path(f"{path}-wal")
    if "file is not a database" in error or "malformed" in error:
        raise BadInput(f"cannot open database {shown(db)}: {error}")
    if wal.exists() and wal.stat().st_size > 0:
        raise BadInput(
            f"cannot read database {path} read-only ({error}): its -wal file holds "
            f"changes not yet in the main file; open it once with write access (or "
            f"copy the folder) to checkpoint them"
        )
    if _probe_sqlite_ro(path, immutable=True) is not None:
        raise BadInput(f"cannot open database {shown(db)}: {error}")
    return _connect(db, readonly=True, immutable=True)


def inspect_store(db: str) -> str | None:
    """The schema revision of an existing store, read-only (None: an empty
    PostgreSQL database). A missing, empty or foreign file is bad input."""
    engine, rev = _connect_readonly(db)
    try:
        if rev is None:
            _refuse_unversioned(engine, db, empty_ok=sqlite_path(db) is None)
        return rev
    finally:
        engine.dispose()


def check_writable(db: str) -> None:
    """BadInput, before anything is created anywhere, when the store at `db` could not be
    opened for writing: in memory, in a folder that does not exist, not a database (or a
    corrupt one), another program's database, a newer schema, a server that refuses the
    connection. Reads only; a SQLite file that does not exist yet is fine."""
    refuse_in_memory(db)
    path = sqlite_path(db)
    if path is not None:
        if path.is_dir():
            raise BadInput(f"database path {path} is a directory")
        if not path.exists():
            if not path.parent.is_dir():
                raise BadInput(
                    f"cannot create database {path}: directory {path.parent} does not exist"
                )
            return
        if path.stat().st_size == 0:
            return
    engine, rev = _connect_readonly(db)
    try:
        _check_known(engine, db, rev)
        if rev is None:
            _refuse_unversioned(engine, db, empty_ok=True)
    finally:
        engine.dispose()


def read_revision(db: str) -> str | None:
    """The schema revision of an existing database, reading only (None: no ra
    schema yet). Used before `ra db upgrade`: an empty file is not an error."""
    path = sqlite_path(db)
    if path is not None and path.is_file() and path.stat().st_size == 0:
        return None
    engine, rev = _connect_readonly(db)
    engine.dispose()
    return rev


def _refuse_unversioned(engine: Engine, db: str, *, empty_ok: bool) -> None:
    """BadInput for a database without an ra schema version (tables of someone
    else, or -- unless `empty_ok` -- nothing at all)."""
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
    if tables:
        raise BadInput(
            f"database {shown(db)} holds tables ({', '.join(sorted(tables)[:4])}) "
            f"but no ra schema version: not an ra database"
        )
    if not empty_ok:
        raise BadInput(
            f"database {shown(db)} holds no ra store yet (record a run with `ra bench` or "
            f"`ra train`, or create the schema with `ra db upgrade`)"
        )


def _check_known(engine: Engine, db: str, rev: str | None) -> None:
    if rev is not None and rev != HEAD_REVISION and rev not in known_revisions():
        engine.dispose()
        raise BadInput(
            f"database {shown(db)} has schema revision {rev}, newer than this ra knows "
            f"(latest {HEAD_REVISION}): upgrade ra to use it"
        )


def _open_readonly(db: str) -> Store:
    engine, rev = _connect_readonly(db)
    try:
        _check_known(engine, db, rev)
        if rev is None:
            _refuse_unversioned(engine, db, empty_ok=False)
        if rev != HEAD_REVISION:
            path = sqlite_path(db)
            if path is None:
                raise BadInput(
                    f"database {shown(db)} has schema revision {rev}, older than this "
                    f"ra's {HEAD_REVISION}: run `ra db upgrade --db {shown(db)}` once "
                    f"(read commands never change a store)"
                )
            engine.dispose()
            engine = upgraded_copy(path)
            sys.stderr.write(
                f"ra: note: {path} has schema revision {rev} (this ra: "
                f"{HEAD_REVISION}); read through an upgraded temporary copy, the "
                f"store itself is unchanged (`ra db upgrade` upgrades it)\n"
            )
    except BaseException:
        engine.dispose()
        raise
    return Store(db=db, engine=engine, readonly=True)


def open_store(
    db: str, *, create: bool = True, migrate: bool = True, readonly: bool = False
) -> Store:
    """Open (and by default create and migrate) the results store at `db`.

    `create=False` refuses a SQLite file that does not exist. `readonly=True`
    (read commands) opens an existing store at the current schema without
    changing anything (see the module's doc). A schema newer than this
    program, or a file that is not a database, is bad input: nothing is touched.
    """
    if readonly:
        return _open_readonly(db)
    path = sqlite_path(db)
    created = path is not None and not path.exists()
    try:
        return _open_writable(db, path, create=create, migrate=migrate)
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


def _open_writable(db: str, path: Path | None, *, create: bool, migrate: bool) -> Store:
    if path is not None:
        if not path.exists():
            if not create:
                raise BadInput(
                    f"no database at {path} (record a run with `ra bench` or "
                    f"`ra train`, or create one with `ra db upgrade`)"
                )
            if not path.parent.is_dir():
                raise BadInput(
                    f"cannot create database {path}: directory {path.parent} does not exist"
                )
        elif not create and path.is_file() and path.stat().st_size == 0:
            # a command that works on recorded runs: an empty file holds none to work on
            raise BadInput(
                f"{path} is an empty file, not an ra store (record a run with `ra bench` or "
                f"`ra train`, or create one with `ra db upgrade`)"
            )
    engine, rev = _connect(db)
    _check_known(engine, db, rev)
    if rev is None:
        try:
            _refuse_unversioned(engine, db, empty_ok=True)
        except BadInput:
            engine.dispose()
            raise
    try:
        enable_wal(engine)
    except (DBAPIError, sqlite3.Error) as exc:
        engine.dispose()
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
    path = sqlite_path(db)
    before = None
    if path is None or path.exists():
        before = read_revision(db)
    store = open_store(db)
    try:
        return before, current_revision(store.engine)
    finally:
        store.close()
