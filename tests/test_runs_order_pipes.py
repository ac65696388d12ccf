"""`ra runs`: newest first by start time (also after `ra db merge`), `--sort`, and
piped / `--tsv` output that programs read whole (cut and awk against the store)."""

from __future__ import annotations

import json
import shlex
import sqlite3
import subprocess
import sys
from datetime import datetime

import pytest
from helpers import make_db, python_env, record_run
from typer.testing import CliRunner

from racli.cli import app
from racli.store.engine import open_store
from racli.store.merge import merge_stores
from racli.text.numbers import raw


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("RA_DB", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


def ra(*args, env=None):
    return CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke(app, [str(a) for a in args])


def ok(*args, env=None):
    res = ra(*args, env=env)
    assert res.exit_code == 0, (res.exit_code, res.stdout, res.stderr)
    return res


def _sql(path, statements: list[tuple[str, tuple]]) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            for sql, params in statements:
                conn.execute(sql, params)
    finally:
        conn.close()


def _rows(path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _one_run_store(path, started: str, seed: int) -> None:
    store = open_store(str(path))
    try:
        run_id = record_run(store, seed=seed, n_metrics=1, gates=False)
    finally:
        store.close()
    _sql(path, [("UPDATE runs SET started_at = ? WHERE id = ?", (started, run_id))])


# ---- order ---------------------------------------------------------------------------------


def test_a_merged_older_run_is_listed_below_newer_ones(tmp_path):
    """After `ra db merge` the imported run gets a higher id; it started earlier, so it is
    listed after the runs that started later (id order put it on top)."""
    team, laptop = tmp_path / "team.db", tmp_path / "laptop.db"
    _one_run_store(team, "2026-12-03 14:43:00", seed=1)
    _one_run_store(laptop, "2026-12-03 13:41:00", seed=2)
    merge_stores(str(team), [str(laptop)])
    runs = json.loads(ok("runs", "--db", team, "--json").stdout)
    assert [(r["id"], r["started_at"]) for r in runs] == [
        (1, "2026-12-03 14:43:00"),
        (2, "2026-12-03 13:41:00"),
    ]
    lines = ok("runs", "--db", team).stdout.splitlines()  # a pipe: TSV
    assert [line.split("\t")[0] for line in lines[1:]] == ["1", "2"]
    # same start time: the higher id first
    _sql(team, [("UPDATE runs SET started_at = '2026-12-03 15:00:00'", ())])
    assert [r["id"] for r in json.loads(ok("runs", "--db", team, "--json").stdout)] == [2, 1]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "ra.db"
    make_db(path)  # 1 bench; 2-6 train: baseline/ra_v5 finished, failed, interrupted, diverged
    _sql(
        path,
        [
            ("UPDATE runs SET val_loss = 4.286, tokens_per_s = 33258.123456789 WHERE id = 2", ()),
            ("UPDATE runs SET val_loss = 2.16, tokens_per_s = 1234567.5 WHERE id = 3", ()),
            ("UPDATE runs SET val_loss = ?, iterations = 33258 WHERE id = 5", (1.1 * 3,)),
        ],
    )
    return path


@pytest.mark.parametrize(
    "sort,ids",
    [
        (None, [6, 5, 4, 3, 2, 1]),  # newest first (start times follow the ids here)
        ("started", [1, 2, 3, 4, 5, 6]),
        # runs without the value come last; ties go by id, in the sort's direction
        ("val_loss", [3, 5, 2, 1, 4, 6]),
        ("-val_loss", [2, 5, 3, 6, 4, 1]),
        ("-tokens_per_s", [3, 2, 6, 5, 4, 1]),
        ("attn", [2, 5, 3, 4, 6, 1]),  # baseline < ra_v5; the bench run (no attn) last
        ("id", [1, 2, 3, 4, 5, 6]),
        ("-id", [6, 5, 4, 3, 2, 1]),
        ("iters", [2, 3, 5, 1, 4, 6]),  # an alias of iterations
    ],
)
def test_sort(store, sort, ids):
    args = ["runs", "--db", store, "--json"] + ([f"--sort={sort}"] if sort else [])
    assert [r["id"] for r in json.loads(ok(*args).stdout)] == ids


def test_sort_takes_a_dash_value_as_its_own_word_and_limits_after_sorting(store):
    res = ok("runs", "--db", store, "--sort", "-val_loss", "--limit", "2", "--json")
    assert [r["id"] for r in json.loads(res.stdout)] == [2, 5]
    res = ok("runs", "--db", store, "--kind", "train", "--sort", "val_loss", "--limit", "1")
    assert [line.split("\t")[0] for line in res.stdout.splitlines()] == ["id", "3"]


def test_an_unknown_sort_field_is_bad_input(store):
    res = ra("runs", "--db", store, "--sort", "loss")
    assert res.exit_code == 2
    assert res.stderr.startswith("ra: error: cannot sort runs by 'loss'")
    assert len(res.stderr.strip().splitlines()) == 1


# ---- raw numbers in pipes ----------------------------------------------------------------------


def test_raw_numbers():
    assert raw(33258) == "33258"
    assert raw(33258.0) == "33258.0"
    assert raw(0.1 + 0.2) == "0.30000000000000004"
    assert float(raw(4.286)) == 4.286 and raw(2.16) == "2.16"
    assert raw(None) == "-" and raw(True) == "true" and raw(float("nan")) == "nan"


def _shell(pipeline: str, db) -> str:
    cmd = f"{shlex.quote(sys.executable)} -m racli runs --db {shlex.quote(str(db))} {pipeline}"
    res = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd}"],
        capture_output=True,
        text=True,
        env=python_env(COLUMNS="60"),
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_cut_and_awk_read_the_stored_numbers_whole(store):
    stored = {
        run_id: (val_loss, tps, iters)
        for run_id, val_loss, tps, iters in _rows(
            store, "SELECT id, val_loss, tokens_per_s, iterations FROM runs"
        )
    }
    out = _shell("| cut -f1,7,8,9", store)
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines[0] == ["id", "val_loss", "tok/s", "iters"]
    for run_id, val_loss, tps, iters in lines[1:]:
        want = stored[int(run_id)]
        got = tuple(None if v == "-" else float(v) for v in (val_loss, tps, iters))
        assert got == want, (run_id, got, want)  # exactly the stored values
        assert "," not in tps + iters  # no thousands separators
    by_id = {int(r[0]): r for r in lines[1:]}
    assert by_id[2][2] == "33258.123456789" and by_id[5][3] == "33258"
    assert by_id[3][1] == "2.16" and by_id[2][1] == "4.286"  # no padding to a precision
    assert by_id[3][2] == "1234567.5" and by_id[5][1] == "3.3000000000000003"
    # awk sums the column to the stored sum (the terminal's 4 digits would not)
    total = _shell(
        "| awk -F'\\t' 'NR > 1 && $7 != \"-\" {s += $7} END {printf \"%.17g\", s}'", store
    )
    want = sum(v for v, _, _ in stored.values() if v is not None)
    assert float(total) == pytest.approx(want, rel=1e-15)
    # the start time is whole
    started = dict(_rows(store, "SELECT id, started_at FROM runs"))
    col = _shell("| cut -f1,10", store).splitlines()[1:]
    assert {int(i): t for i, t in (line.split("\t") for line in col)} == {
        i: str(datetime.fromisoformat(t).replace(microsecond=0)) for i, t in started.items()
    }


def test_tsv_flag_on_a_terminal_and_the_terminal_table(store):
    term = {"TTY_COMPATIBLE": "1"}
    table = ok("runs", "--db", store, env=term).stdout
    assert "┃" in table and "33,258" in table and "4.286" in table  # rounded for the eye
    out = ok("runs", "--db", store, "--tsv", env=term).stdout
    assert "┃" not in out and "\x1b[" not in out
    lines = out.splitlines()
    assert lines[0].split("\t")[:3] == ["id", "kind", "attn"]
    assert {line.split("\t")[7] for line in lines[1:]} >= {"33258.123456789", "1234567.5"}
    # the same bytes as a pipe gets
    assert out == ok("runs", "--db", store).stdout
    res = ra("runs", "--db", store, "--tsv", "--json")
    assert res.exit_code == 2 and "not both" in res.stderr


def test_json_is_unchanged(store):
    runs = {r["id"]: r for r in json.loads(ok("runs", "--db", store, "--json").stdout)}
    assert runs[2]["tokens_per_s"] == 33258.123456789 and runs[5]["iterations"] == 33258
    assert runs[3]["val_loss"] == 2.16
