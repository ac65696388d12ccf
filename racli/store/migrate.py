"""The store's schema: its revision, Alembic migrations (one migrator at a time), and an
upgraded copy of an older SQLite store for reading."""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy import Engine, inspect, text

from racli.store.connection import make_engine
from racli.store.urls import sqlite_ro_uri, sqlite_uri

# The newest revision in migrations/versions (tests check that they agree).
HEAD_REVISION = "0008"
# PostgreSQL: migrations of concurrent openers queue on this advisory lock.
PG_MIGRATION_LOCK = 0x7261_6462  # "radb"


def script_location() -> Path:
    """The Alembic scripts: the repository's top-level `migrations/` folder when
    ra runs from a source checkout, else the packaged copy `racli._migrations`
    (a wheel, or an editable install that maps the name)."""
    package = Path(__file__).resolve().parent.parent
    checkout = package.parent / "migrations"
    if (package.parent / "pyproject.toml").is_file() and (checkout / "env.py").is_file():
        return checkout
    packaged = package / "_migrations"
    if (packaged / "env.py").is_file():
        return packaged
    spec = importlib.util.find_spec("racli._migrations")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    raise RuntimeError("ra's migration scripts are missing from this installation")


def _alembic_config(connection=None):
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def known_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return [r.revision for r in script.walk_revisions()]


def _migrate(engine: Engine, action: str, revision: str) -> None:
    """Run an Alembic command in one write transaction.

    SQLite: the transaction takes the write lock up front (BEGIN IMMEDIATE),
    so processes opening a fresh database at once migrate one after the
    other instead of failing with 'database is locked' (PostgreSQL: an
    advisory lock does the same); and foreign-key
    enforcement is off while it runs, because batch migrations rebuild a
    table (copy, DROP, rename) and a DROP of `runs` with enforcement on
    would cascade-delete every metric, timing and gate value.
    """
    from alembic import command

    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        dbapi = None
        if sqlite:
            conn.execution_options(ra_write=True)
            dbapi = conn.connection.driver_connection
            dbapi.execute("PRAGMA foreign_keys=OFF")  # only effective outside a transaction
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    # one migrator at a time; the next one finds the schema done
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
                getattr(command, action)(_alembic_config(conn), revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(
                            f"migration to {revision} broke foreign keys: {broken[:3]}"
                        )
        finally:
            if dbapi is not None:
                dbapi.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: Engine, revision: str = "head") -> None:
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    _migrate(engine, "downgrade", revision)


def upgraded_copy(path: Path, folder: Path | None = None, *, immutable: bool = False) -> Engine:
    """An engine on a copy of the SQLite store at `path` in `folder`, migrated to this ra's
    schema; the store itself is only read (`mode=ro`, or `immutable=1` where its folder
    cannot be written: racli.store.engine.readonly_mode). Without `folder`, the copy goes
    to a temporary folder removed when the process ends."""
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="ra-read-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    copy = folder / path.name
    src = sqlite3.connect(sqlite_ro_uri(path, immutable), uri=True)
    dst = sqlite3.connect(sqlite_uri(copy), uri=True)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    engine = make_engine(str(copy))
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine
