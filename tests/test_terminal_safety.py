"""User strings reach the terminal as text, never as markup or control sequences; tables keep
every column in a pipe and leave columns out on a narrow terminal only with a note."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import ENV_INFO, record_run
from typer.testing import CliRunner

from racli.cli import app
from racli.store.engine import open_store
from racli.text import tables, terminal

MARKUP = "[bold red]HACK[/] [link=http://evil]x[/link]"
CLEAR = "wipe\x1b[2Jout"  # ESC[2J clears the screen
NASTY = "a\rb\x07c\x9bd\u202ee\x1b]8;;http://evil\x1b\\f"  # CR, BEL, CSI (C1), RLO, OSC 8
LONG = "L" * 120_000
# raw sequences that must never reach the terminal from a user string
RAW = ("\x1b[2J", "\x1b]8;", "\r", "\x07", "\x9b", "\u202e")
HEADERS = [
    "id",
    "kind",
    "attn",
    "status",
    "seed",
    "tag",
    "val_loss",
    "tok/s",
    "iters",
    "started",
    "epochs",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("RA_DB", "RA_DEBUG", "TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory):
    """Finished baseline and ra_v5 runs under each hostile tag, from a hostile machine."""
    path = tmp_path_factory.mktemp("hostile") / "ra.db"
    env = {**ENV_INFO, "hostname": "host\x1b[2J", "gpu_name": "[blink]gpu[/blink]\x1b[31m"}
    store = open_store(str(path))
    ids = {}
    try:
        for tag in (MARKUP, CLEAR, NASTY, LONG):
            ids[tag] = [
                record_run(store, attn=attn, tag=tag, seed=1, env_info=env)
                for attn in ("baseline", "ra_v5")
            ]
    finally:
        store.close()
    return str(path), ids


def ra(*args, terminal: bool = False, columns: int = 200):
    env = {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1" if terminal else "0"}
    return CliRunner(env=env).invoke(app, [str(a) for a in args])


def ok(*args, **kw):
    res = ra(*args, **kw)
    assert res.exit_code == 0, (res.exit_code, res.stdout, res.stderr)
    return res


def assert_harmless(text: str) -> None:
    for seq in RAW:
        assert seq not in text, f"{seq!r} reached the terminal"


# ---- the helpers --------------------------------------------------------------------------


def test_visible_escapes_controls_and_keeps_text():
    assert terminal.visible(CLEAR) == "wipe\\x1b[2Jout"
    assert terminal.visible("a\rb\x07c\x9bd\u202ee\x7f") == "a\\rb\\x07c\\x9bd\\u202ee\\x7f"
    assert terminal.visible("two\nlines\tand tab") == "two\nlines\tand tab"
    assert terminal.one_line("two\nlines\tand tab") == "two\\nlines\\tand tab"
    assert terminal.visible("café ✅ 日本 [b]x[/b]") == "café ✅ 日本 [b]x[/b]"
    assert_harmless(terminal.one_line(NASTY))


def test_cut_uses_an_ellipsis():
    assert terminal.cut("abcdef", 4) == "abc…"
    assert terminal.cut("abc", 4) == "abc"
    assert terminal.field(LONG, 24) == "L" * 23 + "…"


def test_markup_escape_and_cells_print_literally():
    from rich.console import Console

    console = Console(record=True, width=200, force_terminal=True)
    console.print(terminal.markup(MARKUP))
    console.print(terminal.cell(MARKUP))
    console.print(terminal.cell(":skull: " + CLEAR))
    text = console.export_text()
    assert text.count(MARKUP) == 2 and ":skull: wipe\\x1b[2Jout" in text
    assert "\x1b]8;" not in console.export_text(styles=True)  # no hyperlink was made


# ---- ra runs -------------------------------------------------------------------------------


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_runs_prints_tags_literally(hostile_db, terminal):
    db, _ = hostile_db
    out = ok("runs", "--db", db, terminal=terminal).stdout
    assert_harmless(out)
    assert "[bold red]HACK[/]" in out  # cut to the tag column, but literal
    assert "wipe\\x1b[2Jout" in out
    assert "HACK" in out and "bold red" in out


def test_runs_show_prints_tag_and_environment_literally(hostile_db):
    db, ids = hostile_db
    for tag in (MARKUP, CLEAR, NASTY):
        out = ok("runs", "show", ids[tag][0], "--db", db).stdout
        assert_harmless(out)
        assert terminal.one_line(tag) in out
        assert "host\\x1b[2J" in out and "[blink]gpu[/blink]\\x1b[31m" in out
        d = json.loads(ok("runs", "show", ids[tag][0], "--db", db, "--json").stdout)
        assert d["tag"] == tag  # --json keeps the string exact (JSON escapes it)


def test_compare_prints_tags_literally(hostile_db):
    db, _ = hostile_db
    for tag in (MARKUP, CLEAR, NASTY):
        res = ok("compare", "--db", db, "--tag", tag)
        assert_harmless(res.stdout)
        assert f"tag '{terminal.one_line(tag)}'" in res.stdout
        assert "[blink]gpu[/blink]" in res.stdout or "Group:" in res.stdout


def test_error_lines_show_user_input_literally(hostile_db):
    db, _ = hostile_db
    for args in (
        ["runs", "--db", db, "--kind", CLEAR],
        ["compare", "--db", db, "--tag", NASTY, "--candidate", "ra_beta"],
    ):
        res = ra(*args)
        assert res.exit_code == 2, res.stderr
        assert_harmless(res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("ra: error:")


UNDECODED = "r\udcff"  # what Python makes of the byte 0xff in a command line


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "--tag", UNDECODED],
        ["runs", "--attn", UNDECODED],
        ["runs", "export", "--tag", UNDECODED],
        ["compare", "--tag", UNDECODED],
        ["compare", "--since", UNDECODED],
        ["gates", "--tag", UNDECODED],
        ["gates", "--runs", UNDECODED],
    ],
    ids=lambda a: "-".join(x for x in a if x.startswith("-") or x.isalpha()),
)
def test_a_filter_that_is_not_utf8_is_one_line(hostile_db, args):
    """No run holds such text (the store is UTF-8): one line naming the byte, not the
    encoder's error (these filters stopped with exit 1 and UnicodeEncodeError)."""
    db, _ = hostile_db
    before = Path(db).read_bytes()
    res = ra(*args, "--db", db)
    assert res.exit_code == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "is not valid UTF-8 text (byte 0xff at character 2)" in res.stderr
    assert Path(db).read_bytes() == before


