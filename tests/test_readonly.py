"""Read commands open a store read-only and never change it.

`runs`, `runs show`, `runs export`, `compare`, `gates` and `db current`: no
journal-mode switch, no schema created in an empty file, no migration, the
file's bytes unchanged; a store in a folder the user cannot write is readable.
As root, "cannot write" is made real by dropping the capabilities that let
root ignore file permissions (setpriv), so the commands run as a user without
write access would.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    db_dump,
    make_db,
    one_line_error,
    python_env,
    ra_inprocess,
    record_run,
    sha256,
)
from sqlalchemy import inspect, text

from racli.errors import BadInput
from racli.store import connection, migrate
from racli.store.engine import inspect_store, open_store
from racli.store.migrate import HEAD_REVISION


def _read_commands(db: str, train_id: int) -> list[list[str]]:
    return [
        ["runs", "--db", db],
        ["runs", "--db", db, "--json"],
        ["runs", "show", str(train_id), "--db", db],
        ["runs", "diff", "1", str(train_id), "--db", db],
        ["runs", "export", "--db", db],
        ["compare", "--db", db, "--json"],
        ["compare", "--db", db],
        ["gates", "--run", str(train_id), "--db", db],
        ["db", "current", "--db", db],
    ]


def _journal_byte(path: Path) -> tuple[int, int]:
    """Header bytes 18-19: (1, 1) rollback journal, (2, 2) WAL."""
    head = path.read_bytes()[:20]
    return head[18], head[19]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def made(tmp_path):
    """A closed store holding the usual runs (WAL mode, as ra leaves it)."""
    path = tmp_path / "ra.db"
    ids = make_db(path)
    return path, ids[1]  # a finished baseline train run with gate values


@pytest.mark.slow
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_read_commands_leave_the_file_as_it_was(made, journal):
    path, train_id = made
    if journal == "delete":
        raw = sqlite3.connect(path)
        raw.execute("PRAGMA journal_mode=DELETE")
        raw.close()
    header = _journal_byte(path)
    digest = sha256(path)
    for args in _read_commands(str(path), train_id):
        res = ra_inprocess(*args)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
        assert sha256(path) == digest, args
        assert _journal_byte(path) == header, f"{args} switched the journal mode"
    assert {"ra.db"} <= set(_files(path.parent)) <= {"ra.db", "ra.db-wal", "ra.db-shm"}
    for extra in ("ra.db-wal", "ra.db-shm"):
        wal = path.parent / extra
        assert not wal.exists() or extra.endswith("shm") or wal.stat().st_size == 0


def test_zero_byte_file_is_bad_input_and_stays_empty(tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    for args in _read_commands(str(path), 1):
        err = one_line_error(ra_inprocess(*args))
        assert "empty file" in err and "not an ra store" in err, (args, err)
        assert path.stat().st_size == 0
    assert _files(tmp_path) == ["empty.db"]


@pytest.mark.slow
def test_foreign_database_is_bad_input_and_unchanged(tmp_path):
    path = tmp_path / "other.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    raw.commit()
    raw.close()
    digest = sha256(path)
    for args in _read_commands(str(path), 1):
        err = one_line_error(ra_inprocess(*args))
        assert "not an ra database" in err, (args, err)
    assert sha256(path) == digest and _files(tmp_path) == ["other.db"]


def test_text_file_is_bad_input(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 100)
    digest = sha256(path)
    err = one_line_error(ra_inprocess("runs", "--db", path))
    assert "cannot open database" in err
    assert sha256(path) == digest


@pytest.mark.slow
def test_older_schema_is_not_migrated_by_a_read(made):
    path, train_id = made
    store = open_store(str(path), migrate=False)
    migrate.downgrade(store.engine, "0002")
    store.close()
    digest = sha256(path)
    for args in _read_commands(str(path), train_id)[:-1]:
        res = ra_inprocess(*args)  # read through an upgraded temporary copy, with a note
        assert res.exit_code == 0, (args, res.output)
        assert "upgraded temporary copy" in res.stderr and "ra db upgrade" in res.stderr
        assert sha256(path) == digest
    res = ra_inprocess("db", "current", "--db", path, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["revision"] == "0002"
    assert sha256(path) == digest
    # the write path still upgrades it
    res = ra_inprocess("db", "upgrade", "--db", path)
    assert res.exit_code == 0 and inspect_store(str(path)) == HEAD_REVISION


def test_readonly_store_refuses_writes(made):
    path, _ = made
    store = open_store(str(path), readonly=True)
    try:
        assert store.readonly
        with pytest.raises(Exception, match="readonly|read-only"), store.writing() as conn:
            conn.execute(text("DELETE FROM runs"))
    finally:
        store.close()


# ---- a store the user cannot write -----------------------------------------------

READER = r"""
import json, sys
from typer.testing import CliRunner
from racli.cli import app

