"""Engines on a results store and the `Store` that holds one.

SQLite (the default; WAL, a busy timeout, foreign keys) or any SQLAlchemy URL
(PostgreSQL through psycopg 3); `readonly` engines never write.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from racli.errors import first_line
from racli.store.outage import DEFAULT_WAIT_S
from racli.store.urls import database_url, sqlite_path, sqlite_ro_uri

BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10

#: the key of what a JSON column holds when its text is not JSON (a row damaged outside ra)
UNREADABLE = "_unreadable_json"


def loads_kept(text: str):
    """A JSON column's value; text that is not JSON (SQLite stores any text) comes back as
    {UNREADABLE: text}, so that one damaged row does not stop every read of the store."""
    try:
        return json.loads(text)
    except ValueError:
        return {UNREADABLE: text}


def make_engine(db: str, *, readonly: bool = False, immutable: bool = False) -> Engine:
    """An engine on `db`. `readonly`: SQLite through a `mode=ro` URI (or
    `immutable=1`), PostgreSQL with read-only transactions."""
    url = database_url(db)
    if url.startswith("sqlite"):
        args = {"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        path = sqlite_path(db)
        if readonly and path is not None:
            uri = sqlite_ro_uri(path, immutable)
            engine = create_engine(
                url,
                creator=lambda: sqlite3.connect(uri, uri=True, **args),
                json_deserializer=loads_kept,
            )
        else:
            engine = create_engine(url, connect_args=args, json_deserializer=loads_kept)

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
