"""Tests for `ra train` (racli.training: spec, trainer, run, schedule, checkpoint; the command), on CPU.

A tiny model (2 layers, 64 wide, block 64) trains for a few dozen steps on the
built-in corpus; everything runs eagerly except one compile test.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, record_run
from typer.testing import CliRunner

from racli import training
from racli.cli import app
from racli.config import load_config, packaged_config_path
from racli.errors import BadInput
from racli.store import checkpoints as ckpt_paths
from racli.store.engine import open_store
from racli.training import checkpoint as ckpt
from racli.training.datasets import load_dataset
from racli.training.progress import EPOCH_WARNING, summary_text
from racli.training.schedule import lr_at, step_progress, time_progress

BLOCK = 64
TINY = [
    "model.n_layer=2",
    "model.n_head=4",
    "model.n_embd=64",
    f"model.block_size={BLOCK}",
    "train.batch_size=16",
    "train.lr=0.003",
    "train.warmup_frac=0.1",
    "train.eval_interval=20",
    "train.eval_batches=4",
    "train.final_eval_batches=8",
    "train.log_interval=5",
]
TINY_CLI = [a for item in TINY for a in ("--set", item)]


@pytest.fixture(scope="module")
def cfg():
    return load_config(packaged_config_path())


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(None, val_fraction=0.1, block_size=BLOCK)


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "ra.db"))
    yield s
    s.close()


def make_spec(cfg, attn="ra_v5", steps=40, seed=0, extra=(), minutes=None):
    return training.spec_from_config(
        cfg,
        attn=attn,
        steps=None if minutes else steps,
        minutes=minutes,
        seed=seed,
        device="cpu",
        compile=False,
        overrides=TINY + list(extra),
    )


def q(store, sql, *args):
    with sqlite3.connect(store.db) as conn:
        return conn.execute(sql, args).fetchall()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------------------- schedule


def test_schedule_warmup_then_cosine_to_floor():
    lr, warm, floor = 1.0, 0.1, 0.1
    assert lr_at(0.0, lr, warm, floor) == 0.0
    assert lr_at(0.05, lr, warm, floor) == pytest.approx(0.5)
    assert lr_at(0.1, lr, warm, floor) == pytest.approx(1.0)
    assert lr_at(0.55, lr, warm, floor) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_at(1.0, lr, warm, floor) == pytest.approx(0.1)
    assert lr_at(7.0, lr, warm, floor) == pytest.approx(0.1)  # clamped past the budget
    assert lr_at(-1.0, lr, warm, floor) == 0.0
    ramp = [lr_at(p / 100, lr, warm, floor) for p in range(11)]
    decay = [lr_at(p / 100, lr, warm, floor) for p in range(10, 101)]
    assert ramp == sorted(ramp) and decay == sorted(decay, reverse=True)
    assert lr_at(0.0, 2.0, 0.0, 0.5) == 2.0  # no warm-up: starts at the peak
    with pytest.raises(ValueError):
        lr_at(0.5, 1.0, 1.0, 0.1)


def test_schedule_progress_of_budgets():
    assert step_progress(0, 10) == pytest.approx(0.1)
    assert step_progress(9, 10) == 1.0 and step_progress(50, 10) == 1.0
    assert time_progress(30.0, 60.0) == 0.5 and time_progress(90.0, 60.0) == 1.0


# ---------------------------------------------------------------------------- training


@pytest.mark.slow
def test_trains_records_metrics_gates_and_checkpoint(cfg, dataset, store):
    spec = make_spec(cfg, steps=60, extra=["train.checkpoint_minutes=0.0001"])
    r = training.train(spec, store, dataset=dataset)
    assert r.status == "finished" and r.iterations == 60
    # next-token prediction learns: far below the uniform loss ln(256) = 5.545
    assert r.val_loss < 3.5 < math.log(256)
    assert r.train_loss < 3.6
    tokens = 60 * 16 * BLOCK
    (row,) = q(
        store,
        "SELECT kind, attn, status, iterations, tokens, epochs, train_seconds, "
        "val_loss, tokens_per_s, config_hash, seed, git_commit, env_id "
        "FROM runs WHERE id=?",
        r.run_id,
    )
    kind, attn, status, iters, tok, epochs, secs, val, tps, chash, seed, _commit, env = row
    assert (kind, attn, status, iters, tok, seed) == ("train", "ra_v5", "finished", 60, tokens, 0)
    assert epochs == pytest.approx(tokens / dataset.train_tokens)
    assert secs > 0 and val == pytest.approx(r.val_loss) and tps > 0 and chash and env
    # tokens/s is over the timed steps only (the warm-up step is not charged)
    assert tps == pytest.approx(59 * 16 * BLOCK / secs)

    metrics = dict(
        q(store, "SELECT name, COUNT(*) FROM metrics WHERE run_id=? GROUP BY name", r.run_id)
    )
    assert metrics["train_loss"] == metrics["lr"] == 12  # every 5 steps
    assert metrics["tokens_per_s"] >= 11  # the first interval holds the warm-up step
    assert metrics["val_loss"] == 3  # steps 20, 40 and the final evaluation at 60
    assert metrics["compile_s"] == 1 and metrics["record_overhead"] == 1
    assert metrics["setup_s"] == 1  # the Trainer made until its first step
    (setup,) = q(store, "SELECT value FROM metrics WHERE run_id=? AND name='setup_s'", r.run_id)
    assert 0 < setup[0] == pytest.approx(r.setup_s)
    assert metrics["checkpoint_s"] >= 1
    steps = [
        s
        for (s,) in q(
            store,
            "SELECT step FROM metrics WHERE run_id=? AND name='val_loss' ORDER BY step",
            r.run_id,
        )
    ]
    assert steps == [20, 40, 60]
    (overhead,) = q(
        store, "SELECT value FROM metrics WHERE run_id=? AND name='record_overhead'", r.run_id
    )[0]
    # the writer thread's time over the training time, as the result gives it; its size is
    # a GPU figure (docs/results.md): on a busy two-core machine the thread waits its turn
    # for a core and the GIL during ~1 s of tiny steps, which says nothing of ra's cost
    assert overhead == pytest.approx(r.record_overhead) and overhead > 0
    lrs = [
        v
        for (v,) in q(
            store, "SELECT value FROM metrics WHERE run_id=? AND name='lr' ORDER BY step", r.run_id
        )
    ]
    assert max(lrs) <= 0.003 + 1e-12 and lrs[-1] == pytest.approx(0.0003)  # cosine to 10%

    # gates: w_std and w_rec of every layer and head, at 0 (init), each evaluation and the end
    gates = q(
        store,
        "SELECT step, COUNT(*), COUNT(DISTINCT layer), COUNT(DISTINCT head), "
        "GROUP_CONCAT(DISTINCT name) FROM gate_values WHERE run_id=? "
        "AND name IN ('w_std', 'w_rec') GROUP BY step "
        "ORDER BY step",
        r.run_id,
    )
    assert [g[0] for g in gates] == [0, 20, 40, 60]
    for _, n, layers, heads, names in gates:
        assert (n, layers, heads) == (2 * 2 * 4, 2, 4)
        assert set(names.split(",")) == {"w_std", "w_rec"}
    init = dict(
        q(
            store,
            "SELECT name, AVG(value) FROM gate_values WHERE run_id=? AND step=0 "
            "AND name IN ('w_std', 'w_rec') GROUP BY name",
            r.run_id,
        )
    )
    assert init == {"w_std": pytest.approx(1.0), "w_rec": pytest.approx(0.1)}
    moved = q(
        store,
        "SELECT COUNT(*) FROM gate_values a JOIN gate_values b ON a.run_id=b.run_id "
        "AND a.layer=b.layer AND a.head=b.head AND a.name=b.name WHERE a.run_id=? "
        "AND a.step=0 AND b.step=60 AND a.value != b.value",
        r.run_id,
    )[0][0]
    assert moved > 0  # the gates learn

    # the checkpoint beside the database, loadable without unpickling code
    path = Path(r.checkpoint)
    assert path == Path(store.db).parent / "ra_checkpoints" / "ra.db" / f"run_{r.run_id}.pt"
    state = ckpt.load(path)
    assert state.step == 60 and state.tokens == tokens and state.run_id == r.run_id
    assert set(state.to_dict()) >= {
        "model",
        "optimizer",
        "sampler",
        "rng",
        "config",
        "train_seconds",
    }
    assert state.config["budget"] == {"steps": 60}
    assert not list(path.parent.glob("*.tmp"))

    text = summary_text(r)
    for needle in (
        "Iterations completed",
        "Training loss",
        "Validation loss",
        "Throughput (it/s)",
        "Throughput (tokens/s)",
        "Epochs",
        "Run id",
    ):
        assert needle in text
    assert "WARNING" not in text
    assert "(set-up " in text and "compile warm-up" in text and "not charged" in text


@pytest.mark.slow
def test_same_seed_same_batches_for_two_variants(cfg, dataset, store):
    seen: dict[tuple[str, int], list] = {}

    def recorder(key):
        return lambda info: seen.setdefault(key, []).append((info.x.clone(), info.y.clone()))

    results = {}
    for attn, seed in (("baseline", 7), ("ra_v5", 7), ("ra_v5", 8)):
        results[attn, seed] = training.train(
            make_spec(cfg, attn=attn, steps=4, seed=seed),
            store,
            dataset=dataset,
            on_step=recorder((attn, seed)),
        )
    a, b, c = seen["baseline", 7], seen["ra_v5", 7], seen["ra_v5", 8]
    assert len(a) == len(b) == 4
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    assert all(torch.equal(x[:, 1:], y[:, :-1]) for x, y in a)  # next-token targets
    # the two variants are comparable: one config hash (attn/seed/tag aside)
    hashes = dict(q(store, "SELECT id, config_hash FROM runs"))
    assert (
        hashes[results["baseline", 7].run_id]
        == hashes[results["ra_v5", 7].run_id]
        == hashes[results["ra_v5", 8].run_id]
    )


@pytest.mark.slow
def test_interrupt_then_resume_continues_exactly(cfg, dataset, store):
    straight_batches, resumed_batches = [], []
    straight = training.train(
        make_spec(cfg, steps=20, seed=3),
        store,
        dataset=dataset,
        on_step=lambda i: straight_batches.append(i.x.clone()),
    )
    stop = threading.Event()

    def stop_at_10(info):
        resumed_batches.append(info.x.clone())
        if info.step == 10:
            stop.set()  # what SIGINT/SIGTERM do

    first = training.train(
        make_spec(cfg, steps=20, seed=3), store, dataset=dataset, stop=stop, on_step=stop_at_10
    )
    assert first.status == "interrupted" and first.iterations == 10
    assert first.val_loss is not None and first.checkpoint
    (status, iters, val) = q(
        store, "SELECT status, iterations, val_loss FROM runs WHERE id=?", first.run_id
    )[0]
    assert (status, iters) == ("interrupted", 10) and val == pytest.approx(first.val_loss)
    assert (
        q(store, "SELECT COUNT(*) FROM metrics WHERE run_id=? AND name='train_loss'", first.run_id)[
            0
        ][0]
        == 2
    )

    second = training.resume(
        store, first.run_id, on_step=lambda i: resumed_batches.append(i.x.clone())
    )
    assert second.run_id == first.run_id and second.status == "finished"
    assert second.iterations == 20 and second.tokens == straight.tokens
    assert all(torch.equal(a, b) for a, b in zip(straight_batches, resumed_batches))
    assert len(resumed_batches) == 20
    assert second.val_loss == pytest.approx(straight.val_loss, abs=1e-5)
    assert second.train_loss == pytest.approx(straight.train_loss, abs=1e-5)
    steps = [
        s
        for (s,) in q(
            store,
            "SELECT step FROM metrics WHERE run_id=? AND name='train_loss' ORDER BY step",
            first.run_id,
        )
    ]
    assert steps == [5, 10, 15, 20]
    (status, iters) = q(store, "SELECT status, iterations FROM runs WHERE id=?", first.run_id)[0]
    assert (status, iters) == ("finished", 20)
    with pytest.raises(BadInput, match="finished"):
        training.resume(store, first.run_id)


@pytest.mark.slow
def test_cli_resumes_an_interrupted_run(cfg, dataset, store):
    stop = threading.Event()
    first = training.train(
        make_spec(cfg, steps=10, seed=2),
        store,
        dataset=dataset,
        stop=stop,
        on_step=lambda i: stop.set() if i.step == 4 else None,
    )
    assert first.status == "interrupted"
    res = invoke("train", "--db", store.db, "--resume", first.run_id)
    assert res.exit_code == 0, res.stderr
    assert f"(run {first.run_id})" in res.stdout and "finished" in res.stdout
    (status, iters, n_runs) = q(
        store,
        "SELECT status, iterations, (SELECT COUNT(*) FROM runs) FROM runs WHERE id=?",
        first.run_id,
    )[0]
    assert (status, iters, n_runs) == ("finished", 10, 1)


@pytest.mark.slow
def test_minutes_budget_excludes_warmup_and_evaluation(cfg, dataset, store):
    spec = make_spec(cfg, minutes=0.02, extra=["train.eval_interval=10"])  # 1.2 s
    r = training.train(spec, store, dataset=dataset)
    assert r.status == "finished"
    assert 1.2 <= r.train_seconds < 3.0
    assert r.compile_s > 0 and r.eval_s > 0
    assert r.tokens_per_s == pytest.approx((r.iterations - 1) * 16 * BLOCK / r.train_seconds)
    (budget,) = q(
        store, "SELECT json_extract(config, '$.budget.minutes') FROM runs WHERE id=?", r.run_id
    )[0]
    assert budget == 0.02


def test_nan_loss_diverges(cfg, dataset, store):
    def poison(info):
        if info.step == 3:
            with torch.no_grad():
                info.model.lm_head.weight.fill_(float("nan"))

    r = training.train(make_spec(cfg, steps=40), store, dataset=dataset, on_step=poison)
    assert r.status == "diverged" and r.iterations == 5  # caught at the first log point
    assert "nan" in r.error and r.val_loss is None and r.checkpoint is None
    (status, error, val, iters) = q(
        store, "SELECT status, error, val_loss, iterations FROM runs WHERE id=?", r.run_id
    )[0]
    assert status == "diverged" and "nan" in error and val is None and iters == 5
    assert q(store, "SELECT COUNT(*) FROM gate_values WHERE run_id=? AND step=0", r.run_id)[0][0]


def test_exception_marks_run_failed(cfg, dataset, store):
    def boom(info):
        if info.step == 2:
            raise RuntimeError("simulated failure")

    with pytest.raises(RuntimeError):
        training.train(make_spec(cfg, steps=10), store, dataset=dataset, on_step=boom)
    (status, error, iters) = q(store, "SELECT status, error, iterations FROM runs")[0]
    assert status == "failed" and "simulated failure" in error and iters == 2


# ---------------------------------------------------------------------------- the command


@pytest.mark.slow
def test_cli_trains_on_a_small_file_and_warns_past_one_epoch(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 400)  # 18 kB
    db = tmp_path / "ra.db"
    res = invoke(
        "train",
        "--db",
        db,
        "--attn",
        "baseline",
        "--steps",
        20,
        "--data",
        text,
        "--device",
        "cpu",
        "--no-compile",
        "--tag",
        "t1",
        "--seed",
        5,
        *TINY_CLI,
    )
    assert res.exit_code == 0, res.stderr
    assert "Training summary: baseline" in res.stdout and "Validation loss" in res.stdout
    assert "WARNING" in res.stdout and EPOCH_WARNING in res.stdout
    assert EPOCH_WARNING in res.stderr  # also in the progress output
    with sqlite3.connect(db) as conn:
        (status, tag, seed, epochs, name, dev) = conn.execute(
            "SELECT status, tag, seed, epochs, json_extract(config, '$.data.name'), "
            "json_extract(config, '$.device') FROM runs"
        ).fetchone()
    assert (status, tag, seed, name, dev) == ("finished", "t1", 5, "small.txt", "cpu")
    assert epochs > 1


@pytest.mark.slow
def test_cli_lr_1e30_diverges_with_exit_1(tmp_path):
    db = tmp_path / "ra.db"
    res = invoke(
        "train",
        "--db",
        db,
        "--attn",
        "ra_v5",
        "--steps",
        30,
        "--lr",
        "1e30",
        "--device",
        "cpu",
        "--no-compile",
        *TINY_CLI,
    )
    assert res.exit_code == 1
    assert "diverged" in res.stderr
    with sqlite3.connect(db) as conn:
        (status, lr) = conn.execute(
            "SELECT status, json_extract(config, '$.train.lr') FROM runs"
        ).fetchone()
    assert status == "diverged" and lr == 1e30


def _db_snapshot(db: Path):
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        return (
            conn.execute("SELECT id, status, iterations FROM runs ORDER BY id").fetchall(),
            conn.execute("SELECT COUNT(*) FROM metrics").fetchone(),
        )


@pytest.fixture(scope="module")
def seeded_db(tmp_path_factory):
    """A database with a bench run (1), a train run without checkpoint (2), a finished one (3)."""
    db = tmp_path_factory.mktemp("bad") / "ra.db"
    s = open_store(str(db))
    record_run(s, kind="bench")
    record_run(s, status="interrupted", config={"attn": "ra_v5"})
    record_run(s, status="finished")
    s.close()
    return db


BAD_FRESH = {
    "unknown attention": (["--attn", "nope", "--steps", "5"], "unknown attention 'nope'"),
    "no attention": (["--steps", "5"], "--attn is required"),
    "unknown preset": (
        ["--attn", "ra_v5", "--steps", "5", "--model", "huge"],
        "--model: unknown preset 'huge'",
    ),
    "missing data": (
        ["--attn", "ra_v5", "--steps", "5", "--data", "/no/such/file.txt"],
        "no such file",
    ),
    "both budgets": (["--attn", "ra_v5", "--steps", "5", "--minutes", "1"], "not both"),
    "no budget": (["--attn", "ra_v5"], "give a budget"),
    "zero steps": (["--attn", "ra_v5", "--steps", "0"], "--steps must be a positive"),
    "negative minutes": (["--attn", "ra_v5", "--minutes", "-1"], "--minutes must be a positive"),
    "bad --set key": (["--attn", "ra_v5", "--steps", "5", "--set", "train.nope=1"], "unknown key"),
    "bad --set value": (
        ["--attn", "ra_v5", "--steps", "5", "--set", "model.ra_rank=abc"],
        "must be an integer",
    ),
    "bad --set rank": (
        ["--attn", "ra_v5", "--steps", "5", "--set", "model.ra_rank=500"],
        "ra_rank",
    ),
    "bad batch size": (
        ["--attn", "ra_v5", "--steps", "5", "--batch-size", "0"],
        "error: --batch-size: must be >= 1, got 0",
    ),
    "bad lr": (["--attn", "ra_v5", "--steps", "5", "--lr", "-1"], "error: --lr: must be > 0"),
    "bad lr by --set": (
        ["--attn", "ra_v5", "--steps", "5", "--set", "train.lr=-1"],
        "error: --set: train.lr: must be > 0",
    ),
    "bad max epochs": (
        ["--attn", "ra_v5", "--steps", "5", "--max-epochs", "0"],
        "error: --max-epochs: must be > 0",
    ),
    "unknown device": (["--attn", "ra_v5", "--steps", "5", "--device", "tpu"], "unknown device"),
    "vocab too small": (
        ["--attn", "ra_v5", "--steps", "5", "--set", "model.vocab_size=100"],
        "smaller than the data's vocabulary",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_FRESH))
def test_cli_bad_input_exits_2_and_creates_no_database(tmp_path, case):
    args, message = BAD_FRESH[case]
    db = tmp_path / "ra.db"
    res = invoke("train", "--db", db, *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not db.exists() and not (tmp_path / "ra_checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cli_cuda_without_cuda_exits_2(tmp_path):
    db = tmp_path / "ra.db"
    res = invoke("train", "--db", db, "--attn", "ra_v5", "--steps", 5, "--device", "cuda")
    assert res.exit_code == 2 and "CUDA is not available" in res.stderr
    assert not db.exists()


BAD_RESUME = {
    "unknown run": (["--resume", "999"], "no run with id 999"),
    "bench run": (["--resume", "1"], "not a train run"),
    "no checkpoint": (["--resume", "2"], "has no checkpoint"),
    "finished run": (["--resume", "3"], "finished"),
    "conflicting flags": (
        ["--resume", "2", "--attn", "baseline", "--steps", "5"],
        "drop --attn, --steps",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RESUME))
def test_cli_bad_resume_exits_2_and_leaves_database_unchanged(seeded_db, case):
    args, message = BAD_RESUME[case]
    before = _db_snapshot(seeded_db)
    res = invoke("train", "--db", seeded_db, *args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _db_snapshot(seeded_db) == before


def test_cli_resume_of_missing_database_exits_2(tmp_path):
    res = invoke("train", "--db", tmp_path / "none.db", "--resume", "1")
    assert res.exit_code == 2 and "no database" in res.stderr
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_sigint_leaves_an_interrupted_run_with_metrics_and_checkpoint(tmp_path):
    db = tmp_path / "ra.db"
    cmd = [
        sys.executable,
        "-m",
        "racli",
        "train",
        "--db",
        str(db),
        "--attn",
        "ra_v5",
        "--steps",
        "100000",
        "--device",
        "cpu",
        "--no-compile",
        *TINY_CLI,
        "--set",
        "train.eval_interval=10",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    stepping = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("step "):
                stepping.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert stepping.wait(60), "".join(lines)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        out = proc.stdout.read()  # the summary: small, fits the pipe
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert proc.returncode == 130, "".join(lines)
    assert "Training summary" in out and "interrupted" in out
    assert any("--resume 1" in line for line in lines)
    with sqlite3.connect(db) as conn:
        status, iters, val = conn.execute(
            "SELECT status, iterations, val_loss FROM runs"
        ).fetchone()
        n_loss = conn.execute("SELECT COUNT(*) FROM metrics WHERE name='train_loss'").fetchone()[0]
    assert status == "interrupted" and 0 < iters < 100000 and val is not None and n_loss >= 1
    state = ckpt.load(tmp_path / "ra_checkpoints" / "ra.db" / "run_1.pt")
    assert state.step == iters


def test_console_reporter_bar_and_plain_lines():
    import io

    from racli.training.progress import ConsoleReporter

    buf = io.StringIO()
    bar = ConsoleReporter(stream=buf, bar=True)
    bar.start(run_id=3, attn="ra_v5", total=100, unit="steps")
    bar.update(step=10, done=10, loss=2.5, tokens_per_s=12345.0, left_s=30.0)
    bar.note("step 10: val_loss 2.6")
    bar.close()
    out = buf.getvalue()
    assert "ra_v5 run 3" in out and "2.5000" in out and "12,345" in out and "val_loss 2.6" in out

    buf = io.StringIO()
    plain = ConsoleReporter(stream=buf, bar=False, every_s=3600)
    plain.start(run_id=4, attn="baseline", total=90.0, unit="seconds")
    plain.update(step=10, done=5.0, loss=3.0, tokens_per_s=None, left_s=85.0)
    plain.update(step=20, done=10.0, loss=2.9, tokens_per_s=None, left_s=80.0)  # throttled
    lines = buf.getvalue().splitlines()
    assert lines == [
        "training baseline run 4: 1m30s of training",
        "step 10  loss 3.0000  - tok/s  1m25s left",
    ]
    plain.note("checkpoint at /tmp/a\x1b[2Jb\nc [bold]x[/bold]")  # a path from the user
    last = buf.getvalue().splitlines()[-1]
    assert "\x1b" not in buf.getvalue() and "[bold]x[/bold]" in last


def test_train_command_module_does_not_import_torch():
    code = (
        "import sys, racli.cli, racli.commands.train, racli.training.spec; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert out.stdout.strip() == "False", out.stderr


def compiled_cpu_spec(cfg, attn: str, steps: int, seed: int = 0):
    """A tiny compiled run on the CPU: a few steps, one batch for the final evaluation."""
    return training.spec_from_config(
        cfg,
        attn=attn,
        steps=steps,
        seed=seed,
        device="cpu",
        compile=True,
        overrides=TINY + ["train.log_interval=1", "train.final_eval_batches=1"],
    )


@pytest.mark.slow
def test_compile_on_cpu(cfg, dataset, store):
    """The one compile test: a few steps through torch.compile (slow on CPU)."""
    spec = compiled_cpu_spec(cfg, "ra_v5", steps=3)
    t0 = time.perf_counter()
    r = training.train(spec, store, dataset=dataset)
    assert r.status == "finished" and r.iterations == 3 and math.isfinite(r.val_loss)
    (compiled,) = q(
        store, "SELECT json_extract(config, '$.compile') FROM runs WHERE id=?", r.run_id
    )[0]
    assert compiled == 1
    # compilation happens in the warm-up step, which the budget does not pay for
    assert r.compile_s > r.train_seconds
    assert time.perf_counter() - t0 < 300


@pytest.mark.slow
def test_runs_one_after_another_in_one_process_each_compile(cfg, dataset, store):
    """Runs trained in one process (`ra experiment` on the CPU) each compile: dynamo's graphs
    of earlier runs do not count against its recompile limit, past which a run recorded as
    compiled would run eager."""
    from torch._dynamo.utils import counters

    graphs = []
    with torch._dynamo.config.patch(recompile_limit=2):  # the suite runs with a higher one
        for seed in (0, 1):
            spec = compiled_cpu_spec(cfg, "baseline", steps=2, seed=seed)
            before = counters["stats"]["unique_graphs"]
            r = training.train(spec, store, dataset=dataset)
            assert r.status == "finished"
            graphs.append(counters["stats"]["unique_graphs"] - before)
    assert graphs[0] >= 1 and graphs[1] == graphs[0], graphs


def test_a_compiled_step_past_the_recompile_limit_fails_the_run(cfg, dataset, store):
    """Past dynamo's recompile limit a compiled step would run eager: the run fails, with
    one line that says why, rather than finish recorded as compiled."""
    from torch._dynamo.utils import counters

    from racli_models.compiler import RecompileLimitHit

    spec = compiled_cpu_spec(cfg, "baseline", steps=2)
    before = counters["stats"]["unique_graphs"]
    with (
        torch._dynamo.config.patch(recompile_limit=0),  # the first compilation is past it
        pytest.raises(RecompileLimitHit, match="recompile limit"),
    ):
        training.train(spec, store, dataset=dataset)
    assert counters["stats"]["unique_graphs"] == before  # nothing was compiled
    (status, error, compiled) = q(
        store, "SELECT status, error, json_extract(config, '$.compile') FROM runs"
    )[0]
    assert status == "failed" and compiled == 1
    assert "compiled model reached dynamo's recompile limit (0" in error
    assert "\n" not in error


# ---------------------------------------------------------------------------- the recorded config

# run_config of a known spec, as the dict-based builder recorded it (compact JSON, the `data`
# section and `data_path` aside: data.py owns them). The recorded config and its config_hash must not change
# with how the settings travel; a field added on purpose changes this text.
KNOWN_CONFIG = (
    '{"attn": "ra_v5", "seed": 3, "tag": "x", "preset": "tiny", "model": {"vocab_size": 256, '
    '"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "dropout": 0.0, "ra_rank": 4, '
    '"bias": false, "w_std_init": 1.0, "w_rec_init": 0.1}, "train": {"batch_size": 16, '
    '"lr": 0.003, "min_lr_ratio": 0.1, "warmup_frac": 0.05, "weight_decay": 0.1, "beta1": 0.9, '
    '"beta2": 0.95, "grad_clip": 1.0, "gate_lr_mult": 1.0, "eval_interval": 100, '
    '"eval_batches": 20, "final_eval_batches": 100, "log_interval": 10, '
    '"checkpoint_minutes": 5.0, "val_fraction": 0.1, "sdpa_backend": "math", "max_epochs": null}, '
    '"budget": {"steps": 7}, "device": "cpu", "compile": false, "autocast": null, '
    '"world_size": 2, "global_batch_size": 32, "tokens_per_step": 2048, '
    '"pairing": {"init": "seed+name", "batches": "seed"}}'
)


def test_run_config_is_byte_identical_and_survives_resume(dataset):
    import json

    from racli.config import config_from_dict
    from racli.store.recorder import config_hash

    cfg = config_from_dict(
        {
            "models": {"tiny": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64}},
            "train": {
                "batch_size": 16,
                "lr": 0.003,
                "min_lr_ratio": 0.1,
                "warmup_frac": 0.05,
                "weight_decay": 0.1,
                "beta1": 0.9,
                "beta2": 0.95,
                "grad_clip": 1.0,
                "gate_lr_mult": 1.0,
                "eval_interval": 100,
                "eval_batches": 20,
                "final_eval_batches": 100,
                "log_interval": 10,
                "checkpoint_minutes": 5.0,
                "val_fraction": 0.1,
                "compile": "auto",
                "sdpa_backend": "math",
            },
        },
        "test",
        defaults=load_config(packaged_config_path()).to_dict(),
    )
    spec = training.spec_from_config(
        cfg, attn="ra_v5", steps=7, seed=3, tag="x", device="cpu", compile=False
    )
    config = training.run_config(spec, dataset, 2)
    assert config["data"] == training.data_identity(dataset)
    assert config["data_path"] == "builtin:shakespeare"  # where it was read: not in the hash
    assert config_hash(config) == config_hash({**config, "data_path": "/elsewhere"})
    known = {k: v for k, v in config.items() if k not in ("data", "data_path")}
    assert json.dumps(known) == KNOWN_CONFIG
    # a resumed run's spec (typed settings rebuilt from the record) records the same config
    again = training.run_config(training.spec_from_run_config(config), dataset, 2)
    assert json.dumps(again) == json.dumps(config)
    assert config_hash(again) == config_hash(config)
    assert spec.train.sdpa_backend == "math" and spec.train.compile == "off"


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_state_both_ways_and_format_1_dicts_load(tmp_path):
    state = ckpt.CheckpointState(
        run_id=4,
        config={"budget": {"steps": 9}},
        model={"w": torch.ones(2)},
        optimizer={"state": {}, "param_groups": []},
        sampler={"pos": 3},
        rng=ckpt.rng_state(),
        data_path="builtin:x",
        step=5,
        tokens=50,
        timed_tokens=40,
        timed_steps=4,
        train_seconds=1.5,
        compile_s=0.5,
        eval_s=0.25,
        checkpoint_s=0.125,
        train_loss=2.0,
        epoch_warned=True,
    )
    assert ckpt.CheckpointState.from_dict(state.to_dict()) == state
    path = tmp_path / "run_4.pt"
    ckpt.save(path, state)
    back = ckpt.load(path)
    assert back.step == 5 and back.run_id == 4 and back.train_loss == 2.0 and back.epoch_warned
    assert torch.equal(back.model["w"], torch.ones(2)) and not list(tmp_path.glob("*.tmp"))
    # a format-1 checkpoint as written key by key (no data_path, train_loss, epoch_warned)
    old = {
        "version": 1,
        "run_id": 2,
        "config": {},
        "model": {},
        "optimizer": {},
        "sampler": {},
        "step": 3,
        "tokens": 30,
        "timed_tokens": 20,
        "timed_steps": 2,
        "train_seconds": 1,
        "compile_s": 0,
        "eval_s": 0,
        "checkpoint_s": 0,
        "rng": ckpt.rng_state(),
    }
    torch.save(old, tmp_path / "old.pt")
    back = ckpt.load(tmp_path / "old.pt")
    assert (
        back.run_id,
        back.step,
        back.train_seconds,
        back.data_path,
        back.train_loss,
        back.epoch_warned,
    ) == (2, 3, 1.0, None, None, False)
    torch.save({**old, "version": 7}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="version 7"):
        ckpt.load(tmp_path / "new.pt")


def test_checkpoint_folder_is_keyed_to_the_store(tmp_path, monkeypatch):
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    assert ckpt_paths.checkpoint_path(a, 1) == tmp_path / "ra_checkpoints" / "a.db" / "run_1.pt"
    assert ckpt_paths.checkpoint_path(a, 1) != ckpt_paths.checkpoint_path(b, 1)
    monkeypatch.chdir(tmp_path)
    pg = ckpt_paths.checkpoint_dir("postgresql+psycopg://ra:secret@host/lab")
    assert pg.parent == tmp_path / "ra_checkpoints" and pg.name.startswith("postgresql-")
    # the password is not part of the key; the rest of the URL is
    assert pg == ckpt_paths.checkpoint_dir("postgresql+psycopg://ra:other@host/lab")
    assert pg != ckpt_paths.checkpoint_dir("postgresql+psycopg://ra:secret@host/lab2")
    assert "secret" not in str(pg)


@pytest.mark.slow
def test_two_stores_in_one_folder_each_resume_their_own_checkpoint(cfg, dataset, tmp_path):
    stores = {name: open_store(str(tmp_path / name)) for name in ("a.db", "b.db")}
    try:
        stop_at = {"a.db": 2, "b.db": 4}
        for name, s in stores.items():
            stop = threading.Event()
            r = training.train(
                make_spec(cfg, steps=6, seed=1),
                s,
                dataset=dataset,
                stop=stop,
                on_step=lambda i, n=stop_at[name], e=stop: e.set() if i.step == n else None,
            )
            assert (r.run_id, r.status, r.iterations) == (1, "interrupted", stop_at[name])
        for name, s in stores.items():
            first: list[int] = []
            r = training.resume(s, 1, on_step=lambda i, f=first: f.append(i.step))
            assert first[0] == stop_at[name] + 1, name  # from its own store's checkpoint
            assert (r.status, r.iterations) == ("finished", 6)
            assert Path(r.checkpoint).parent == tmp_path / "ra_checkpoints" / name
    finally:
        for s in stores.values():
            s.close()


def test_resume_hints_at_a_checkpoint_in_the_old_shared_place(tmp_path):
    db = tmp_path / "ra.db"
    s = open_store(str(db))
    record_run(s, status="interrupted")
    s.close()
    (tmp_path / "ra_checkpoints").mkdir()
    (tmp_path / "ra_checkpoints" / "run_1.pt").write_bytes(b"x")
    res = invoke("train", "--db", db, "--resume", 1)
    assert res.exit_code == 2 and "has no checkpoint at" in res.stderr
    assert "move it to" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_unwritable_checkpoint_folder_exits_2_before_training(cfg, dataset, tmp_path):
    (tmp_path / "ra_checkpoints").write_text("a file where the folder goes")
    db = tmp_path / "ra.db"
    res = invoke(
        "train",
        "--db",
        db,
        "--attn",
        "baseline",
        "--steps",
        3,
        "--device",
        "cpu",
        "--no-compile",
        *TINY_CLI,
    )
    assert res.exit_code == 2, res.output
    assert "cannot write checkpoints to" in res.stderr and "ra_checkpoints" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not db.exists()
    # through the library on an existing store: refused before anything is recorded
    s = open_store(str(db))
    try:
        with pytest.raises(BadInput, match="cannot write checkpoints"):
            training.train(make_spec(cfg, steps=3), s, dataset=dataset)
        assert q(s, "SELECT COUNT(*) FROM runs")[0][0] == 0
    finally:
        s.close()


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["disk full", "folder replaced by a file"])
def test_checkpoint_write_failing_at_the_end_keeps_the_finished_run(
    cfg, dataset, store, monkeypatch, failure
):
    import errno

    folder = ckpt_paths.checkpoint_dir(store.db)
    hook = None
    if failure == "disk full":

        def full(obj, fh, *a, **k):
            fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(torch, "save", full)
    else:

        def replace_folder(info):
            if info.step == 2:
                os.rmdir(folder)
                folder.write_text("not a folder")

        hook = replace_folder
    # with the folder replaced, the periodic checkpoint (step 5) fails during training too
    extra = ["train.checkpoint_minutes=0.0001"] if hook is not None else []
    r = training.train(make_spec(cfg, steps=6, extra=extra), store, dataset=dataset, on_step=hook)
    path = folder / f"run_{r.run_id}.pt"
    assert r.status == "finished" and r.iterations == 6 and r.val_loss is not None
    assert r.checkpoint is None and "checkpoint missing" in r.error and str(path) in r.error
    (status, error, iters, val) = q(
        store, "SELECT status, error, iterations, val_loss FROM runs WHERE id=?", r.run_id
    )[0]
    assert (status, iters) == ("finished", 6) and val == pytest.approx(r.val_loss)
    assert error == r.error
    if failure == "disk full":
        assert "No space left on device" in error
        assert not list(folder.glob("*.tmp")) and not path.exists()
    else:
        assert "is a file, not a folder" in error
        assert (
            q(
                store,
                "SELECT COUNT(*) FROM metrics WHERE run_id=? AND name='checkpoint_s'",
                r.run_id,
            )[0][0]
            == 2
        )  # step 5 and the end, both tried
