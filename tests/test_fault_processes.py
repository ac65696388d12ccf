"""Faults between processes and servers (issues #27 and #30), with real `ra train` processes:
a run deleted or taken over while its process is paused, `ra runs delete` of a run still
being written, a PostgreSQL server stopped in the middle of a run and started again, wrong
passwords and unreachable hosts. All slow: processes and servers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import one_line_error, python_env, ra_inprocess
from sqlalchemy import text

from racli.store.checkpoints import checkpoint_path
from racli.store.engine import open_store

pytestmark = pytest.mark.slow

TINY_CLI = [
    a
    for o in (
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=32",
        "model.block_size=32",
        "train.batch_size=4",
        "train.eval_interval=40",
        "train.eval_batches=1",
        "train.final_eval_batches=1",
        "train.log_interval=1",
    )
    for a in ("--set", o)
]


def _train(db, *args, cwd: Path) -> subprocess.Popen:
    """`ra train` of a tiny model on the CPU, in a process of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "racli", "train", "--db", str(db), "--device", "cpu"]
        + ["--no-compile", *TINY_CLI, *args],
        cwd=cwd,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _q(db, sql, **kw):
    store = open_store(str(db), readonly=True)
    try:
        with store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), kw)]
    finally:
        store.close()


def _wait(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early: {proc.communicate()}")
        try:
            if predicate():
                return
        except Exception:  # the store not there yet
            pass
        time.sleep(0.1)
    raise AssertionError("timed out")


def _pause(proc, db) -> None:
    """SIGSTOP the process at a moment it holds no lock on the SQLite store."""
    for _ in range(100):
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            with sqlite3.connect(db, timeout=1) as raw:
                raw.execute("BEGIN IMMEDIATE")
                raw.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
    raise AssertionError("the process always held the lock")


def _stale(db, run_id) -> None:
    """Its heartbeat ten minutes old: what a pause past the timeout leaves."""
    with sqlite3.connect(db) as raw:
        raw.execute(
            "UPDATE runs SET heartbeat_at = datetime('now', '-10 minutes') WHERE id = ?", (run_id,)
        )


def _started(db, proc) -> int:
    """The run id once the process has recorded rows and a checkpoint."""
    _wait(lambda: _q(db, "SELECT count(*) FROM metrics WHERE name='train_loss'")[0][0] >= 3, proc)
    ((run_id,),) = _q(db, "SELECT id FROM runs")
    _wait(lambda: checkpoint_path(str(db), run_id).exists(), proc)
    return run_id


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_a_paused_run_deleted_meanwhile_stops_cleanly(tmp_path):
    db = tmp_path / "ra.db"
    proc = _train(
        db,
        "--attn",
        "baseline",
        "--minutes",
        "0.5",
        "--set",
        "train.checkpoint_minutes=0.01",
        cwd=tmp_path,
    )
    try:
        run_id = _started(db, proc)
        # still being written (fresh heartbeat): refused, nothing changes
        err = one_line_error(ra_inprocess("runs", "delete", run_id, "--yes", "--db", db))
        assert "still running" in err
        _pause(proc, db)
        _stale(db, run_id)
        res = ra_inprocess("runs", "delete", run_id, "--yes", "--db", db)
        assert res.exit_code == 0, res.output
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert _last_line(err).startswith(f"ra: stopped: run {run_id} was deleted from the store")
    assert "Traceback" not in err and "FOREIGN KEY" not in err
    assert _q(db, "SELECT count(*) FROM runs") == [(0,)]
    assert _q(db, "SELECT count(*) FROM metrics") == [(0,)]
    assert not checkpoint_path(str(db), run_id).exists()


def test_a_paused_run_resumed_by_another_process_is_left_to_it(tmp_path):
    db = tmp_path / "ra.db"
    first = _train(
        db,
        "--attn",
        "baseline",
        "--minutes",
        "0.05",
        "--set",
        "train.checkpoint_minutes=0.01",
        cwd=tmp_path,
    )
    try:
        run_id = _started(db, first)
        _pause(first, db)
        _stale(db, run_id)
        second = subprocess.run(
            [sys.executable, "-m", "racli", "train", "--db", str(db), "--resume", str(run_id)],
            cwd=tmp_path,
            env=python_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 0, second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 1, err
    assert _last_line(err).startswith(
        f"ra: stopped: run {run_id} was taken over by another process"
    )
    ((status, iterations),) = _q(db, "SELECT status, iterations FROM runs")
    assert status == "finished"
    steps = [s for (s,) in _q(db, "SELECT step FROM metrics WHERE name='train_loss' ORDER BY step")]
    assert steps == list(range(1, iterations + 1))  # each step once: no row of the loser
    from racli.training.checkpoint import load

    assert load(checkpoint_path(str(db), run_id)).step == iterations  # the winner's


def _pg_steps(url, run_id, name="train_loss"):
    return [
        s
        for (s,) in _q(
            url,
            "SELECT step FROM metrics WHERE run_id=:i AND name=:n ORDER BY step",
            i=run_id,
            n=name,
        )
    ]


def test_postgresql_stopped_in_the_middle_of_a_run_and_started_again(tmp_path, own_pg_server):
    server = own_pg_server(durable=True)  # what a commit returned for survives the stop
    url = server.new_database()
    proc = _train(
        url,
        "--attn",
        "baseline",
        "--minutes",
        "0.15",
        "--set",
        "train.log_interval=5",
        "--set",
        "train.checkpoint_minutes=0.02",
        cwd=tmp_path,
    )
    try:
        _wait(
            lambda: _q(url, "SELECT count(*) FROM metrics WHERE name='train_loss'")[0][0] >= 2, proc
        )
        ((run_id,),) = _q(url, "SELECT id FROM runs")
        server.stop_now()
        time.sleep(2)  # the run goes on meanwhile; its rows wait in memory
        server.start_again()
        before = len(_pg_steps(url, run_id))
        _wait(lambda: len(_pg_steps(url, run_id)) > before + 2, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    ((status, iterations),) = _q(url, "SELECT status, iterations FROM runs")
    assert status == "interrupted"
    steps = _pg_steps(url, run_id)
    assert steps == sorted(set(steps)) and steps[-1] == iterations
    assert steps[:-1] == list(range(5, steps[-2] + 1, 5))  # none lost during the outage
    res = subprocess.run(
        [sys.executable, "-m", "racli", "train", "--db", url, "--resume", str(run_id)],
        cwd=tmp_path,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert _q(url, "SELECT status FROM runs") == [("finished",)]
    steps = _pg_steps(url, run_id)
    assert steps == sorted(set(steps))


def test_wrong_password_and_unreachable_host_are_one_line(tmp_path, own_pg_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = own_pg_server(password="right-one")
    good = server.new_database()
    assert ra_inprocess("db", "upgrade", "--db", good).exit_code == 0
    wrong = good.replace(":right-one@", ":wrong-one@")
    urls = {
        wrong: "password authentication failed",
        "postgresql://ra:pw@no-such-host.invalid/ra": "cannot open database",
        "postgresql://ra:pw@192.0.2.1:5432/ra?connect_timeout=2": "cannot open database",
    }
    for url, message in urls.items():
        for args in (
            ("runs",),
            ("db", "upgrade"),
            ("train", "--attn", "baseline", "--steps", "1", "--device", "cpu"),
        ):
            t0 = time.monotonic()
            err = one_line_error(ra_inprocess(*args, "--db", url))
            assert message in err and "wrong-one" not in err and ":pw@" not in err, err
            assert time.monotonic() - t0 < 30
        err = one_line_error(ra_inprocess("db", "merge", url, "--db", tmp_path / "t.db"))
        assert "wrong-one" not in err and ":pw@" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
