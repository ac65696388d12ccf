"""`ra db merge`: bring the runs of other stores into this one.

    results = merge_stores("team.db", ["gpu1.db", "postgresql+psycopg://.../ra"])

Runs are matched by `uuid`: a run the target lacks is added, one the target holds
is updated when the source's copy is newer (an interrupted run that finished since),
else left alone, so merging twice changes nothing. Each run is written in its own
short transaction with its metrics, timings and gate values (a concurrent `ra train`
on a SQLite target waits for one run, never for the whole merge); sources are only
read, each run from one snapshot. The rules: docs/store.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from racli.errors import BadInput, Stopped
from racli.store import references
from racli.store.connection import Store, db_error
from racli.store.engine import Damaged, open_store
from racli.store.merge_sources import _readonly_engine, _Source  # noqa: F401 (tests)
from racli.store.merge_sources import open_source as _open_source
from racli.store.models import Base, Environment, GateValue, Metric, Run, Timing, legacy_uuid
from racli.store.recorder import is_stale
from racli.store.urls import database_url, query_password_masked, shown, sqlite_path

BATCH = 5000  # rows per executemany
# a write transaction holds at most about this many rows or seconds (and one whole run), so a
# concurrent `ra train` on a SQLite target never waits long for the lock
GROUP_ROWS = 100_000
GROUP_S = 1.0
PROGRESS_S = 2.0  # a progress line at most this often (seconds) on a terminal
COUNTS = ("runs", "metrics", "timings", "gate_values", "environments", "already_present")
COUNTS += ("updated", "still_running")
CHILD_TABLES = (("metrics", Metric), ("timings", Timing), ("gate_values", GateValue))
# what the target keeps of its own copy when a newer copy of the run comes in: the user's
# annotations there, and where the run first came from
KEPT_FROM_TARGET = ("tag", "excluded", "exclude_reason", "origin")


@dataclass
class SourceResult:
    """What one source added to the target."""

    source: str  # the source as given, its password masked
    revision: str | None
    runs: int = 0
    metrics: int = 0
    timings: int = 0
    gate_values: int = 0
    environments: int = 0
    already_present: int = 0  # runs the target already held as they are (same uuid)
    updated: int = 0  # runs the target held in an older state, replaced by the source's
    still_running: int = 0  # runs with a fresh heartbeat, not merged

    def to_dict(self) -> dict:
        return asdict(self)

    def added_text(self) -> str:
        return (
            f"{self.runs} run(s), {self.metrics} metric value(s), {self.timings} timing(s), "
            f"{self.gate_values} gate value(s), {self.environments} environment(s)"
        )


def location(db: str) -> str:
    """How a store is named in `origin`: an absolute path (bytes of a name that are not
    UTF-8 written as \\xNN), or its URL without password (in the user part or the query)."""
    path = sqlite_path(db)
    if path is not None:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    try:
        return query_password_masked(
            make_url(database_url(db)).render_as_string(hide_password=True)
        )
    except Exception:  # not a URL SQLAlchemy parses: as given, any password masked
        return shown(db)


class _SourceFailed(Exception):
    """Reading the source failed (wraps the driver's error)."""


def _columns(engine: Engine, table) -> list:
    """The model's columns that the source's table has (all of them at HEAD_REVISION)."""
    present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    return [c for c in table.columns if c.name in present]


def _last_seen(row) -> datetime:
    """When a copy of a run was last written: its end, else its heartbeat, else its start."""
    return max(t for t in (row["finished_at"], row["heartbeat_at"], row["started_at"]) if t)


class _Merge:
    """One source merged into the target: the source's schema read once, then run by run."""

    def __init__(self, store: Store, src: _Source, sconn, progress: Callable[[str], None]):
        self.store, self.src, self.sconn, self.say = store, src, sconn, progress
        self.out = SourceResult(source=src.name, revision=src.revision)
        self.where = location(src.db)
        self.run_cols = _columns(src.engine, Run.__table__)
        self.child_cols = {
            name: [c.name for c in _columns(src.engine, model.__table__) if c.name != "id"]
            for name, model in CHILD_TABLES
        }
        env_cols = _columns(src.engine, Environment.__table__)
        self.envs = {r["id"]: r for r in self._read(select(*env_cols))}
        self.uuid_of_id: dict[int, str] = {}

    def _read(self, query) -> list[dict]:
        try:
            return [dict(r._mapping) for r in self.sconn.execute(query)]
        except DBAPIError as exc:
            raise _SourceFailed(exc) from exc

    def _identity(self, row: dict) -> str:
        if not row.get("uuid"):
            row["uuid"] = legacy_uuid(row["id"], row["kind"], row["config_hash"], row["started_at"])
        return row["uuid"]

    def run(self) -> SourceResult:
        t = Run.__table__
        names = {c.name for c in self.run_cols}
        wanted = ("id", "kind", "config_hash", "started_at", "uuid", "status", "finished_at")
        cols = [t.c[n] for n in (*wanted, "heartbeat_at") if n in names]
        listing = self._read(select(*cols).order_by(t.c.id))
        if self.sconn.in_transaction():
            self.sconn.rollback()
        self.uuid_of_id = {r["id"]: self._identity(r) for r in listing}
        held = self._target_copies()
        todo = []
        for r in listing:  # a first look, without transactions: what cannot need a write
            r.setdefault("heartbeat_at", None)
            have = held.get(r["uuid"])
            if r["status"] == "running" and not is_stale(_RunView(r)):
                self.out.still_running += 1
            elif have is not None and not self._newer(r, have):
                self.out.already_present += 1
            else:
                todo.append(r["id"])
        self.say(f"{self.out.source}: {len(todo)} run(s) to add or update")
        k, said = 0, time.monotonic()
        while k < len(todo):
            k = self._group(todo, k)
            if k < len(todo) and time.monotonic() - said >= PROGRESS_S:
                self.say(f"{self.out.source}: {k:,} of {len(todo):,} run(s) written")
                said = time.monotonic()
        return self.out

    def _target_copies(self) -> dict[str, dict]:
        t = Run.__table__
        cols = (t.c.uuid, t.c.status, t.c.started_at, t.c.finished_at, t.c.heartbeat_at)
        with self.store.engine.connect() as conn:
            return {r["uuid"]: dict(r) for r in conn.execute(select(*cols)).mappings()}

    def _group(self, todo: list[int], k: int) -> int:
        """Write runs todo[k:] in one short transaction (until GROUP_ROWS rows or
        GROUP_S seconds, at least one whole run), each read from one source snapshot;
        returns where the next group starts. The counts go to the result on commit."""
        for attempt in range(2):
            done, delta = k, SourceResult(source="", revision=None)
            try:
                with self.store.writing() as conn:
                    t0, rows = time.monotonic(), 0
                    while done < len(todo) and (
                        done == k or (rows < GROUP_ROWS and time.monotonic() - t0 < GROUP_S)
                    ):
                        rows += self._one(conn, todo[done], delta)
                        done += 1
            except IntegrityError:  # another merge added one of these runs meanwhile
                if attempt:
                    raise
                continue
            for key in COUNTS:
                setattr(self.out, key, getattr(self.out, key) + getattr(delta, key))
            return done
        raise AssertionError("unreachable")

    def _one(self, conn, src_id: int, out: SourceResult) -> int:
        """One run, read from one snapshot of the source; returns the rows written."""
        if self.sconn.in_transaction():
            self.sconn.rollback()
        snapshot = self.sconn.begin()
        try:
            rows = self._read(select(*self.run_cols).where(Run.__table__.c.id == src_id))
            if not rows:  # deleted from the source meanwhile
                return 0
            row = rows[0]
            self._identity(row)
            if row["status"] == "running" and not is_stale(_RunView(row)):
                out.still_running += 1
                return 0
            return self._write(conn, row, out)
        finally:
            snapshot.rollback()

    def _write(self, conn, row: dict, out: SourceResult) -> int:
        t = Run.__table__
        have = conn.execute(select(t).where(t.c.uuid == row["uuid"])).mappings().first()
        if have is not None and not self._newer(row, have):
            out.already_present += 1
            return 0
        values = self._values(conn, row, have, out)
        if have is None:
            target_id = conn.execute(insert(t).values(**values)).inserted_primary_key[0]
            out.runs += 1
        else:
            target_id = have["id"]
            conn.execute(update(t).where(t.c.id == target_id).values(**values))
            for _, model in CHILD_TABLES:
                conn.execute(delete(model).where(model.run_id == target_id))
            out.updated += 1
        written = 0
        for name, _ in CHILD_TABLES:
            n = self._copy(conn, name, row["id"], target_id)
            setattr(out, name, getattr(out, name) + n)
            written += n
        return written + 1

    @staticmethod
    def _newer(row: dict, have) -> bool:
        """Whether the source's copy of a run is newer than the target's (never over a copy
        that is being written in the target)."""
        if have["status"] == "running" and not is_stale(_RunView(have)):
            return False
        return _last_seen(row) > _last_seen(have)

    def _values(self, conn, row: dict, have, out: SourceResult) -> dict[str, Any]:
        """The target's run row for a source row: its environment matched by fingerprint,
        its references pointing into the target, `origin` set; an update keeps the
        target's own annotations."""
        values = {c: v for c, v in row.items() if c != "id"}
        values["env_id"] = self._environment(conn, row.get("env_id"), out)
        values["origin"] = row.get("origin") or f"{self.where}#{row['id']}"
        values.setdefault("excluded", False)
        values["owner"] = None  # no process of the target records it
        config = values.get("config")
        if references.named(config):
            ids = _TargetIds(conn)
            values["config"] = references.remapped(config, self.uuid_of_id, ids)
        if have is not None:
            for key in KEPT_FROM_TARGET:
                values[key] = have[key]
            if isinstance(values.get("config"), dict) and "tag" in values["config"]:
                values["config"] = {**values["config"], "tag": have["tag"]}
        return values

    def _environment(self, conn, src_env_id: int | None, out: SourceResult) -> int | None:
        env = self.envs.get(src_env_id) if src_env_id is not None else None
        if env is None:
            return None
        e = Environment.__table__
        found = conn.execute(select(e.c.id).where(e.c.fingerprint == env["fingerprint"])).scalar()
        if found is not None:
            return found
        out.environments += 1
        values = {k: v for k, v in env.items() if k != "id"}
        return conn.execute(insert(e).values(**values)).inserted_primary_key[0]

    def _copy(self, conn, table: str, src_id: int, target_id: int) -> int:
        """Copy one run's rows of `table`, in the source's order, as plain DBAPI tuples both
        ways (the per-row work of SQL expression parameters would dominate a large merge)."""
        cols = ["run_id", *[c for c in self.child_cols[table] if c != "run_id"]]
        q_src = self.sconn.dialect.identifier_preparer.quote
        sql = (
            f"SELECT {', '.join(map(q_src, cols))} FROM {q_src(table)} "
            f"WHERE {q_src('run_id')} = {int(src_id)} ORDER BY {q_src('id')}"
        )
        write = _writer(conn, table, cols)
        result = _reading_source(self._source_cursor, sql)
        n = 0
        while True:
            rows = _reading_source(result.fetchmany, BATCH)
            if not rows:
                break
            write([(target_id, *r[1:]) for r in rows])  # the target's errors are its own
            n += len(rows)
        return n

    def _source_cursor(self, sql: str):
        """The rows of `sql` on the source, fetched in batches."""
        if self.sconn.dialect.name == "sqlite":  # sqlite3's own cursor: plain tuples
            result = self.sconn.connection.driver_connection.cursor()
            result.execute(sql)
            return result
        # a server-side cursor: constant memory
        return self.sconn.execution_options(stream_results=True).exec_driver_sql(sql)


def _reading_source(read: Callable, *args):
    """`read(*args)`, a read of a merge source: a driver's error becomes _SourceFailed, so
    that it is reported as the source's and never confused with the target's."""
    try:
        return read(*args)
    except DBAPIError as exc:
        raise _SourceFailed(exc) from exc
    except Exception as exc:
        if type(exc).__module__.startswith("sqlite3"):
            raise _SourceFailed(exc) from exc
        raise


class _TargetIds:
    """uuid -> the target's run id, looked up as references are remapped."""

    def __init__(self, conn):
        self.conn = conn

    def get(self, uuid: str | None) -> int | None:
        if uuid is None:
            return None
        return self.conn.execute(select(Run.id).where(Run.uuid == uuid)).scalar()


def _writer(conn, table: str, cols: list[str]) -> Callable[[list[tuple]], None]:
    q = conn.dialect.identifier_preparer.quote
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(conn.dialect.paramstyle)
    if mark is None:  # a driver with another parameter style: SQL expressions
        stmt = insert(Base.metadata.tables[table])
        return lambda rows: conn.execute(stmt, [dict(zip(cols, r)) for r in rows])
    sql = (
        f"INSERT INTO {q(table)} ({', '.join(map(q, cols))}) "
        f"VALUES ({', '.join([mark] * len(cols))})"
    )
    return lambda rows: conn.exec_driver_sql(sql, rows)


class _RunView:
    """Enough of a Run for is_stale()."""

    def __init__(self, row):
        self.status = row["status"]
        self.heartbeat_at = row.get("heartbeat_at")
        self.started_at = row["started_at"]


def _merge_one(store: Store, src: _Source, progress: Callable[[str], None]) -> SourceResult:
    with src.engine.connect() as sconn:
        if sconn.dialect.name == "postgresql":  # one snapshot per run
            sconn = sconn.execution_options(isolation_level="REPEATABLE READ")
        try:
            return _Merge(store, src, sconn, progress).run()
        except _SourceFailed as exc:
            cause = exc.__cause__
            detail = db_error(cause) if cause is not None else str(exc)
            if isinstance(cause, OperationalError):
                raise Stopped(
                    f"cannot read {src.name} any more: {detail}; every run merged so far is "
                    f"complete: merge again to finish"
                ) from exc
            raise BadInput(
                f"cannot read {src.name}: {detail} (a damaged store?); every run merged so "
                f"far is complete, the rest is not merged"
            ) from exc


def merge_stores(
    target: str, sources: list[str], *, progress: Callable[[str], None] | None = None
) -> list[SourceResult]:
    """Merge `sources` into the store at `target` (created when missing), run by run;
    returns what each source did. BadInput (target untouched) for a source that is
    missing, the target itself, damaged, not an ra database, or of a newer schema;
    `Stopped` when the target cannot be written (every run merged before is whole)."""
    if not sources:
        raise BadInput("no source database given")
    say = progress or (lambda _msg: None)
    opened: list[_Source] = []
    try:
        for db in dict.fromkeys(sources):  # a source named twice is read once
            opened.append(_open_source(db, target))
        store: Store = open_store(target)
        try:
            return [_merge_one(store, src, say) for src in opened]
        except Damaged as exc:  # the target, met while merging
            raise Damaged(
                f"the target {exc}; every run merged so far is complete", exc.detail
            ) from exc
        except OperationalError as exc:  # writing the target
            raise Stopped(
                f"cannot write to {shown(target)}: {db_error(exc)}; every run merged so far "
                f"is complete: merge again to finish"
            ) from exc
        finally:
            store.close()
    finally:
        for src in opened:
            src.close()


def totals(results: list[SourceResult]) -> dict[str, int]:
    keys = (
        "runs",
        "metrics",
        "timings",
        "gate_values",
        "environments",
        "already_present",
        "updated",
        "still_running",
    )
    return {k: sum(getattr(r, k) for r in results) for k in keys}


def report_lines(results: list[SourceResult], target: str) -> list[str]:
    """What `ra db merge` prints: a line per source, and the total of several."""
    lines = []
    for r in results:
        extra = []
        if r.updated:
            extra.append(f"{r.updated} run(s) updated (newer in the source)")
        if r.already_present:
            extra.append(f"{r.already_present} run(s) already present")
        if r.still_running:
            extra.append(f"{r.still_running} still running, not merged (merge again once ended)")
        lines.append(
            f"{r.source}: added {r.added_text()}" + (f"; {'; '.join(extra)}" if extra else "")
        )
    if len(results) > 1:
        total = totals(results)
        lines.append(
            f"total: added {total['runs']} run(s), {total['metrics']} metric value(s), "
            f"{total['timings']} timing(s), {total['gate_values']} gate value(s), "
            f"{total['environments']} environment(s) to {shown(target)}"
            + (f"; {total['updated']} run(s) updated" if total["updated"] else "")
        )
    return lines
