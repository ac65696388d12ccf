"""Faults of `ra train`, each reproduced: a run killed before its first checkpoint, a run
resumed past its checkpoint, a batch that cannot fit, a tag that is not UTF-8, token ids
outside the vocabulary, interrupts that must say so, a child whose `ra experiment` died.

A tiny model on the built-in corpus (CPU); the tests that start processes are `slow`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, db_dump, one_line_error, ra_inprocess, set_heartbeat_minutes_ago

from racli import training
from racli.config import load_config, packaged_config_path
from racli.store import checkpoints as ckpt_paths
from racli.store.engine import open_store
from racli.training import checkpoint as ckpt
from racli.training import trainer as trainer_mod
from racli.training.datasets import load_dataset

BLOCK = 32
TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    f"model.block_size={BLOCK}",
    "train.batch_size=4",
    "train.eval_batches=2",
    "train.final_eval_batches=2",
    "train.log_interval=2",
    "train.warmup_frac=0.0",
]
TINY_CLI = [a for item in TINY for a in ("--set", item)]


@pytest.fixture(scope="module")
def cfg():
    return load_config(packaged_config_path())


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(None, val_fraction=0.1, block_size=BLOCK)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "ra.db"


def spec(cfg, steps=12, seed=3, eval_interval=1000, extra=()):
    return training.spec_from_config(
        cfg,
        attn="ra_v5",
        steps=steps,
        seed=seed,
        device="cpu",
        compile=False,
        overrides=[*TINY, f"train.eval_interval={eval_interval}", *extra],
    )


def rows(db: Path, run_id: int, table: str = "metrics") -> list[tuple]:
    """The keys of a run's rows: (step, name), and layer and head for gate values."""
    cols = "step, name" if table == "metrics" else "step, name, layer, head"
    with sqlite3.connect(db) as conn:
        return conn.execute(
            f"SELECT {cols} FROM {table} WHERE run_id=? ORDER BY {cols}", (run_id,)
        ).fetchall()


def run_row(db: Path, run_id: int) -> tuple:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT status, iterations, val_loss, error FROM runs WHERE id=?", (run_id,)
        ).fetchone()


class Notes:
    """A reporter that keeps its notes."""

    def __init__(self):
        self.lines: list[str] = []

    def start(self, **kw):
        pass

    def update(self, **kw):
        pass

    def note(self, text):
        self.lines.append(text)

    def close(self):
        pass


def stop_at(step: int):
    """An on_step hook that stops the run at once (a second Ctrl-C) after `step`."""

    def hook(info):
        if info.step == step:
            raise KeyboardInterrupt

    return hook


def train_once(cfg, dataset, db, **kw):
    """One run in store `db` (closed after); returns its TrainResult or the run id when it
    was stopped at once."""
    store = open_store(str(db))
    hook = kw.pop("on_step", None)
    try:
        return training.train(
            spec(cfg, **kw), store, dataset=dataset, on_step=hook, flush_interval=0.05
        )
    finally:
        store.close()


# ---------------------------------------------------------------------------- checkpoints


def test_first_checkpoint_comes_at_the_first_evaluation(cfg, dataset, db):
    """train.checkpoint_minutes is 5: the first checkpoint does not wait for it."""
    seen = {}

    def look(info):
        path = ckpt_paths.checkpoint_path(str(db), 1)
        seen[info.step] = ckpt.load(path).step if path.is_file() else None

    train_once(cfg, dataset, db, steps=10, eval_interval=4, on_step=look)
    assert seen[4] is None and seen[5] == 4  # written right after the evaluation at step 4
    assert seen[9] == 4  # then by time (every 5 minutes): none before the end
    assert ckpt.load(ckpt_paths.checkpoint_path(str(db), 1)).step == 10


