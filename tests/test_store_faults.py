"""Store faults (issues #27 and #30), each reproduced first: run ids never reused (migration
0006), dependencies kept on delete, a recorder that loses its run (deleted, taken over),
a store that does not answer for a while, resumes that drop the rows past the checkpoint,
bad `--db` values and tags. Real servers, processes and full disks: test_fault_processes.py."""

from __future__ import annotations

import sqlite3
import time

import pytest
from helpers import (
    ENV_INFO,
    TRAIN_CONFIG,
    db_state,
    make_db,
    one_line_error,
    ra_inprocess,
    record_run,
    set_heartbeat_minutes_ago,
)
from sqlalchemy import text, update
from sqlalchemy.exc import IntegrityError, OperationalError

from racli.errors import BadInput
from racli.store import migrate as store_migrate
from racli.store.engine import open_store
from racli.store.manage import delete_runs
from racli.store.migrate import HEAD_REVISION, current_revision
from racli.store.models import Run
from racli.store.recorder import RunLost, RunRecorder, StoreUnavailable


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def _start(store, config=None, **kw) -> RunRecorder:
    return RunRecorder.start(
        store,
        kind=kw.pop("kind", "train"),
        attn="ra_v5",
        config=dict(TRAIN_CONFIG if config is None else config),
        env_info=ENV_INFO,
        git_commit="c0ffee",
        heartbeat=False,
        **kw,
    )


def _q(store, sql, **kw):
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), kw)]


# ---- A: run ids are never reused ------------------------------------------------------------


def test_the_id_of_a_deleted_newest_run_is_never_given_again(store):
    ids = [record_run(store) for _ in range(3)]
    res = ra_inprocess("runs", "delete", str(ids[-1]), "--yes", "--db", store.db)
    assert res.exit_code == 0, res.output
    store.close()
    store = open_store(store.db)
    try:
        assert record_run(store) == ids[-1] + 1
    finally:
        store.close()


def _rows_without_owner(path) -> dict:
    with sqlite3.connect(path) as raw:
        raw.row_factory = sqlite3.Row
        out = {}
        for table in ("environments", "runs", "timings", "metrics", "gate_values"):
            rows = [dict(r) for r in raw.execute(f"SELECT * FROM {table} ORDER BY id")]
            out[table] = [{k: v for k, v in r.items() if k != "owner"} for r in rows]
        return out


def test_upgrading_a_populated_0005_store_keeps_every_row_and_never_reuses_ids(tmp_path):
    path = tmp_path / "old.db"
    make_db(path)  # six runs with metrics, timings and gate values
    s = open_store(str(path), migrate=False)
    store_migrate.downgrade(s.engine, "0005")
    s.close()
    with sqlite3.connect(path) as raw:  # the fault at 0005: the newest id comes back
        raw.execute("PRAGMA foreign_keys=ON")
        assert (
            "AUTOINCREMENT"
            not in raw.execute("SELECT sql FROM sqlite_master WHERE name='runs'").fetchone()[0]
        )
        raw.execute("DELETE FROM runs WHERE id = 6")
        raw.execute(
            "INSERT INTO runs (kind, status, config, config_hash, started_at, uuid, excluded) "
            "VALUES ('bench', 'finished', '{}', 'h', '2026-01-01 00:00:00', 'u-reused', 0)"
        )
        assert raw.execute("SELECT id FROM runs WHERE uuid='u-reused'").fetchone() == (6,)
        raw.execute("DELETE FROM runs WHERE id = 6")
    before = _rows_without_owner(path)
    res = ra_inprocess("db", "upgrade", "--db", path)
    assert res.exit_code == 0 and f"from 0005 to {HEAD_REVISION}" in res.stdout, res.output
    after = _rows_without_owner(path)  # the columns of 0005, as they were
    assert {
        t: [{k: r[k] for k in (rows[0] if rows else {})} for r in after[t]]
        for t, rows in before.items()
    } == before
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        fks = raw.execute("PRAGMA foreign_key_list(metrics)").fetchall()
        assert [(r[2], r[3], r[4], r[6]) for r in fks] == [("runs", "run_id", "id", "CASCADE")]
    s = open_store(str(path))
    try:
        assert current_revision(s.engine) == HEAD_REVISION
        # from the upgrade on, the largest id ever given is kept (ids deleted before it
        # cannot be known: 6 is given once more)
        delete_runs(s, [5])
        assert record_run(s) == 6
        delete_runs(s, [6])
        assert record_run(s) == 7
    finally:
        s.close()


