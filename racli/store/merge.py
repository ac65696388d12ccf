"""`ra db merge`: bring the runs of other stores into this one.

    results = merge_stores("team.db", ["gpu1.db", "postgresql+psycopg://.../ra"])

Runs are matched by `uuid` (merging twice adds nothing), with their metrics,
timings and gate values, in one transaction; sources are only read. The
rules: docs/store.md.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from racli.errors import BadInput
from racli.store.chunks import in_chunks
from racli.store.engine import (
    HEAD_REVISION,
    Store,
    current_revision,
    database_url,
    db_error,
    known_revisions,
    make_engine,
    open_store,
    sqlite_path,
    upgraded_copy,
)
from racli.store.models import Base, Environment, GateValue, Metric, Run, Timing, legacy_uuid
from racli.store.recorder import is_stale

BATCH = 5000  # rows per executemany
CHILD_TABLES = (("metrics", Metric), ("timings", Timing), ("gate_values", GateValue))


@dataclass
class SourceResult:
    """What one source added to the target."""

    source: str
    revision: str | None
    runs: int = 0
    metrics: int = 0
    timings: int = 0
    gate_values: int = 0
    environments: int = 0
    already_present: int = 0  # runs the target already held (same uuid)
    still_running: int = 0  # runs with a fresh heartbeat, not merged

    def to_dict(self) -> dict:
        return asdict(self)

    def added_text(self) -> str:
        return (
            f"{self.runs} run(s), {self.metrics} metric value(s), {self.timings} timing(s), "
            f"{self.gate_values} gate value(s), {self.environments} environment(s)"
        )


def location(db: str) -> str:
    """How a store is named in `origin`: an absolute path, or its URL without password."""
    path = sqlite_path(db)
    if path is not None:
        return str(path)
    try:
        return make_url(database_url(db)).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: keep it as given
        return db


@dataclass
class _Source:
    db: str
    engine: Engine
    revision: str
    tmpdir: Path | None = None

    def close(self) -> None:
        self.engine.dispose()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _readonly_engine(path: Path) -> Engine:
    return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")


def _open_source(db: str, target: str) -> _Source:
    """A read-only view of a source store, at HEAD_REVISION's schema or one readable as is."""
    path = sqlite_path(db)
    target_path = sqlite_path(target)
    if path is not None:
        if not path.exists():
            raise BadInput(f"no database at {path}")
        if path.is_dir():
            raise BadInput(f"database path {path} is a directory")
        if target_path is not None and target_path.exists() and path.samefile(target_path):
            raise BadInput(f"{db} is the target database itself")
        engine = _readonly_engine(path)
    else:
        if database_url(db) == database_url(target):
            raise BadInput(f"{db} is the target database itself")
        try:
            engine = make_engine(db)
        except Exception as exc:
            raise BadInput(f"cannot open database {db}: {exc}") from exc
    try:
        rev = current_revision(engine)
        tables = [] if rev is not None else inspect(engine).get_table_names()
    except DBAPIError as exc:
        engine.dispose()
        raise BadInput(f"cannot open database {db}: {db_error(exc)}") from exc
    if rev is None:
        engine.dispose()
        what = (
            f"holds tables ({', '.join(sorted(tables)[:4])}) but no ra schema version"
            if tables
            else "has no ra schema"
        )
        raise BadInput(f"source {db} {what}: not an ra database")
    if rev != HEAD_REVISION and rev not in known_revisions():
        engine.dispose()
        raise BadInput(
            f"source {db} has schema revision {rev}, newer than this ra knows "
            f"(latest {HEAD_REVISION}): upgrade ra to merge it"
        )
    if rev == HEAD_REVISION or path is None:
        return _Source(db, engine, rev)
    # an older SQLite store: upgrade a temporary copy, never the source
    engine.dispose()
    tmpdir = Path(tempfile.mkdtemp(prefix="ra-merge-"))
    try:
        engine = upgraded_copy(path, tmpdir)
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return _Source(db, engine, rev, tmpdir)


def _columns(engine: Engine, table) -> list:
    """The model's columns that the source's table has (all of them at HEAD_REVISION)."""
    present = {c["name"] for c in inspect(engine).get_columns(table.name)}
    return [c for c in table.columns if c.name in present]


