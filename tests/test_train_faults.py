"""`ra train` and its store under faults (issues #27 and #30): a resume after a stop past
the last checkpoint, data and batches that cannot work, and (slow tier) full disks under
the store, the checkpoints, an export and `ra db upgrade` (a small tmpfs). Processes and a
PostgreSQL server that goes away: test_fault_processes.py."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import db_state, make_db, one_line_error, ra_inprocess, set_heartbeat_minutes_ago
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from racli.config import load_config, packaged_config_path
from racli.store.engine import open_store
from racli.store.recorder import RunRecorder, StoreUnavailable

TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_interval=4",
    "train.eval_batches=1",
    "train.final_eval_batches=1",
    "train.log_interval=1",
]
TINY_CLI = [a for o in TINY for a in ("--set", o)]


def _spec(steps: int, *extra: str):
    from racli.training import spec_from_config

    return spec_from_config(
        load_config(packaged_config_path()),
        attn="ra_v5",
        steps=steps,
        seed=1,
        device="cpu",
        compile=False,
        overrides=[*TINY, *extra],
    )


def _q(store, sql, **kw):
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), kw)]


def _steps(store, run_id, name="train_loss"):
    return [
        s
        for (s,) in _q(
            store, f"SELECT step FROM metrics WHERE run_id={run_id} AND name='{name}' ORDER BY step"
        )
    ]


# ---- #30.2: a resume after a stop past the last checkpoint ---------------------------------


def test_a_resume_after_a_stop_past_the_checkpoint_logs_each_step_once(tmp_path):
    from racli.training import load_data, resume, train

    store = open_store(str(tmp_path / "ra.db"))
    spec = _spec(12)
    stop = threading.Event()
    first = train(
        spec,
        store,
        dataset=load_data(spec),
        stop=stop,
        on_step=lambda i: stop.set() if i.step == 4 else None,
    )
    assert first.status == "interrupted"  # with its checkpoint at step 4

    def killed(info):  # stopped at once past the checkpoint: rows of steps 5-8 recorded
        if info.step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resume(store, first.run_id, on_step=killed, flush_interval=0.05)
    assert _steps(store, first.run_id)[-1] == 8
    done = resume(store, first.run_id)
    assert done.status == "finished" and done.iterations == 12
    assert _steps(store, first.run_id) == list(range(1, 13))
    assert _steps(store, first.run_id, "val_loss") == [4, 8, 12]
    store.close()


# ---- #30.12: data and batches that cannot work ----------------------------------------------


def _prepared(folder: Path, train_ids: np.ndarray, val_ids: np.ndarray, vocab: int) -> Path:
    folder.mkdir()
    train_ids.astype(np.uint16).tofile(folder / "train.bin")
    val_ids.astype(np.uint16).tofile(folder / "val.bin")
    meta = {
        "dtype": "uint16",
        "vocab_size": vocab,
        "tokens": {"train": int(train_ids.size), "val": int(val_ids.size)},
        "content_hash": "0" * 64,
        "tokenizer": {"name": "bytes"},
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("where", ["val", "train"])
def test_token_ids_outside_the_vocabulary_are_one_line(tmp_path, where):
    rng = np.random.default_rng(0)
    train_ids, val_ids = rng.integers(0, 256, 20_000), rng.integers(0, 256, 2_000)
    (val_ids if where == "val" else train_ids)[::50] = 300
    data = _prepared(tmp_path / "data", train_ids, val_ids, vocab=256)
    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "train",
        "--db",
        db,
        "--attn",
        "baseline",
        "--steps",
        20,
        "--data",
        data,
        "--device",
        "cpu",
        *TINY_CLI,
    )
    err = one_line_error(res)
    assert f"{where}.bin: token id 300 is outside the vocabulary" in err
    assert "vocab_size is 256 (meta.json)" in err
    assert not db.exists() and not (tmp_path / "ra_checkpoints").exists()


def test_a_batch_that_cannot_fit_is_refused_before_anything_is_made(tmp_path):
    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "train",
        "--db",
        db,
        "--attn",
        "baseline",
        "--steps",
        2,
        "--batch-size",
        10**9,
        "--device",
        "cpu",
        *TINY_CLI,
    )
    err = one_line_error(res)
    assert "train.batch_size 1000000000 cannot fit" in err and "GiB" in err
    assert list(tmp_path.iterdir()) == []


# ---- #27.4, #30.5, #30.12: full disks (slow: a tmpfs) ----------------------------------------------


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 20, 65536, 4096, 1):
            try:
                while fh.write(b"\0" * size):
                    pass
            except OSError:
                pass
    return filler


class _Failures:
    """Counts the recorder's writes that failed (the fault really happened)."""

    def __init__(self, monkeypatch):
        self.errors: list[str] = []
        real = RunRecorder._write

        def counted(rec, *args):
            try:
                return real(rec, *args)
            except OperationalError as exc:
                self.errors.append(str(exc.orig))
                raise

        monkeypatch.setattr(RunRecorder, "_write", counted)


