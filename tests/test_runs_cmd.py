"""`ra runs` management through the CLI: tag, exclude / include, delete, diff, export --metrics,
and `ra compare` leaving excluded runs out."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest
from helpers import (
    ENV_INFO,
    GPU_ENV_INFO,
    TRAIN_CONFIG,
    db_state,
    make_db,
    one_line_error,
    ra_inprocess,
    record_run,
    set_heartbeat_minutes_ago,
)
from sqlalchemy import text

from racli.commands import runs_manage
from racli.errors import BadInput
from racli.store.engine import open_store
from racli.store.manage import checkpoint_files, metric_rows
from racli.store.run_diff import diff_runs, diff_text, flatten


def ok(*args):
    res = ra_inprocess(*args)
    assert res.exit_code == 0, (res.exit_code, res.stdout, res.stderr)
    return res


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "ra.db"
    make_db(
        path
    )  # ids 1..6: bench; baseline s1; ra_v5 s1; ra_v5 failed; baseline interrupted; ra_v5 diverged
    return path


@pytest.fixture
def verdict_db(tmp_path):
    """Three finished runs a side, one ra_v5 run far off (the run to exclude)."""
    path = tmp_path / "v.db"
    store = open_store(str(path))
    ids = {}
    for attn in ("baseline", "ra_v5"):
        for seed in (1, 2, 3):
            ids[(attn, seed)] = record_run(store, attn=attn, seed=seed)
    bad = record_run(store, attn="ra_v5", seed=4)
    from sqlalchemy import update

    from racli.store.models import Run

    with store.writing() as conn:
        conn.execute(update(Run).where(Run.id == bad).values(val_loss=9.0))
    store.close()
    return path, bad


def _row(path, run_id, cols="tag, excluded, exclude_reason"):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT {cols} FROM runs WHERE id=?", (run_id,)).fetchone()
    finally:
        conn.close()


# ---- unknown ids: exit 2, one line, nothing changes ----------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("tag", "99", "x"),
        ("exclude", "99", "--reason", "r"),
        ("include", "99"),
        ("delete", "99", "--yes"),
        ("diff", "2", "99"),
        ("diff", "99", "2"),
        ("show", "99"),
        ("exclude", "2", "99", "--reason", "r"),
        ("delete", "2", "99", "--yes"),
    ],
)
@pytest.mark.slow
def test_unknown_ids_are_one_line_and_change_nothing(db, args):
    before = db_state(db)
    err = one_line_error(ra_inprocess("runs", *args, "--db", db))
    assert "no run with id 99" in err
    assert db_state(db) == before


@pytest.mark.parametrize(
    "args",
    [
        ("runs", "tag", "99", "x"),
        ("runs", "tag", "2", " x"),
        ("runs", "exclude", "2", "99", "--reason", "r"),
        ("runs", "exclude", "2", "--reason", " "),
        ("runs", "include", "99"),
        ("runs", "delete", "99", "--yes"),
        ("runs", "delete", "2"),
        ("runs", "delete", "99"),
        ("train", "--resume", "99"),
        ("train", "--resume", "1"),  # a bench run
        ("train", "--resume", "2"),  # finished
    ],
)
def test_bad_input_leaves_an_older_store_at_its_schema(tmp_path, args):
    """A writing command migrates an older store before it works on it; given an unknown
    run or a bad tag or reason it refuses before that, so the store stays as it was."""
    from racli.store import migrate as store_migrate

    path = tmp_path / "old.db"
    make_db(path)
    store = open_store(str(path), migrate=False)
    store_migrate.downgrade(store.engine, "0003")
    store.close()
    before = db_state(path)
    one_line_error(ra_inprocess(*args, "--db", path))
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version_num FROM alembic_version").fetchone() == ("0003",)
    assert db_state(path) == before


def _old_store_with_a_live_run(location) -> tuple[int, int]:
    """A store (a path or a URL) at revision 0003 holding a finished run and a run whose
    writer is alive (fresh heartbeat): (finished id, live id)."""
    from racli.store import migrate as store_migrate
    from racli.store.recorder import RunRecorder

    store = open_store(str(location))
    done = record_run(store, attn="baseline", seed=2)
    live = RunRecorder.start(
        store, kind="train", attn="baseline", config=dict(TRAIN_CONFIG), seed=1,
        env_info=ENV_INFO, git_commit="0123abcd", heartbeat=False,
    ).run_id  # fmt: skip
    set_heartbeat_minutes_ago(store, live, 0.1)
    store_migrate.downgrade(store.engine, "0003")
    store.close()
    return done, live


def _revision(path) -> str:
    with sqlite3.connect(path) as raw:
        return raw.execute("SELECT version_num FROM alembic_version").fetchone()[0]


@pytest.mark.parametrize(
    "args, says",
    [
        (("runs", "delete", "{live}", "--yes"), "run {live} is still running"),
        (("train", "--resume", "{live}"), "run {live} is still running"),
        (("runs", "tag", "{done}", "x"), "run {live} is still being written"),
        (("runs", "delete", "{done}", "--yes"), "run {live} is still being written"),
        (("db", "upgrade"), "run {live} is still being written"),
    ],
)
def test_a_live_run_leaves_an_older_store_at_its_schema(tmp_path, args, says):
    """While a process writes a run (fresh heartbeat; perhaps an older ra, at the store's
    revision), no command migrates the store: the migration would change the tables under
    that writer and stop its run."""
    path = tmp_path / "old.db"
    done, live = _old_store_with_a_live_run(path)
    before = db_state(path)
    err = one_line_error(
        ra_inprocess(*(a.format(done=done, live=live) for a in args), "--db", path)
    )
    assert says.format(live=live) in err
    assert _revision(path) == "0003"
    assert db_state(path) == before


def test_db_upgrade_refuses_while_a_run_is_live_on_both_backends(store_url):
    """The same on both backends: `db upgrade` of an older store with a live run refuses."""
    from racli.store.migrate import current_revision

    _, live = _old_store_with_a_live_run(store_url)
    err = one_line_error(ra_inprocess("db", "upgrade", "--db", store_url))
    assert f"run {live} is still being written" in err
    store = open_store(store_url, migrate=False)
    try:
        assert current_revision(store.engine) == "0003"
    finally:
        store.close()


def test_an_older_store_migrates_once_its_writer_is_gone(tmp_path):
    path = tmp_path / "old.db"
    done, live = _old_store_with_a_live_run(path)
    with sqlite3.connect(path) as raw:  # its heartbeat gone stale: the writer is gone
        raw.execute("UPDATE runs SET heartbeat_at = datetime('now', '-10 minutes')")
    ok("runs", "tag", done, "x", "--db", path)
    assert _revision(path) != "0003"


def test_refusals_that_need_the_current_schema_leave_an_older_store_at_its_schema(tmp_path):
    """Refusals that read what only the current schema has (who depends on a run, whether a
    run wrote a checkpoint, where its data is) are made on an upgraded temporary copy first:
    the store itself stays at its revision, byte for byte."""
    from racli.store import migrate as store_migrate

    path = tmp_path / "old.db"
    store = open_store(str(path))
    calibration = record_run(store, kind="calibration", attn=None, seed=1)
    depends = record_run(
        store, attn="baseline", seed=2,
        config={**TRAIN_CONFIG, "budget_source": {"kind": "matched_time",
                                                  "calibration_run": calibration}},
    )  # fmt: skip
    checkpointed = record_run(store, attn="baseline", seed=3, status="interrupted")
    with store.writing() as conn:  # it recorded writing a checkpoint, whose file is gone
        conn.execute(
            text("INSERT INTO metrics (run_id, step, name, value) VALUES (:r, 40, 'checkpoint_s', 0.1)"),
            {"r": checkpointed},
        )  # fmt: skip
    no_data = record_run(store, attn="baseline", seed=4, status="interrupted")
    store_migrate.downgrade(store.engine, "0003")
    store.close()
    with sqlite3.connect(path) as raw:  # revision 0003 named a run by its id alone
        raw.execute(
            "UPDATE runs SET config = json_remove(config, '$.budget_source.calibration_uuid')"
        )
    before = db_state(path)
    for args, says in (
        (("runs", "delete", calibration, "--yes"), f"run {calibration} is needed by other runs"),
        (("train", "--resume", checkpointed), "wrote a checkpoint (last at step 40)"),
        (("train", "--resume", no_data), "does not say where its data is"),
    ):
        err = one_line_error(ra_inprocess(*args, "--db", path))
        assert says in err, err
        assert _revision(path) == "0003"
        assert db_state(path) == before
        assert "temporary copy" not in err
    # what passes the checks migrates the store and goes on
    ok("runs", "delete", depends, "--yes", "--db", path)
    assert _revision(path) != "0003"


def test_refusals_before_writing_on_both_backends(store_url):
    """The look-up of the runs before the store is opened for writing (and before the
    refusal of a delete without --yes) reads PostgreSQL as it reads SQLite."""
    store = open_store(store_url)
    run = record_run(store, attn="baseline", seed=1)
    store.close()
    assert "no run with id 99" in one_line_error(
        ra_inprocess("runs", "delete", "99", "--db", store_url)
    )
    assert "pass --yes" in one_line_error(ra_inprocess("runs", "delete", run, "--db", store_url))
    assert "no run with id 98" in one_line_error(
        ra_inprocess("runs", "tag", "98", "x", "--db", store_url)
    )
    assert ok("runs", "delete", run, "--yes", "--db", store_url)
    assert "no run with id" in one_line_error(ra_inprocess("runs", "show", run, "--db", store_url))


# ---- tag -----------------------------------------------------------------------------------


def test_tag_sets_replaces_and_clears(db):
    res = ok("runs", "tag", 3, "good", "--db", db)
    assert res.stdout.strip() == "run 3: tag sweep -> good"
    assert _row(db, 3, "tag") == ("good",)
    ok("runs", "tag", 3, "better", "--db", db)
    assert _row(db, 3, "tag") == ("better",)
    assert "tag" not in json.loads(_row(db, 3, "config")[0])  # a config without a tag keeps none
    listed = json.loads(ok("runs", "--tag", "better", "--json", "--db", db).stdout)
    assert [r["id"] for r in listed] == [3]
    ok("runs", "tag", 3, "--clear", "--db", db)
    assert _row(db, 3, "tag") == (None,)
    for bad in (("tag", 3), ("tag", 3, "x", "--clear"), ("tag", 3, "  ")):
        one_line_error(ra_inprocess("runs", *bad, "--db", db))


def test_tag_follows_into_a_config_that_holds_one(tmp_path):
    path = tmp_path / "t.db"
    store = open_store(str(path))
    rid = record_run(store, config={**TRAIN_CONFIG, "tag": "old"}, tag="old")
    store.close()
    ok("runs", "tag", rid, "new", "--db", path)
    assert _row(path, rid, "tag") == ("new",)
    assert json.loads(_row(path, rid, "config")[0])["tag"] == "new"


# ---- exclude / include and ra compare ------------------------------------------------------


def test_exclude_is_kept_shown_and_left_out_of_verdicts(verdict_db):
    path, bad = verdict_db
    before = json.loads(ok("compare", "--db", path, "--json").stdout)
    assert bad in before["group"]["run_ids"]["ra_v5"]
    assert before["excluded"] == []

    res = ok("runs", "exclude", bad, "--reason", "wrong data file", "--db", path)
    assert res.stdout.strip() == f"run {bad}: excluded from verdicts (wrong data file)"
    assert _row(path, bad)[1:] == (1, "wrong data file")
    # kept and shown
    listed = json.loads(ok("runs", "--json", "--db", path).stdout)
    assert {r["id"]: (r["excluded"], r["exclude_reason"]) for r in listed}[bad] == (
        True,
        "wrong data file",
    )
    assert ", excluded" in ok("runs", "--db", path).stdout
    shown = ok("runs", "show", bad, "--db", path).stdout
    assert "EXCLUDED from verdicts: wrong data file" in shown
    assert json.loads(ok("runs", "show", bad, "--json", "--db", path).stdout)["excluded"] is True
    # left out of the verdict, and listed
    after = json.loads(ok("compare", "--db", path, "--json").stdout)
    assert bad not in after["group"]["run_ids"]["ra_v5"]
    assert after["excluded"] == [{"id": bad, "attn": "ra_v5", "reason": "wrong data file"}]
    assert after["verdict"] != before["verdict"]
    text = ok("compare", "--db", path).stdout
    assert f"excluded: run {bad} (wrong data file)" in text
    assert [
        e["id"]
        for e in json.loads(ok("compare", "--db", path, "--json", "--any-env").stdout)["excluded"]
    ] == [bad]

    res = ok("runs", "include", bad, "--db", path)
    assert res.stdout.strip() == f"run {bad}: included in verdicts again"
    assert _row(path, bad)[1:] == (0, None)
    assert json.loads(ok("compare", "--db", path, "--json").stdout) == before
    assert "was not excluded" in ok("runs", "include", bad, "--db", path).stdout


def test_exclude_needs_a_reason(db):
    before = db_state(db)
    res = ra_inprocess("runs", "exclude", 3, "--db", db)
    assert res.exit_code == 2 and "--reason" in res.stderr
    one_line_error(ra_inprocess("runs", "exclude", 3, "--reason", " ", "--db", db))
    assert db_state(db) == before


def test_excluded_bench_runs_leave_bench_comparisons(tmp_path):
    path = tmp_path / "b.db"
    shape = {"batch": 2, "seq": 64, "heads": 4, "head_dim": 32, "dtype": "float32", "device": "cpu"}
    store = open_store(str(path))
    ids = [
        record_run(
            store,
            kind="bench",
            timings=[
                {
                    "attn": a,
                    "mode": "eager",
                    "phase": "fwd",
                    **shape,
                    "median_ms": ms,
                    "status": "ok",
                }
                for a, ms in (("baseline", 1.0), ("ra_v5", m))
            ],
        )
        for m in (1.1, 5.0)
    ]
    store.close()
    ok("runs", "exclude", ids[1], "--reason", "throttled GPU", "--db", path)
    out = json.loads(ok("compare", "--metric", "ms", "--json", "--db", path).stdout)
    assert out["groups"][0]["run_ids"] == [ids[0]]
    assert out["excluded"] == [{"id": ids[1], "attn": None, "reason": "throttled GPU"}]
    assert (
        f"excluded: run {ids[1]} (throttled GPU)"
        in ok("compare", "--metric", "ms", "--db", path).stdout
    )


# ---- delete --------------------------------------------------------------------------------


def _counts(path, run_id):
    conn = sqlite3.connect(path)
    try:
        return tuple(
            conn.execute(f"SELECT count(*) FROM {t} WHERE run_id=?", (run_id,)).fetchone()[0]
            for t in ("metrics", "timings", "gate_values")
        )
    finally:
        conn.close()


def test_delete_needs_yes_without_a_terminal(db):
    before = db_state(db)
    err = one_line_error(ra_inprocess("runs", "delete", 3, "--db", db))
    assert "--yes" in err
    assert db_state(db) == before


def test_delete_removes_rows_and_checkpoint(db):
    ckpt = checkpoint_files(str(db), 4)[0]
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    other = checkpoint_files(str(db), 3)[0]
    other.write_bytes(b"weights")
    assert _counts(db, 4) == (6, 0, 8) and _counts(db, 1) == (0, 2, 0)
    res = ok("runs", "delete", 4, 1, "--yes", "--db", db)
    assert "deleted 2 run(s) (4, 1): 6 metric value(s), 2 timing(s), 8 gate value(s)" in res.stdout
    assert f"removed checkpoint {ckpt}" in res.stdout
    assert not ckpt.exists() and other.exists()
    assert _counts(db, 4) == (0, 0, 0) and _counts(db, 1) == (0, 0, 0)
    assert _row(db, 4) is None and _row(db, 1) is None
    ids = [r["id"] for r in json.loads(ok("runs", "--json", "--db", db).stdout)]
    assert ids == [6, 5, 3, 2]
    out = json.loads(ok("runs", "delete", 2, "--yes", "--json", "--db", db).stdout)
    assert out == {
        "runs": [2], "metrics": 6, "timings": 0, "gate_values": 8, "checkpoints": [],
        "checkpoints_kept": [],
    }  # fmt: skip


def test_delete_refuses_a_live_run(db):
    from racli.store.recorder import RunRecorder

    store = open_store(str(db))
    rec = RunRecorder.start(
        store,
        kind="train",
        attn="ra_v5",
        config={},
        heartbeat=False,
        env_info=GPU_ENV_INFO,
        git_commit="c",
    )
    store.close()
    before = db_state(db)
    assert "still running" in one_line_error(
        ra_inprocess("runs", "delete", rec.run_id, "--yes", "--db", db)
    )
    assert db_state(db) == before


def test_delete_confirmation_prompt(db, monkeypatch):
    runs = open_store(str(db))
    from racli.store.manage import get_runs

    targets = get_runs(runs, [3])
    runs.close()
    asked = []
    monkeypatch.setattr(
        runs_manage.typer, "confirm", lambda text, default: asked.append(text) or False
    )
    counts = {"metrics": 6, "timings": 0, "gate_values": 8}
    assert runs_manage.confirm_delete(targets, counts, yes=False, interactive=True) is False
    assert "Delete 1 run(s) (3) with 6 metric value(s)" in asked[0]
    assert runs_manage.confirm_delete(targets, counts, yes=True) is True
    with pytest.raises(BadInput, match="--yes"):
        runs_manage.confirm_delete(targets, counts, yes=False, interactive=False)


# ---- diff ----------------------------------------------------------------------------------


def test_diff_marks_differences(tmp_path):
    path = tmp_path / "d.db"
    store = open_store(str(path))
    a = record_run(store, attn="baseline", seed=1)
    b = record_run(
        store,
        attn="ra_v5",
        seed=2,
        env_info=GPU_ENV_INFO,
        config={**TRAIN_CONFIG, "train": {"lr": 1e-3, "batch_size": 32}},
    )
    store.close()
    text = ok("runs", "diff", a, b, "--db", path).stdout
    lines = text.splitlines()
    assert lines[0].startswith(f"Run {a} vs run {b}:")

    def line(key):
        return next(x for x in lines if x[4:].startswith(key + " "))

    assert (
        line("attn").startswith("  * ") and "baseline" in line("attn") and "ra_v5" in line("attn")
    )
    assert line("train.lr").startswith("  * ")
    assert line("train.batch_size").startswith("    ")
    assert line("gpu_name").startswith("  * ") and "NVIDIA H100" in line("gpu_name")
    assert line("ra_version").startswith("    ")
    assert line("git_commit (working directory)").startswith("    ")
    assert line("val_loss").startswith("  * ") and "(+0.28%)" in line("val_loss")
    for section in ("Run:", "Code:", "Environment:", "Config:", "Final figures:"):
        assert section in lines
    only = ok("runs", "diff", a, b, "--only-differences", "--db", path).stdout
    assert "train.batch_size" not in only and "train.lr" in only

    d = json.loads(ok("runs", "diff", a, b, "--json", "--db", path).stdout)
    assert (d["a"], d["b"]) == (a, b)
    rows = {(s["name"], r["key"]): r for s in d["sections"] for r in s["rows"]}
    assert rows[("config", "train.lr")] == {
        "key": "train.lr",
        "a": 6e-4,
        "b": 1e-3,
        "differs": True,
    }
    assert rows[("code", "ra_version")]["differs"] is False
    assert d["differences"] == sum(r["differs"] for r in rows.values())


def test_diff_of_a_run_with_itself_has_no_differences(db):
    d = json.loads(ok("runs", "diff", 2, 2, "--json", "--db", db).stdout)
    assert d["differences"] == 0


def test_diff_pure_helpers():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
    }
    a = {
        "id": 1,
        "kind": "train",
        "config": {"x": 1, "code": {"version": "0.1.0", "commit": "a" * 40}},
        "environment": None,
        "metrics": {},
        "timings": [],
    }
    b = {**a, "id": 2, "config": {"x": 2, "code": {"version": "0.2.0", "commit": None}}}
    d = diff_runs(a, b)
    rows = {r["key"]: r for s in d["sections"] for r in s["rows"]}
    assert rows["ra_version"]["differs"] and rows["x"]["differs"] and not rows["kind"]["differs"]
    assert "code" not in rows  # the code is its own section, not a config row
    assert "* ra_commit" in diff_text(d)


# ---- show --plot ----------------------------------------------------------------------------


def test_show_plot_draws_a_bench_or_a_train_run(db, tmp_path):
    """A bench run's timings, a train run's train and val loss curves; JSON names the file;
    the store is only read."""
    from PIL import Image

    before = db_state(db)
    bench_png, train_svg = tmp_path / "bench.png", tmp_path / "train.svg"
    res = ok("runs", "show", 1, "--db", db, "--plot", bench_png)
    assert f"Plot written to {bench_png}" in res.stdout
    assert Image.open(bench_png).size[0] >= 650
    d = json.loads(ok("runs", "show", 2, "--db", db, "--plot", train_svg, "--json").stdout)
    assert d["plot"] == str(train_svg) and d["id"] == 2
    svg = train_svg.read_text()
    assert "train_loss" in svg and "val_loss" in svg
    assert db_state(db) == before


def test_show_plot_draws_a_calibration_round_by_round(tmp_path, monkeypatch):
    """A calibration: each arm's seconds per step by round, its ratios in the title; one
    without timed rounds says so (exit 2)."""
    from racli.store.recorder import RunRecorder

    path = tmp_path / "ra.db"
    store = open_store(str(path))
    rec = RunRecorder.start(store, kind="calibration", attn=None, config={"seed": 0}, seed=0,
                            env_info=ENV_INFO, git_commit="0123abcd", heartbeat=False)  # fmt: skip
    for k, (b, r) in enumerate([(0.081, 0.080), (0.083, 0.088), (0.076, 0.081)], 1):
        rec.metrics(k, {"s_per_step:baseline": b, "s_per_step:ra_v5": r})
    rec.metrics(3, {"speed_ratio:baseline": 1.0, "speed_ratio:ra_v5": 0.9671,
                    "speed_ratio_lo:ra_v5": 0.8746, "speed_ratio_hi:ra_v5": 1.0695,
                    "speed_ratio_lo:baseline": 1.0, "speed_ratio_hi:baseline": 1.0})  # fmt: skip
    rec.finish()
    empty = RunRecorder.start(store, kind="calibration", attn=None, config={"seed": 0}, seed=0,
                              env_info=ENV_INFO, git_commit="0123abcd", heartbeat=False)  # fmt: skip
    empty.finish()
    store.close()
    from racli.compare import plots

    drawn, real = [], plots.plot_loss_curves
    monkeypatch.setattr(
        plots, "plot_loss_curves", lambda *a, **kw: drawn.append((a, kw)) or real(*a, **kw)
    )
    svg = tmp_path / "cal.svg"
    assert "Plot written" in ok("runs", "show", rec.run_id, "--db", path, "--plot", svg).stdout
    assert svg.read_text().lstrip().startswith("<?xml")
    (((curves, _, title), kw),) = drawn
    assert sorted(curves) == ["baseline", "ra_v5"] and len(curves["ra_v5"][0][1]) == 3
    assert title.endswith("ra_v5 x0.9671 [0.8746, 1.0695]") and kw["xlabel"] == "round"
    err = one_line_error(
        ra_inprocess("runs", "show", empty.run_id, "--db", path, "--plot", tmp_path / "e.png")
    )
    assert "no timed rounds recorded: no plot written" in err


def test_show_plot_refuses_what_it_cannot_draw(tmp_path):
    path = tmp_path / "ra.db"
    store = open_store(str(path))
    bare = record_run(store, attn="baseline", n_metrics=0)  # its final val_loss alone
    skipped = record_run(
        store, kind="bench",
        timings=[{"attn": "baseline", "mode": "cuda_graph", "phase": "fwd", "status": "skipped",
                  "reason": "no CUDA", "batch": 2, "seq": 64, "heads": 4, "head_dim": 32,
                  "dtype": "float32", "device": "cpu"}],
    )  # fmt: skip
    store.close()
    assert (
        "Plot written"
        in ok("runs", "show", bare, "--db", path, "--plot", tmp_path / "a.png").stdout
    )
    err = one_line_error(
        ra_inprocess("runs", "show", skipped, "--db", path, "--plot", tmp_path / "b.png")
    )
    assert f"run {skipped}: no timed configuration" in err and "no plot written" in err
    err = one_line_error(ra_inprocess("runs", "show", bare, "--db", path, "--plot", path))
    assert "must end in" in err
    assert not (tmp_path / "b.png").exists()


# ---- show: both commits --------------------------------------------------------------------


def test_show_prints_ra_code_and_working_directory_commit(db):
    text = ok("runs", "show", 3, "--db", db).stdout
    assert "Code:" in text
    assert "0123abcd (working directory)" in text
    from racli.provenance import current, describe

    assert f"ra             {describe(current())}" in text
    d = json.loads(ok("runs", "show", 3, "--json", "--db", db).stdout)
    assert d["code"] == current() and d["git_commit"] == "0123abcd"
    assert len(d["uuid"]) == 36 and d["origin"] is None


# ---- export --------------------------------------------------------------------------------


def test_export_metrics_csv_and_jsonl(db, tmp_path):
    res = ok("runs", "export", "--metrics", "--db", db)
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0]) == ["run_id", "step", "name", "value", "elapsed_s"]
    conn = sqlite3.connect(db)
    truth = conn.execute(
        "SELECT run_id, step, name, value, elapsed_s FROM metrics ORDER BY run_id, name, step"
    ).fetchall()
    conn.close()
    assert [
        (
            int(r["run_id"]),
            int(r["step"]),
            r["name"],
            float(r["value"]),
            float(r["elapsed_s"]) if r["elapsed_s"] else None,
        )
        for r in rows
    ] == truth
    lines = ok("runs", "export", "--metrics", "--format", "jsonl", "--db", db).stdout.splitlines()
    assert [tuple(json.loads(x).values()) for x in lines] == truth
    # the run filters of export, and metric names
    only = ok(
        "runs",
        "export",
        "--metrics",
        "--format",
        "jsonl",
        "--attn",
        "baseline",
        "--status",
        "finished",
        "--name",
        "val_loss",
        "--db",
        db,
    ).stdout.splitlines()
    assert [json.loads(x) for x in only] == [
        {"run_id": 2, "step": 50, "name": "val_loss", "value": 3.5, "elapsed_s": 5.0}
    ]
    out = tmp_path / "curves.csv"
    res = ok("runs", "export", "--metrics", "-o", out, "--db", db)
    assert f"wrote {len(truth)} metric value(s) to {out}" in res.stderr
    assert out.read_text() == ok("runs", "export", "--metrics", "--db", db).stdout
    one_line_error(ra_inprocess("runs", "export", "--metrics", "--format", "xml", "--db", db))
    one_line_error(ra_inprocess("runs", "export", "--name", "val_loss", "--db", db))


def test_metric_rows_stream_every_run(db):
    store = open_store(str(db))
    rows = list(metric_rows(store, [6, 2, 3], batch=2))
    store.close()
    assert [r["run_id"] for r in rows] == [2] * 6 + [3] * 6 + [6] * 6


def test_export_runs_has_identity_columns(db):
    rows = list(csv.DictReader(io.StringIO(ok("runs", "export", "--db", db).stdout)))
    assert all(len(r["uuid"]) == 36 and r["excluded"] == "False" and r["ra_version"] for r in rows)
