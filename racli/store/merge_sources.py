"""The sources of `ra db merge`: opened read-only and checked before anything is written.

A source is refused (BadInput, one line, the target untouched) when it is missing, not a
regular file, the target itself, unreadable, not a database (or damaged: SQLite files
pass `PRAGMA quick_check` first), another program's database, or of a schema newer than
this ra. SQLite files are read as read commands read a store (`mode=ro`, or `immutable=1`
in a folder the user cannot write: racli.store.engine.readonly_mode). An older SQLite
source is read through an upgraded temporary copy; an older one behind a URL as it is.
Sources are named with their passwords masked (`urls.shown`).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import DBAPIError

from racli.errors import BadInput
from racli.store.connection import db_error, make_engine
from racli.store.engine import Damaged, readonly_mode, store_file
from racli.store.migrate import HEAD_REVISION, current_revision, known_revisions, upgraded_copy
from racli.store.urls import database_url, refuse_in_memory, shown, sqlite_path, sqlite_ro_uri


@dataclass
class _Source:
    db: str
    engine: Engine
    revision: str
    tmpdir: Path | None = None

    @property
    def name(self) -> str:
        """How messages and results name the source (a URL's password masked)."""
        return shown(self.db)

    def close(self) -> None:
        self.engine.dispose()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _readonly_engine(path: Path, immutable: bool = False) -> Engine:
    """A read-only engine on the SQLite file at `path` (`mode=ro`, or `immutable=1`)."""
    return make_engine(str(path), readonly=True, immutable=immutable)


def _damage(path: Path, immutable: bool = False) -> str | None:
    """None when SQLite finds the file sound (`PRAGMA quick_check`), else what it says."""
    try:
        conn = sqlite3.connect(sqlite_ro_uri(path, immutable), uri=True, timeout=30)
        try:
            rows = conn.execute("PRAGMA quick_check(3)").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    found = [
        line.strip()
        for r in rows
        for line in str(r[0]).splitlines()
        if line.strip() and not line.startswith("***")
    ]
    if found == ["ok"]:
        return None
    more = f" and {len(found) - 1} more problem(s)" if len(found) > 1 else ""
    return f"{found[0] if found else 'quick_check failed'}{more}"


def _same_file(path: Path, target: str) -> bool:
    target_path = sqlite_path(target)
    return target_path is not None and target_path.exists() and path.samefile(target_path)


def open_source(db: str, target: str) -> _Source:
    """A read-only view of a source store, at HEAD_REVISION's schema or one readable as is."""
    name = shown(db)
    refuse_in_memory(db)
    path = store_file(db)
    immutable = False
    if path is not None:
        if not path.exists():
            raise BadInput(f"no database at {path}")
        if _same_file(path, target):
            raise BadInput(f"{name} is the target database itself: nothing to merge")
        try:
            immutable = readonly_mode(path, name)
            damage = _damage(path, immutable)
        except Damaged as exc:
            damage = exc.detail
        if damage is not None:
            raise BadInput(f"cannot merge {name}: the file is damaged or not a database ({damage})")
        engine = _readonly_engine(path, immutable)
    else:
        if database_url(db) == database_url(target):
            raise BadInput(f"{name} is the target database itself: nothing to merge")
        try:
            engine = make_engine(db, readonly=True)
        except Exception as exc:
            raise BadInput(f"cannot open database {name}: {exc}") from exc
    try:
        rev = current_revision(engine)
        tables = [] if rev is not None else inspect(engine).get_table_names()
    except DBAPIError as exc:
        engine.dispose()
        raise BadInput(f"cannot open database {name}: {db_error(exc)}") from exc
    if rev is None:
        engine.dispose()
        what = (
            f"holds tables ({', '.join(sorted(tables)[:4])}) but no ra schema version"
            if tables
            else "has no ra schema"
        )
        raise BadInput(f"source {name} {what}: not an ra database")
    if rev != HEAD_REVISION and rev not in known_revisions():
        engine.dispose()
        raise BadInput(
            f"source {name} has schema revision {rev}, newer than this ra knows "
            f"(latest {HEAD_REVISION}): upgrade ra to merge it"
        )
    if rev == HEAD_REVISION or path is None:
        return _Source(db, engine, rev)
    # an older SQLite store: upgrade a temporary copy, never the source
    engine.dispose()
    tmpdir = Path(tempfile.mkdtemp(prefix="ra-merge-"))
    try:
        engine = upgraded_copy(path, tmpdir, immutable=immutable)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return _Source(db, engine, rev, tmpdir)
