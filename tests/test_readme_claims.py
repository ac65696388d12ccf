"""What the README says ra does, checked against what ra does: the exit codes and the
bad inputs it lists, where checkpoints live, how read commands treat an older
store, and what `ra db upgrade --help` promises."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from helpers import REPO, db_state, make_db
from typer.testing import CliRunner

from racli.cli import app
from racli.store.checkpoints import checkpoint_dir, checkpoint_path, store_key
from racli.store.engine import open_store
from racli.store.migrate import HEAD_REVISION, downgrade

README = (REPO / "README.md").read_text()
FLAT = " ".join(README.split())  # the text with its line breaks as spaces


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RA_DB", raising=False)


def ra(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def section(title_start: str) -> str:
    """The README section whose `## ` heading starts with `title_start`, flattened."""
    m = re.search(rf"^## {re.escape(title_start)}.*?$(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, title_start
    return " ".join(m.group(1).split())


# ---- exit codes ----------------------------------------------------------------------------


def documented_bad_inputs() -> list[str]:
    m = re.search(r"Exit codes: `0` success; `2` bad input \((.*?)\): one line on stderr", FLAT)
    assert m, "the README's exit-code sentence moved"
    return [item.strip() for item in m.group(1).split(",")]


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "ra.db"
    make_db(path)
    return path


def _newer(db: Path, tmp_path: Path) -> Path:
    newer = tmp_path / "newer.db"
    newer.write_bytes(db.read_bytes())
    conn = sqlite3.connect(newer)
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    return newer


def _bad_yaml(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: -0.001\n")
    return bad


# each bad input the README lists -> a command that gives it (keep the two in step)
BAD_INPUTS = {
    "unknown attention": lambda db, tmp: ["compare", "--db", db, "--candidate", "ra_v9"],
    "bad number": lambda db, tmp: ["compare", "--db", db, "--threshold", "1.5"],
    "missing file": lambda db, tmp: ["data", "prepare", tmp / "none.txt", "--out", tmp / "d"],
    "invalid `ra.yaml`": lambda db, tmp: ["--config", _bad_yaml(tmp), "runs", "--db", db],
    "unknown run id": lambda db, tmp: ["runs", "show", "999", "--db", db],
    "CUDA asked for but absent": lambda db, tmp: ["bench", "--device", "cuda", "--db", db],
    "a database from a newer schema": lambda db, tmp: ["runs", "--db", _newer(db, tmp)],
}


def test_the_readme_lists_the_bad_inputs_this_test_checks():
    assert documented_bad_inputs() == list(BAD_INPUTS)


@pytest.mark.parametrize("what", list(BAD_INPUTS))
def test_each_documented_bad_input_exits_2_with_one_line(what, db, tmp_path):
    if what.startswith("CUDA"):
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    before = db_state(db)
    res = ra(*BAD_INPUTS[what](db, tmp_path))
    assert res.exit_code == 2, (what, res.output)
    assert res.stderr.startswith("ra: error: ") and len(res.stderr.strip().splitlines()) == 1
    assert db_state(db) == before  # "nothing recorded is touched"


def test_success_exits_0(db):
    assert ra("runs", "--db", db).exit_code == 0


# ---- checkpoint paths ------------------------------------------------------------------------


def checkpoint_mentions() -> list[tuple[str, str]]:
    """(path, the 120 characters before it) of every `ra_checkpoints/...` in the README."""
    return [
        (m.group(1), FLAT[max(0, m.start() - 120) : m.start()])
        for m in re.finditer(r"`(?:\./)?(ra_checkpoints/[^`]*)`", FLAT)
    ]


def test_every_checkpoint_path_in_the_readme_is_where_ra_puts_it(tmp_path):
    mentions = checkpoint_mentions()
    assert len(mentions) >= 4
    db = str(tmp_path / "exp.db")
    url = "postgresql+psycopg://me:secret@dbhost/ra"
    for path, before in mentions:
        if "older ra" in before:  # where ra once wrote them: documented as not picked up
            assert path == "ra_checkpoints/run_<id>.pt"
            continue
        if path.startswith("ra_checkpoints/<dialect>-"):  # a database URL: under the cwd
            assert checkpoint_dir(url) == Path.cwd() / "ra_checkpoints" / store_key(url)
            assert store_key(url).startswith("postgresql-") and "secret" not in store_key(url)
            continue
        rendered = path.replace("<database file name>", "exp.db").replace("<id>", "42")
        if "ra.db/run_42.pt" in path:  # the worked example
            rendered = path.replace("ra.db", "exp.db")
        assert tmp_path / rendered == checkpoint_path(db, 42), path


def test_ra_runs_delete_removes_the_checkpoint_where_the_readme_says(tmp_path):
    db = tmp_path / "ra.db"
    ids = make_db(db)
    documented = tmp_path / "ra_checkpoints" / "ra.db" / f"run_{ids[1]}.pt"
    documented.parent.mkdir(parents=True)
    documented.write_bytes(b"checkpoint")
    res = ra("runs", "delete", str(ids[1]), "--yes", "--db", db)
    assert res.exit_code == 0, res.output
    assert not documented.exists() and f"removed checkpoint {documented}" in res.stdout


# ---- read commands on an older store; ra db upgrade --help --------------------------------------


def test_an_older_sqlite_store_is_read_through_an_upgraded_copy_as_documented(tmp_path):
    text = section("The results store")
    assert "or a store of an older schema, is one line and exit 2" not in FLAT
    note = re.search(r"says so in one note on stderr \(`(ra: note: .*?)`\)", text)
    assert note, "the README's note example moved"
    db = tmp_path / "ra.db"
    make_db(db)
    store = open_store(str(db))
    downgrade(store.engine, "0004")
    store.close()
    before = db_state(db)
    res = ra("runs", "--db", db)
    assert res.exit_code == 0, res.output  # the command works
    assert res.stdout.startswith("id\tkind")
    shown = res.stderr.replace(str(db), "ra.db")
    assert note.group(1) in shown and f"(this ra: {HEAD_REVISION})" in note.group(1)
    assert len(res.stderr.strip().splitlines()) == 1
    assert db_state(db) == before  # the store itself is unchanged
    # `ra db upgrade` upgrades the store itself
    assert ra("db", "upgrade", "--db", db).exit_code == 0
    res = ra("runs", "--db", db)
    assert res.exit_code == 0 and res.stderr == ""


def test_db_upgrade_help_says_which_commands_migrate():
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["db", "upgrade", "--help"])
    assert res.exit_code == 0
    text = " ".join(res.stdout.replace("│", " ").split())
    assert "whenever it opens a database" not in text
    assert "Writing commands" in text and "read commands never change a store" in text
    assert "upgraded temporary copy" in text
