"""Shell completion of option values and run ids, driven the way bash drives it:
`_RA_COMPLETE=complete_bash` with COMP_WORDS / COMP_CWORD, one value a line on stdout.

Run ids come from the store, newest first by start time, without writing it (and
without SQLAlchemy or torch on the path)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import typer
from helpers import db_state, make_db, python_env, record_run
from typer.testing import CliRunner

from racli.cli import app
from racli.commands import common, completers
from racli.names import ATTENTION_NAMES
from racli.store.engine import open_store
from racli.store.migrate import downgrade


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RA_DB", raising=False)


def complete(line: str, env: dict | None = None) -> list[str]:
    """What bash gets for TAB at the end of `line` (a trailing space: a new word)."""
    words = line.split()
    cword = len(words) if line.endswith(" ") else len(words) - 1
    res = CliRunner(
        env={
            "_RA_COMPLETE": "complete_bash",
            "COMP_WORDS": line,
            "COMP_CWORD": str(cword),
            **(env or {}),
        }
    ).invoke(app, [])
    assert res.exit_code == 0, (res.exit_code, res.output)
    return res.stdout.split()


# ---- fixed values -------------------------------------------------------------------------


def test_attention_names_complete_for_every_attn_option():
    everything = sorted(ATTENTION_NAMES)
    assert sorted(complete("ra train --attn ")) == everything
    assert complete("ra train --attn ra_v5") == ["ra_v5", "ra_v5_untied"]
    assert complete("ra compare --candidate ra_b") == ["ra_beta"]
    assert complete("ra compare --baseline base") == ["baseline"]
    assert complete("ra gates --tag x --attn sdpa") == ["sdpa_gate"]
    assert complete("ra runs --attn ra_v5_u") == ["ra_v5_untied"]


def test_comma_lists_complete_their_last_item():
    # the items already listed are kept and not offered again
    assert complete("ra bench --attn baseline,ra") == [
        "baseline,ra_v5",
        "baseline,ra_v5_untied",
        "baseline,ra_beta",
    ]
    assert complete("ra bench --modes eager,c") == ["eager,compile", "eager,cuda_graph"]
    # an A/A experiment names a variant twice
    assert "baseline,baseline" in complete("ra experiment --attn baseline,")


def test_metric_tokenizer_and_small_choices():
    assert complete("ra compare --metric ") == ["val_loss", "tokens_per_s", "ms"]
    assert complete("ra compare --metric t") == ["tokens_per_s"]
    assert complete("ra data prepare a.txt --tokenizer ") == ["gpt2", "bytes", "train:32768"]
    assert complete("ra data prepare a.txt --tokenizer tr") == ["train:32768"]
    assert complete("ra bench --phase fwd") == ["fwd", "fwd_bwd"]
    assert complete("ra runs --status f") == ["finished", "failed"]
    assert complete("ra runs --kind ") == ["train", "bench", "calibration"]
    assert complete("ra runs --sort val") == ["val_loss"]


def test_sort_fields_are_the_ones_the_query_takes():
    from racli.store.queries import SORT_FIELDS

    assert [f for f, _ in completers.SORT_FIELDS] == list(SORT_FIELDS)


def test_model_presets_and_shapes_come_from_ra_yaml(tmp_path):
    assert complete("ra train --model ") == ["auto", "tiny", "small", "gpt2"]
    assert complete("ra experiment --model g") == ["gpt2"]
    assert complete("ra bench --shape ") == ["auto", "tiny", "gpt2"]
    # a ra.yaml of one's own adds its presets (and --config on the line is followed)
    mine = tmp_path / "mine.yaml"
    mine.write_text("models:\n  wide: {n_layer: 2, n_head: 4, n_embd: 512, block_size: 64}\n")
    assert complete(f"ra train --config {mine} --model w") == ["wide"]
    (tmp_path / "ra.yaml").write_text(mine.read_text())
    assert "wide" in complete("ra train --model ")
    # a broken ra.yaml completes nothing (and says nothing)
    (tmp_path / "ra.yaml").write_text("train: {lr: -1}\n")
    assert complete("ra train --model ") == []


def test_launcher_completer_for_the_cluster_option():
    """`--launcher` is attached by the experiment launchers; its completer is ready in
    common: drive it through a Typer app as the shell would."""
    assert [v for v, _ in common.complete_launcher("")] == ["local", "slurm", "ray"]
    probe = typer.Typer()

    @probe.command()
    def run(
        launcher: str = typer.Option("local", autocompletion=common.complete_launcher),
    ) -> None:
        pass

    @probe.callback()
    def _root() -> None:
        pass

    def probe_complete(line: str, cword: int) -> list[str]:
        res = CliRunner().invoke(
            probe,
            [],
            prog_name="probe",
            env={"_PROBE_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(cword)},
        )
        return res.stdout.split()

    assert probe_complete("probe run --launcher ", 3) == ["local", "slurm", "ray"]
    assert probe_complete("probe run --launcher s", 3) == ["slurm"]


# ---- run ids and tags from the store ---------------------------------------------------------


def _set_started(path, when: dict[int, datetime]) -> None:
    conn = sqlite3.connect(path)
    try:
        with conn:
            for run_id, t in when.items():
                conn.execute("UPDATE runs SET started_at = ? WHERE id = ?", (str(t), run_id))
    finally:
        conn.close()  # the last connection checkpoints the WAL: before the test looks


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "ra.db"
    ids = make_db(path)  # bench 1, train 2-6
    t0 = datetime(2026, 12, 3, 14, 0)
    # start times not in id order (as after `ra db merge`): 4 is the newest, 2 the oldest
    _set_started(path, {1: t0, 2: t0 - timedelta(hours=1), 3: t0 + timedelta(minutes=5)})
    _set_started(path, {4: t0 + timedelta(hours=2), 5: t0 + timedelta(minutes=30)})
    _set_started(path, {6: t0 + timedelta(minutes=10)})
    return path, ids


def test_run_ids_complete_newest_first_by_start_time(store_path):
    path, _ = store_path
    by_start = ["4", "5", "6", "3", "1", "2"]
    assert complete("ra runs show ", {"RA_DB": str(path)}) == by_start
    assert complete(f"ra runs show --db {path} ") == by_start
    assert complete(f"ra --db {path} runs diff 4 ") == [i for i in by_start if i != "4"]
    assert complete(f"ra runs --db {path} exclude 4 6 ") == ["5", "3", "1", "2"]
    # gates and resume take train runs only: the bench run (1) is not offered
    assert complete(f"ra gates --db {path} --run ") == ["4", "5", "6", "3", "2"]
    assert complete(f"ra train --db {path} --resume ") == ["4", "5", "6", "3", "2"]
    assert complete(f"ra gates --db {path} --runs 4,") == ["4,5", "4,6", "4,3", "4,2"]
    assert complete(f"ra --db {path} runs tag 3") == ["3"]


def test_run_id_help_names_the_run_for_zsh(store_path):
    path, _ = store_path
    res = CliRunner(
        env={"_RA_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": f"ra gates --db {path} --run "}
    ).invoke(app, [])
    assert res.exit_code == 0
    assert '"5":"train baseline interrupted seed 3 2026-12-03 14\\\\:30 tag sweep"' in res.stdout


def test_tags_complete_from_the_store(store_path):
    path, _ = store_path
    assert complete(f"ra runs --db {path} --tag ") == ["sweep"]
    assert complete(f"ra compare --db {path} --tag sw") == ["sweep"]


def test_only_the_last_50_runs_are_offered(tmp_path):
    path = tmp_path / "many.db"
    store = open_store(str(path))
    try:
        ids = [record_run(store, seed=i, n_metrics=1, gates=False) for i in range(60)]
    finally:
        store.close()
    got = complete(f"ra runs show --db {path} ")
    assert got == [str(i) for i in sorted(ids, reverse=True)[:50]]


def test_completing_never_writes_the_store(store_path):
    path, _ = store_path
    before = db_state(path)
    files = sorted(p.name for p in path.parent.iterdir())
    for line in (f"ra runs show --db {path} ", f"ra gates --db {path} --run "):
        assert complete(line)
    assert db_state(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == files


def test_an_older_schema_completes_without_being_upgraded(store_path):
    path, _ = store_path
    store = open_store(str(path))
    downgrade(store.engine, "0001")
    store.close()
    before = db_state(path)
    assert complete(f"ra runs show --db {path} ") == ["4", "5", "6", "3", "1", "2"]
    assert db_state(path) == before
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0001",)
    finally:
        conn.close()


def test_a_missing_or_foreign_store_completes_nothing(tmp_path):
    assert complete(f"ra runs show --db {tmp_path / 'none.db'} ") == []
    assert not (tmp_path / "none.db").exists()  # and creates nothing
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    assert complete(f"ra runs show --db {junk} ") == []
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert complete(f"ra gates --db {other} --run ") == []


def test_bash_gets_run_ids_quickly_without_sqlalchemy_or_torch(store_path):
    """The real path: a new process, as the completion script starts one on each TAB."""
    path, _ = store_path
    code = (
        "import sys\n"
        "from racli.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('sqlalchemy', 'torch', 'numpy') if m in sys.modules]\n"
        "sys.stderr.write('HEAVY:' + ','.join(heavy) + '\\n')\n"
    )
    env = python_env(
        _RA_COMPLETE="complete_bash",
        COMP_WORDS=f"ra gates --db {path} --run ",
        COMP_CWORD="5",
    )
    env.pop("RA_DB", None)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.stdout.split() == ["4", "5", "6", "3", "2"]
    assert "HEAVY:\n" in res.stderr, res.stderr
    assert os.path.exists(path)
