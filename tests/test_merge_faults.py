"""`ra db merge` under faults (issues #27 and #30): runs that changed in a source since an
earlier merge, damaged sources, passwords in URLs, a round trip through PostgreSQL, a
concurrent writer on the target, a source written meanwhile."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest
from helpers import (
    ENV_INFO,
    REPO,
    TRAIN_CONFIG,
    db_dump,
    db_state,
    make_db,
    one_line_error,
    python_env,
    ra_inprocess,
    record_run,
)

from racli.store import merge as merge_mod
from racli.store.engine import open_store
from racli.store.merge import merge_stores
from racli.store.recorder import RunRecorder

RUN_COLS = (
    "uuid, kind, attn, status, config, config_hash, seed, tag, git_commit, started_at, "
    "finished_at, heartbeat_at, error, iterations, tokens, epochs, train_seconds, val_loss, "
    "tokens_per_s, excluded, exclude_reason"
)


def _rows(path, sql):
    with sqlite3.connect(path) as raw:
        return raw.execute(sql).fetchall()


def _start(store, **kw):
    return RunRecorder.start(
        store,
        kind="train",
        attn="ra_v5",
        config=dict(kw.pop("config", TRAIN_CONFIG)),
        env_info=ENV_INFO,
        git_commit="c0ffee",
        heartbeat=False,
        **kw,
    )


def _curves(path, uuid):
    return _rows(
        path,
        "SELECT m.step, m.name, m.value FROM metrics m JOIN runs r ON r.id = m.run_id "
        f"WHERE r.uuid = '{uuid}' ORDER BY m.id",
    )


# ---- #30.4: a run that changed in its source since the last merge ------------------------------


def test_a_run_finished_in_the_source_since_an_earlier_merge_is_updated(tmp_path):
    src, target = tmp_path / "gpu1.db", tmp_path / "team.db"
    store = open_store(str(src))
    rec = _start(store)
    for step in range(1, 6):
        rec.metric(step, "train_loss", 4.0 - step / 10)
    rec.end("interrupted", error="stopped on request", iterations=5)
    store.close()
    (r,) = merge_stores(str(target), [str(src)])
    assert (r.runs, r.updated) == (1, 0)
    ((uuid,),) = _rows(src, "SELECT uuid FROM runs")
    stale_copy = tmp_path / "old-copy.db"
    stale_copy.write_bytes(src.read_bytes())
    ra_inprocess("runs", "exclude", "1", "--reason", "checked by hand", "--db", target)

    store = open_store(str(src))  # resumed in the source from its checkpoint at step 3
    again = RunRecorder.resume(store, rec.run_id, heartbeat=False, drop_after_step=3)
    for step in range(4, 9):
        again.metric(step, "train_loss", 3.0 - step / 10)
    again.finish(iterations=8, val_loss=2.5)
    store.close()
    res = ra_inprocess("db", "merge", src, "--db", target)
    assert res.exit_code == 0, res.output
    assert "added 0 run(s)" in res.stdout and "1 run(s) updated" in res.stdout
    assert _rows(target, "SELECT status, iterations, val_loss, error FROM runs") == [
        ("finished", 8, 2.5, None)
    ]
    assert _curves(target, uuid) == _curves(src, uuid)  # replaced whole: no step twice
    # the target's own annotation stays
    assert _rows(target, "SELECT excluded, exclude_reason FROM runs") == [(1, "checked by hand")]
    # merging again, or merging the older copy, changes nothing
    dump = db_dump(target)
    for source in (src, stale_copy):
        (r,) = merge_stores(str(target), [str(source)])
        assert (r.runs, r.updated, r.already_present) == (0, 0, 1)
    assert db_dump(target) == dump


# ---- #27.4: damaged sources, itself, passwords --------------------------------------------------


def _corrupt_copy(path, out):
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA journal_mode=DELETE")
        (root,) = raw.execute("SELECT rootpage FROM sqlite_master WHERE name='metrics'").fetchone()
        (page,) = raw.execute("PRAGMA page_size").fetchone()
    data = bytearray(path.read_bytes())
    start = (root - 1) * page
    data[start + 8 : start + 200] = b"\xab" * 192  # the page's cell pointers
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("bad", ["text file", "corrupt page", "itself via another path"])
def test_a_damaged_source_or_the_target_itself_is_one_line_and_changes_nothing(tmp_path, bad):
    target = tmp_path / "t.db"
    make_db(target, [("train", "baseline", "finished", 7, None)])
    before = db_state(target)
    if bad == "text file":
        source = tmp_path / "notes.db"
        source.write_text("not a database\n" * 100)
    elif bad == "corrupt page":
        good = tmp_path / "good.db"
        make_db(good)
        source = _corrupt_copy(good, tmp_path / "damaged.db")
    else:
        (tmp_path / "sub").mkdir()
        source = tmp_path / "sub" / ".." / "t.db"
    err = one_line_error(ra_inprocess("db", "merge", source, "--db", target))
    assert {"text file": "damaged or not a database", "corrupt page": "out of range"}.get(
        bad, "the target database itself"
    ) in err
    assert db_state(target) == before


def test_urls_are_shown_without_their_password(tmp_path, pg_url):
    store = open_store(pg_url)
    record_run(store)
    store.close()
    with_password = pg_url.replace("://ra@", "://ra:s3cret@")  # the test server trusts anyone
    target = tmp_path / "t.db"
    for extra in ((), ("--json",)):
        res = ra_inprocess("db", "merge", with_password, "--db", target, *extra)
        assert res.exit_code == 0, res.output
        assert "s3cret" not in res.stdout + res.stderr and "***" in res.stdout
    assert "s3cret" not in str(_rows(target, "SELECT origin FROM runs"))
    closed = with_password.rsplit(":", 1)[0] + ":1/ra"
    err = one_line_error(ra_inprocess("db", "merge", closed, "--db", target))
    assert "s3cret" not in err and "ra:***@" in err
    res = ra_inprocess("db", "merge", str(target), "--db", with_password, "--json")
    assert res.exit_code == 0 and "s3cret" not in res.stdout + res.stderr, res.output


# ---- #27.4: SQLite -> PostgreSQL -> SQLite --------------------------------------------------------


def _contents(db) -> dict:
    """Everything a store holds, keyed by run uuid (ids, env ids, origins and owners are the
    store's own; references compared through the uuid they hold)."""
    store = open_store(db)
    try:
        from sqlalchemy import text

        with store.engine.connect() as conn:
            envs = {  # matched by fingerprint: a target's own row keeps its created_at
                r.id: tuple(v for k, v in r._mapping.items() if k not in ("id", "created_at"))
                for r in conn.execute(text("SELECT * FROM environments"))
            }
            runs, children = {}, {}
            for r in conn.execute(text(f"SELECT id, env_id, {RUN_COLS} FROM runs")):
                row = dict(r._mapping)
                config = (
                    row["config"] if isinstance(row["config"], dict) else json.loads(row["config"])
                )
                source = config.get("budget_source")
                if source:
                    config["budget_source"] = {**source, "calibration_run": None}
                row.update(
                    config=config, env=envs.get(row.pop("env_id")), excluded=bool(row["excluded"])
                )
                rid = row.pop("id")
                runs[row["uuid"]] = row
                children[row["uuid"]] = [
                    [tuple(x) for x in conn.execute(text(sql), {"i": rid})]
                    for sql in (
                        "SELECT step, name, value, elapsed_s FROM metrics WHERE run_id=:i ORDER BY id",
                        "SELECT layer, head, step, name, value FROM gate_values WHERE run_id=:i ORDER BY id",
                        "SELECT attn, mode, phase, median_ms, status, reason, backend FROM timings "
                        "WHERE run_id=:i ORDER BY id",
                    )
                ]
        return {"runs": runs, "children": children, "envs": sorted(envs.values(), key=str)}
    finally:
        store.close()


def test_sqlite_to_postgresql_to_sqlite_keeps_every_row(tmp_path, pg_url):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    make_db(a)
    store = open_store(str(a))
    cal = _start(store, config={"calibration": {"x": 1}})
    cal.finish()
    dep = _start(store, config={**TRAIN_CONFIG, "budget_source": {"calibration_run": cal.run_id}})
    dep.metric(3, "val_loss", 1.25, 0.5)
    dep.finish(val_loss=1.25)
    store.close()
    make_db(b, [("bench", None, "finished", None, None)])  # ids in b differ from a's
    merge_stores(pg_url, [str(a)])
    merge_stores(str(b), [pg_url])
    got, want = _contents(str(b)), _contents(str(a))
    (bench_uuid,) = set(got["runs"]) - set(want["runs"])
    got["runs"].pop(bench_uuid), got["children"].pop(bench_uuid)
    for key in want:
        for k in want[key] if isinstance(want[key], dict) else [None]:
            if k is None:
                assert got[key] == want[key], key
            else:
                assert got[key][k] == want[key][k], (key, k)
    # the reference points at the calibration's id in b
    ((cal_id_b,),) = _rows(b, f"SELECT id FROM runs WHERE uuid = '{_uuid(a, cal.run_id)}'")
    ((ref,),) = _rows(
        b,
        "SELECT json_extract(config, '$.budget_source.calibration_run') FROM runs "
        f"WHERE uuid = '{_uuid(a, dep.run_id)}'",
    )
    assert ref == cal_id_b != cal.run_id


def _uuid(path, run_id):
    ((u,),) = _rows(path, f"SELECT uuid FROM runs WHERE id = {run_id}")
    return u


# ---- #30.5: short transactions --------------------------------------------------------------------


def test_a_concurrent_writer_gets_the_target_between_runs(tmp_path, monkeypatch):
    """The target is locked one group of runs at a time: a writer with a short busy timeout
    (what `ra train` meets) gets through between them."""
    src = tmp_path / "src.db"
    store = open_store(str(src))
    for _ in range(4):
        rec = _start(store)
        for step in range(1500):
            rec.metric(step, "train_loss", 1.0)
        rec.finish()
    store.close()
    target = tmp_path / "t.db"
    make_db(target, [("train", "baseline", "finished", 1, None)])
    monkeypatch.setattr(merge_mod, "GROUP_ROWS", 1000)  # each run a transaction of its own
    real, waits = merge_mod._Merge._group, []

    def group(self, todo, k):
        with sqlite3.connect(target, timeout=0.2) as other:
            t0 = time.monotonic()
            other.execute("UPDATE runs SET heartbeat_at = heartbeat_at WHERE id = 1")
            waits.append(time.monotonic() - t0)
        return real(self, todo, k)

    monkeypatch.setattr(merge_mod._Merge, "_group", group)
    (r,) = merge_stores(str(target), [str(src)])
    assert r.runs == 4 and r.metrics == 6000 and len(waits) == 4


# ---- #27.4: a source written meanwhile -------------------------------------------------------------

WRITER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from helpers import record_run
from racli.store.engine import open_store
store = open_store(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    record_run(store, n_metrics=200)
store.close()
"""


@pytest.mark.slow
def test_merging_a_source_while_another_process_writes_to_it(tmp_path):
    src, target = tmp_path / "src.db", tmp_path / "t.db"
    make_db(src)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(src), str(REPO / "tests"), "3"],
        env=python_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rounds = 0
        while proc.poll() is None:
            res = ra_inprocess("db", "merge", src, "--db", target)
            assert res.exit_code == 0, res.output
            rounds += 1
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert rounds >= 2
    merge_stores(str(target), [str(src)])
    # every run arrived whole, once
    for (uuid,) in _rows(src, "SELECT uuid FROM runs"):
        assert _curves(target, uuid) == _curves(src, uuid)
    assert _rows(target, "SELECT count(*) FROM runs") == _rows(src, "SELECT count(*) FROM runs")
