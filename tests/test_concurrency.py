"""Processes recording runs into one store at the same time, on SQLite and PostgreSQL:
four writers racing to create a fresh store, and (slow) eight writers with readers
running `ra compare` in a loop. No row may be lost or written twice."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest
from helpers import ENV_INFO, python_env, record_run
from sqlalchemy import bindparam, create_engine, text

from racli.store.engine import open_store
from racli.store.migrate import HEAD_REVISION
from racli.store.urls import database_url

WORKERS = 4
SECONDS = 3.0

WORKER = r"""
import json, sys, time
db, start_at, seconds, idx, env_info = (sys.argv[1], float(sys.argv[2]), float(sys.argv[3]),
                                        int(sys.argv[4]), json.loads(sys.argv[5]))
from racli.store.engine import open_store
from racli.store.recorder import RunRecorder

while time.time() < start_at:  # all workers open the (fresh) database at once
    time.sleep(0.001)
store = open_store(db)
rec = RunRecorder.start(store, kind="train", attn="ra_v5", config={"worker": idx}, seed=idx,
                        tag="concurrency", env_info=env_info, git_commit="c0ffee",
                        flush_interval=0.05)
errors = []
plain_flush = rec.flush

def flush():  # the writer thread swallows errors: count them here
    try:
        plain_flush()
    except Exception as exc:
        errors.append(repr(exc))
        raise

rec.flush = flush
metrics = gates = flushes = step = 0
end = time.monotonic() + seconds
while time.monotonic() < end or flushes < 5:  # a loaded machine loops slower: 5 flushes still
    for _ in range(25):
        rec.metric(step, "train_loss", 1.0 / (step + 1), elapsed_s=step * 0.001)
        metrics += 1
        step += 1
    if step % 100 == 0:
        rec.gates(step, {0: {"w_std": [1.0, 0.9], "w_rec": [0.1, 0.2]}})
        gates += 4
    if step % 250 == 0:
        try:
            rec.flush()
        except Exception:
            pass  # already counted; the rows stay buffered for the next flush
        flushes += 1
    time.sleep(0.002)
rec.metric(step, "val_loss", 2.0)
metrics += 1
rec.finish(iterations=step, val_loss=2.0)
store.close()
if errors:
    sys.stderr.write("flush errors: " + "; ".join(sorted(set(errors))) + "\n")
print(json.dumps({"run_id": rec.run_id, "metrics": metrics, "gates": gates, "flushes": flushes,
                  "errors": len(errors), "write_s": rec.write_seconds}))
sys.exit(1 if errors else 0)
"""


READER = r"""
import json, sys, time
from typer.testing import CliRunner
from racli.cli import app

db, stop_file = sys.argv[1], sys.argv[2]
import os
runner = CliRunner()
n = 0
while not os.path.exists(stop_file) or n == 0:
    res = runner.invoke(app, ["compare", "--db", db, "--json"])
    if res.exit_code != 0:
        sys.stderr.write(f"compare failed ({res.exit_code}): {res.stderr or res.output}\n")
        sys.exit(1)
    json.loads(res.stdout)  # a whole, well-formed answer
    n += 1