# ---- A, B: references by uuid, dependencies kept ----------------------------------------------


def _experiment_runs(store):
    """A calibration and two train runs whose budgets came from it (by id, as recorded)."""
    cal = _start(store, kind="calibration")
    cal.finish()
    deps = []
    for seed in (1, 2):
        cfg = {
            **TRAIN_CONFIG,
            "budget_source": {"kind": "matched_time", "calibration_run": cal.run_id},
        }
        rec = _start(store, config=cfg, seed=seed)
        rec.finish()
        deps.append(rec.run_id)
    return cal.run_id, deps


def test_a_run_records_the_uuid_of_the_run_it_names(store):
    cal, (dep, _) = _experiment_runs(store)
    ((cal_uuid,),) = _q(store, "SELECT uuid FROM runs WHERE id=:i", i=cal)
    with store.session() as s:
        source = s.get(Run, dep).config["budget_source"]
    assert source["calibration_run"] == cal and source["calibration_uuid"] == cal_uuid


def test_deleting_a_calibration_its_runs_depend_on_is_refused_unless_cascade(store):
    cal, deps = _experiment_runs(store)
    other = record_run(store)
    before = _q(store, "SELECT id FROM runs ORDER BY id")
    err = one_line_error(ra_inprocess("runs", "delete", str(cal), "--yes", "--db", store.db))
    assert f"run {cal} is needed" in err and f"{deps[0]}, {deps[1]}" in err and "--cascade" in err
    assert _q(store, "SELECT id FROM runs ORDER BY id") == before
    # the calibration with its dependants given too: nothing is left dangling
    res = ra_inprocess("runs", "delete", str(cal), *map(str, deps), "--yes", "--db", store.db)
    assert res.exit_code == 0, res.output
    assert _q(store, "SELECT id FROM runs ORDER BY id") == [(other,)]


def test_cascade_deletes_the_dependants_too(store):
    cal, deps = _experiment_runs(store)
    res = ra_inprocess("runs", "delete", str(cal), "--cascade", "--yes", "--json", "--db", store.db)
    assert res.exit_code == 0, res.output
    assert '"runs": [' in res.stdout and all(str(d) in res.stdout for d in deps)
    assert _q(store, "SELECT count(*) FROM runs") == [(0,)]


def test_a_run_another_resumed_from_is_kept_and_old_references_by_id_are_read(store):
    first = record_run(store, status="interrupted")
    cfg = {**TRAIN_CONFIG, "resumed_from": {"run": first}}
    later = _start(store, config=cfg)
    later.finish()
    # a store recorded before uuids were kept beside ids: the reference by id alone counts
    with store.writing() as conn:
        conn.execute(update(Run).where(Run.id == later.run_id).values(config=cfg))
    with pytest.raises(BadInput, match=rf"run\(s\) {later.run_id} resumed from it"):
        delete_runs(store, [first])
    assert delete_runs(store, [first], cascade=True).runs == [first, later.run_id]


# ---- D3, D13: a recorder that no longer owns its run stops -------------------------------------


def test_a_deleted_run_stops_its_recorder_without_a_foreign_key_error(store):
    rec = _start(store)
    rec.metric(1, "train_loss", 3.0)
    rec.flush()
    set_heartbeat_minutes_ago(store, rec.run_id, 10)  # its process paused past the timeout
    delete_runs(store, [rec.run_id])
    rec.metric(2, "train_loss", 2.9)
    with pytest.raises(RunLost, match="was deleted from the store"):
        rec.before_checkpoint()
    with pytest.raises(RunLost):  # and from then on, at every call
        rec.metric(3, "train_loss", 2.8)
    with pytest.raises(RunLost):
        rec.fail(RuntimeError("x"))
    assert _q(store, "SELECT count(*) FROM metrics") == [(0,)]