out = []
for args in json.loads(sys.argv[1]):
    res = CliRunner().invoke(app, args)
    out.append({"args": args, "code": res.exit_code, "err": res.stderr[-500:]})
print(json.dumps(out))
"""


def _without_write_access(cmd: list[str]) -> list[str]:
    """`cmd` as a user who cannot write what it does not own write bits on."""
    if os.geteuid() != 0:
        return cmd
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop write access")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--", *cmd]


@pytest.fixture
def locked(tmp_path):
    """A store in a folder made read-only (file 0444, folder 0555); restored afterwards."""
    folder = tmp_path / "shared"
    folder.mkdir()
    path = folder / "ra.db"
    ids = make_db(path)
    yield path, ids[1]
    folder.chmod(0o755)
    path.chmod(0o644)


def _lock(path: Path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    path.parent.chmod(0o555)


def _run_readers(path: Path, train_id: int) -> list[dict]:
    cmds = _read_commands(str(path), train_id)
    res = subprocess.run(
        _without_write_access([sys.executable, "-c", READER, json.dumps(cmds)]),
        capture_output=True,
        text=True,
        timeout=180,
        env=python_env(),
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_store_the_user_cannot_write_is_readable_and_unchanged(locked):
    path, train_id = locked
    assert _journal_byte(path) == (2, 2)  # WAL, as ra leaves every store it writes
    _lock(path)
    # really read-only for the commands' process
    probe = subprocess.run(
        _without_write_access([sys.executable, "-c", f"open({str(path)!r}, 'ab')"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode != 0 and "Permission denied" in probe.stderr
    digest, files = sha256(path), _files(path.parent)
    for r in _run_readers(path, train_id):
        assert r["code"] == 0, r
    assert sha256(path) == digest and _files(path.parent) == files


@pytest.mark.slow
def test_locked_wal_store_with_pending_changes_is_one_line(locked):
    """A WAL store whose -wal still holds changes (its writer crashed) cannot be read
    without write access to the folder: one clear line, nothing changed."""
    path, train_id = locked
    shutil.copy(path, path.with_suffix(".bak"))
    # a crashed writer: commit into the WAL, then copy the files away mid-session
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_autocheckpoint=0")
    raw.execute("UPDATE runs SET tag='pending' WHERE id=?", (train_id,))
    raw.commit()
    crashed = path.parent / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy(f"{path}{suffix}", f"{crashed / 'ra.db'}{suffix}")
    raw.close()
    cpath = crashed / "ra.db"
    assert Path(f"{cpath}-wal").stat().st_size > 0
    _lock(cpath)
    digest = sha256(cpath)
    results = _run_readers(cpath, train_id)
    crashed.chmod(0o755)
    cpath.chmod(0o644)
    for r in results:
        assert r["code"] == 2, r
        assert "-wal file holds changes" in r["err"] and r["err"].count("\n") <= 1, r
    assert sha256(cpath) == digest


# ---- PostgreSQL ------------------------------------------------------------------


@pytest.mark.slow
def test_postgres_read_commands_change_nothing(pg_url):
    store = open_store(pg_url)
    train_id = record_run(store, attn="baseline")
    record_run(store, attn="ra_v5")
    store.close()
    for args in _read_commands(pg_url, train_id):
        res = ra_inprocess(*args)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
    ro = open_store(pg_url, readonly=True)
    try:
        with pytest.raises(Exception, match="read-only transaction"), ro.writing() as conn:
            conn.execute(text("DELETE FROM runs"))
    finally:
        ro.close()


@pytest.mark.slow
def test_postgres_empty_database_gets_no_schema_from_a_read(pg_url):
    for args in _read_commands(pg_url, 1)[:-1]:
        err = one_line_error(ra_inprocess(*args))
        assert "holds no ra store yet" in err, (args, err)
    res = ra_inprocess("db", "current", "--db", pg_url, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["revision"] is None
    engine = connection.make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert inspect(conn).get_table_names() == []
    finally:
        engine.dispose()
    with pytest.raises(BadInput, match="holds no ra store"):
        open_store(pg_url, readonly=True)


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "--plot", "{db}"],
        ["gates", "--run", "{run}", "--plot", "{db}"],
        ["runs", "export", "--output", "{db}"],
        ["runs", "export", "--metrics", "--output", "{db}"],
        ["runs", "export", "--output", "{db}-wal"],
        ["experiment", "--attn", "baseline,ra_v5", "--seeds", "1", "--minutes", "0.01",
         "--report", "{db}"],
    ],
)  # fmt: skip
def test_an_output_named_as_the_store_is_refused(tmp_path, args):
    """A plot, an export or a report written over the store would replace what is recorded:
    one line, exit 2, the store unchanged (named .png/.md so the suffix rules let it by)."""
    suffix = ".md" if "--report" in args else ".csv" if "export" in args else ".png"
    path = tmp_path / f"ra{suffix}"
    ids = make_db(path)
    before = db_dump(path)
    argv = [a.format(db=path, run=ids[1]) for a in args] + ["--db", str(path)]
    err = one_line_error(ra_inprocess(*argv))
    assert "is the results database" in err and "choose another file" in err
    assert db_dump(path) == before


@pytest.mark.parametrize(
    "args",
    [["runs", "tag", "1", "x"], ["runs", "exclude", "1", "--reason", "r"],
     ["runs", "delete", "1", "-y"], ["train", "--resume", "1"]],
)  # fmt: skip
def test_a_command_on_recorded_runs_leaves_an_empty_file_empty(tmp_path, args):
    """Commands that work on recorded runs need a store holding them: an empty file is not
    one, and is not turned into one."""
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    err = one_line_error(ra_inprocess(*args, "--db", str(path)))
    assert "empty file, not an ra store" in err
    assert path.stat().st_size == 0 and _files(tmp_path) == ["empty.db"]


def test_experiment_status_makes_no_folder_and_tries_no_report(tmp_path):
    """`ra experiment --status` only reads: its --tensorboard folder is not made, its
    --report is not tried for writing, the store is unchanged."""
    path = tmp_path / "ra.db"
    make_db(path)
    before = db_dump(path)
    res = ra_inprocess(
        "experiment", "--attn", "baseline,ra_v5", "--seeds", "1", "--minutes", "0.01",
        "--device", "cpu", "--status", "--tensorboard", str(tmp_path / "tb"),
        "--report", str(tmp_path / "r.md"), "--db", str(path), "--leave-on-interrupt",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "not started" in res.stdout
    assert db_dump(path) == before
    # what is left alone is said, once each, on stderr
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("ra: note:")]
    assert notes == [
        "ra: note: --status writes no report: --report is left alone",
        "ra: note: --cancel-on-interrupt/--leave-on-interrupt is for slurm and ray jobs: "
        "the local launcher stops its runs on Ctrl-C",
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ra.db")) == []