@pytest.mark.slow
def test_a_full_disk_under_the_store_for_a_while_loses_nothing(tmp_path, tmpfs, monkeypatch):
    from racli.training import load_data, train

    disk = tmpfs(tmp_path / "disk", "6m")
    store = open_store(str(disk / "ra.db"))
    failures = _Failures(monkeypatch)
    filler = []

    def on_step(info):
        if info.step == 3:
            filler.append(_fill(disk))
        if 3 <= info.step <= 8:
            time.sleep(0.15)  # the writer meets the full disk meanwhile
        if info.step == 9:
            filler.pop().unlink()

    spec = _spec(14, "train.checkpoint_minutes=0.0001")
    r = train(spec, store, dataset=load_data(spec), on_step=on_step, flush_interval=0.05)
    assert any("full" in e for e in failures.errors), failures.errors
    assert r.status == "finished" and r.iterations == 14
    assert _steps(store, r.run_id) == list(range(1, 15))
    assert _steps(store, r.run_id, "val_loss") == [4, 8, 12, 14]
    ((status, error),) = _q(store, "SELECT status, error FROM runs")
    assert (status, error) == ("finished", None)  # the checkpoint written again cleared its note
    store.close()


@pytest.mark.slow
def test_a_store_full_past_the_limit_stops_the_run_and_it_resumes_later(tmp_path, tmpfs):
    from racli.training import load_data, train

    disk = tmpfs(tmp_path / "disk", "6m")
    db = str(disk / "ra.db")
    store = open_store(db)
    store.wait_s = 0.5
    filler = []

    def on_step(info):
        if info.step == 3:
            filler.append(_fill(disk))
        if info.step >= 3:
            time.sleep(0.05)

    spec = _spec(20, "train.checkpoint_minutes=0.0001")
    with pytest.raises(StoreUnavailable, match="could not be written for 0 s.*full") as e:
        train(spec, store, dataset=load_data(spec), on_step=on_step, flush_interval=0.05)
    assert "\n" not in str(e.value)
    store.close()
    filler.pop().unlink()
    store = open_store(db)
    ((run_id, status),) = _q(store, "SELECT id, status FROM runs")
    assert status == "running"  # nothing could be written; shown as crashed once stale
    set_heartbeat_minutes_ago(store, run_id, 10)
    store.close()
    res = ra_inprocess("train", "--db", db, "--resume", run_id)
    assert res.exit_code == 0, res.output
    store = open_store(db)
    assert _q(store, "SELECT status, iterations FROM runs") == [("finished", 20)]
    assert _steps(store, run_id) == list(range(1, 21))
    store.close()


@pytest.mark.slow
def test_full_checkpoint_disk_is_noted_and_training_goes_on(tmp_path, tmpfs):
    from racli.training import load_data, train

    disk = tmpfs(tmp_path / "ra_checkpoints", "2m")  # the store's checkpoint folder
    store = open_store(str(tmp_path / "ra.db"))
    filler = []
    spec = _spec(8, "train.checkpoint_minutes=0.0001")
    r = train(
        spec,
        store,
        dataset=load_data(spec),
        on_step=lambda i: i.step == 4 and filler.append(_fill(disk)),
    )
    assert r.status == "finished" and r.iterations == 8
    ((status, error),) = _q(store, "SELECT status, error FROM runs")
    assert status == "finished" and "checkpoint out of date (it holds step" in error
    assert "No space left on device" in error
    assert not list(disk.glob("*/*.tmp"))  # no half-written checkpoint left
    store.close()
    # a full checkpoint disk at the start: one line, nothing recorded
    res = ra_inprocess(
        "train",
        "--db",
        tmp_path / "other.db",
        "--attn",
        "baseline",
        "--steps",
        2,
        "--device",
        "cpu",
        *TINY_CLI,
    )
    assert "cannot write checkpoints" in one_line_error(res)
    assert not (tmp_path / "other.db").exists()


@pytest.mark.slow
def test_db_upgrade_on_a_full_disk_leaves_no_empty_store_and_an_old_one_as_it_was(tmp_path, tmpfs):
    from racli.store import migrate as store_migrate

    disk = tmpfs(tmp_path / "disk", "1m")
    old = disk / "old.db"
    make_db(old, [("train", "baseline", "finished", 1, None)])
    s = open_store(str(old), migrate=False)
    store_migrate.downgrade(s.engine, "0005")
    s.close()
    before = db_state(old)
    _fill(disk)
    err = one_line_error(ra_inprocess("db", "upgrade", "--db", disk / "new.db"))
    assert "full" in err and not (disk / "new.db").exists()
    err = one_line_error(ra_inprocess("db", "upgrade", "--db", old))
    assert "full" in err
    assert db_state(old) == before


@pytest.mark.slow
def test_an_export_on_a_full_disk_keeps_the_previous_file(tmp_path, tmpfs):
    db = tmp_path / "ra.db"
    make_db(db)
    disk = tmpfs(tmp_path / "disk", "1m")
    out = disk / "curves.csv"
    out.write_text("the previous export\n")
    _fill(disk)
    for extra in ((), ("--metrics",)):
        err = one_line_error(ra_inprocess("runs", "export", *extra, "-o", out, "--db", db))
        assert "No space left on device" in err and "unchanged" in err
        assert out.read_text() == "the previous export\n"
    assert sorted(p.name for p in disk.iterdir()) == ["curves.csv", "filler"]
    assert os.access(out, os.R_OK)
