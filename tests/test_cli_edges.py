"""Edges of `ra train` and `ra bench` on CPU: --json, a forced stop's summary, a read-only
store, token ids outside the vocabulary, a hostile checkpoint, a bench where nothing ran,
numbers past what the store, float32 or any memory holds.

Tiny models, a few steps each; the double Ctrl-C test runs `ra` in a subprocess."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, db_state
from typer.testing import CliRunner

from racli.cli import app
from racli.errors import BadInput

TINY = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_interval=1000",
    "train.eval_batches=2",
    "train.final_eval_batches=2",
    "train.log_interval=5",
]
TINY_CLI = [a for item in TINY for a in ("--set", item)]
CPU = ["--device", "cpu", "--no-compile"]


def ra(*args, **env):
    return CliRunner(env=env or None).invoke(app, [str(a) for a in args])


def one_error_line(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ra: error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RA_DB", raising=False)


# ---- ra train --json ------------------------------------------------------------------------


def test_train_json_prints_the_summary_and_run_id_on_stdout(tmp_path):
    db = tmp_path / "ra.db"
    res = ra(
        "train",
        "--db",
        db,
        "--attn",
        "baseline",
        "--steps",
        6,
        "--tag",
        "j",
        *CPU,
        *TINY_CLI,
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)  # stdout is the JSON and nothing else
    assert summary["status"] == "finished" and summary["iterations"] == 6
    assert summary["attn"] == "baseline" and summary["val_loss"] > 0
    with sqlite3.connect(db) as conn:
        (run_id, tag) = conn.execute("SELECT id, tag FROM runs").fetchone()
    assert summary["run_id"] == run_id and tag == "j"
    assert "training baseline run" in res.stderr  # progress stays on stderr
    assert "Training summary" not in res.stdout


# ---- a double Ctrl-C still prints the summary -----------------------------------------------


@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_and_prints_the_summary(tmp_path):
    db = tmp_path / "ra.db"
    cmd = [
        sys.executable,
        "-m",
        "racli",
        "train",
        "--db",
        str(db),
        "--attn",
        "baseline",
        "--steps",
        "1000000",
        *CPU,
        *TINY_CLI,
        "--set",
        "train.final_eval_batches=5000",
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
        assert stepping.wait(120), "".join(lines)
        proc.send_signal(signal.SIGINT)  # stop after a final evaluation (5000 batches: long)
        threading.Event().wait(0.5)
        proc.send_signal(signal.SIGINT)  # stop now
        proc.wait(timeout=120)
        out = proc.stdout.read()  # the summary: small, fits the pipe
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert "Training summary: baseline (run 1)" in out, (out, err)
    assert "interrupted" in out and "Run id" in out
    assert "stopped at once" in err and "Traceback" not in err
    with sqlite3.connect(db) as conn:
        status, iters = conn.execute("SELECT status, iterations FROM runs").fetchone()
    assert status == "interrupted" and 0 < iters < 1000000


# ---- a read-only store ----------------------------------------------------------------------


def _make_read_only(path: Path) -> str:
    """Make `path` unwritable even for root (immutable), else by its mode; returns how."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return "mode"
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode:
        pytest.skip("running as root without chattr: a file cannot be made read-only")
    return "immutable"


def test_train_on_a_read_only_store_is_bad_input_before_training(tmp_path):
    db = tmp_path / "ro.db"
    ok = ra("db", "upgrade", "--db", db)
    assert ok.exit_code == 0, ok.stderr
    how = _make_read_only(db)
    try:
        before = db_state(db)
        res = ra("train", "--db", db, "--attn", "baseline", "--steps", 2, *CPU, *TINY_CLI)
        line = one_error_line(res)
        assert "read-only" in line and str(db) in line
        assert res.stdout == "" and db_state(db) == before
        assert not (tmp_path / "ra_checkpoints").exists()
        res = ra("runs", "--db", db)  # reading it still works
        assert res.exit_code == 0, res.stderr
    finally:
        if how == "immutable":
            subprocess.run(["chattr", "-i", str(db)], check=False)
        else:
            db.chmod(0o644)