@pytest.mark.slow
def test_first_checkpoint_comes_within_its_time_without_an_evaluation(
    cfg, dataset, db, monkeypatch
):
    monkeypatch.setattr(trainer_mod, "FIRST_CHECKPOINT_S", 0.0)  # "within the first minute"
    seen = {}

    def look(info):
        path = ckpt_paths.checkpoint_path(str(db), 1)
        seen[info.step] = ckpt.load(path).step if path.is_file() else None

    train_once(cfg, dataset, db, steps=10, eval_interval=1000, on_step=look)
    assert seen[2] is None and seen[3] == 2  # at the first log point past the time
    assert seen[9] == 2  # the next ones every train.checkpoint_minutes


@pytest.mark.slow
def test_resume_without_a_checkpoint_trains_again_from_step_0(cfg, dataset, tmp_path):
    """Stopped at once before its first checkpoint: `ra train --resume` used to refuse it.
    Now it trains again from step 0 under its own id, its earlier rows dropped, and ends
    exactly where an uninterrupted run ends."""
    ref = train_once(cfg, dataset, tmp_path / "ref.db")
    db = tmp_path / "ra.db"
    with pytest.raises(KeyboardInterrupt):
        train_once(cfg, dataset, db, on_step=stop_at(5))
    assert run_row(db, 1)[:2] == ("interrupted", 5)
    assert not ckpt_paths.checkpoint_path(str(db), 1).exists()
    assert ("train_loss", 4) in {(n, s) for s, n in rows(db, 1)}

    res = ra_inprocess("train", "--db", db, "--resume", 1)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    assert "has no checkpoint (it stopped before its first one): training it again" in res.stderr
    status, iters, val, error = run_row(db, 1)
    assert (status, iters, error) == ("finished", 12, None)
    assert val == ref.val_loss  # bit for bit: the same run, trained once
    for table in ("metrics", "gate_values"):
        got = rows(db, 1, table)
        assert len(got) == len(set(got)), f"{table} rows recorded twice"
    assert {r for r in rows(db, 1) if r[1] != "compile_s"} == {
        r for r in rows(tmp_path / "ref.db", 1) if r[1] != "compile_s"
    }
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)


@pytest.mark.slow
def test_resume_drops_the_rows_recorded_past_the_checkpoint(cfg, dataset, tmp_path):
    ref = train_once(cfg, dataset, tmp_path / "ref.db", eval_interval=4)
    db = tmp_path / "ra.db"
    with pytest.raises(KeyboardInterrupt):
        train_once(cfg, dataset, db, eval_interval=4, on_step=stop_at(7))
    assert ckpt.load(ckpt_paths.checkpoint_path(str(db), 1)).step == 4
    assert max(s for s, _ in rows(db, 1)) >= 6  # logged past the checkpoint
    store = open_store(str(db))
    try:
        result = training.resume(store, 1)
    finally:
        store.close()
    assert result.status == "finished" and result.iterations == 12
    got = rows(db, 1)
    assert len(got) == len(set(got)), "metric rows past the checkpoint recorded twice"
    assert result.val_loss == pytest.approx(ref.val_loss, rel=1e-6)


def test_resume_without_a_checkpoint_refuses_changed_data(cfg, tmp_path):
    text = tmp_path / "data.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    data = load_dataset(str(text), val_fraction=0.1, block_size=BLOCK)
    db = tmp_path / "ra.db"
    store = open_store(str(db))
    s = spec(load_config(packaged_config_path()))
    s.data = str(text)
    with pytest.raises(KeyboardInterrupt):
        training.train(s, store, dataset=data, on_step=stop_at(3))
    store.close()
    text.write_text("the quick brown fox jumps over the lazy cat\n" * 400)  # same size
    before = db_dump(db)
    err = one_line_error(ra_inprocess("train", "--db", db, "--resume", 1))
    assert "changed since run 1 started (its content differs)" in err
    assert db_dump(db) == before