def _merge_one(
    conn, src: _Source, uuids: set[str], env_ids: dict[str, int], progress: Callable[[str], None]
) -> SourceResult:
    out = SourceResult(source=src.db, revision=src.revision)
    with src.engine.connect() as sconn:
        new_runs, n_source_runs = _new_runs(sconn, src, uuids, out)
        progress(f"{src.db}: {len(new_runs)} new run(s), {out.already_present} already present")
        env_cols = _columns(src.engine, Environment.__table__)
        src_envs = {
            row["id"]: row for row in (dict(r._mapping) for r in sconn.execute(select(*env_cols)))
        }
        out.environments = _add_environments(conn, new_runs, src_envs, env_ids)
        fp_of = {i: e["fingerprint"] for i, e in src_envs.items()}
        id_map = _insert_runs(conn, new_runs, location(src.db), env_ids, fp_of)
        out.runs = len(id_map)

        # metrics, timings, gate values: streamed in chunks, inserted in batches
        src_ids = list(id_map)
        for name, model in CHILD_TABLES:
            cols = [c.name for c in _columns(src.engine, model.__table__) if c.name != "id"]
            setattr(
                out,
                name,
                _copy_rows(
                    sconn,
                    conn,
                    model.__tablename__,
                    cols,
                    id_map,
                    src_ids,
                    full_scan_from=max(1, n_source_runs // 2),
                ),
            )
    return out


def _new_runs(sconn, src: _Source, uuids: set[str], out: SourceResult) -> tuple[list[dict], int]:
    """The source's runs to add (not yet in `uuids`, not still running), in id order, and
    how many runs the source holds; counts the others in `out`; adds the new uuids."""
    run_t = Run.__table__
    run_cols = _columns(src.engine, run_t)
    run_names = {c.name for c in run_cols}
    new_runs: list[dict] = []
    n_source_runs = 0
    for r in sconn.execute(select(*run_cols).order_by(run_t.c.id)):
        n_source_runs += 1
        row = dict(r._mapping)
        if "uuid" not in run_names or not row.get("uuid"):
            row["uuid"] = legacy_uuid(row["id"], row["kind"], row["config_hash"], row["started_at"])
        if row["uuid"] in uuids:
            out.already_present += 1
            continue
        if row["status"] == "running" and not is_stale(_RunView(row)):
            out.still_running += 1
            continue
        uuids.add(row["uuid"])
        new_runs.append(row)
    return new_runs, n_source_runs


def _add_environments(
    conn, new_runs: list[dict], src_envs: dict[int, dict], env_ids: dict[str, int]
) -> int:
    """Insert the environments of `new_runs` that the target lacks (matched by
    fingerprint, `env_ids` updated); returns how many were added."""
    added = 0
    for env_id in sorted({r["env_id"] for r in new_runs if r.get("env_id") is not None}):
        env = src_envs.get(env_id)
        if env is None:
            continue
        if env["fingerprint"] not in env_ids:
            values = {k: v for k, v in env.items() if k != "id"}
            env_ids[env["fingerprint"]] = conn.execute(
                insert(Environment.__table__).values(**values)
            ).inserted_primary_key[0]
            added += 1
    return added


def _insert_runs(
    conn, new_runs: list[dict], where: str, env_ids: dict[str, int], fp_of: dict[int, str]
) -> dict[int, int]:
    """Insert `new_runs` with new ids, in the source's order; source id -> target id."""
    run_t = Run.__table__
    id_map: dict[int, int] = {}
    for k in range(0, len(new_runs), BATCH):
        batch = new_runs[k : k + BATCH]
        rows = []
        for r in batch:
            values = {c: v for c, v in r.items() if c != "id"}
            values["env_id"] = env_ids.get(fp_of.get(r.get("env_id"))) if r.get("env_id") else None
            values["origin"] = r.get("origin") or f"{where}#{r['id']}"
            values.setdefault("excluded", False)
            rows.append(values)
        new_ids = (
            conn.execute(
                insert(run_t).returning(run_t.c.id, sort_by_parameter_order=True),
                _same_keys(rows),
            )
            .scalars()
            .all()
        )
        id_map.update(zip((r["id"] for r in batch), new_ids))
    return id_map


def _copy_rows(
    sconn,
    conn,
    table: str,
    cols: list[str],
    id_map: dict[int, int],
    src_ids: list[int],
    full_scan_from: int,
) -> int:
    """Copy the rows of `table` belonging to `src_ids` with their run ids mapped.

    Plain DBAPI tuples both ways (these tables hold only numbers and text): the
    per-row work of SQL expression parameters would dominate a large merge."""
    cols = ["run_id", *[c for c in cols if c != "run_id"]]
    q_src = sconn.dialect.identifier_preparer.quote
    q_dst = conn.dialect.identifier_preparer.quote
    select_sql = (
        f"SELECT {', '.join(map(q_src, cols))} FROM {q_src(table)} "
        f"WHERE {q_src('run_id')} IN ({{ids}}) ORDER BY {q_src('id')}"
    )
    style = conn.dialect.paramstyle
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(style)
    if mark is None:  # a driver with another parameter style: SQL expressions
        stmt, named = insert(Base.metadata.tables[table]), True
    else:
        stmt, named = (
            (
                f"INSERT INTO {q_dst(table)} ({', '.join(map(q_dst, cols))}) "
                f"VALUES ({', '.join([mark] * len(cols))})"
            ),
            False,
        )
    n = 0

    def write(rows: list[tuple]) -> None:
        if named:
            conn.execute(stmt, [dict(zip(cols, r)) for r in rows])
        else:
            conn.exec_driver_sql(stmt, rows)

    if len(src_ids) >= full_scan_from:
        # most of the source is new: one pass in id order beats many index searches and sorts
        queries = [select_sql.split(" WHERE ")[0] + f" ORDER BY {q_src('id')}"]
    else:
        queries = [
            select_sql.format(ids=", ".join(str(int(i)) for i in chunk))
            for chunk in in_chunks(src_ids)
        ]
    for sql in queries:
        if (
            sconn.dialect.name == "sqlite"
        ):  # sqlite3's own cursor steps lazily: plain tuples, fastest
            result = sconn.connection.driver_connection.cursor()
            result.execute(sql)
        else:  # a server-side cursor: constant memory
            result = sconn.execution_options(stream_results=True).exec_driver_sql(sql)
        while True:
            rows = result.fetchmany(BATCH)
            if not rows:
                break
            batch = [(id_map[r[0]], *r[1:]) for r in rows if r[0] in id_map]
            if batch:
                write(batch)
                n += len(batch)
    return n


class _RunView:
    """Enough of a Run for is_stale()."""

    def __init__(self, row: dict):
        self.status = row["status"]
        self.heartbeat_at = row.get("heartbeat_at")
        self.started_at = row["started_at"]


def _same_keys(rows: list[dict]) -> list[dict]:
    """Every row with every key (executemany needs one shape)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return [{k: r.get(k) for k in keys} for r in rows]


def merge_stores(
    target: str, sources: list[str], *, progress: Callable[[str], None] | None = None
) -> list[SourceResult]:
    """Merge `sources` into the store at `target` (created when missing), in one
    transaction; returns what each source added. BadInput (target untouched) for a
    source that is missing, not an ra database, or of a newer schema."""
    if not sources:
        raise BadInput("no source database given")
    say = progress or (lambda _msg: None)
    opened: list[_Source] = []
    try:
        for db in dict.fromkeys(sources):  # a source named twice is read once
            opened.append(_open_source(db, target))
        store: Store = open_store(target)
        try:
            with store.writing() as conn:
                uuids = set(conn.scalars(select(Run.uuid)))
                env_ids = dict(conn.execute(select(Environment.fingerprint, Environment.id)).all())
                return [_merge_one(conn, src, uuids, env_ids, say) for src in opened]
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
        "still_running",
    )
    return {k: sum(getattr(r, k) for r in results) for k in keys}


def report_lines(results: list[SourceResult], target: str) -> list[str]:
    """What `ra db merge` prints: a line per source, and the total of several."""
    lines = []
    for r in results:
        extra = []
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
            f"{total['environments']} environment(s) to {target}"
        )
    return lines
