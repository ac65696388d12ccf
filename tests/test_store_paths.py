"""Store locations that are odd or unusable: paths holding URL syntax (`?`, `#`, `%`) or
bytes that are not UTF-8, paths that cannot be resolved or reached, files that are not
regular files, read-only and damaged stores, merge sources in read-only folders, URLs
that do not parse (their password stays masked), empty locations, unknown kinds of
database, and config paths that are not files. Each is one line on stderr with exit
code 2, and nothing recorded changes; a path is always the file it names.

As root, "cannot write" and "cannot search" are made real by dropping the capabilities
that let root ignore file permissions (setpriv), as in test_readonly.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import db_state, make_db, one_line_error, python_env, ra_inprocess, sha256

from racli.store.engine import open_store
from racli.store.urls import sqlite_path

ONE_RUN = [("train", "baseline", "finished", 1, None)]


@pytest.fixture(autouse=True)
def _own_folder(tmp_path, monkeypatch):
    """Every test runs in its own folder (a stray file would land there) without RA_DB."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RA_DB", raising=False)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _run_count(db) -> int:
    res = ra_inprocess("runs", "--db", db, "--json")
    assert res.exit_code == 0, res.output
    return len(json.loads(res.stdout))


# ---- a command run as a user whose file permissions count -------------------------------

RUNNER = r"""
import json, sys
from typer.testing import CliRunner
from racli.cli import app

out = []
for args in json.loads(sys.argv[1]):
    res = CliRunner().invoke(app, args)
    out.append({"args": args, "code": res.exit_code, "err": res.stderr})
print(json.dumps(out))
"""


def _as_user(argvs: list[list[str]]) -> list[dict]:
    """Run each `ra` argv in one child process that file permissions bind (as root: one
    without the capabilities that override them); exit code and stderr of each."""
    cmd = [sys.executable, "-c", RUNNER, json.dumps([[str(a) for a in v] for v in argvs])]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: permissions cannot be made to count")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--", *cmd]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env=python_env(), check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _one_line(r: dict) -> str:
    err = r["err"].strip()
    assert r["code"] == 2, r
    assert err.startswith("ra: error: ") and "\n" not in err and "Traceback" not in err, r
    return err


# ---- 1, 2: a path is taken literally ----------------------------------------------------


@pytest.mark.parametrize("name", ["x?y.db", "x%20y.db"])
def test_a_target_path_with_url_characters_is_the_file_written(tmp_path, name):
    make_db(tmp_path / "b.db", ONE_RUN)
    res = ra_inprocess("db", "merge", "b.db", "--db", name, "--json")
    assert res.exit_code == 0, res.output
    assert _run_count(name) == 1
    assert (tmp_path / name).stat().st_size > 0  # the file of that very name holds it
    assert _files(tmp_path) <= {"b.db", "b.db-wal", "b.db-shm", name, f"{name}-wal", f"{name}-shm"}