print(json.dumps({"reads": n}))
"""


def _start_workers(db, n, start_at, seconds):
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(db),
                str(start_at),
                str(seconds),
                str(i),
                json.dumps(ENV_INFO),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        for i in range(n)
    ]


def _collect(procs, timeout=240) -> list[dict]:
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, f"process failed ({p.returncode}): {err.strip()[-2000:]}"
            assert "locked" not in err and "Traceback" not in err, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def _check_rows(db, results, *, extra_runs=0, extra_envs=0) -> None:
    """Every row each worker wrote is there exactly once; every run finished."""
    engine = create_engine(database_url(db))
    try:
        with engine.connect() as conn:

            def one(sql, **kw):
                return conn.execute(text(sql), kw).scalar()

            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            for r in results:
                rid = r["run_id"]
                assert one("SELECT count(*) FROM metrics WHERE run_id=:r", r=rid) == r["metrics"], r
                assert (
                    one("SELECT count(*) FROM gate_values WHERE run_id=:r", r=rid) == r["gates"]
                ), r
                dup = one(
                    "SELECT count(*) FROM (SELECT step, name FROM metrics WHERE run_id=:r "
                    "GROUP BY step, name HAVING count(*) > 1) d",
                    r=rid,
                )
                assert dup == 0
                assert tuple(
                    conn.execute(
                        text("SELECT status, error, finished_at IS NOT NULL FROM runs WHERE id=:r"),
                        {"r": rid},
                    ).one()
                ) == ("finished", None, True)
            ids = [r["run_id"] for r in results]
            assert len(set(ids)) == len(results)
            assert one("SELECT count(*) FROM runs") == len(results) + extra_runs
            assert one("SELECT count(*) FROM environments") == 1 + extra_envs
            assert one("SELECT version_num FROM alembic_version") == HEAD_REVISION
            assert one("SELECT count(*) FROM alembic_version") == 1
            span = text("SELECT max(started_at), min(finished_at) FROM runs WHERE id IN :ids")
            last_start, first_end = conn.execute(
                span.bindparams(bindparam("ids", expanding=True)), {"ids": ids}
            ).one()
            assert last_start < first_end, "the runs did not overlap"
    finally:
        engine.dispose()


@pytest.mark.slow
def test_four_processes_record_into_one_fresh_store(store_url):
    db = store_url  # no schema yet: the workers race to create it
    results = _collect(_start_workers(db, WORKERS, time.time() + 1.5, SECONDS), timeout=90)
    assert all(r["errors"] == 0 for r in results)
    # each run flushed 5 times at least (the workers go on until they have, so that a loaded
    # machine still writes in several flushes); the overlap is checked in _check_rows
    _check_rows(db, results)
    if "://" not in db:
        with sqlite3.connect(db) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
def test_eight_writers_with_readers_running_compare(store_url, tmp_path):
    """Eight processes record runs while two others run `ra compare` over and over:
    every row lands once, and no read fails."""
    seeded = open_store(store_url)
    for seed in (1, 2, 3):
        for attn in ("baseline", "ra_v5"):
            record_run(seeded, attn=attn, seed=seed)
    seeded.close()
    stop_file = tmp_path / "stop"
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, store_url, str(stop_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        for _ in range(2)
    ]
    try:
        writers = _start_workers(store_url, 8, time.time() + 3.0, SECONDS)
        results = _collect(writers)
    finally:
        stop_file.write_text("")
    reads = _collect(readers)
    assert all(r["errors"] == 0 for r in results)
    assert all(r["reads"] >= 1 for r in reads), reads
    _check_rows(store_url, results, extra_runs=6)


class _LockedThenFree:
    """A SQLite engine stand-in whose WAL switch is refused `refusals` times with
    the immediate 'database is locked' that SQLite gives to break a lock deadlock
    (another process holds the write lock and waits for this one's read lock)."""

    class dialect:  # noqa: N801
        name = "sqlite"

    def __init__(self, refusals: int):
        self.refusals = refusals
        self.switches = 0
        self.closed = 0
        outer = self

        class Driver:
            def execute(self, sql):
                if sql == "PRAGMA journal_mode":
                    return sqlite3.connect(":memory:").execute("SELECT 'delete'")
                if outer.refusals:
                    outer.refusals -= 1
                    raise sqlite3.OperationalError("database is locked")
                outer.switches += 1
                return None

        class Raw:
            driver_connection = Driver()

            def close(self):
                outer.closed += 1

        self._raw = Raw

    def raw_connection(self):
        return self._raw()


def test_wal_switch_retries_an_immediate_lock_refusal():
    from racli.store.connection import enable_wal

    engine = _LockedThenFree(refusals=3)
    enable_wal(engine)
    assert engine.switches == 1
    # each refused attempt gave its connection back (its read lock with it)
    assert engine.closed == 4


def test_wal_switch_gives_up_after_the_busy_timeout(monkeypatch):
    from racli.store import connection as eng

    monkeypatch.setattr(eng, "BUSY_TIMEOUT_MS", 50)
    engine = _LockedThenFree(refusals=10**6)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        eng.enable_wal(engine)
    assert engine.switches == 0
