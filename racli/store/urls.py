"""Naming a results store: a path or URL as SQLAlchemy's URL, as messages show it, the
SQLite file it names, and the read-only form of that file's URI."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import make_url

from racli.errors import BadInput


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


#: the files SQLite keeps beside a database (write-ahead log, its index, rollback journal)
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def sqlite_ro_uri(path: Path, immutable: bool) -> str:
    flag = "immutable=1" if immutable else "mode=ro"
    return f"file:{quote(str(path))}?{flag}"


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
