"""The most recent runs of a store, read quickly for shell completion (`ra gates --run
<TAB>`, `ra runs show <TAB>`).

A SQLite store is read with the standard library's sqlite3 alone (no SQLAlchemy:
completion runs at every press of TAB), opened `mode=ro` (or `immutable=1` where
`mode=ro` cannot open it), so completing never writes, migrates or creates
anything. Any other URL is read through a read-only engine. Only columns that every
schema revision has are read, so a store of an older revision completes too.
Nothing here raises: a store that cannot be read completes nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from racli.store.urls import sqlite_ro_uri

#: how many runs completion offers (newest first by start time)
RECENT = 50
TIMEOUT_S = 1.0  # a store locked longer than this completes nothing

_COLUMNS = ("id", "kind", "attn", "status", "seed", "tag", "started_at")


def _sql(kind: str | None, limit: int) -> tuple[str, tuple]:
    where, params = ("WHERE kind = ? ", (kind,)) if kind else ("", ())
    sql = f"SELECT {', '.join(_COLUMNS)} FROM runs {where}ORDER BY started_at DESC, id DESC LIMIT ?"
    return sql, (*params, int(limit))


def _sqlite_file(db: str) -> Path | None:
    """The file of a SQLite location (a path or a sqlite:/// URL), None for other URLs;
    the rule of racli.store.urls.sqlite_path without importing SQLAlchemy."""
    if "://" not in db:
        return Path(db).expanduser()
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if not db.startswith(prefix):
            continue
        rest = db[len(prefix) :].split("?", 1)[0]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


def _read_sqlite(path: Path, sql: str, params: tuple) -> list[tuple]:
    if not path.is_file() or path.stat().st_size == 0:
        return []
    for immutable in (False, True):  # immutable: a WAL store in a folder not ours
        try:
            conn = sqlite3.connect(
                sqlite_ro_uri(path.resolve(), immutable), uri=True, timeout=TIMEOUT_S
            )
        except sqlite3.Error:
            continue
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error:
            continue
        finally:
            conn.close()
    return []


def _read_url(db: str, sql: str, params: tuple) -> list[tuple]:
    from sqlalchemy import text

    from racli.store.connection import make_engine

    names = [f"p{i}" for i in range(len(params))]
    for name in names:
        sql = sql.replace("?", f":{name}", 1)
    engine = make_engine(db, readonly=True)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), dict(zip(names, params)))]
    finally:
        engine.dispose()


def recent_runs(db: str, *, kind: str | None = None, limit: int = RECENT) -> list[dict]:
    """The last `limit` runs (of `kind`, if given), newest first by start time (id breaks
    ties), as dicts of id, kind, attn, status, seed, tag, started_at (text); [] when the
    store cannot be read."""
    sql, params = _sql(kind, limit)
    try:
        path = _sqlite_file(db)
        rows = _read_sqlite(path, sql, params) if path is not None else _read_url(db, sql, params)
    except Exception:  # noqa: BLE001 - completion must never fail loudly
        return []
    out = []
    for r in rows:
        d = dict(zip(_COLUMNS, r))
        d["started_at"] = str(d["started_at"] or "")[:16]
        out.append(d)
    return out


def recent_tags(db: str, *, limit: int = 500) -> list[str]:
    """The distinct tags of the last `limit` runs, most recently used first."""
    seen: dict[str, None] = {}
    for r in recent_runs(db, limit=limit):
        if r["tag"]:
            seen.setdefault(r["tag"], None)
    return list(seen)