def test_a_run_taken_over_by_another_process_stops_the_first(store):
    a = _start(store)
    a.metrics(10, {"train_loss": 3.0})
    a.flush()
    set_heartbeat_minutes_ago(store, a.run_id, 10)
    b = RunRecorder.resume(store, a.run_id, heartbeat=False, drop_after_step=10)
    a.metrics(20, {"train_loss": 2.0})  # the paused process wakes up and goes on
    with pytest.raises(RunLost, match="taken over by another process"):
        a.flush()
    with pytest.raises(RunLost):
        a.finish(iterations=20)
    b.metrics(20, {"train_loss": 2.5})
    b.finish(iterations=30)
    assert _q(store, "SELECT step, value FROM metrics ORDER BY step") == [(10, 3.0), (20, 2.5)]
    assert _q(store, "SELECT status, iterations FROM runs") == [("finished", 30)]


def test_resume_drops_the_rows_past_the_checkpoint(store):
    rec = _start(store)
    for step in range(1, 11):
        rec.metric(step, "train_loss", 4.0 - step / 10)
    rec.gates(8, {0: {"w_rec": [0.1, 0.2]}})
    rec.gates(4, {0: {"w_rec": [0.1, 0.2]}})
    rec.end("interrupted")
    again = RunRecorder.resume(store, rec.run_id, heartbeat=False, drop_after_step=6)
    assert _q(store, "SELECT max(step), count(*) FROM metrics") == [(6, 6)]
    assert _q(store, "SELECT DISTINCT step FROM gate_values") == [(4,)]
    again.finish()


# ---- D5: a store that does not answer for a while ---------------------------------------------


class _Flaky:
    """store.writing() failing like a server that is down, until `up` is set."""

    def __init__(self, store):
        self.store, self.real, self.up, self.attempts = store, store.writing, False, 0

    def __call__(self):
        self.attempts += 1
        if not self.up:
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return self.real()


def test_an_outage_shorter_than_the_limit_loses_nothing(store, monkeypatch):
    rec = _start(store)
    flaky = _Flaky(store)
    monkeypatch.setattr(store, "writing", flaky)
    rec.metric(1, "train_loss", 3.0)
    rec.update(val_loss=2.9)  # an evaluation point: no exception, kept for later
    rec.before_checkpoint()
    with pytest.raises(OperationalError):
        rec.flush()
    rec.metric(2, "train_loss", 2.8)
    flaky.up = True
    rec.finish(iterations=2)
    assert _q(store, "SELECT step FROM metrics ORDER BY step") == [(1,), (2,)]
    assert _q(store, "SELECT status, val_loss, iterations FROM runs") == [("finished", 2.9, 2)]


def test_a_store_away_past_the_limit_stops_the_run_with_one_line(store, monkeypatch):
    store.wait_s = 0.3
    rec = _start(store)
    monkeypatch.setattr(store, "writing", _Flaky(store))
    rec.metric(1, "train_loss", 3.0)
    with pytest.raises(OperationalError):
        rec.flush()
    time.sleep(0.35)
    with pytest.raises(OperationalError):
        rec.flush()
    with pytest.raises(StoreUnavailable, match=r"could not be written for 0 s.*server closed") as e:
        rec.metric(2, "train_loss", 2.9)
    assert "\n" not in str(e.value) and "resumes from its last checkpoint" in str(e.value)
    with pytest.raises(StoreUnavailable):  # one last attempt at the end, then the same line
        rec.fail(e.value)


def test_a_row_the_store_refuses_for_good_stops_the_run_at_once(store):
    """A row no retry can write (here a timing without its shape: NOT NULL) is not an
    outage: the run stops at its next call with one line, and its end does not wait out
    db_wait_minutes (it waited the whole 5 minutes before)."""
    rec = _start(store, kind="bench")
    rec.metric(1, "train_loss", 3.0)
    rec.flush()
    rec.timing(attn="baseline", mode="eager", phase="fwd", status="ok")  # no batch, seq, ...
    with pytest.raises(IntegrityError):
        rec.flush()
    with pytest.raises(StoreUnavailable, match="refused a row") as e:
        rec.metric(2, "train_loss", 2.9)
    assert "\n" not in str(e.value) and "no retry can write" in str(e.value)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="refused a row"):
        rec.finish()
    assert time.monotonic() - t0 < 5
    assert _q(store, "SELECT step FROM metrics") == [(1,)]  # what was written stays


