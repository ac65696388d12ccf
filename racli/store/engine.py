"""Opening the results store: engine set-up and migrations on open.

SQLite (the default; WAL, a busy timeout, foreign keys) or any SQLAlchemy URL
(PostgreSQL through psycopg 3). Writing opens migrate; `open_store(db,
readonly=True)` never changes the store; a newer schema is refused untouched.
How read-only opening works on SQLite: docs/store.md.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from racli.errors import BadInput, first_line
from racli.store.outage import DEFAULT_WAIT_S

# The newest revision in migrations/versions (tests check that they agree).
HEAD_REVISION = "0008"
BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10
# PostgreSQL: migrations of concurrent openers queue on this advisory lock.
PG_MIGRATION_LOCK = 0x7261_6462  # "radb"


def database_url(db: str) -> str:
    """A filesystem path becomes a SQLite URL; a URL is kept as it is, except that a
    plain PostgreSQL URL (`postgresql://`, `postgres://`) gets ra's driver, psycopg 3."""
    if "://" in db:
        scheme, rest = db.split("://", 1)
        if scheme in ("postgresql", "postgres"):
            return f"postgresql+psycopg://{rest}"
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def shown(db: str) -> str:
    """`db` as messages print it: a URL's password masked."""
    if "://" not in db:
        return db
    try:
        return make_url(db).render_as_string(hide_password=True)
    except Exception:
        return db


def sqlite_path(db: str) -> Path | None:
    url = database_url(db)
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def _sqlite_ro_uri(path: Path, immutable: bool) -> str:
    flag = "immutable=1" if immutable else "mode=ro"
    return f"file:{quote(str(path))}?{flag}"


def make_engine(db: str, *, readonly: bool = False, immutable: bool = False) -> Engine:
    """An engine on `db`. `readonly`: SQLite through a `mode=ro` URI (or
    `immutable=1`), PostgreSQL with read-only transactions."""
    url = database_url(db)
    if url.startswith("sqlite"):
        args = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        path = sqlite_path(db)
        if readonly and path is not None:
            uri = _sqlite_ro_uri(path, immutable)
            engine = create_engine(url, creator=lambda: sqlite3.connect(uri, uri=True, **args))
        else:
            engine = create_engine(url, connect_args=args)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit handling
            # delays it and breaks busy waiting), then set the pragmas.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # No journal_mode here: switching to WAL rewrites the file header,
            # and a database refused by open_store must stay untouched
            # (open_store enables WAL once the schema check has passed).
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):
            write = conn.get_execution_options().get("ra_write")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    connect_args = {}
    if url.startswith("postgresql"):
        if readonly:
            connect_args["options"] = "-c default_transaction_read_only=on"
        if "connect_timeout" not in url:  # an unreachable host: an error, not a hang
            connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


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


def enable_wal(engine: Engine) -> None:
    """Switch a SQLite database to WAL journaling (persistent in the file).

    The switch needs the file to itself. When several processes open a fresh
    database at once, SQLite can answer 'database is locked' at once instead
    of waiting on the busy timeout (a reader that would have to upgrade its
    lock while another process waits for it is refused, not delayed), so the
    switch is retried until the busy timeout has passed.
    """
    if engine.dialect.name != "sqlite":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        raw = engine.raw_connection()
        try:
            dbapi = raw.driver_connection
            if str(dbapi.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                dbapi.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + pause > deadline:
                raise
        finally:
            raw.close()
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


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


@dataclass
class Store:
    """An open results store: an engine and a session factory."""

    db: str
    engine: Engine
    readonly: bool = False
    # how long a recording run waits for this store to be writable again (ra.yaml's
    # db_wait_minutes; racli/store/outage.py)
    wait_s: float = DEFAULT_WAIT_S

    def __post_init__(self) -> None:
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def write_session(self) -> Session:
        """A session whose transactions take the write lock up front (SQLite),
        so that concurrent writers wait on the busy timeout instead of failing."""
        return Session(self.engine.execution_options(ra_write=True), expire_on_commit=False)

    def writing(self):
        """`with store.writing() as conn:` a Core connection in a write transaction."""
        return self.engine.execution_options(ra_write=True).begin()

    def close(self) -> None:
        self.engine.dispose()


def db_error(exc: BaseException) -> str:
    """The first line of a database error: the driver's own message when it has one."""
    return first_line(getattr(exc, "orig", exc))


def in_memory(db: str) -> bool:
    """Whether `db` names a SQLite database in memory (`sqlite://`, `:memory:`), which
    keeps nothing once the process ends."""
    url = database_url(db)
    return url.startswith("sqlite") and sqlite_path(db) is None


def refuse_in_memory(db: str) -> None:
    if in_memory(db):
        raise BadInput(
            f"database {shown(db)} is in memory: it keeps nothing once ra exits; give a "
            f"file path or a server URL"
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
            _sqlite_ro_uri(path, immutable), uri=True, timeout=BUSY_TIMEOUT_MS / 1000
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


def upgraded_copy(path: Path, folder: Path | None = None) -> Engine:
    """An engine on a copy of the SQLite store at `path` in `folder`, migrated to this ra's
    schema; the store itself is only read. Without `folder`, the copy goes to a temporary
    folder removed when the process ends."""
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="ra-read-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    copy = folder / path.name
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dst = sqlite3.connect(str(copy))
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
            conn = sqlite3.connect(_sqlite_ro_uri(path, immutable=False), uri=True, timeout=1)
            try:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    return
            finally:
                conn.close()
    except (OSError, sqlite3.Error):
        return
    for p in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))):
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