def test_store_writable_check_names_the_file_and_the_folder(tmp_path, monkeypatch):
    from racli.training import launch

    db = tmp_path / "a.db"
    db.write_bytes(b"")
    launch.check_store_writable(str(db))  # writable: nothing to say
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == db else real(p, mode))
    with pytest.raises(BadInput, match="database file is read-only"):
        launch.check_store_writable(str(db))
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path)
    with pytest.raises(BadInput, match="folder .* is read-only"):
        launch.check_store_writable(str(tmp_path / "new.db"))
    with pytest.raises(BadInput, match="is a directory"):
        launch.check_store_writable(str(tmp_path))


# ---- token ids outside the vocabulary -------------------------------------------------------


def _bin_dir(path: Path, top: int, vocab: int | None) -> Path:
    path.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 4000), ("val", 1000)):
        tokens = rng.integers(0, 200, n).astype(np.uint16)
        if split == "val":
            tokens[17] = top
        tokens.tofile(path / f"{split}.bin")
    if vocab is not None:
        with open(path / "meta.pkl", "wb") as fh:
            pickle.dump({"vocab_size": vocab}, fh)
    return path


def test_token_ids_beyond_the_vocabulary_are_bad_input(tmp_path):
    from racli.training.datasets import DataError, load_dataset

    bad = _bin_dir(tmp_path / "bad", top=300, vocab=256)
    with pytest.raises(DataError, match=r"val.bin: token id 300 is outside the vocabulary"):
        load_dataset(bad, val_fraction=0.1, block_size=32)
    res = ra(
        "train",
        "--db",
        tmp_path / "ra.db",
        "--attn",
        "baseline",
        "--steps",
        2,
        "--data",
        bad,
        *CPU,
        *TINY_CLI,
    )
    line = one_error_line(res)
    assert "token id 300" in line and "vocab_size is 256 (meta.pkl)" in line
    assert not (tmp_path / "ra.db").exists()
    # without meta.pkl the vocabulary is nanoGPT's 50304; an id past it is refused too
    nometa = _bin_dir(tmp_path / "nometa", top=60000, vocab=None)
    with pytest.raises(DataError, match="token id 60000 .* 50304"):
        load_dataset(nometa, val_fraction=0.1, block_size=32)
    fine = _bin_dir(tmp_path / "fine", top=255, vocab=256)
    assert load_dataset(fine, val_fraction=0.1, block_size=32).vocab_size == 256


