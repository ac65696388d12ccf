"""Tests for racli.store.recorder: the run lifecycle, buffered writes, heartbeat, crashes,
one owner per resumed run. Store-level tests run on SQLite and PostgreSQL (`store_url`)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import numpy as np
import pytest
from helpers import ENV_INFO, TRAIN_CONFIG, python_env, set_heartbeat_minutes_ago
from sqlalchemy import func, select
from typer.testing import CliRunner

from racli import environment
from racli.cli import app
from racli.errors import BadInput
from racli.store.engine import open_store
from racli.store.models import Environment, GateValue, Metric, Run, Timing, utcnow
from racli.store.recorder import (
    STALE_AFTER,
    RunRecorder,
    config_hash,
    display_status,
    environment_id,
    is_stale,
)


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def _start(store, **kw) -> RunRecorder:
    args = {
        "kind": "train",
        "attn": "ra_v5",
        "config": dict(TRAIN_CONFIG),
        "seed": 3,
        "tag": "t",
        "env_info": dict(ENV_INFO),
        "git_commit": "cafe1234",
        "heartbeat": False,
    }
    args.update(kw)
    return RunRecorder.start(store, **args)


def _run(store, run_id) -> Run:
    with store.session() as s:
        return s.get(Run, run_id)


def _count(store, model, run_id) -> int:
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(model.run_id == run_id))


def _wait_until(predicate, timeout=5.0, step=0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# ---- start -------------------------------------------------------------------


def test_start_creates_a_running_run(store):
    before = utcnow()
    rec = _start(store)
    run = _run(store, rec.run_id)
    assert run.status == "running"
    assert (run.kind, run.attn, run.seed, run.tag, run.git_commit) == (
        "train",
        "ra_v5",
        3,
        "t",
        "cafe1234",
    )
    assert run.config == {**TRAIN_CONFIG, "code": run.config["code"]}  # plus ra's own provenance
    assert run.config_hash == config_hash(run.config)
    assert run.finished_at is None and run.error is None
    assert run.heartbeat_at is not None and before <= run.heartbeat_at <= utcnow()
    assert before <= run.started_at <= utcnow()
    with store.session() as s:
        env = s.get(Environment, run.env_id)
        assert env.fingerprint == environment.fingerprint_of(ENV_INFO)
        assert env.hostname == ENV_INFO["hostname"]
    assert display_status(run) == "running"
    rec.finish()


def test_start_fingerprints_this_machine_by_default(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    rec = RunRecorder.start(store, kind="bench", config={}, heartbeat=False)
    rec.finish()
    run = _run(store, rec.run_id)
    assert run.git_commit is None  # not in a git checkout
    with store.session() as s:
        env = s.get(Environment, run.env_id)
    assert env.fingerprint == environment.fingerprint_of(environment.collect())
    # a second run on the same machine reuses the row
    rec2 = RunRecorder.start(store, kind="bench", config={}, heartbeat=False)
    rec2.finish()
    assert _run(store, rec2.run_id).env_id == run.env_id


def test_runs_share_an_environment_row(store):
    a, b = _start(store), _start(store, seed=4)
    c = _start(store, env_info={**ENV_INFO, "torch": "9.9"})
    envs = [_run(store, r.run_id).env_id for r in (a, b, c)]
    assert envs[0] == envs[1] != envs[2]
    assert environment_id(store, dict(ENV_INFO)) == envs[0]
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Environment)) == 2


# ---- config hash -------------------------------------------------------------------


def test_config_hash_ignores_attn_seed_tag():
    base = {
        "model": {"preset": "tiny", "ra_rank": 4},
        "train": {"lr": 6e-4},
        "minutes": 60,
        "attn": "baseline",
        "seed": 1,
        "tag": "a",
    }
    h = config_hash(base)
    assert config_hash({**base, "attn": "ra_v5", "seed": 99, "tag": "other"}) == h
    assert config_hash({k: v for k, v in base.items() if k not in ("attn", "seed", "tag")}) == h
    assert config_hash(dict(reversed(list(base.items())))) == h


@pytest.mark.parametrize(
    "change",
    [
        {"minutes": 61},
        {"model": {"preset": "tiny", "ra_rank": 8}},
        {"model": {"preset": "small", "ra_rank": 4}},
        {"train": {"lr": 6e-4, "batch_size": 16}},
        {"data": "shakespeare"},
    ],
)
def test_config_hash_changes_with_anything_else(change):
    base = {
        "model": {"preset": "tiny", "ra_rank": 4},
        "train": {"lr": 6e-4},
        "minutes": 60,
        "attn": "baseline",
        "seed": 1,
    }
    assert config_hash({**base, **change}) != config_hash(base)


# ---- buffered rows ----------------------------------------------------------------


def test_rows_are_buffered_until_flush(store):
    rec = _start(store)
    rec.metric(0, "train_loss", 4.2, elapsed_s=0.5)
    rec.metrics(10, {"train_loss": 3.9, "lr": 1e-4})
    rec.gates(
        10,
        {
            0: {"w_std": np.array([1.0, 0.9]), "w_rec": [0.1, 0.2]},
            1: {"w_std": (1.1, 1.2), "w_rec": np.array([0.3, 0.4], dtype=np.float32)},
        },
    )
    rec.timing(
        attn="ra_v5",
        mode="eager",
        phase="fwd",
        batch=2,
        seq=64,
        heads=4,
        head_dim=32,
        dtype="float32",
        device="cpu",
        median_ms=1.5,
        status="ok",
    )
    assert _count(store, Metric, rec.run_id) == 0
    assert _count(store, GateValue, rec.run_id) == 0
    assert _count(store, Timing, rec.run_id) == 0
    rec.flush()
    assert _count(store, Metric, rec.run_id) == 3
    assert _count(store, GateValue, rec.run_id) == 8
    assert _count(store, Timing, rec.run_id) == 1
    with store.session() as s:
        m = s.scalars(select(Metric).where(Metric.name == "train_loss").order_by(Metric.step)).all()
        assert [(x.step, x.value, x.elapsed_s) for x in m] == [(0, 4.2, 0.5), (10, 3.9, None)]
        g = s.scalars(
            select(GateValue)
            .where(GateValue.layer == 1, GateValue.name == "w_rec")
            .order_by(GateValue.head)
        ).all()
        assert [(x.head, round(x.value, 6)) for x in g] == [(0, 0.3), (1, 0.4)]
    rec.flush()  # nothing buffered: writes nothing more
    assert _count(store, Metric, rec.run_id) == 3
    rec.finish()


def test_timing_rows_with_different_columns_flush_together(store):
    rec = _start(store, kind="bench", attn=None)
    shape = {
        "batch": 2,
        "seq": 64,
        "heads": 4,
        "head_dim": 32,
        "dtype": "float16",
        "device": "cuda",
    }
    rec.timing(
        attn="baseline",
        mode="eager",
        phase="fwd",
        median_ms=0.12,
        p10_ms=0.11,
        p90_ms=0.13,
        iters=100,
        tflops=50.0,
        backend="flash",
        **shape,
    )
    rec.timing(
        attn="baseline", mode="cuda_graph", phase="fwd", status="skipped", reason="no CUDA", **shape
    )
    rec.timing(
        attn="ra_v5",
        mode="compile",
        phase="fwd",
        status="failed",
        reason="boom",
        compile_s=3.0,
        **shape,
    )
    rec.flush()
    with store.session() as s:
        rows = s.scalars(
            select(Timing).where(Timing.run_id == rec.run_id).order_by(Timing.id)
        ).all()
    assert [(t.mode, t.status, t.median_ms, t.reason, t.compile_s) for t in rows] == [
        ("eager", "ok", 0.12, None, None),
        ("cuda_graph", "skipped", None, "no CUDA", None),
        ("compile", "failed", None, "boom", 3.0),
    ]
    with pytest.raises(ValueError, match="medain_ms"):
        rec.timing(attn="x", mode="eager", phase="fwd", medain_ms=1.0, **shape)
    rec.finish()


@pytest.mark.slow
def test_a_failed_flush_keeps_its_rows_for_the_next(store, monkeypatch):
    rec = _start(store)
    for i in range(5):
        rec.metric(i, "train_loss", float(i))
    rec.gates(0, {0: {"w_rec": [0.1, 0.2]}})

    def busy():
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "writing", busy)
    with pytest.raises(sqlite3.OperationalError):
        rec.flush()
    rec.metric(5, "train_loss", 5.0)  # recorded while the database was busy
    monkeypatch.undo()
    rec.flush()
    with store.session() as s:
        steps = s.scalars(
            select(Metric.step).where(Metric.run_id == rec.run_id).order_by(Metric.id)
        ).all()
    assert steps == [0, 1, 2, 3, 4, 5]
    assert _count(store, GateValue, rec.run_id) == 2
    rec.finish()


@pytest.mark.slow
def test_background_writer_flushes_by_itself(store):
    rec = _start(store, heartbeat=True, flush_interval=0.2)
    try:
        first_beat = _run(store, rec.run_id).heartbeat_at
        for i in range(20):
            rec.metric(i, "train_loss", 1.0 / (i + 1))
        rec.gates(0, {0: {"w_std": [1.0, 1.0]}})
        assert _wait_until(lambda: _count(store, Metric, rec.run_id) == 20), "writer never flushed"
        assert _wait_until(lambda: _count(store, GateValue, rec.run_id) == 2)
        assert _wait_until(lambda: _run(store, rec.run_id).heartbeat_at > first_beat), (
            "heartbeat not refreshed"
        )
        rec.metric(20, "train_loss", 0.01)
        assert _wait_until(lambda: _count(store, Metric, rec.run_id) == 21)
    finally:
        rec.finish()
    assert not rec._thread.is_alive()
    beat = _run(store, rec.run_id).heartbeat_at
    time.sleep(0.5)
    assert _run(store, rec.run_id).heartbeat_at == beat, "heartbeat kept beating after the end"


# ---- ending ----------------------------------------------------------------------


def test_finish_sets_status_figures_and_flushes(store):
    rec = _start(store, heartbeat=True, flush_interval=30)
    rec.metric(1, "val_loss", 3.2)
    rec.finish(
        iterations=100,
        tokens=12_800,
        epochs=0.25,
        train_seconds=59.5,
        val_loss=3.2,
        tokens_per_s=215.1,
    )
    run = _run(store, rec.run_id)
    assert run.status == "finished" and run.error is None
    assert run.finished_at is not None and run.finished_at >= run.started_at
    assert (
        run.iterations,
        run.tokens,
        run.epochs,
        run.train_seconds,
        run.val_loss,
        run.tokens_per_s,
    ) == (100, 12_800, 0.25, 59.5, 3.2, 215.1)
    assert _count(store, Metric, rec.run_id) == 1
    finished_at = run.finished_at
    rec.finish(iterations=1)  # a second end is ignored
    rec.end("failed", error="late")
    run = _run(store, rec.run_id)
    assert (run.status, run.iterations, run.finished_at) == ("finished", 100, finished_at)


def test_fail_records_the_error(store):
    rec = _start(store)
    rec.metric(0, "train_loss", 4.0)
    rec.fail(RuntimeError("CUDA out of memory"))
    run = _run(store, rec.run_id)
    assert run.status == "failed"
    assert run.error == "RuntimeError: CUDA out of memory"
    assert run.finished_at is not None
    assert _count(store, Metric, rec.run_id) == 1
    rec2 = _start(store)
    rec2.fail("plain message")
    assert _run(store, rec2.run_id).error == "plain message"


@pytest.mark.slow
@pytest.mark.parametrize("state", ["interrupted", "diverged"])
def test_end_states(store, state):
    rec = _start(store)
    rec.end(state, error=f"{state} at step 7", iterations=7)
    run = _run(store, rec.run_id)
    assert (run.status, run.error, run.iterations) == (state, f"{state} at step 7", 7)
    assert run.finished_at is not None
    assert display_status(run) == state


def test_unknown_end_state_is_refused(store):
    rec = _start(store)
    with pytest.raises(ValueError):
        rec.end("crashed")
    assert _run(store, rec.run_id).status == "running"
    rec.finish()


def test_context_manager_ends_the_run(store):
    with _start(store) as rec:
        rec.metric(0, "train_loss", 1.0)
    assert _run(store, rec.run_id).status == "finished"
    with pytest.raises(ZeroDivisionError), _start(store) as rec2:
        raise ZeroDivisionError("x")
    assert _run(store, rec2.run_id).status == "failed"
    assert "ZeroDivisionError" in _run(store, rec2.run_id).error
    with pytest.raises(KeyboardInterrupt), _start(store) as rec3:
        raise KeyboardInterrupt
    assert _run(store, rec3.run_id).status == "interrupted"


def test_update_and_resume(store):
    rec = _start(store)
    rec.update(iterations=50, val_loss=3.9)
    assert (_run(store, rec.run_id).iterations, _run(store, rec.run_id).val_loss) == (50, 3.9)
    rec.end("interrupted", error="interrupted")
    again = RunRecorder.resume(store, rec.run_id, heartbeat=False)
    run = _run(store, rec.run_id)
    assert (run.status, run.error, run.finished_at) == ("running", None, None)
    again.metric(60, "train_loss", 2.0)
    again.finish(iterations=100)
    run = _run(store, rec.run_id)
    assert (run.status, run.iterations) == ("finished", 100)
    assert _count(store, Metric, rec.run_id) == 1


# ---- crashed runs ---------------------------------------------------------------------


@pytest.mark.slow
def test_stale_heartbeat_shows_as_crashed(store):
    rec = _start(store)  # no writer thread: nothing refreshes the heartbeat
    done = _start(store)
    done.finish()
    run = _run(store, rec.run_id)
    assert display_status(run) == "running" and not is_stale(run)
    assert (
        display_status(run, now=run.heartbeat_at + STALE_AFTER + timedelta(seconds=1)) == "crashed"
    )
    set_heartbeat_minutes_ago(store, rec.run_id, 10)
    set_heartbeat_minutes_ago(store, done.run_id, 10)
    run = _run(store, rec.run_id)
    assert run.status == "running"  # recorded status untouched
    assert display_status(run) == "crashed"
    assert display_status(_run(store, done.run_id)) == "finished"  # only running runs go stale


def _runs_json(db, *args) -> list[dict]:
    res = CliRunner().invoke(app, ["runs", "--db", db, "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.mark.slow
def test_crashed_in_ra_runs(store, tmp_path):
    crashed = _start(store)
    alive = _start(store)
    done = _start(store)
    done.finish()
    if store.engine.dialect.name == "sqlite":
        # a user's sqlite3 edit in SQLite's own datetime format works too
        with sqlite3.connect(store.engine.url.database) as raw:
            raw.execute(
                "UPDATE runs SET heartbeat_at = datetime('now', '-10 minutes') WHERE id = ?",
                (crashed.run_id,),
            )
    else:
        set_heartbeat_minutes_ago(store, crashed.run_id, 10)
    db = store.db
    rows = {r["id"]: r for r in _runs_json(db)}
    assert rows[crashed.run_id]["status"] == "crashed"
    assert rows[crashed.run_id]["recorded_status"] == "running"
    assert rows[alive.run_id]["status"] == "running"
    assert rows[done.run_id]["status"] == "finished"
    assert [r["id"] for r in _runs_json(db, "--status", "crashed")] == [crashed.run_id]
    assert [r["id"] for r in _runs_json(db, "--status", "running")] == [alive.run_id]
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["runs", "--db", db])
    assert res.exit_code == 0
    assert "crashed" in res.stdout
    res = CliRunner().invoke(app, ["runs", "show", str(crashed.run_id), "--db", db])
    assert res.exit_code == 0 and "[crashed]" in res.stdout
    alive.finish()
    crashed.finish()  # a late end still lands


KILLED_SCRIPT = r"""
import json, sys, time
from racli.store.engine import open_store
from racli.store.recorder import RunRecorder
store = open_store(sys.argv[1])
rec = RunRecorder.start(store, kind="train", attn="ra_v5", config={"minutes": 1}, seed=1,
                        env_info=json.loads(sys.argv[2]), git_commit="abc", flush_interval=0.1)