@pytest.mark.parametrize("name", ["x#y.db", "x?y.db", "x%41.db"])
def test_a_source_path_with_uri_characters_is_the_file_read(tmp_path, name):
    make_db(tmp_path / name, ONE_RUN)
    make_db(tmp_path / "a.db", ONE_RUN)
    res = ra_inprocess("db", "merge", name, "--db", "a.db", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["total"]["runs"] == 1
    assert _files(tmp_path) <= {"a.db", "a.db-wal", "a.db-shm", name, f"{name}-wal", f"{name}-shm"}


def test_a_path_that_is_not_utf8_is_read_written_and_merged(tmp_path):
    odd = os.fsdecode(b"store-\xff.db")  # what a shell passes for the byte
    other = os.fsdecode(b"other-\xfe.db")
    store = open_store(odd)  # created and migrated at that very name
    store.close()
    assert (tmp_path / odd).stat().st_size > 0
    make_db(tmp_path / other, ONE_RUN)
    res = ra_inprocess("db", "merge", other, "--db", odd, "--json")
    assert res.exit_code == 0, res.output
    res = ra_inprocess("db", "current", "--db", odd, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["up_to_date"], res.output
    assert _run_count(odd) == 1
    res = ra_inprocess("db", "merge", odd, "--db", "copy.db", "--json")
    assert res.exit_code == 0, res.output
    assert _run_count("copy.db") == 1


# ---- 3: a location that cannot be resolved or reached -----------------------------------


@pytest.mark.parametrize(
    ("db", "reason"),
    [
        ("~no-such-user-of-ra/x.db", "no user with a home folder"),
        ("loop.db", "symbolic link loop"),
        ("a" * 300 + ".db", "file name too long"),
    ],
)
def test_an_unusable_db_path_is_one_line(tmp_path, db, reason):
    (tmp_path / "loop.db").symlink_to("loop.db")
    make_db(tmp_path / "s.db", ONE_RUN)
    before = db_state(tmp_path / "s.db")
    for args in (["runs"], ["db", "upgrade"], ["runs", "tag", "1", "x"], ["db", "merge", "s.db"]):
        err = one_line_error(ra_inprocess(*args, "--db", db))
        assert reason in err and "cannot use database path" in err, (args, err)
    err = one_line_error(ra_inprocess("db", "merge", db, "--db", "s.db"))
    assert reason in err
    assert db_state(tmp_path / "s.db") == before
    assert _files(tmp_path) <= {"loop.db", "s.db", "s.db-wal", "s.db-shm"}


def test_a_db_or_config_in_a_folder_that_cannot_be_searched_is_one_line(tmp_path):
    make_db(tmp_path / "a.db", ONE_RUN)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o000)
    try:
        results = _as_user(
            [
                ["runs", "--db", locked / "x.db"],
                ["db", "upgrade", "--db", locked / "x.db"],
                ["db", "merge", locked / "x.db", "--db", tmp_path / "a.db"],
                ["runs", "--config", locked / "ra.yaml", "--db", tmp_path / "a.db"],
            ]
        )
    finally:
        locked.chmod(0o755)
    for r in results[:3]:
        assert "permission denied" in _one_line(r), r
    assert "cannot read config file" in _one_line(results[3])
    assert list(locked.iterdir()) == []


# ---- 4: not a regular file ------------------------------------------------------------


def test_a_device_or_pipe_as_the_store_is_refused_before_opening(tmp_path):
    make_db(tmp_path / "b.db", ONE_RUN)
    os.mkfifo(tmp_path / "f.db")
    for db in ("/dev/null", "f.db"):
        for args in (
            ["runs"],
            ["db", "upgrade"],
            ["runs", "tag", "1", "x"],
            ["db", "merge", "b.db"],
        ):
            err = one_line_error(ra_inprocess(*args, "--db", db))
            assert "is not a regular file (a device, pipe or socket)" in err, (args, err)


def test_a_pipe_as_a_merge_source_is_refused_not_waited_on(tmp_path):
    make_db(tmp_path / "a.db", ONE_RUN)
    before = db_state(tmp_path / "a.db")
    os.mkfifo(tmp_path / "f.db")
    res = subprocess.run(  # a child: were the pipe opened, the read would never end
        [sys.executable, "-m", "racli", "db", "merge", "f.db", "--db", "a.db"],
        capture_output=True, text=True, timeout=60, env=python_env(), check=False,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "is not a regular file" in res.stderr
    assert db_state(tmp_path / "a.db") == before


def test_a_db_path_under_a_file_says_it_is_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    for args in (["runs"], ["db", "upgrade"]):
        err = one_line_error(ra_inprocess(*args, "--db", "file/x.db"))
        assert f"{tmp_path / 'file'} is a file, not a folder" in err, err


# ---- 5: a read-only store is refused before anything is written -------------------------

WRITERS = [
    ["runs", "tag", "1", "x"],
    ["runs", "exclude", "1", "--reason", "r"],
    ["runs", "include", "1"],
    ["runs", "delete", "1", "-y"],
    ["db", "merge", "b.db"],
]


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_store_is_refused_up_front_and_unchanged(tmp_path, what):
    shared = tmp_path / "shared"
    shared.mkdir()
    db = shared / "a.db"
    make_db(db, ONE_RUN)
    make_db(tmp_path / "b.db", [("train", "ra_v5", "finished", 2, None)])
    before, files = db_state(db), _files(shared)
    (db if what == "file" else shared).chmod(0o444 if what == "file" else 0o555)
    try:
        results = _as_user([[*args, "--db", db] for args in WRITERS])
    finally:
        shared.chmod(0o755)
        db.chmod(0o644)
    for r in results:
        err = _one_line(r)
        assert str(db) in err and "read-only" in err, r
    assert db_state(db) == before and _files(shared) == files


# ---- 6: a damaged store ------------------------------------------------------------------


def _damage_metrics(path: Path) -> None:
    """Overwrite the header of the metrics table's root page (the store stays in WAL
    mode, as ra leaves it)."""
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode=DELETE")  # every page in the main file
    (root,) = raw.execute("SELECT rootpage FROM sqlite_master WHERE name='metrics'").fetchone()
    (page,) = raw.execute("PRAGMA page_size").fetchone()
    raw.close()
    data = bytearray(path.read_bytes())
    start = (root - 1) * page
    data[start : start + 100] = b"\xff" * 100
    path.write_bytes(bytes(data))
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.close()


def test_a_damaged_store_is_one_line_naming_it(tmp_path):
    db = tmp_path / "a.db"
    ids = make_db(db)
    _damage_metrics(db)
    for args in (["runs", "show", str(ids[1])], ["compare"]):
        err = one_line_error(ra_inprocess(*args, "--db", db))
        assert f"database {db} is damaged" in err and ".recover" in err, (args, err)


def test_merge_into_a_damaged_target_blames_the_target(tmp_path):
    target = tmp_path / "a.db"
    make_db(target, ONE_RUN)
    _damage_metrics(target)
    make_db(tmp_path / "b.db")
    digest, files = target.read_bytes(), _files(tmp_path)
    err = one_line_error(ra_inprocess("db", "merge", "b.db", "--db", target))
    assert f"the target database {target} is damaged" in err, err
    assert "b.db" not in err
    assert target.read_bytes() == digest
    assert _files(tmp_path) - files <= {"b.db-wal", "b.db-shm"}  # a reader's, left empty


# ---- 7: a merge source in a folder the user cannot write ---------------------------------


def test_a_source_in_a_read_only_folder_merges_and_an_unreadable_one_says_so(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_db(src / "b.db")  # WAL mode, as ra leaves a store; no -shm once closed
    shutil.copy(src / "b.db", tmp_path / "z.db")
    make_db(tmp_path / "a.db", ONE_RUN)
    before = (sha256(src / "b.db"), _files(src))
    assert before[1] == {"b.db"}  # no -shm: SQLite's mode=ro cannot read it here
    src.chmod(0o555)
    (tmp_path / "z.db").chmod(0o000)
    try:
        merged, unreadable = _as_user(
            [
                ["db", "merge", src / "b.db", "--db", tmp_path / "a.db", "--json"],
                ["db", "merge", tmp_path / "z.db", "--db", tmp_path / "a.db"],
            ]
        )
    finally:
        src.chmod(0o755)
        (tmp_path / "z.db").chmod(0o644)
    assert merged["code"] == 0, merged
    assert _run_count(tmp_path / "a.db") == 7
    err = _one_line(unreadable)
    assert "permission denied" in err and "damaged" not in err, err
    assert (sha256(src / "b.db"), _files(src)) == before


# ---- 8: a URL that does not parse keeps its password hidden ------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://u:SECRET@127.0.0.1:notaport/ra", "port 'notaport' is not a number"),
        ("postgresql://u:SECRET@[::1:1/x", "no closing ']'"),
        ("postgres://u:SEC@RET@127.0.0.1:notaport/ra", "port 'notaport' is not a number"),
    ],
)
def test_a_url_that_does_not_parse_is_shown_without_its_password(tmp_path, url, reason):
    make_db(tmp_path / "a.db", ONE_RUN)
    for args in (["runs", "--db", url], ["db", "merge", url, "--db", "a.db"]):
        err = one_line_error(ra_inprocess(*args))
        assert "SECRET" not in err and "RET" not in err and ":***@" in err, err
        assert reason in err and "invalid literal" not in err, err


def test_a_password_given_as_a_query_argument_is_masked_too(tmp_path):
    """libpq reads `password` (and `sslpassword`) from a URL's query: masked in messages
    and in the `origin` a merge records, as the user part's password is."""
    from racli.store.merge import location
    from racli.store.urls import shown

    url = "postgresql://u@127.0.0.1:notaport/ra?sslmode=require&Password=SECRET"
    assert shown(url) == "postgresql://u@127.0.0.1:notaport/ra?sslmode=require&Password=***"
    assert "SECRET" not in location("postgresql://u:SECRET@h/ra?sslpassword=SECRET&x=1")
    assert "SECRET" not in location(url)
    make_db(tmp_path / "a.db", ONE_RUN)
    for args in (["runs", "--db", url], ["db", "merge", url, "--db", "a.db"]):
        err = one_line_error(ra_inprocess(*args))
        assert "SECRET" not in err and "Password=***" in err, err


# ---- 9, 10: empty locations, unknown kinds -----------------------------------------------


def test_an_empty_or_blank_db_is_refused_saying_where_it_came_from(tmp_path, monkeypatch):
    for value in ("", "   "):
        err = one_line_error(ra_inprocess("--db", value, "db", "upgrade"))
        assert "--db" in err and "is empty" in err
    monkeypatch.setenv("RA_DB", "  ")
    assert "RA_DB" in one_line_error(ra_inprocess("db", "upgrade"))
    monkeypatch.delenv("RA_DB")
    (tmp_path / "e.yaml").write_text('db: ""\n')
    err = one_line_error(ra_inprocess("--config", "e.yaml", "db", "upgrade"))
    assert "e.yaml: db:" in err and "is empty" in err
    for args in (
        ["db", "upgrade", "--db", ""],
        ["runs", "--db", " "],
        ["db", "current", "--db", ""],
    ):
        assert "is empty" in one_line_error(ra_inprocess(*args))  # the option after the command
    assert _files(tmp_path) == {"e.yaml"}


def test_an_ra_db_set_to_nothing_is_refused_not_read_as_unset(tmp_path, monkeypatch):
    """`RA_DB=$UNSET_NAME` would else record into ./ra.db unnoticed."""
    make_db(tmp_path / "ra.db", ONE_RUN)
    before = db_state(tmp_path / "ra.db")
    monkeypatch.setenv("RA_DB", "")
    for args in (["runs"], ["db", "upgrade"], ["runs", "tag", "1", "x"]):
        err = one_line_error(ra_inprocess(*args))
        assert "RA_DB '' is empty" in err and "unset it" in err, err
    assert db_state(tmp_path / "ra.db") == before


def test_sqlite_urls_name_the_driver_ra_uses_and_no_arguments(tmp_path):
    """`sqlite+pysqlite:///` is the driver `sqlite:///` names: the same store. A SQLite
    URL's query arguments (`?mode=ro`) were ignored with a library warning (and the store
    written); `immutable=1` failed late with exit 1. Both are bad input now, as is
    another SQLite driver, and nothing recorded changes."""
    make_db(tmp_path / "ra.db", ONE_RUN)
    assert _run_count("sqlite+pysqlite:///ra.db") == 1
    assert _run_count(f"sqlite+pysqlite:///{tmp_path}/ra.db") == 1
    assert _run_count("sqlite:///file:ra.db?uri=true") == 1
    assert sqlite_path("sqlite+pysqlite:///ra.db") == tmp_path / "ra.db"
    before = db_state(tmp_path / "ra.db")
    for url, named in (
        ("sqlite:///ra.db?mode=ro", "(mode)"),
        ("sqlite:///file:ra.db?uri=true&immutable=1", "(immutable)"),
        ("sqlite+pysqlite:///ra.db?timeout=5", "(timeout)"),
        ("sqlite+aiosqlite:///ra.db", "through Python's sqlite3 driver"),
    ):
        for args in (["runs"], ["runs", "tag", "1", "x"], ["db", "upgrade"]):
            res = ra_inprocess(*args, "--db", url)
            err = one_line_error(res)
            assert named in err and url.split("?")[0].split(":///")[0] in err, err
            assert "Warning" not in res.stderr
    assert db_state(tmp_path / "ra.db") == before
    assert "sqlite:///:memory: is in memory" in one_line_error(
        ra_inprocess("runs", "--db", "sqlite:///:memory:")
    )


def test_db_commands_print_the_location_safely(tmp_path):
    """A file name that is not UTF-8 is printed as \\xNN (printing it raw failed after the
    work was done); a URL's password never shows."""
    odd = os.fsdecode(b"store-\xff.db")
    res = ra_inprocess("db", "upgrade", "--db", odd)
    assert res.exit_code == 0 and "store-\\xff.db: schema upgraded" in res.stdout, res.output
    res = ra_inprocess("db", "current", "--db", odd, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["db"].endswith("store-\\xff.db")
    from racli.commands.common import location_text

    assert location_text("postgresql://u:s3cret@h:5432/ra") == "postgresql://u:***@h:5432/ra"


def test_an_unknown_kind_of_database_names_the_supported_ones():
    for args in (["runs", "--db", "http://x"], ["db", "merge", "http://x", "--db", "a.db"]):
        err = one_line_error(ra_inprocess(*args))
        assert "unknown kind of database 'http'" in err and "postgresql://" in err, err
        assert "sqlite:///" in err and "plugin" not in err


# ---- 11: a config path that is not a file -------------------------------------------------


def test_a_config_that_is_a_folder_or_a_device_says_so(tmp_path):
    (tmp_path / "adir").mkdir()
    err = one_line_error(ra_inprocess("--config", "adir", "runs"))
    assert "adir is a folder, not a file" in err
    err = one_line_error(ra_inprocess("--config", "/dev/null", "runs"))
    assert "/dev/null is not a regular file" in err


# ---- the file a location names ------------------------------------------------------------


def test_sqlite_path_is_the_literal_file(tmp_path):
    for name in ("x?y.db", "x#y.db", "x%20y.db"):
        assert sqlite_path(name) == tmp_path / name
    assert sqlite_path("sqlite:///rel.db") == tmp_path / "rel.db"
    assert sqlite_path("postgresql://u@h/d") is None and sqlite_path("sqlite://") is None
