"""Fixture-free helpers shared by the store, recorder, CLI and concurrency tests.

Nothing here imports torch: runs are recorded with a made-up environment
(`ENV_INFO`) and a fixed git commit, so no fingerprint is taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

REPO = Path(__file__).resolve().parents[1]

ENV_INFO = {
    "hostname": "testhost",
    "os": "Linux-test",
    "python": "3.11.0",
    "torch": "2.13.0",
    "cuda": None,
    "cudnn": None,
    "gpu_name": None,
    "gpu_count": 0,
    "gpu_memory_gb": None,
    "driver": None,
    "cpu": "Test CPU",
    "cpu_count": 2,
}
GPU_ENV_INFO = {
    **ENV_INFO,
    "cuda": "13.0",
    "cudnn": "91000",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "gpu_count": 1,
    "gpu_memory_gb": 79.2,
    "driver": "580.00",
}

TRAIN_CONFIG = {
    "model": {"preset": "tiny", "ra_rank": 4},
    "train": {"lr": 6e-4, "batch_size": 32},
    "minutes": 1.0,
}

# (kind, attn, end status, seed, tag) of the runs `make_db` records, oldest first.
PLAN = [
    ("bench", None, "finished", None, None),
    ("train", "baseline", "finished", 1, "sweep"),
    ("train", "ra_v5", "finished", 1, "sweep"),
    ("train", "ra_v5", "failed", 2, None),
    ("train", "baseline", "interrupted", 3, "sweep"),
    ("train", "ra_v5", "diverged", 4, None),
]


def record_run(
    store,
    *,
    kind="train",
    attn="ra_v5",
    status="finished",
    seed=1,
    tag=None,
    config=None,
    env_info=None,
    n_metrics=5,
    gates=True,
    timings=None,
):
    """One complete run through the recorder; returns its id."""
    from racli.store.recorder import RunRecorder

    cfg = dict(TRAIN_CONFIG if config is None else config)
    rec = RunRecorder.start(
        store,
        kind=kind,
        attn=attn if kind == "train" else None,
        config=cfg,
        seed=seed,
        tag=tag,
        env_info=env_info or ENV_INFO,
        git_commit="0123abcd",
        heartbeat=False,
    )
    if kind == "bench":
        shape = {
            "batch": 2,
            "seq": 64,
            "heads": 4,
            "head_dim": 32,
            "dtype": "float32",
            "device": "cpu",
        }
        for row in timings or [
            {
                "attn": "baseline",
                "mode": "eager",
                "phase": "fwd",
                **shape,
                "median_ms": 1.25,
                "p10_ms": 1.2,
                "p90_ms": 1.4,
                "iters": 10,
                "tflops": 0.01,
                "status": "ok",
                "backend": "math",
            },
            # a skipped mode has no figures: a row with fewer keys
            {
                "attn": "baseline",
                "mode": "cuda_graph",
                "phase": "fwd",
                **shape,
                "status": "skipped",
                "reason": "no CUDA",
            },
        ]:
            rec.timing(**row)
    else:
        for step in range(n_metrics):
            rec.metric(step * 10, "train_loss", 4.0 - 0.1 * step, elapsed_s=float(step))
        rec.metric(n_metrics * 10, "val_loss", 3.5, elapsed_s=float(n_metrics))
        if gates:
            rec.gates(0, {0: {"w_std": [1.0, 1.0], "w_rec": [0.1, 0.1]}})
            rec.gates(10, {0: {"w_std": [0.9, 1.1], "w_rec": [0.2, 0.05]}})
    figures = {}
    if kind == "train" and status == "finished":
        figures = {
            "iterations": n_metrics * 10,
            "tokens": 1000 * n_metrics,
            "epochs": 0.5,
            "train_seconds": 60.0,
            "val_loss": 3.5 + 0.01 * (seed or 0),
            "tokens_per_s": 12345.0,
        }
    if status == "failed":
        rec.fail(RuntimeError("boom"), **figures)
    else:
        rec.end(status, **figures)
    return rec.run_id


def make_db(path, plan=PLAN) -> list[int]:
    """A closed, migrated database at `path` holding the runs of `plan`; returns their ids."""
    from racli.store.engine import open_store

    store = open_store(str(path))
    try:
        return [
            record_run(store, kind=k, attn=a, status=st, seed=sd, tag=tg)
            for k, a, st, sd, tg in plan
        ]
    finally:
        store.close()


def set_heartbeat_minutes_ago(store, run_id: int, minutes: float) -> None:
    from racli.store.models import Run, utcnow

    with store.writing() as conn:
        conn.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(heartbeat_at=utcnow() - timedelta(minutes=minutes))
        )


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def db_dump(path) -> str:
    """Every table's schema and rows as SQL text (reads through the WAL, writes nothing)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def db_state(path) -> tuple:
    """What must not change when a command fails: the rows and schema, the main file
    bytes, and which files exist beside it (a read leaves at most empty -wal/-shm)."""
    p = Path(path)
    wal = Path(f"{p}-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    return db_dump(p), sha256(p), wal_size


def python_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_python(code: str, *args, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=python_env(),
        check=False,
        **kw,
    )


def ra_inprocess(*args):
    """`ra ARGS` run in this process (typer's CliRunner): exit_code, stdout, stderr."""
    from typer.testing import CliRunner

    from racli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res) -> str:
    """The error line of a result that must be bad input: exit 2, one `ra: error:` line."""
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err.startswith("ra: error: ") and "\n" not in err and "Traceback" not in err
    return err


