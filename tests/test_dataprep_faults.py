"""Faults of `ra data prepare`, each reproduced: kill -9 and Ctrl-C mid-write (then the same
command with and without --force), a replacement killed between its two renames, leftovers
of killed prepares, an output that is a file, empty / binary / 0-byte sources, file names
that are not UTF-8, and `ra train --data` on a half-written folder. No torch here but in the
one test that trains."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, one_line_error, ra_inprocess

from racli.dataprep import writer as writer_mod
from racli.dataprep.prepare import PrepareSettings, prepare
from racli.dataprep.writer import DatasetWriter, tidy_leftovers
from racli.errors import BadInput


def corpus(folder: Path, files: int = 40, lines: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        body = "".join(f"document {i} line {j}: the quick brown fox\n" for j in range(lines))
        (folder / f"doc{i:03d}.txt").write_text(body)
    return folder


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def prep(src, out, *more):
    return ra_inprocess("data", "prepare", src, "--out", out, "--tokenizer", "bytes", *more)


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------- the swap


def test_a_replacement_killed_between_its_renames_is_put_back(tmp_path):
    """The old --force swap renamed the old dataset away, then the new one in: killed in
    between, nothing was left at --out. The old one now waits aside and comes back."""
    src = corpus(tmp_path / "src")
    out = tmp_path / "data"
    assert prep(src, out).exit_code == 0
    before = folder_state(out)
    aside = tmp_path / f".data.old-{dead_pid()}@{socket.gethostname()}"
    os.replace(out, aside)  # where a kill between the two renames leaves it
    res = prep(src, out, "--seed", 1)  # without --force
    assert "put back the dataset at" in res.stderr
    assert "already holds a prepared dataset; add --force" in res.stderr and res.exit_code == 2
    assert folder_state(out) == before and not aside.exists()
    res = prep(src, out, "--seed", 1, "--force")
    assert res.exit_code == 0 and folder_state(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "src"]


def test_a_failed_second_rename_puts_the_old_dataset_back(tmp_path, monkeypatch):
    src = corpus(tmp_path / "src")
    out = tmp_path / "data"
    assert prep(src, out).exit_code == 0
    before = folder_state(out)
    real = os.replace

    def fail_on_the_new_one(a, b):
        if Path(b) == out and ".tmp-" in Path(a).name:
            raise KeyboardInterrupt  # Ctrl-C right between the renames
        return real(a, b)

    monkeypatch.setattr(writer_mod.os, "replace", fail_on_the_new_one)
    res = prep(src, out, "--seed", 1, "--force")
    assert res.exit_code == 130
    assert res.stderr.strip().splitlines()[-1] == (
        f"ra: interrupted: the dataset already at {out} is kept (the partial output is "
        f"removed); run the same command again to prepare it"
    )
    assert folder_state(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "src"]


def test_leftovers_of_killed_prepares_are_removed_with_a_note(tmp_path):
    out = tmp_path / "data"
    host = socket.gethostname()
    dead = tmp_path / f".data.tmp-{dead_pid()}@{host}-abcd1234"
    legacy = tmp_path / f".data.tmp-{dead_pid()}-efgh5678"  # named by an older ra
    alive = tmp_path / f".data.tmp-{os.getpid()}@{host}-live0000"
    elsewhere = tmp_path / ".data.tmp-123@another-host-xyz00000"
    stale = tmp_path / ".data.tmp-456@another-host-old00000"
    other = tmp_path / f".other.tmp-{dead_pid()}@{host}-zzzz0000"  # another output's
    for d in (dead, legacy, alive, elsewhere, stale, other):
        d.mkdir()
        (d / "train.bin.part").write_bytes(b"\0" * 10)
    old = time.time() - 2 * 24 * 3600
    for p in (stale / "train.bin.part", stale):
        os.utime(p, (old, old))
    notes: list[str] = []
    tidy_leftovers(out, notes.append)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(p.name for p in (alive, elsewhere, other))
    assert len(notes) == 3 and all(
        "the unfinished output of a prepare that was killed" in n for n in notes
    )


def test_a_finished_replacement_leaves_no_old_copy_behind(tmp_path):
    out = tmp_path / "data"
    src = corpus(tmp_path / "src")
    assert prep(src, out).exit_code == 0
    copy = tmp_path / f".data.old-{dead_pid()}@{socket.gethostname()}"
    copy.mkdir()
    (copy / "meta.json").write_text("{}")
    notes: list[str] = []
    tidy_leftovers(out, notes.append)
    assert not copy.exists() and notes == [
        f"note: removed {copy}: the old copy of {out} from a finished replacement"
    ]


# ---------------------------------------------------------------------------- kill -9, Ctrl-C


def _start(src: Path, out: Path, *more: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "racli", "data", "prepare", str(src), "--out", str(out)]
    cmd += ["--tokenizer", "bytes", "--workers", "1", *more]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _writing(parent: Path, name: str, timeout: float = 60.0) -> None:
    """Wait until a prepare of `name` has written tokens into its temporary folder."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for d in parent.glob(f".{name}.tmp-*"):
            part = d / "train.bin.part"
            if part.is_file() and part.stat().st_size > 0:
                return
        time.sleep(0.005)
    raise AssertionError("the prepare never wrote")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A source that takes a few seconds to tokenise (symlinks to one 6 MB file)."""
    folder = tmp_path_factory.mktemp("big")
    one = folder / "one.txt"
    rng = np.random.default_rng(0)
    words = np.array("alpha beta gamma delta epsilon zeta eta theta iota kappa".split())
    with open(one, "w") as fh:
        for i in range(3000):
            fh.write(" ".join(rng.choice(words, 200)) + ("\n\n" if i % 5 == 4 else "\n"))
    src = folder / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}.txt").symlink_to(one)
    return src


@pytest.mark.slow
def test_kill_9_mid_write_then_the_same_command_with_and_without_force(big, tmp_path):
    out = tmp_path / "data"
    small = corpus(tmp_path / "small")
    assert prep(small, out).exit_code == 0
    before = folder_state(out)
    proc = _start(big, out, "--force")
    _writing(tmp_path, "data")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    leftovers = list(tmp_path.glob(".data.tmp-*"))
    assert len(leftovers) == 1 and folder_state(out) == before  # the old dataset untouched
    # the temporary folder is refused as data, with the reason
    err = one_line_error(
        ra_inprocess(
            "train",
            "--db",
            tmp_path / "ra.db",
            "--attn",
            "baseline",
            "--steps",
            1,
            "--data",
            leftovers[0],
        )
    )
    assert "unfinished output of an interrupted `ra data prepare`" in err
    assert not (tmp_path / "ra.db").exists()
    # the same command without --force: refused, the leftover removed
    res = prep(small, out, "--seed", 3)
    assert res.exit_code == 2 and "removed" in res.stderr and "add --force" in res.stderr
    assert not list(tmp_path.glob(".data.*")) and folder_state(out) == before
    # with --force: replaced
    res = prep(small, out, "--seed", 3, "--force", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["seed"] == 3
    assert not list(tmp_path.glob(".data.*"))


@pytest.mark.slow
def test_kill_9_of_a_first_prepare_then_the_same_command(big, tmp_path):
    out = tmp_path / "data"
    proc = _start(big, out)
    _writing(tmp_path, "data")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not out.exists() and len(list(tmp_path.glob(".data.tmp-*"))) == 1
    small = corpus(tmp_path / "small")
    res = prep(small, out)
    assert res.exit_code == 0, res.stderr
    assert "the unfinished output of a prepare that was killed" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "small"]


@pytest.mark.slow
def test_ctrl_c_mid_write_says_so_and_keeps_the_old_dataset(big, tmp_path):
    out = tmp_path / "data"
    assert prep(corpus(tmp_path / "small"), out).exit_code == 0
    before = folder_state(out)
    proc = _start(big, out, "--force")
    _writing(tmp_path, "data")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        f"ra: interrupted: the dataset already at {out} is kept (the partial output is "
        f"removed); run the same command again to prepare it"
    )
    assert folder_state(out) == before and not list(tmp_path.glob(".data.*"))


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "case",
    [
        "output is a file",
        "output below a file",
        "empty file",
        "0-byte file",
        "binary file",
        "folder of unusable files",
    ],
)
def test_bad_sources_and_outputs_exit_2_and_change_nothing(tmp_path, case):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "zero.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\n \t\n")
    (tmp_path / "bin.txt").write_bytes(b"text\x00\x01\x02 more")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_bytes(b"")
    (junk / "b.txt").write_bytes(b"\x00\xff\xfe")
    good = corpus(tmp_path / "good", files=3)
    src, out, reason = {
        "output is a file": (good, tmp_path / "afile", "exists and is not a folder"),
        "output below a file": (good, tmp_path / "afile" / "d", "is not a folder"),
        "empty file": (tmp_path / "blank.txt", tmp_path / "o", "file holds only white space"),
        "0-byte file": (tmp_path / "zero.txt", tmp_path / "o", "file is empty"),
        "binary file": (tmp_path / "bin.txt", tmp_path / "o", "binary file"),
        "folder of unusable files": (junk, tmp_path / "o", "hold no text"),
    }[case]
    before = folder_state(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    err = one_line_error(prep(src, out))
    assert reason in err
    assert folder_state(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == names


def _outputs_that_cannot_be_written(tmp_path: Path) -> dict:
    (tmp_path / "afile").write_text("x")
    cases = {"below a file, deeper": tmp_path / "afile" / "a" / "b" / "out"}
    if Path("/proc/self").is_dir():
        cases["in /proc"] = Path("/proc/ra-out")
    if os.geteuid() != 0:  # root writes in read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        cases["in a read-only folder"] = locked / "out"
    return cases


def test_an_output_that_cannot_be_written_is_refused_before_tokenising(tmp_path, monkeypatch):
    from racli.dataprep import prepare as prepare_mod

    def no_tokenising(*args, **kw):
        pytest.fail("tokenising started for an output that cannot be written")

    monkeypatch.setattr(prepare_mod, "_tokenizer", no_tokenising)
    src = corpus(tmp_path / "src", files=3)
    for case, out in _outputs_that_cannot_be_written(tmp_path).items():
        before = folder_state(tmp_path)
        names = sorted(p.name for p in tmp_path.rglob("*"))
        settings = PrepareSettings(sources=[str(src)], out=out, tokenizer="bytes", workers=1)
        with pytest.raises(BadInput, match="is not a folder|cannot be written"):
            prepare(settings)
        assert folder_state(tmp_path) == before, case
        assert sorted(p.name for p in tmp_path.rglob("*")) == names, case


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_an_output_in_proc_is_one_line(tmp_path):
    src = corpus(tmp_path / "src", files=3)
    err = one_line_error(prep(src, "/proc/ra-out"))
    assert "--out /proc/ra-out: cannot be written" in err


def test_the_writable_check_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    writer_mod.check_writable(out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_file_names_that_are_not_utf8(tmp_path):
    """Files and an output folder named with bytes that are not UTF-8: prepared, listed,
    summarised and trained on, never a traceback."""
    root = os.fsencode(tmp_path)
    src = root + b"/caf\xe9"
    os.mkdir(src)
    for i in range(30):
        with open(src + b"/doc\xff%02d.txt" % i, "w") as fh:
            fh.write("".join(f"line {j} of document {i}\n" for j in range(60)))
    with open(src + b"/bin\xfe.txt", "wb") as fh:
        fh.write(b"\x00\x01binary")
    out = root + b"/out\xe9"
    # stdout as a UTF-8 locale has it (strict): the summary once failed on these names
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8:strict"}
    cmd = [sys.executable.encode(), b"-m", b"racli", b"data", b"prepare", src, b"--out", out]
    proc = subprocess.run(
        [*cmd, b"--tokenizer", b"bytes", b"--workers", b"1"], env=env, capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr and b"skipped        1 files" in proc.stdout
    assert b"prepared " + os.fsencode(tmp_path) + b"/out\\xe9\n" in proc.stdout
    meta = json.loads(open(out + b"/meta.json", "rb").read())
    assert meta["skipped"]["files"] == 1 and meta["documents"]["val"] > 0
    # trained on, named as a command line gives it (bytes that are not UTF-8 as surrogates)
    db = tmp_path / "ra.db"
    tiny = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32"]
    res = ra_inprocess(
        "train",
        "--db",
        db,
        "--data",
        os.fsdecode(out),
        "--attn",
        "baseline",
        "--steps",
        2,
        "--device",
        "cpu",
        "--no-compile",
        *[a for t in tiny for a in ("--set", t)],
        "--set",
        "train.batch_size=2",
    )
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr


def test_train_on_a_folder_killed_before_its_token_files_were_named(tmp_path):
    """meta.json comes before the token files get their names: a folder killed in between
    still holds a .part file, which `ra train` refuses (it once took train.bin and val.bin
    without meta.json for a nanoGPT folder)."""
    w = DatasetWriter(tmp_path / "out", np.uint16)
    w.add("train", np.arange(500, dtype=np.uint16) % 256, 1)
    w.add("val", np.arange(500, dtype=np.uint16) % 256, 1)
    for f in w._files.values():
        f.close()
    (w.tmp / "meta.json").write_text("{}")
    os.replace(w.tmp / "train.bin.part", w.tmp / "train.bin")  # killed before val.bin
    db = tmp_path / "ra.db"
    err = one_line_error(
        ra_inprocess("train", "--db", db, "--attn", "baseline", "--steps", 1, "--data", w.tmp)
    )
    assert "holds val.bin.part: the unfinished output of an interrupted" in err
    assert not db.exists()
    w.abort()


def test_prepare_keeps_its_settings_record(tmp_path):
    """The writer's order does not change what is published."""
    out = tmp_path / "data"
    meta = prepare(
        PrepareSettings([str(corpus(tmp_path / "s"))], out, tokenizer="bytes", workers=1)
    )
    assert json.loads((out / "meta.json").read_text()) == meta
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
