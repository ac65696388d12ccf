"""`ra db merge` (racli.store.merge) and the run identity of migration 0004."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import (
    ENV_INFO,
    REPO,
    db_dump,
    db_state,
    make_db,
    one_line_error,
    ra_inprocess,
    record_run,
    run_python,
    sha256,
)

from racli.errors import BadInput
from racli.store import merge as merge_mod
from racli.store import migrate as store_migrate
from racli.store.engine import open_store
from racli.store.merge import merge_stores, totals
from racli.store.migrate import HEAD_REVISION, current_revision
from racli.store.models import legacy_uuid

TABLES = ("environments", "runs", "timings", "metrics", "gate_values")

# recorded by one process into a store: (kind, attn, seed, on the GPU environment)
RECORD = """
import json, sys
sys.path.insert(0, sys.argv[3])
from helpers import ENV_INFO, GPU_ENV_INFO, record_run
from racli.store.engine import open_store
store = open_store(sys.argv[1])
for kind, attn, seed, gpu in json.loads(sys.argv[2]):
    record_run(store, kind=kind, attn=attn, seed=seed, env_info=GPU_ENV_INFO if gpu else ENV_INFO)
store.close()
"""
SHARED = [["train", "baseline", 1, False]]
MORE_A = [
    ["train", "ra_v5", 1, False],
    ["train", "baseline", 2, False],
    ["bench", None, None, False],
]
MORE_B = [
    ["train", "ra_v5", 2, False],
    ["train", "baseline", 3, False],
    ["train", "ra_v5", 3, False],
    ["train", "ra_v5", 1, True],
]


def _record(path, plan) -> None:
    res = run_python(RECORD, path, json.dumps(plan), REPO / "tests")
    assert res.returncode == 0, res.stderr


def _counts(path) -> dict:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as raw:
        return {t: raw.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _rows(path, sql):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    """Stores A and B made by separate processes: one run in both (B began as a copy of A),
    overlapping environments (B also has a GPU one)."""
    d = tmp_path_factory.mktemp("two")
    a, b = d / "a.db", d / "b.db"
    _record(a, SHARED)
    shutil.copy(a, b)
    _record(a, MORE_A)
    _record(b, MORE_B)
    return a, b


@pytest.mark.slow  # three processes make the stores
def test_merge_two_stores_exact_counts_and_again_nothing(two_stores, tmp_path):
    a, b = two_stores
    a_before, b_before = sha256(a), sha256(b)
    target = tmp_path / "t.db"
    res = ra_inprocess("db", "merge", a, b, "--db", target, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    by_source = {Path(s["source"]).name: s for s in out["sources"]}
    # A: 4 runs (3 train, 1 bench) on the CPU environment
    assert {
        k: by_source["a.db"][k]
        for k in ("runs", "metrics", "timings", "gate_values", "environments", "already_present")
    } == {
        "runs": 4,
        "metrics": 18,
        "timings": 2,
        "gate_values": 24,
        "environments": 1,
        "already_present": 0,
    }
    # B: its copy of the shared run is already there; 4 new train runs, one on a new environment
    assert {
        k: by_source["b.db"][k]
        for k in ("runs", "metrics", "timings", "gate_values", "environments", "already_present")
    } == {
        "runs": 4,
        "metrics": 24,
        "timings": 0,
        "gate_values": 32,
        "environments": 1,
        "already_present": 1,
    }
    assert _counts(target) == {
        "environments": 2,
        "runs": 8,
        "timings": 2,
        "metrics": 42,
        "gate_values": 56,
    }
    assert out["total"]["runs"] == 8
    # the sources are only read
    assert (sha256(a), sha256(b)) == (a_before, b_before)

    # every run arrived whole: same row (but id, env_id, origin), same curves, its origin
    cols = (
        "uuid, kind, attn, status, config, config_hash, seed, tag, git_commit, started_at, "
        "finished_at, iterations, tokens, epochs, train_seconds, val_loss, tokens_per_s"
    )
    merged = {r[0]: r for r in _rows(target, f"SELECT {cols} FROM runs")}
    for src in (a, b):
        for row in _rows(src, f"SELECT {cols} FROM runs"):
            assert merged[row[0]] == row
        for rid, uuid in _rows(src, "SELECT id, uuid FROM runs"):
            curves = _rows(
                src,
                f"SELECT step, name, value, elapsed_s FROM metrics WHERE run_id={rid} ORDER BY id",
            )
            ((tid,),) = _rows(target, f"SELECT id FROM runs WHERE uuid='{uuid}'")
            assert (
                _rows(
                    target,
                    f"SELECT step, name, value, elapsed_s FROM metrics WHERE run_id={tid} "
                    "ORDER BY id",
                )
                == curves
            )
    # where each run came from: A's runs from A (the shared one too: A came first), B's new ones from B
    a_ids = dict(_rows(a, "SELECT uuid, id FROM runs"))
    b_ids = dict(_rows(b, "SELECT uuid, id FROM runs"))
    for uuid, origin in _rows(target, "SELECT uuid, origin FROM runs"):
        assert origin == (f"{a}#{a_ids[uuid]}" if uuid in a_ids else f"{b}#{b_ids[uuid]}")
    gpu_run = _rows(
        target,
        "SELECT e.gpu_name FROM runs r JOIN environments e ON r.env_id = e.id "
        "WHERE r.origin = '%s#5'" % b,
    )
    assert gpu_run == [("NVIDIA H100 80GB HBM3",)]
    assert not _rows(target, "PRAGMA foreign_key_check")

    # merging again adds nothing (and the text says so)
    dump = db_dump(target)
    res = ra_inprocess("db", "merge", a, b, "--db", target)
    assert res.exit_code == 0, res.output
    assert (
        f"{a}: added 0 run(s), 0 metric value(s), 0 timing(s), 0 gate value(s), "
        "0 environment(s); 4 run(s) already present" in res.stdout
    )
    assert "total: added 0 run(s)" in res.stdout
    assert db_dump(target) == dump


def _compare(db, *extra):
    res = ra_inprocess("compare", "--db", db, *extra)
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.slow
def test_compare_on_the_merged_store_equals_one_store(two_stores, tmp_path):
    a, b = two_stores
    target = tmp_path / "t.db"
    merge_stores(str(target), [str(a), str(b)])
    # one store holding the same runs, recorded in the same order
    single = tmp_path / "one.db"
    _record(single, SHARED + MORE_A + MORE_B)
    for extra in ((), ("--any-env",), ("--metric", "tokens_per_s")):
        assert _compare(target, *extra) == _compare(single, *extra)
        assert json.loads(_compare(target, *extra, "--json")) == json.loads(
            _compare(single, *extra, "--json")
        )


def _newer_schema_db(path):
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        raw.execute("INSERT INTO alembic_version VALUES ('9999')")
        raw.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, future_column TEXT)")
    return path


@pytest.mark.slow
def test_newer_schema_source_is_refused_target_unchanged(two_stores, tmp_path):
    a, _ = two_stores
    target = tmp_path / "t.db"
    make_db(target, [("train", "baseline", "finished", 7, None)])
    before = db_state(target)
    newer = _newer_schema_db(tmp_path / "newer.db")
    newer_digest = sha256(newer)
    res = ra_inprocess("db", "merge", a, newer, "--db", target)
    err = one_line_error(res)
    assert "9999" in err and "newer" in err
    assert db_state(target) == before
    assert sha256(newer) == newer_digest


@pytest.mark.parametrize("bad", ["missing", "not_ra", "itself"])
def test_bad_sources_are_one_line_and_change_nothing(tmp_path, bad):
    target = tmp_path / "t.db"
    make_db(target, [("train", "baseline", "finished", 7, None)])
    before = db_state(target)
    if bad == "missing":
        source = tmp_path / "nope.db"
    elif bad == "not_ra":
        source = tmp_path / "other.db"
        with sqlite3.connect(source) as raw:
            raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    else:
        source = target
    one_line_error(ra_inprocess("db", "merge", source, "--db", target))
    assert db_state(target) == before


def test_a_failure_leaves_whole_runs_and_merging_again_completes(two_stores, tmp_path, monkeypatch):
    """Runs are written in short transactions (a few runs each, here one): a failure in the
    middle of a run's rows leaves the runs before it whole and none of it; merging again gives what one
    uninterrupted merge gives."""
    a, b = two_stores
    whole = tmp_path / "whole.db"
    make_db(whole, [("train", "baseline", "finished", 7, None)])
    merge_stores(str(whole), [str(a), str(b)])
    target = tmp_path / "t.db"
    make_db(target, [("train", "baseline", "finished", 7, None)])
    real = merge_mod._Merge._copy
    calls = []

    def failing(self, conn, table, src_id, target_id):
        calls.append(table)
        if len(calls) == 8:  # the third run's gate values
            raise RuntimeError("disk full")
        return real(self, conn, table, src_id, target_id)

    monkeypatch.setattr(merge_mod._Merge, "_copy", failing)
    monkeypatch.setattr(merge_mod, "GROUP_ROWS", 0)  # a transaction per run
    with pytest.raises(RuntimeError, match="disk full"):
        merge_stores(str(target), [str(a), str(b)])
    assert _counts(target)["runs"] == 1 + 2
    uuids = [u for (u,) in _rows(a, "SELECT uuid FROM runs ORDER BY id")]
    for uuid in uuids[:2]:
        for table in ("metrics", "gate_values"):
            sql = (
                f"SELECT count(*) FROM {table} t JOIN runs r ON r.id = t.run_id WHERE uuid='{uuid}'"
            )
            assert _rows(target, sql) == _rows(a, sql)
    assert not _rows(target, f"SELECT id FROM runs WHERE uuid='{uuids[2]}'")
    monkeypatch.setattr(merge_mod._Merge, "_copy", real)
    merge_stores(str(target), [str(a), str(b)])
    assert _counts(target) == _counts(whole)


def test_a_long_merge_says_how_far_it_is(two_stores, tmp_path, monkeypatch):
    """On a terminal a merge says what it will write, then how far it is at most every
    PROGRESS_S seconds (here: after every transaction of one run)."""
    a, _ = two_stores
    target = tmp_path / "t.db"
    monkeypatch.setattr(merge_mod, "GROUP_ROWS", 0)  # a transaction per run
    monkeypatch.setattr(merge_mod, "PROGRESS_S", 0.0)
    said: list[str] = []
    (r,) = merge_stores(str(target), [str(a)], progress=said.append)
    n = r.runs
    assert n >= 3 and said[0].endswith(f"{n} run(s) to add or update")
    assert said[1:] == [f"{a}: {k} of {n} run(s) written" for k in range(1, n)]


def test_still_running_runs_wait(tmp_path):
    from racli.store.recorder import RunRecorder

    src = tmp_path / "s.db"
    store = open_store(str(src))
    record_run(store)
    live = RunRecorder.start(
        store,
        kind="train",
        attn="ra_v5",
        config={"x": 1},
        env_info=ENV_INFO,
        git_commit="c",
        heartbeat=False,
    )
    store.close()
    target = tmp_path / "t.db"
    (r,) = merge_stores(str(target), [str(src)])
    assert (r.runs, r.still_running) == (1, 1)
    store = open_store(str(src))
    live.store = store
    live.finish()
    store.close()
    (r,) = merge_stores(str(target), [str(src)])
    assert (r.runs, r.already_present, r.still_running) == (1, 1, 0)


# ---- older sources and the identity of old runs ---------------------------------------------


def _old_store(path, revision="0003"):
    make_db(path)
    store = open_store(str(path), migrate=False)
    store_migrate.downgrade(store.engine, revision)
    assert current_revision(store.engine) == revision
    store.close()
    return path


def test_older_source_is_merged_from_a_copy_never_upgraded(tmp_path):
    old = _old_store(tmp_path / "old.db")
    digest = sha256(old)
    target = tmp_path / "t.db"
    (r,) = merge_stores(str(target), [str(old)])
    assert r.revision == "0003" and r.runs == 6 and r.metrics == 30 and r.gate_values == 40
    assert sha256(old) == digest
    with sqlite3.connect(old) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchone() == ("0003",)
    # merging it again adds nothing: old runs have one identity, whoever computes it
    (r,) = merge_stores(str(target), [str(old)])
    assert (r.runs, r.already_present) == (0, 6)
    # nor once the source itself is upgraded (the 0004 migration gives the same identities)
    open_store(str(old)).close()
    (r,) = merge_stores(str(target), [str(old)])
    assert (r.runs, r.already_present) == (0, 6)
    assert sorted(_rows(old, "SELECT uuid FROM runs")) == sorted(
        _rows(target, "SELECT uuid FROM runs")
    )


def test_older_source_read_as_is(tmp_path, monkeypatch):
    # the path taken for an older store behind a URL: its columns read as they are
    old = _old_store(tmp_path / "old.db", "0001")
    copy_target = tmp_path / "via_copy.db"
    merge_stores(str(copy_target), [str(old)])

    def as_is(db, target):
        path = Path(db)
        eng = merge_mod._readonly_engine(path)
        return merge_mod._Source(db, eng, current_revision(eng))

    monkeypatch.setattr(merge_mod, "_open_source", as_is)
    target = tmp_path / "as_is.db"
    (r,) = merge_stores(str(target), [str(old)])
    assert (r.revision, r.runs, r.metrics, r.timings, r.gate_values) == ("0001", 6, 30, 2, 40)
    cols = "uuid, kind, attn, status, config, seed, val_loss, excluded, origin"
    assert _rows(target, f"SELECT {cols} FROM runs ORDER BY id") == _rows(
        copy_target, f"SELECT {cols} FROM runs ORDER BY id"
    )


def test_migration_0004_fills_identities_and_keeps_every_row(tmp_path):
    path = _old_store(tmp_path / "m.db")
    before = _counts(path)
    runs_before = _rows(path, "SELECT id, kind, config_hash, started_at FROM runs ORDER BY id")
    metrics_before = _rows(path, "SELECT run_id, step, name, value FROM metrics ORDER BY id")
    store = open_store(str(path))
    assert current_revision(store.engine) == HEAD_REVISION
    from racli.store.models import Run

    with store.session() as s:
        runs = list(s.query(Run).order_by(Run.id))
    store.close()
    assert _counts(path) == before
    assert (
        _rows(path, "SELECT run_id, step, name, value FROM metrics ORDER BY id") == metrics_before
    )
    assert [r.id for r in runs] == [r[0] for r in runs_before]
    assert all(r.uuid == legacy_uuid(r.id, r.kind, r.config_hash, r.started_at) for r in runs)
    assert len({r.uuid for r in runs}) == len(runs)
    assert all(r.excluded is False and r.origin is None for r in runs)
    assert not _rows(path, "PRAGMA foreign_key_check")
    fk = _rows(path, "PRAGMA foreign_key_list(metrics)")
    assert [(r[2], r[3], r[4], r[6]) for r in fk] == [("runs", "run_id", "id", "CASCADE")]
    index = _rows(path, "SELECT sql FROM sqlite_master WHERE name = 'ix_runs_uuid'")
    assert "UNIQUE" in index[0][0]
    # and back down: nothing lost
    store = open_store(str(path), migrate=False)
    store_migrate.downgrade(store.engine, "0003")
    store.close()
    assert _counts(path) == before


def test_migration_keeps_a_frozen_copy_of_the_legacy_identity():
    from datetime import datetime

    from alembic.script import ScriptDirectory

    mod = ScriptDirectory.from_config(store_migrate._alembic_config()).get_revision("0004").module

    when = datetime(2026, 1, 2, 3, 4, 5, 6789)
    assert mod.legacy_uuid(7, "train", "abc", when) == legacy_uuid(7, "train", "abc", when)
    assert legacy_uuid(7, "train", "abc", when) != legacy_uuid(8, "train", "abc", when)


def test_new_runs_get_a_uuid(tmp_path):
    store = open_store(str(tmp_path / "u.db"))
    ids = [record_run(store) for _ in range(3)]
    store.close()
    uuids = [u for (u,) in _rows(tmp_path / "u.db", "SELECT uuid FROM runs ORDER BY id")]
    assert len(ids) == len(set(uuids)) == 3 and all(len(u) == 36 for u in uuids)


def test_bulk_merge_of_a_larger_store(tmp_path):
    from sqlalchemy import insert

    from racli.store.models import Metric

    src = tmp_path / "big.db"
    store = open_store(str(src))
    ids = [record_run(store, n_metrics=1, gates=False) for _ in range(10)]
    with store.writing() as conn:
        conn.execute(
            insert(Metric),
            [
                {"run_id": rid, "step": s, "name": "train_loss", "value": 1.0, "elapsed_s": None}
                for rid in ids
                for s in range(2000)
            ],
        )
    store.close()
    (r,) = merge_stores(str(tmp_path / "t.db"), [str(src)])
    assert (r.runs, r.metrics) == (10, 10 * 2002)
    assert totals([r])["metrics"] == 10 * 2002


def test_no_source_is_bad_input(tmp_path):
    with pytest.raises(BadInput):
        merge_stores(str(tmp_path / "t.db"), [])