def in_ci() -> bool:
    """Whether the suite runs under CI (CI set and not false): missing services fail there."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def in_triton_interpreter(module: str, call: str) -> None:
    """Run `call` of the test module `module` (e.g. "check_kernel()") in a fresh process
    under Triton's interpreter (TRITON_INTERPRET=1), on CPU tensors. Where Triton is not
    installed (CUDA builds of torch ship it, the CPU build does not) this skips, but under
    CI, whose .ci/run installs it, it fails."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("triton") is None:
        if in_ci():
            pytest.fail("Triton is not installed (pip install triton)", pytrace=False)
        pytest.skip("Triton is not installed")
    code = f"import {module} as t; t.{call}; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=python_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,  # where the test modules import from
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def randomize_folded_ra(m) -> None:
    """Random weights, P, gates and biases for a folded-RA block (ra_v5, ra_v5_untied),
    none at a special value: what the tests of the fused composition compose."""
    import math

    import torch

    C, D = m.n_embd, m.head_dim
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(C))
            elif name == "P":
                p.normal_(0.0, 1.0 / math.sqrt(D))
            elif name == "w_std":
                p.uniform_(0.5, 1.5)
            elif name == "w_rec":
                p.uniform_(-1.0, 1.0)
            else:  # biases
                p.normal_(0.0, 0.1)


# ---- holding processes still -------------------------------------------------------------
#
# A test that stops a run (kill -9, a killed worker, a requeue) checks first that the run is
# still under way; a short run can end between that check and the stop. So the test freezes
# the processes (SIGSTOP), checks again while they stand still, sends its stop, and lets
# them go on (SIGCONT) only after.


def args_of(pid: int) -> list[str]:
    """The command line of process `pid` ([] once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def train_processes(db: str, attn: str, seed: int) -> list[int]:
    """The pids of the `ra train` processes (not the guard, not a torchrun agent) that train
    arm `attn`, seed `seed` into the store `db` (a path or URL): one per node of the run."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = args_of(int(entry.name))
        pairs = set(zip(args, args[1:]))
        if (
            ("racli", "train") in pairs
            and ("--db", db) in pairs
            and ("--attn", attn) in pairs
            and ("--seed", str(seed)) in pairs
            and "torch.distributed.run" not in args
            and "racli.experiment.guard" not in args
        ):
            pids.append(int(entry.name))
    return pids


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, pending-signal mask) of a live process, None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    state = fields["State"].split()[0]
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return None if state in "ZX" else (state, pending)


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def freeze(pids: list[int], timeout: float = 10.0) -> None:
    """SIGSTOP `pids` and wait until each is stopped (or gone)."""
    signal_all(pids, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not all(s is None or s[0] in "tT" for s in map(proc_state, pids)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the processes {pids} did not stop in {timeout:.0f} s")
        time.sleep(0.01)


@contextlib.contextmanager
def held_when(find, pids_of, wait, confirm=None):
    """Once `wait(find)` has returned what `find` found, freeze the processes
    `pids_of(found)` names and confirm while they stand still: `confirm(found, pids)`, by
    default `find()` again. Yields what the confirmation returned, with the processes
    stopped, and lets them go on after the block. Where it returns nothing (the moment
    passed before they stopped), they go on and the wait starts again."""
    while True:
        found = wait(find)
        pids = pids_of(found)
        try:
            freeze(pids)
            value = confirm(found, pids) if confirm is not None else find()
            if value:
                yield value
                return
        finally:
            signal_all(pids, signal.SIGCONT)
