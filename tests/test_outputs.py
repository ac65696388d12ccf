"""Files the user names for ra to write (`--plot`, `--report`, `runs export --output`,
`runs export --tensorboard`) and the read commands' other edges: one rule for every output
(racli.text.outputs), checked before any work; the store, its side files and the config file
never written over, by any name; nothing made before a refusal. Fast: no torch, no training."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import db_dump, make_db, one_line_error, ra_inprocess

from racli.errors import BadInput
from racli.text.outputs import (
    atomic_write,
    check_not_input,
    check_output_file,
    check_plot_path,
    same_file,
)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda d: "", "give a file name"),
        (lambda d: "   ", "give a file name"),
        (lambda d: d / "missing" / "x.png", "folder"),
        (lambda d: (d / "f.txt").write_text("x") and d / "f.txt" / "x.png", "is not a folder"),
        (lambda d: (d / "sub").mkdir() or d / "sub", "it is a folder"),
        (lambda d: os.symlink(d / "nowhere", d / "l.png") or d / "l.png", "link to nothing"),
        (lambda d: os.mkfifo(d / "p.png") or d / "p.png", "not a regular file"),
        (lambda d: d / ("x" * 300 + ".png"), "longer than"),
    ],
)
def test_an_output_that_cannot_be_a_file_is_one_line(tmp_path, make, why):
    path = make(tmp_path)
    before = listing(tmp_path)
    with pytest.raises(BadInput, match=why):
        check_output_file(path, "plot")
    assert listing(tmp_path) == before  # no probe left, nothing made


def check_once_read(fifo) -> None:
    """check_output_file(fifo) as a report, retried until the reader thread has opened it."""
    for _ in range(500):
        try:
            check_output_file(fifo, "report", special_ok=True)
            return
        except BadInput:
            threading.Event().wait(0.01)
    pytest.fail("a pipe with a reader was refused")


def test_a_pipe_nothing_reads_is_refused_at_once_even_where_streams_are_allowed(tmp_path):
    """A report may go to a pipe that something reads; one with no reader would wait for
    ever at the write: refused (the check itself does not wait)."""
    fifo = tmp_path / "report.md"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="pipe that nothing reads"):
        check_output_file(fifo, "report", special_ok=True)
    got = []

    def read():  # as `while true; do cat fifo; done` would: the check's own close ends a read
        deadline = time.monotonic() + 10
        while not b"".join(got) and time.monotonic() < deadline:
            got.append(Path(fifo).read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        check_once_read(fifo)
        with atomic_write(fifo) as fh:
            fh.write("# report\n")
    finally:
        reader.join(15)
    assert b"".join(got) == b"# report\n"


def test_a_pipe_read_once_gets_what_is_written_after_the_check(tmp_path):
    """`cat fifo` reads until the last writer closes: the check keeps its write end open
    until the write, so a reader that opens once receives the whole report."""
    fifo = tmp_path / "report.md"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(Path(fifo).read_bytes()))
    reader.start()
    try:
        check_once_read(fifo)
        check_output_file(fifo, "report", special_ok=True)  # a second check: no second end
        time.sleep(0.2)
        assert reader.is_alive(), "the check ended the reader"
        with atomic_write(fifo) as fh:
            fh.write("# report\n")
    finally:
        reader.join(15)
    assert got == [b"# report\n"]


def test_devices_are_streams_only_where_the_caller_says_so():
    assert check_output_file("/dev/null", "report", special_ok=True) == Path("/dev/null")
    with pytest.raises(BadInput, match="not a regular file"):
        check_output_file("/dev/null", "output")


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    out = tmp_path / "runs.csv"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_write(out) as fh:
        fh.write("half")
        raise RuntimeError("stopped")
    assert out.read_text() == "old\n" and listing(tmp_path) == ["runs.csv"]
    with atomic_write(out) as fh:
        fh.write("new\n")
    assert out.read_text() == "new\n" and listing(tmp_path) == ["runs.csv"]


def test_atomic_write_never_writes_through_a_hard_link(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"recorded")
    link = tmp_path / "plot.png"
    os.link(data, link)
    with atomic_write(link, "wb") as fh:
        fh.write(b"png")
    assert data.read_bytes() == b"recorded" and link.read_bytes() == b"png"


def test_an_input_is_recognised_by_any_name(tmp_path):
    store = tmp_path / "ra.db"
    store.write_bytes(b"x")
    os.link(store, tmp_path / "hard.png")
    os.symlink(store, tmp_path / "soft.png")
    for name in ("hard.png", "soft.png", "./ra.db"):
        assert same_file(tmp_path / name, store)
        with pytest.raises(BadInput, match="is the results database"):
            check_not_input(tmp_path / name, "--plot", [(store, "the results database")])
    assert not same_file(tmp_path / "new.png", store)


def test_check_plot_path(tmp_path):
    assert check_plot_path(None) is None
    assert check_plot_path(tmp_path / "a.png") == tmp_path / "a.png"
    with pytest.raises(BadInput, match="does not exist"):
        check_plot_path(tmp_path / "no" / "a.png")
    with pytest.raises(BadInput, match="it is a folder"):
        check_plot_path(tmp_path)
    from racli.text import plots  # the plotting functions keep their ValueError

    with pytest.raises(ValueError, match="it is a folder"):
        plots.check_path(tmp_path)


# ---------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "--plot", "{out}.png"],
        ["gates", "--run", "3", "--plot", "{out}.png"],
        ["runs", "export", "--output", "{out}.csv"],
    ],
)
@pytest.mark.parametrize("kind", ["hard link to the store", "config file"])
def test_an_output_that_is_an_input_by_another_name_is_refused(tmp_path, args, kind):
    """A hard link to the store given as the output used to replace the store with a plot."""
    db = tmp_path / "ra.db"
    make_db(db)
    before = db_dump(db)
    cfg = tmp_path / "my.yaml"
    cfg.write_text("db: ra.db\n")
    out = tmp_path / "out"
    suffix = Path(args[-1]).suffix
    target = Path(f"{out}{suffix}")
    if kind == "hard link to the store":
        os.link(db, target)
    else:
        os.rename(cfg, target)
        cfg = target
    argv = [a.format(out=out) for a in args] + ["--db", db, "--config", cfg]
    err = one_line_error(ra_inprocess(*argv))
    assert ("is the results database" if "store" in kind else "is the config file") in err
    assert db_dump(db) == before
    if kind == "config file":
        assert cfg.read_text() == "db: ra.db\n"


def test_export_refuses_a_device_or_a_dangling_link(tmp_path):
    db = tmp_path / "ra.db"
    make_db(db)
    os.symlink(tmp_path / "gone.csv", tmp_path / "dangle.csv")
    for out in (tmp_path / "dangle.csv", Path("/dev/null")):
        err = one_line_error(ra_inprocess("runs", "export", "-o", out, "--db", db))
        assert "link to nothing" in err or "not a regular file" in err
    assert os.path.islink(tmp_path / "dangle.csv")


def test_export_writes_and_says_so_with_the_name_made_visible(tmp_path):
    db = tmp_path / "ra.db"
    make_db(db)
    out = tmp_path / "a\x1bb.csv"
    res = ra_inprocess("runs", "export", "-o", out, "--db", db)
    assert res.exit_code == 0, res.stderr
    assert "\x1b" not in res.stderr and "wrote" in res.stderr
    assert out.read_text().startswith("id,")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ra-")]


def test_tensorboard_export_of_nothing_makes_no_folder(tmp_path):
    pytest.importorskip("tensorboard")
    db = tmp_path / "ra.db"
    make_db(db)
    res = ra_inprocess(
        "runs", "export", "--tensorboard", tmp_path / "tb", "--tag", "nope", "--db", db
    )
    assert res.exit_code == 0 and "nothing written" in res.stderr
    assert not (tmp_path / "tb").exists()
    err = one_line_error(ra_inprocess("runs", "export", "--tensorboard", "", "--db", db))
    assert "give a folder" in err


def test_tensorboard_export_onto_a_file_is_refused_before_writing(tmp_path):
    pytest.importorskip("tensorboard")
    db = tmp_path / "ra.db"
    ids = make_db(db)
    tb = tmp_path / "tb"
    tb.mkdir()
    (tb / f"run_{ids[2]}_ra_v5").write_text("not a folder")
    err = one_line_error(
        ra_inprocess("runs", "export", "--tensorboard", tb, str(ids[1]), str(ids[2]), "--db", db)
    )
    assert "is a file, not a folder" in err
    assert listing(tb) == [f"run_{ids[2]}_ra_v5"]


@pytest.mark.parametrize(
    "args, why",
    [
        (["gates", "--runs", "1-99999999999"], "at most 100,000 run ids"),
        (["gates", "--run", "0", "--runs", "3,4"], "give one of"),
        (["gates", "--tag", "", "--run", "3"], "give one of"),
        (["gates", "--runs", " "], "--runs is empty"),
        (["runs", "--limit", "9223372036854775808"], "less than or equal"),
        (["compare", "--since", "0001-01-01T00:00:00+01:00"], "outside the years"),
        (["compare", "--since", "9999-12-31T23:59:59-01:00"], "outside the years"),
    ],
)
def test_read_command_edges_are_one_line(tmp_path, args, why):
    db = tmp_path / "ra.db"
    make_db(db)
    res = ra_inprocess(*args, "--db", db)
    if "--limit" in args:  # refused by the option parser: exit 2, its own wording
        assert res.exit_code == 2 and why in res.stderr
        return
    assert why in one_line_error(res)


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "--tag", ""],
        ["runs", "--attn", " "],
        ["runs", "--kind", ""],
        ["runs", "--sort", ""],
        ["runs", "export", "--metrics", "--name", ""],
        ["runs", "export", "--tag", ""],
        ["compare", "--tag", ""],
        ["compare", "--since", " "],
    ],
)
def test_an_empty_filter_is_refused_not_read_as_no_filter(tmp_path, args):
    db = tmp_path / "ra.db"
    make_db(db)
    assert "is empty: give a value or leave the option out" in one_line_error(
        ra_inprocess(*args, "--db", db)
    )


def test_filters_read_as_english_in_a_refusal(tmp_path):
    db = tmp_path / "ra.db"
    make_db(db)
    err = one_line_error(ra_inprocess("compare", "--since", "3000-01-01", "--db", db))
    assert "of 'ra_v5' started since 3000-01-01 00:00" in err
    err = one_line_error(ra_inprocess("compare", "--tag", "x", "--since", "3000-01-01", "--db", db))
    assert "with tag 'x' and started since" in err


def test_diff_only_differences_in_json_keeps_the_differing_rows(tmp_path):
    db = tmp_path / "ra.db"
    ids = make_db(db)
    whole = json.loads(ra_inprocess("runs", "diff", ids[1], ids[2], "--json", "--db", db).stdout)
    res = ra_inprocess("runs", "diff", ids[1], ids[2], "--json", "--only-differences", "--db", db)
    only = json.loads(res.stdout)
    rows = [r for s in only["sections"] for r in s["rows"]]
    assert rows and all(r["differs"] for r in rows)
    assert len(rows) == whole["differences"] < sum(len(s["rows"]) for s in whole["sections"])


def test_tsv_of_no_runs_is_the_header_alone(tmp_path):
    db = tmp_path / "ra.db"
    make_db(db)
    res = ra_inprocess("runs", "--tsv", "--tag", "nope", "--db", db)
    assert res.exit_code == 0
    assert res.stdout.splitlines()[0].startswith("id\tkind\t") and len(res.stdout.splitlines()) == 1
    assert "no runs recorded match the filters" in res.stderr


def test_help_shows_the_tensorboard_extra():
    for cmd in (["train"], ["experiment"], ["runs", "export"]):
        res = ra_inprocess(*cmd, "--help")
        assert "ra[tb]" in " ".join(res.stdout.split()), cmd


def test_seeds_needed_of_a_vanishing_threshold_is_past_the_cap():
    from racli.compare.stats import SEEDS_NEEDED_CAP, seeds_needed

    assert seeds_needed(0.01, 1e-200) == SEEDS_NEEDED_CAP + 1
    assert seeds_needed(1e300, 1e-300, paired=True) == SEEDS_NEEDED_CAP + 1


# ---------------------------------------------------------------------------- delete, exclude


def test_delete_refuses_before_deleting_when_a_checkpoint_cannot_be_removed(tmp_path, monkeypatch):
    """The checkpoint folder is not writable: nothing deleted (it used to delete the runs and
    then fail on the file)."""
    from racli.store import manage
    from racli.store.checkpoints import checkpoint_path

    db = tmp_path / "ra.db"
    ids = make_db(db)
    ckpt = checkpoint_path(str(db), ids[3])
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"weights")
    before = db_dump(db)
    real = os.access
    monkeypatch.setattr(
        manage.os, "access", lambda p, mode: False if Path(p) == ckpt.parent else real(p, mode)
    )
    err = one_line_error(ra_inprocess("runs", "delete", ids[3], "--yes", "--db", db))
    assert "not writable" in err and "nothing deleted" in err
    assert db_dump(db) == before and ckpt.exists()


def test_delete_says_which_checkpoint_stayed_when_its_removal_fails(tmp_path, monkeypatch):
    from racli.store.checkpoints import checkpoint_path

    db = tmp_path / "ra.db"
    ids = make_db(db)
    ckpt = checkpoint_path(str(db), ids[3])
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"weights")
    real = Path.unlink

    def unlink(self, *a, **kw):
        if self == ckpt:
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "unlink", unlink)
    res = ra_inprocess("runs", "delete", ids[3], "--yes", "--db", db)
    assert res.exit_code == 1
    assert "deleted" in res.stdout.lower()  # the summary of what was done
    assert f"could not remove checkpoint {ckpt} (Permission denied)" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "reason, why", [("bad\udcffbyte", "not valid UTF-8"), ("x" * 1001, "at most 1000")]
)
def test_exclude_reason_the_store_cannot_hold_is_one_line(tmp_path, reason, why):
    db = tmp_path / "ra.db"
    ids = make_db(db)
    before = db_dump(db)
    assert why in one_line_error(
        ra_inprocess("runs", "exclude", ids[1], "--reason", reason, "--db", db)
    )
    assert db_dump(db) == before


def test_a_pipe_whose_reader_left_is_refused_at_the_write_not_waited_on(tmp_path, monkeypatch):
    from racli.text import outputs

    monkeypatch.setattr(outputs, "PIPE_WAIT_S", 0.2)
    fifo = tmp_path / "report.md"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(BadInput, match="pipe that nothing reads"):
        with atomic_write(fifo) as fh:
            fh.write("never\n")
    assert time.monotonic() - t0 < 5