@pytest.mark.slow
def test_kill_9_before_the_first_checkpoint_then_resume(tmp_path):
    """The fault as a user meets it: `kill -9` while young, then `--resume` (once the
    heartbeat is stale): one run, finished, no row twice."""
    db = tmp_path / "ra.db"
    cmd = [sys.executable, "-m", "racli", "train", "--db", str(db), "--attn", "baseline"]
    cmd += ["--steps", "300", "--seed", "1", "--device", "cpu", "--no-compile", *TINY_CLI]
    cmd += ["--set", "train.eval_interval=1000"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("step "):  # the first log point: training has begun
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "ra train ended early"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not ckpt_paths.checkpoint_path(str(db), 1).exists()
    store = open_store(str(db))
    set_heartbeat_minutes_ago(store, 1, 3)  # as two minutes later
    store.close()
    res = ra_inprocess("train", "--db", db, "--resume", 1)
    assert res.exit_code == 0, res.stderr
    assert "training it again from step 0" in res.stderr
    assert run_row(db, 1)[:2] == ("finished", 300)
    got = rows(db, 1)
    assert len(got) == len(set(got))


# ---------------------------------------------------------------------------- bad input


def test_a_batch_that_cannot_fit_is_bad_input_before_anything_is_recorded(tmp_path):
    db = tmp_path / "ra.db"
    base = ["--db", db, "--device", "cpu", "--no-compile", *TINY_CLI]
    err = one_line_error(
        ra_inprocess("train", *base, "--attn", "baseline", "--steps", 2, "--batch-size", 10**8)
    )
    assert "train.batch_size 100000000 cannot fit" in err and "GiB" in err
    assert not db.exists()
    err = one_line_error(
        ra_inprocess(
            "experiment",
            *base,
            "--attn",
            "baseline,ra_v5",
            "--seeds",
            "1-2",
            "--minutes",
            1,
            "--set",
            "train.batch_size=100000000",
        )
    )
    assert "cannot fit" in err
    assert not db.exists()  # refused before the store is opened


def test_an_allocation_failure_on_the_first_step_is_bad_input(tmp_path, monkeypatch):
    """A batch under the bound may still fail to allocate: exit 2 with one line (not 1 with
    torch's message), the run recorded failed with the reason."""

    def no_memory(self):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")

    monkeypatch.setattr(trainer_mod.Trainer, "_train_step", no_memory)
    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "train", "--db", db, "--attn", "baseline", "--steps", 2, "--device", "cpu", *TINY_CLI
    )
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    err = res.stderr.strip().splitlines()[-1]  # after the progress line
    assert err.startswith("ra: error: train.batch_size 4 does not fit in memory on cpu")
    assert "lower --batch-size" in err
    status, _, _, error = run_row(db, 1)
    assert status == "failed" and "does not fit in memory" in error


def test_a_tag_that_is_not_utf8_is_bad_input(tmp_path):
    db = tmp_path / "ra.db"
    tag = "run-\udcff"  # what Python makes of the byte 0xff in a command line
    err = one_line_error(
        ra_inprocess("train", "--db", db, "--attn", "baseline", "--steps", 2, "--tag", tag)
    )
    assert "--tag is not valid UTF-8 text (byte 0xff at character 5)" in err
    assert not db.exists()
    args = ["--attn", "baseline,ra_v5", "--seeds", "1-2", "--minutes", 1, "--tag", tag]
    err = one_line_error(ra_inprocess("experiment", "--db", db, *args))
    assert "--tag is not valid UTF-8" in err and not db.exists()


