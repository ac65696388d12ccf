"""Opening the results store: engine set-up and migrations on open.

SQLite (the default) gets WAL journaling, a busy timeout and foreign keys;
any other SQLAlchemy URL (e.g. PostgreSQL for a shared team store) is used
as given. Opening a database applies the pending Alembic revisions; a
database whose schema is newer than this program is refused untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from racli.errors import BadInput

# The newest revision in migrations/versions (tests check that they agree).
HEAD_REVISION = "0005"
BUSY_TIMEOUT_MS = 30_000


def database_url(db: str) -> str:
    """A filesystem path becomes a SQLite URL; a URL is kept as it is."""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def sqlite_path(db: str) -> Path | None:
    url = database_url(db)
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def make_engine(db: str) -> Engine:
    url = database_url(db)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000,
                                                   "check_same_thread": False})

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
    return create_engine(url, pool_pre_ping=True)


def _alembic_config(connection=None):
    from alembic.config import Config as AlembicConfig

    import migrations

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
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
    """Switch a SQLite database to WAL journaling (persistent in the file)."""
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        if str(dbapi.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            dbapi.execute("PRAGMA journal_mode=WAL")
    finally:
        raw.close()


def _migrate(engine: Engine, action: str, revision: str) -> None:
    """Run an Alembic command in one write transaction.

    SQLite: the transaction takes the write lock up front (BEGIN IMMEDIATE),
    so processes opening a fresh database at once migrate one after the
    other instead of failing with 'database is locked'; and foreign-key
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
                getattr(command, action)(_alembic_config(conn), revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"migration to {revision} broke foreign keys: {broken[:3]}")
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


def _connect(db: str) -> tuple[Engine, str | None]:
    """An engine on `db` and its schema revision; bad input when it cannot be read."""
    path = sqlite_path(db)
    if path is not None and path.is_dir():
        raise BadInput(f"database path {path} is a directory")
    try:
        engine = make_engine(db)
    except Exception as exc:  # bad URL, missing driver
        raise BadInput(f"cannot open database {db}: {exc}") from exc
    try:
        return engine, current_revision(engine)
    except DBAPIError as exc:
        engine.dispose()
        msg = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise BadInput(f"cannot open database {db}: {msg}") from exc


def read_revision(db: str) -> str | None:
    """The schema revision of an existing database, reading only."""
    engine, rev = _connect(db)
    engine.dispose()
    return rev


def open_store(db: str, *, create: bool = True, migrate: bool = True) -> Store:
    """Open (and by default create and migrate) the results store at `db`.

    `create=False` refuses a SQLite file that does not exist (read commands
    never create databases). A schema newer than this program, or a file that
    is not a database, is bad input: nothing is touched.
    """
    path = sqlite_path(db)
    if path is not None:
        if not path.exists():
            if not create:
                raise BadInput(f"no database at {path} (record a run with `ra bench` or "
                               f"`ra train`, or create one with `ra db upgrade`)")
            if not path.parent.is_dir():
                raise BadInput(f"cannot create database {path}: directory {path.parent} does not exist")
    engine, rev = _connect(db)
    if rev is not None and rev != HEAD_REVISION and rev not in known_revisions():
        engine.dispose()
        raise BadInput(f"database {db} has schema revision {rev}, newer than this ra knows "
                       f"(latest {HEAD_REVISION}): upgrade ra to use it")
    if rev is None:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
        if tables:
            engine.dispose()
            raise BadInput(f"database {db} holds tables ({', '.join(sorted(tables)[:4])}) "
                           f"but no ra schema version: not an ra database")
    try:
        enable_wal(engine)
    except DBAPIError as exc:
        engine.dispose()
        msg = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise BadInput(f"cannot open database {db}: {msg}") from exc
    if migrate and rev != HEAD_REVISION:
        try:
            upgrade(engine)
        except OperationalError as exc:
            engine.dispose()
            raise BadInput(f"cannot migrate database {db}: {exc.orig}") from exc
    return Store(db=db, engine=engine)