# ---- a hostile checkpoint -------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_checkpoint_gives_one_line_and_runs_nothing(tmp_path):
    import torch

    db = tmp_path / "ra.db"
    res = ra("train", "--db", db, "--attn", "baseline", "--steps", 3, *CPU, *TINY_CLI, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    ckpt = Path(summary["checkpoint"])
    with sqlite3.connect(db) as conn:  # make it resumable: it stopped early
        conn.execute("UPDATE runs SET status='interrupted'")
        conn.execute("UPDATE runs SET config=json_set(config, '$.budget.steps', 100)")
    marker = tmp_path / "PWNED"
    torch.save({"version": 1, "x": _Payload(marker)}, ckpt)
    before = db_state(db)
    res = ra("train", "--db", db, "--resume", summary["run_id"])
    line = one_error_line(res)
    assert f"cannot read checkpoint {ckpt}" in line and "refused" in line
    assert "weights_only" not in line and "trusted source" not in line
    assert not marker.exists() and db_state(db) == before


def test_load_error_description_is_one_line():
    import torch

    from racli.training.load_errors import describe_load_error

    try:
        torch.load(__file__, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch raises for a text file
        text = describe_load_error(exc)
    assert "\n" not in text and "weights_only=False" not in text
    assert describe_load_error(ValueError("bad\nworse")) == "ValueError: bad"


# ---- a bench in which every configuration failed ---------------------------------------------


def test_bench_with_every_configuration_failed_is_recorded_failed(tmp_path, monkeypatch):
    from racli_models import ATTENTION

    def broken(self, *a, **k):
        raise RuntimeError("kernel exploded")

    for name in ("baseline", "ra_v5"):
        monkeypatch.setattr(ATTENTION[name], "forward", broken)
    db = tmp_path / "ra.db"
    res = ra(
        "bench",
        "--db",
        db,
        "--modes",
        "eager",
        "--phase",
        "fwd",
        "--device",
        "cpu",
        "--repeats",
        2,
        "--warmup",
        1,
    )
    assert res.exit_code == 1, (res.stdout, res.stderr)
    assert "every configuration failed" in res.stderr
    with sqlite3.connect(db) as conn:
        status, error = conn.execute("SELECT status, error FROM runs").fetchone()
        statuses = [r[0] for r in conn.execute("SELECT status FROM timings")]
    assert status == "failed" and "every configuration failed" in error
    assert statuses == ["failed", "failed"]


def test_bench_with_one_configuration_timed_is_finished():
    from types import SimpleNamespace as Row

    from racli.bench.run import all_configs_failed

    assert all_configs_failed([Row(status="failed"), Row(status="ok")]) is None
    assert all_configs_failed([Row(status="skipped")]) is None
    assert "1 of 2 failed" in all_configs_failed([Row(status="failed"), Row(status="skipped")])


# ---- the work behind `ra train` (racli.training.launch), without training -------------------


def test_launch_options_conflicts_and_overrides():
    from racli.training import launch

    opts = launch.TrainOptions(resume=3, steps=5, compile=False, seed=0, overrides=["a=b"])
    assert opts.resume_conflicts() == ["--steps", "--seed", "--compile", "--set"]
    assert launch.TrainOptions(resume=3).resume_conflicts() == []
    opts = launch.TrainOptions(overrides=["model.n_layer=1"], batch_size=8, lr=0.003)
    assert opts.train_overrides() == [
        "model.n_layer=1",
        "train.batch_size=8",
        f"train.lr={0.003:.17e}",
    ]
    with pytest.raises(BadInput, match="beyond any budget"):
        launch.check_options(launch.TrainOptions(steps=2**53 + 1))
    with pytest.raises(BadInput, match="beyond any budget"):
        launch.check_options(launch.TrainOptions(resume=1, minutes=1e300))
    launch.check_options(launch.TrainOptions(minutes=float("inf")))  # refused by the spec later


def test_launch_ending_lines_and_exit_codes():
    from racli.training import launch
    from racli.training.result import TrainResult

    def end(status, forced=False, is_main=True, error=None):
        r = TrainResult(run_id=4, attn="ra_v5", status=status, iterations=12, error=error)
        return launch.ending(launch.Launched(r, forced, is_main))

    assert end("finished") == (None, 0)
    assert end("diverged", error="loss is nan") == ("ra: failed: run 4 diverged: loss is nan", 1)
    assert end("interrupted") == (
        "ra: interrupted: run 4 stopped at step 12; continue it with `ra train --resume 4`",
        130,
    )
    assert end("interrupted", forced=True) == (
        "ra: interrupted: run 4 stopped at once at step 12 (no final evaluation, no "
        "checkpoint); continue it with `ra train --resume 4` (from its last checkpoint, or "
        "from step 0 without one)",
        130,
    )
    assert end("interrupted", is_main=False) == (None, 0)
    assert end("diverged", is_main=False) == (None, 1)
    summary = launch.summary_dict(
        TrainResult(run_id=1, attn="baseline", status="diverged", val_loss=float("nan"))
    )
    assert summary["val_loss"] is None and summary["run_id"] == 1


# ---- numbers beyond what the store, float32 or memory can hold: bad input before any work ----

HUGE = 99999999999999999999  # past a 64-bit integer


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--attn", "baseline", "--steps", 1, "--seed", HUGE], "--seed must be between"),
        (["train", "--attn", "baseline", "--steps", 1, "--seed", -1], "got -1"),
        (["bench", "--device", "cpu", "--seed", HUGE], "--seed must be between 0 and 2^63 - 1"),
        (["bench", "--device", "cpu", "--seed", -1], "--seed must be between 0 and 2^63 - 1"),
        (["experiment", "--attn", "baseline,ra_v5", "--seeds", HUGE], "2^63 - 1, got 9999"),
        (["experiment", "--attn", "baseline,ra_v5", "--seeds", "2-3,-1"], "2^63 - 1, got -1"),
        (["experiment", "--attn", "baseline,ra_v5", "--seeds", "1,,2"], "an empty item"),
        (["experiment", "--attn", "baseline,ra_v5", "--seeds", "1,2,"], "an empty item"),
        (
            ["experiment", "--attn", "baseline,ra_v5", "--seeds", f"{2**63 - 3}-{2**63 - 2}"]
            + ["--until-settled", "--max-seeds", 4],
            "past 2^63 - 1",
        ),
        (
            ["experiment", "--attn", "baseline,ra_v5", "--seeds", "1-2", "--until-settled"]
            + ["--max-seeds", 10**12],
            "--max-seeds must be between 2 and 10,000",
        ),
    ],
)
def test_seeds_beyond_the_store_are_bad_input_before_any_work(tmp_path, args, needle):
    if args[0] == "experiment":
        args = [*args, "--minutes", 0.01]
    res = ra(*args, "--db", tmp_path / "ra.db", *CPU[:2])
    assert needle in one_error_line(res)
    assert not (tmp_path / "ra.db").exists()