def test_an_undecoded_byte_shows_as_the_byte(tmp_path):
    assert terminal.visible("a\udcffb\udc80") == "a\\xffb\\x80"
    assert terminal.one_line("\udcfe\n") == "\\xfe\\n"
    assert terminal.visible("\udc7f\ud800") == "\udc7f\ud800"  # not a byte's stand-in
    res = ra("runs", "--db", str(tmp_path / "\udcff.db"))
    assert res.exit_code == 2 and "\\xff.db" in res.stderr and "\\udcff" not in res.stderr


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_a_120k_tag_keeps_every_column(hostile_db, terminal):
    db, ids = hostile_db
    out = ok("runs", "--db", db, "--tag", LONG, terminal=terminal).stdout
    assert len(out) < 5000  # the tag is cut, not printed 120k wide
    for header in HEADERS:
        assert header in out, f"column {header} dropped:\n{out}"
    assert "not shown" not in out
    if not terminal:
        lines = out.splitlines()
        assert lines[0].split("\t") == HEADERS
        rows = [line.split("\t") for line in lines[1:]]
        assert [int(r[0]) for r in rows] == sorted(ids[LONG], reverse=True)
        assert all(len(r) == len(HEADERS) and r[5] == "L" * 23 + "…" for r in rows)
    runs = json.loads(ok("runs", "--db", db, "--tag", LONG, "--json").stdout)
    assert [r["tag"] for r in runs] == [LONG, LONG]  # whole in --json


# ---- tables in a pipe and on a terminal ----------------------------------------------------


def test_piped_runs_table_is_tab_separated_with_every_column(hostile_db):
    db, ids = hostile_db
    out = ok("runs", "--db", db, columns=40).stdout  # the width of a pipe does not matter
    lines = out.splitlines()
    assert lines[0].split("\t") == HEADERS
    assert "│" not in out and "─" not in out
    n_runs = sum(len(v) for v in ids.values())
    assert len(lines) == 1 + n_runs
    assert all(len(line.split("\t")) == len(HEADERS) for line in lines)


def test_narrow_terminal_leaves_columns_out_with_a_note(hostile_db):
    db, _ = hostile_db
    out = ok("runs", "--db", db, "--tag", MARKUP, terminal=True, columns=60).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # the table's own colours
    assert max(len(line) for line in out.splitlines()) <= 60
    for header in HEADERS[:4]:  # the key columns are always there
        assert header in out
    note = [line for line in out.splitlines() if "not shown" in line]
    assert note, out
    assert "epochs" in out.split("not shown", 1)[1]  # the note names what is left out
    wide = ok("runs", "--db", db, "--tag", MARKUP, terminal=True, columns=200).stdout
    assert "not shown" not in wide and all(h in wide for h in HEADERS)


def test_is_terminal_follows_the_stream_and_the_override(monkeypatch):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert tables.is_terminal(Tty()) and not tables.is_terminal(io.StringIO())
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert not tables.is_terminal(Tty())
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    assert tables.is_terminal(io.StringIO())