for i in range(50):
    rec.metric(i, "train_loss", 1.0 / (i + 1))
rec.gates(49, {0: {"w_std": [1.0, 2.0]}})
rec.flush()
print(rec.run_id, flush=True)
for i in range(50, 10**9):
    rec.metric(i, "train_loss", 0.0)
    time.sleep(0.01)
"""


@pytest.mark.slow
def test_killed_process_keeps_flushed_rows(store_url):
    db = store_url
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SCRIPT, db, json.dumps(ENV_INFO)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        line = proc.stdout.readline()
        assert line.strip().isdigit(), proc.stderr.read()
        run_id = int(line)
        time.sleep(0.3)  # let the writer thread flush a few times more
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    if "://" not in db:
        with sqlite3.connect(db) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = open_store(db, create=False)
    try:
        run = _run(store, run_id)
        assert run.status == "running" and run.finished_at is None
        assert display_status(run) == "running"  # the heartbeat is fresh: not yet known dead
        with store.session() as s:
            steps = set(s.scalars(select(Metric.step).where(Metric.run_id == run_id)))
        assert set(range(50)) <= steps  # everything flushed before the kill
        assert _count(store, GateValue, run_id) == 2
        assert utcnow() - run.heartbeat_at < timedelta(seconds=30)
        set_heartbeat_minutes_ago(store, run_id, 10)
        assert display_status(_run(store, run_id)) == "crashed"
        assert [r["id"] for r in _runs_json(db, "--status", "crashed")] == [run_id]
    finally:
        store.close()


def test_stale_uses_started_at_without_heartbeat(store):
    run = Run(
        kind="train",
        status="running",
        config={},
        config_hash="x",
        started_at=datetime(2020, 1, 1),
        heartbeat_at=None,
    )
    assert display_status(run) == "crashed"
    run.status = "failed"
    assert display_status(run) == "failed"


# ---- one owner per resumed run ---------------------------------------------------------


def _metric_keys(store, run_id) -> list:
    with store.session() as s:
        return list(s.execute(select(Metric.step, Metric.name).where(Metric.run_id == run_id)))


def test_resume_claims_the_run_once(store):
    rec = _start(store)
    rec.end("interrupted", error="interrupted")
    owner = RunRecorder.resume(store, rec.run_id, heartbeat=False)
    assert _run(store, rec.run_id).status == "running"
    # the run is now owned (fresh heartbeat): a second claimant is refused, nothing written
    before = _run(store, rec.run_id).heartbeat_at
    with pytest.raises(BadInput, match=f"run {rec.run_id} is being resumed by another process"):
        RunRecorder.resume(store, rec.run_id, heartbeat=False)
    assert _run(store, rec.run_id).heartbeat_at == before
    owner.finish()
    with pytest.raises(BadInput, match="is finished: it cannot be resumed"):
        RunRecorder.resume(store, rec.run_id, heartbeat=False)
    with pytest.raises(BadInput, match="no run 987654"):
        RunRecorder.resume(store, 987654, heartbeat=False)


@pytest.mark.parametrize("status", ["failed", "diverged"])
def test_resume_from_other_end_states(store, status):
    rec = _start(store)
    rec.end(status, error="x")
    RunRecorder.resume(store, rec.run_id, heartbeat=False).finish()
    assert _run(store, rec.run_id).status == "finished"


def test_a_crashed_run_can_be_claimed_once_its_heartbeat_is_stale(store):
    rec = _start(store)  # running, process "died": nothing refreshes the heartbeat
    with pytest.raises(BadInput, match="being resumed by another process"):
        RunRecorder.resume(store, rec.run_id, heartbeat=False)  # fresh: still owned
    set_heartbeat_minutes_ago(store, rec.run_id, 10)
    again = RunRecorder.resume(store, rec.run_id, heartbeat=False)
    assert utcnow() - _run(store, rec.run_id).heartbeat_at < timedelta(seconds=30)
    again.finish()


def test_concurrent_resumes_give_one_owner_and_no_duplicate_rows(store):
    """Eight threads, each with its own engine (own connections), claim one crashed
    run at the same moment: one owns it and writes; the others write nothing."""
    rec = _start(store)
    rec.metric(0, "train_loss", 3.0)
    rec.end("interrupted", error="interrupted")
    barrier = threading.Barrier(8)
    outcome: dict[int, str] = {}

    def claim(i: int) -> None:
        mine = open_store(store.db, migrate=False)
        try:
            barrier.wait(timeout=30)
            try:
                owner = RunRecorder.resume(mine, rec.run_id, heartbeat=False)
            except BadInput as exc:
                outcome[i] = str(exc)
                return
            outcome[i] = "owner"
            for step in (10, 20, 30):
                owner.metric(step, "train_loss", 2.0)
            owner.metric(30, "compile_s", 0.5)
            owner.finish(iterations=30)
        finally:
            mine.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert list(outcome.values()).count("owner") == 1, outcome
    refused = [m for m in outcome.values() if m != "owner"]
    assert len(refused) == 7
    assert all("being resumed by another process" in m or "is finished" in m for m in refused)
    keys = _metric_keys(store, rec.run_id)
    assert sorted(keys) == [
        (0, "train_loss"),
        (10, "train_loss"),
        (20, "train_loss"),
        (30, "compile_s"),
        (30, "train_loss"),
    ]
    run = _run(store, rec.run_id)
    assert (run.status, run.iterations) == ("finished", 30)