def test_a_seed_at_the_store_limit_is_kept(tmp_path):
    db = tmp_path / "ra.db"
    res = ra("train", "--db", db, "--attn", "baseline", "--steps", 1, "--seed", 2**63 - 1,
             *CPU, *TINY_CLI, "--json")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT seed FROM runs").fetchone() == (2**63 - 1,)


@pytest.mark.parametrize(
    "args,key",
    [
        (["--lr", 1e308], "--lr"),
        (["--set", "train.lr=1e308"], "--set: train.lr"),
        (["--set", "train.gate_lr_mult=1e308"], "train.gate_lr_mult"),
        (["--set", "model.w_std_init=1e308"], "model.w_std_init"),
        (["--set", "model.w_rec_init=-1e308"], "model.w_rec_init"),
        (["--max-epochs", 1e39], "--max-epochs"),
    ],
)
def test_float_settings_beyond_float32_are_bad_input_before_any_work(tmp_path, args, key):
    res = ra("train", "--db", tmp_path / "ra.db", "--attn", "baseline", "--steps", 1, *args)
    line = one_error_line(res)
    assert f"{key}: must be a float32 number, at most 3.4028234663852886e+38" in line
    assert not (tmp_path / "ra.db").exists()


def test_experiment_minutes_beyond_any_budget_are_bad_input_before_any_work(tmp_path):
    res = ra("experiment", "--db", tmp_path / "ra.db", "--attn", "baseline,ra_v5",
             "--seeds", "1-2", "--minutes", 1e308, *CPU[:2])  # fmt: skip
    assert "--minutes 1e+308 is beyond any budget" in one_error_line(res)
    assert not (tmp_path / "ra.db").exists()


@pytest.mark.parametrize(
    "shape,needle",
    [
        (f"1,{HUGE},1,8", "each of B,T,H,D must be below 2^31"),
        (f"1,{2**31},1,8", "each of B,T,H,D must be below 2^31"),
        ("1024,1048576,16,64", "1,099,511,627,776 elements, not below 2^40"),
    ],
)
def test_bench_shapes_beyond_any_memory_are_bad_input_before_any_work(tmp_path, shape, needle):
    res = ra("bench", "--db", tmp_path / "ra.db", "--shape", shape, *CPU[:2])
    assert needle in one_error_line(res)
    assert not (tmp_path / "ra.db").exists()


def test_a_bench_preset_beyond_any_memory_is_bad_input():
    from racli.bench.inputs import parse_shape
    from racli.config.schema import BenchShape

    big = BenchShape(batch=2**20, seq=2**20, heads=1, head_dim=2)
    with pytest.raises(BadInput, match="shape big is too large"):
        parse_shape("big", {"big": big})
    assert parse_shape("1023,1048576,16,64", {})[1].elements == 1023 * 2**30