def test_token_ids_above_the_vocabulary_of_a_prepared_folder_are_bad_input(tmp_path):
    from racli.dataprep.prepare import PrepareSettings, prepare

    src = tmp_path / "text.txt"
    src.write_text("".join(f"line {i} of the corpus\n\n" for i in range(4000)))
    out = tmp_path / "data"
    prepare(PrepareSettings([str(src)], out, tokenizer="bytes", workers=1, doc_chars=2000))
    db = tmp_path / "ra.db"
    args = ["train", "--db", db, "--attn", "baseline", "--steps", 1, "--data", out, *TINY_CLI]
    # a token file altered after it was prepared (same size: meta.json's counts still hold)
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r+")
    train[10] = 300
    train.flush()
    del train
    err = one_line_error(ra_inprocess(*args))
    assert "train.bin: token id 300 is outside the vocabulary: vocab_size is 256" in err
    assert not db.exists()
    # a meta.json whose vocabulary is smaller than its tokens
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r+")
    train[10] = ord("l")
    train.flush()
    del train
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "vocab_size": 100}))
    err = one_line_error(ra_inprocess(*args))
    assert "is outside the vocabulary: vocab_size is 100 (meta.json)" in err
    assert not db.exists()


# ---------------------------------------------------------------------------- interrupts


def test_ctrl_c_before_the_run_is_recorded_says_so(tmp_path, monkeypatch):
    from racli.training import launch

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "load_data", interrupted)
    res = ra_inprocess("train", "--db", tmp_path / "ra.db", "--attn", "baseline", "--steps", 2)
    assert res.exit_code == 130
    assert res.stderr.strip() == (
        "ra: interrupted: stopped before the run was recorded: nothing to continue"
    )


def test_a_second_ctrl_c_says_how_to_continue(tmp_path, monkeypatch):
    real = trainer_mod.Trainer._train_step

    def step(self):
        lr = real(self)
        if self.step == 3:
            raise KeyboardInterrupt  # what the second signal raises
        return lr

    monkeypatch.setattr(trainer_mod.Trainer, "_train_step", step)
    db = tmp_path / "ra.db"
    res = ra_inprocess(
        "train", "--db", db, "--attn", "baseline", "--steps", 8, "--device", "cpu", *TINY_CLI
    )
    assert res.exit_code == 130, res.stderr
    assert "run 1 stopped at once at step 3" in res.stderr
    assert "continue it with `ra train --resume 1`" in res.stderr
    assert run_row(db, 1)[0] == "interrupted"


@pytest.mark.slow
def test_a_child_whose_experiment_died_stops_cleanly(tmp_path):
    """`ra experiment` killed outright cannot pass a Ctrl-C on: its children notice that it is
    gone and stop as on a first Ctrl-C (final evaluation, checkpoint, interrupted)."""
    db = tmp_path / "ra.db"
    cmd = [sys.executable, "-m", "racli", "train", "--db", str(db), "--attn", "baseline"]
    cmd += ["--steps", "100000", "--device", "cpu", "--no-compile", *TINY_CLI]
    # a parent that is not this child's: as after its parent died
    env = {**os.environ, "PYTHONPATH": str(REPO), "RA_PARENT_PID": str(os.getpid() + 1)}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert "the ra experiment process is gone: stopping the run" in proc.stderr
    assert time.monotonic() - t0 < 60
    status, iters, val, _ = run_row(db, 1)
    assert status == "interrupted" and 0 < iters < 100000 and val is not None
    assert ckpt.load(ckpt_paths.checkpoint_path(str(db), 1)).step == iters


def test_memory_bound_counts_logits_unless_the_loss_is_fused():
    from racli.training.memory import step_bytes
    from racli_models import GPTConfig

    plain = GPTConfig(vocab_size=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024)
    fused = GPTConfig(
        vocab_size=50304, n_layer=12, n_head=12, n_embd=768, block_size=1024, fused_loss=True
    )
    kw = {"micro": 32, "batch_size": 32, "eval_batches": 20, "cuda": True}
    logits = 4 * 32 * 1024 * 50304
    assert step_bytes(plain, **kw) - step_bytes(fused, **kw) == logits
    # GPT-2 at batch 32 fits an 80 GB card by this bound (it does train there)
    assert step_bytes(plain, **kw) < 80e9