class _CommitThenBreak:
    """store.writing() whose first transaction commits, then reports a broken connection
    (a server stopped between the commit and its answer)."""

    def __init__(self, store):
        self.real, self.armed = store.writing, True

    def __call__(self):
        outer, cm = self, self.real()

        class Writing:
            def __enter__(self):
                return cm.__enter__()

            def __exit__(self, *exc):
                done = cm.__exit__(*exc)
                if outer.armed and exc[0] is None:
                    outer.armed = False
                    raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
                return done

        return Writing()


def test_a_write_committed_before_its_connection_broke_is_not_written_twice(store, monkeypatch):
    rec = _start(store)
    monkeypatch.setattr(store, "writing", _CommitThenBreak(store))
    for step in (1, 2, 3):
        rec.metric(step, "train_loss", 3.0)
    with pytest.raises(OperationalError):
        rec.flush()
    rec.metric(4, "train_loss", 3.0)
    rec.finish()
    assert _q(store, "SELECT step FROM metrics ORDER BY step") == [(1,), (2,), (3,), (4,)]


def test_update_names_only_run_columns(store):
    rec = _start(store)
    with pytest.raises(ValueError, match="unknown run column"):
        rec.update(nope=1)
    rec.finish()


# ---- D10, D12: bad --db values and tags -------------------------------------------------------


@pytest.mark.parametrize("db", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_store_is_refused(tmp_path, monkeypatch, db):
    monkeypatch.chdir(tmp_path)
    for args in (("runs",), ("db", "upgrade"), ("train", "--attn", "baseline", "--steps", "1")):
        err = one_line_error(ra_inprocess(*args, "--db", db))
        assert "in memory" in err
    assert list(tmp_path.iterdir()) == []


def test_train_with_a_bad_db_creates_nothing(tmp_path):
    (tmp_path / "not.db").write_text("hello")
    cases = {
        str(tmp_path / "missing" / "dir" / "x.db"): "does not exist",
        str(tmp_path / "not.db"): "file is not a database",
        "postgresql+psycopg://ra:secret@127.0.0.1:1/ra": "cannot open database",
    }
    for db, message in cases.items():
        res = ra_inprocess("train", "--attn", "baseline", "--steps", "1", "--db", db)
        err = one_line_error(res)
        assert message in err and "secret" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not.db"]


def test_a_tag_that_is_not_utf8_is_refused(tmp_path):
    db = tmp_path / "ra.db"
    make_db(db, [("train", "baseline", "finished", 1, None)])
    before = db_state(db)
    bad = b"run-\xff".decode("utf-8", "surrogateescape")  # what a shell passes for the byte
    for args in (
        ("train", "--attn", "baseline", "--steps", "1", "--tag", bad),
        ("runs", "tag", "1", bad),
    ):
        err = one_line_error(ra_inprocess(*args, "--db", db))
        assert "not valid UTF-8" in err and "0xff" in err
    assert db_state(db) == before
    assert not (tmp_path / "ra_checkpoints").exists()


def test_a_recorder_refuses_such_a_tag_before_writing(store):
    with pytest.raises(BadInput, match="UTF-8"):
        _start(store, tag="\udcff")
    assert _q(store, "SELECT count(*) FROM runs") == [(0,)]


def test_a_config_that_is_not_json_leaves_every_read_working(tmp_path):
    """SQLite keeps any text in the JSON column: one row damaged outside ra is shown as it
    is, and every read and writing command still works on the store (none rewrites it)."""
    db = tmp_path / "ra.db"
    ids = make_db(db)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE runs SET config='not json{' WHERE id=?", (ids[1],))
    for args in (
        ("runs",),
        ("runs", "--json"),
        ("runs", "show", ids[1]),
        ("runs", "diff", ids[1], ids[2]),
        ("runs", "export"),
        ("compare",),
        ("runs", "tag", ids[1], "kept"),
    ):
        res = ra_inprocess(*args, "--db", db)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
    assert "not json{" in ra_inprocess("runs", "show", ids[1], "--db", db).stdout
    with sqlite3.connect(db) as raw:
        row = raw.execute("SELECT config, tag FROM runs WHERE id=?", (ids[1],)).fetchone()
    assert row == ("not json{", "kept")
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE runs SET status='interrupted' WHERE id=?", (ids[1],))
    err = one_line_error(ra_inprocess("train", "--resume", ids[1], "--db", db))
    assert "configuration is not JSON" in err
