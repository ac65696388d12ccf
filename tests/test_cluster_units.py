"""The pieces of the cluster launchers and of experiment ownership that need no cluster:
claims in the `jobs` table (both backends), the runs a verdict counts, GPU slots and the
seed's order inside a job, sbatch options, the store check, and two identical local
experiments at once on one store (one calibration, one run per arm and seed)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import types
from datetime import timedelta
from pathlib import Path

import pytest
from cluster_experiment import TINY
from sqlalchemy import update

from racli.errors import BadInput
from racli.experiment import judge, plan, worker
from racli.experiment.cluster import check_store
from racli.experiment.jobs import job_state, train_overrides
from racli.experiment.slurm import sbatch_options
from racli.store import jobs as store_jobs
from racli.store.engine import open_store
from racli.store.models import ExperimentJob, utcnow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(store_url):
    s = open_store(store_url)
    yield s
    s.close()


def test_a_unit_has_one_holder_at_a_time(store):
    unit = store_jobs.Unit("k1", store_jobs.TRAIN, "baseline", 1)
    assert store_jobs.claim(store, unit, owner="h:1:a", launcher="local")
    assert not store_jobs.claim(store, unit, owner="h:2:b", launcher="local")
    assert store_jobs.claim(store, unit, owner="h:1:a", launcher="local")  # its own again
    (row,) = store_jobs.experiment_jobs(store, "k1")
    assert (row.owner, row.state, row.launcher) == ("h:1:a", "running", "local")
    store_jobs.release(store, unit, "h:1:a", state="done", run_id=None, note="x")
    row = store_jobs.get(store, unit)
    assert (row.owner, row.state, row.note) == (None, "done", "x")
    assert store_jobs.claim(store, unit, owner="h:2:b", launcher="local")
    # a holder that stopped refreshing its claim (killed) loses it after STALE_AFTER
    with store.writing() as conn:
        conn.execute(update(ExperimentJob).values(claimed_at=utcnow() - timedelta(seconds=121)))
    assert store_jobs.claim(store, unit, owner="h:3:c", launcher="local")
    # refreshing keeps it: nobody else gets it
    store_jobs.refresh(store, "h:3:c")
    assert not store_jobs.claim(store, unit, owner="h:4:d", launcher="local")


def test_a_requeued_job_takes_its_own_units_back_at_once(store):
    unit = store_jobs.Unit("k1", store_jobs.TRAIN, "ra_v5", 2)
    assert store_jobs.claim(
        store,
        unit,
        owner="slurm:ra-k1-seed2:n1:10:aa",
        launcher="slurm",
        takeover="slurm:ra-k1-seed2:",
    )
    # another job's worker (or a local command) waits ...
    assert not store_jobs.claim(
        store,
        unit,
        owner="slurm:ra-k1-seed3:n2:11:bb",
        launcher="slurm",
        takeover="slurm:ra-k1-seed3:",
    )
    assert not store_jobs.claim(store, unit, owner="h:1:a", launcher="local")
    # ... the same job after its requeue (a new process) does not
    assert store_jobs.claim(
        store,
        unit,
        owner="slurm:ra-k1-seed2:n2:12:cc",
        launcher="slurm",
        takeover="slurm:ra-k1-seed2:",
    )
    store_jobs.set_scheduler(store, [unit], launcher="slurm", scheduler_job="7_1")
    store_jobs.set_scheduler_state(store, "k1", "7_1", "RUNNING")
    row = store_jobs.get(store, unit)
    assert (row.scheduler_job, row.scheduler_state, row.owner) == (
        "7_1",
        "RUNNING",
        "slurm:ra-k1-seed2:n2:12:cc",
    )
    store_jobs.release_all(store, "slurm:ra-k1-seed2:n2:12:cc")
    assert store_jobs.get(store, unit).owner is None


def test_a_claim_of_a_process_of_this_host_that_died_is_taken_at_once(store):
    """kill -9 leaves a fresh claim behind; a process of the same host sees that its holder
    no longer exists and takes it without waiting STALE_AFTER. A live holder, or one on
    another host, keeps it."""
    from racli.experiment import ownership

    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process (until reused)
    unit = store_jobs.Unit("k2", store_jobs.TRAIN, "baseline", 1)
    live = f"{host}:{os.getppid()}:aa"  # pytest's parent: alive
    elsewhere = f"another-host:{dead.pid}:bb"
    gone = f"local:ra-k2-seed1:{host}:{dead.pid}:cc"
    assert not ownership.holder_died(live) and not ownership.holder_died(elsewhere)
    assert ownership.holder_died(gone)
    claims = ownership.Claims(store, launcher="local", refresh_s=3600)
    try:
        for holder, taken in ((live, False), (elsewhere, False), (gone, True)):
            with store.writing() as conn:  # released, then held by `holder` (a fresh claim)
                conn.execute(update(ExperimentJob).values(owner=None))
            assert store_jobs.claim(store, unit, owner=holder, launcher="local")
            assert claims.take(unit) is taken, holder
            assert store_jobs.get(store, unit).owner == (claims.owner if taken else holder)
    finally:
        claims.close()


def _run(id_, arm, seed, status, steps):
    config = {"experiment": {"arm": arm}, "budget": {"steps": steps}}
    return types.SimpleNamespace(id=id_, seed=seed, status=status, config=config)


def test_a_verdict_counts_one_run_per_arm_and_seed_at_the_current_budgets():
    runs = [
        _run(1, "baseline", 1, "finished", 100),
        _run(2, "ra_v5", 1, "finished", 90),
        _run(3, "ra_v5", 1, "finished", 90),  # the same arm and seed again (merged stores)
        _run(4, "baseline", 2, "finished", 120),  # another calibration's budget
        _run(5, "ra_v5", 2, "failed", 90),
    ]
    kept = judge.judged_runs(runs, {"baseline": 100, "ra_v5": 90})
    assert [r.id for r in kept] == [1, 2, 5]
    assert [r.id for r in judge.judged_runs(runs, None)] == [1, 2, 4, 5]
    # a finished run of another budget does not make its job done: it is trained again
    assert job_state([runs[3]], 100) == ("new", None)
    assert job_state([runs[3]], 120) == ("done", runs[3])


def test_gpu_slots_and_the_order_of_a_seed_inside_its_job():
    assert worker.gpu_slots(None, 1, 2) == ["cpu"]
    assert worker.gpu_slots("0,1,2,3", 0, 2) == ["cpu"]
    assert worker.gpu_slots("4,5", 1, 2) == ["4", "5"]
    assert worker.gpu_slots("0,1,2,3", 2, 2) == ["0,1", "2,3"]
    assert worker.gpu_slots("0,1,2,3", 1, 2) == ["0", "1"]  # at most one slot per arm
    arms = plan.parse_arms("baseline,ra_v5")
    # the seed at position 0 runs A B (arm j on slot j), at position 1 B A (slots rotated)
    first = worker.seed_jobs(arms, 5, 0, 2)
    second = worker.seed_jobs(arms, 6, 1, 2)
    assert [(j.arm.label, j.seed, j.device) for j in first] == [
        ("baseline", 5, 0),
        ("ra_v5", 5, 1),
    ]
    assert [(j.arm.label, j.seed, j.device) for j in second] == [
        ("ra_v5", 6, 0),
        ("baseline", 6, 1),
    ]
    # over two seeds every arm visits every slot once
    visits = {(j.arm.label, j.device) for j in first + second}
    assert len(visits) == 4
    argv = [sys.executable, "-m", "racli", "train"]
    assert worker.child_command(argv, 1) == argv
    assert worker.child_command(argv, 4)[1:6] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "-m",
    ]


def test_launcher_settings_and_store_check(tmp_path):
    assert sbatch_options(["--qos=high", "--exclusive", "--mem-per-gpu=40G"]) == {
        "qos": "high",
        "exclusive": True,
        "mem_per_gpu": "40G",
    }
    with pytest.raises(BadInput, match="extra_sbatch"):
        sbatch_options(["qos=high"])
    with pytest.raises(BadInput, match="PostgreSQL"):
        check_store(str(tmp_path / "ra.db"), "slurm")
    check_store("postgresql://ra@db/ra", "ray")
    assert train_overrides(
        ["train.lr=1", "slurm.partition=x", "ray.address=a", "model.bias=1"]
    ) == [
        "train.lr=1",
        "model.bias=1",
    ]


def test_cluster_launcher_refuses_a_sqlite_store(tmp_path):
    from helpers import ra_inprocess

    res = ra_inprocess(
        "experiment",
        "--db",
        tmp_path / "ra.db",
        "--attn",
        "baseline,ra_v5",
        "--seeds",
        "1-2",
        "--minutes",
        "0.01",
        "--device",
        "cpu",
        "--launcher",
        "slurm",
    )
    assert res.exit_code == 2 and "PostgreSQL" in res.stderr
    assert not (tmp_path / "ra.db").exists() or "calibration" not in res.stderr


@pytest.mark.slow
def test_two_identical_commands_at_once_share_the_work(tmp_path):
    db = tmp_path / "ra.db"
    argv = [sys.executable, "-m", "racli", "experiment", "--db", str(db)]
    argv += ["--attn", "baseline,ra_v5", "--seeds", "1-2", "--minutes", "0.01", "--device", "cpu"]
    for item in TINY:
        argv += ["--set", item]
    argv.append("--json")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    conn = sqlite3.connect(db)
    try:
        kinds = conn.execute("SELECT kind, count(*) FROM runs GROUP BY kind").fetchall()
        runs = conn.execute(
            "SELECT attn, seed, status FROM runs WHERE kind='train' ORDER BY attn, seed"
        ).fetchall()
    finally:
        conn.close()
    assert dict(kinds) == {"calibration": 1, "train": 4}
    assert runs == [
        ("baseline", 1, "finished"),
        ("baseline", 2, "finished"),
        ("ra_v5", 1, "finished"),
        ("ra_v5", 2, "finished"),
    ]
    verdicts = [json.loads(out)["verdicts"][0] for out, _ in outs]
    for v in verdicts:  # both judge the same 2 vs 2 runs
        assert v["comparison"]["verdict"]["candidate"]["n"] == 2
        assert v["comparison"]["verdict"]["baseline"]["n"] == 2
    assert verdicts[0]["outcome"] == verdicts[1]["outcome"]


class _FakeLauncher:
    name = "slurm"

    def __init__(self):
        self.cancelled: list[str] = []

    def cancel(self, ids):
        self.cancelled += ids


def test_the_line_that_names_the_exception():
    from racli.experiment.text import last_error_line

    trace = (
        "\x1b[36mray::ra-k-calibration:JobActor.__init__()\x1b[39m (pid=7)\n"
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "ModuleNotFoundError: No module named 'racli'\n"
    )
    assert last_error_line(trace) == "ModuleNotFoundError: No module named 'racli'"
    chained = "ValueError: first\n\nDuring handling...\nsqlalchemy.exc.OperationalError: gone"
    assert last_error_line(chained) == "sqlalchemy.exc.OperationalError: gone"
    # no exception named: the first line, without colour codes, unless strict
    assert last_error_line("\x1b[33mThe actor died\x1b[0m\n unexpectedly") == "The actor died"
    assert last_error_line("srun: warning: x\nall went well", strict=True) is None
    assert last_error_line("UserWarning: TF32 is off\nall went well", strict=True) is None
    assert last_error_line("") is None and last_error_line(" \n", strict=True) is None
    assert len(last_error_line("RuntimeError: " + "x" * 1000)) == 300


class _EndedLauncher:
    """A launcher whose jobs ended: `why_ended` answers for the jobs in `reasons`."""

    name = "ray"
    ENDED = ("ENDED",)

    def __init__(self, reasons):
        self.reasons, self.asked = reasons, []

    def ended(self, state):
        return state in self.ENDED

    def why_ended(self, job_id, state):
        self.asked.append(job_id)
        return self.reasons.get(job_id)


def test_a_job_that_ended_without_a_word_is_explained_by_its_launcher(tmp_path):
    """A unit not done: its own note first; else, once its job ended, the launcher's reason
    (asked once a job), recorded as the unit's note; nothing while the job runs or for
    another launcher's job."""
    from racli.experiment.cluster import ClusterRun

    store = open_store(str(tmp_path / "ra.db"))
    try:
        u = {a: store_jobs.Unit("k1", store_jobs.TRAIN, a, 1) for a in ("b", "r", "x")}
        store_jobs.set_scheduler(store, [u["b"], u["r"]], launcher="ray", scheduler_job="j1")
        store_jobs.set_scheduler(store, [u["x"]], launcher="ray", scheduler_job="j2")
        run = object.__new__(ClusterRun)
        run.launcher, run.store = _EndedLauncher({"j1": "ModuleNotFoundError: x"}), store

        def why(unit, seen):
            return run._why(store_jobs.get(store, unit), seen)

        seen: dict[str, str] = {}
        assert why(u["b"], seen) == "" and run.launcher.asked == []  # queued: not ended
        store_jobs.set_scheduler_state(store, "k1", "j1", "ENDED")
        store_jobs.set_scheduler_state(store, "k1", "j2", "ENDED")
        store_jobs.set_state(store, u["r"], "done")  # its run finished, under new budgets
        assert why(u["b"], seen) == why(u["r"], seen) == "ModuleNotFoundError: x"
        assert why(u["x"], seen) == ""  # the launcher knows nothing of j2
        assert run.launcher.asked == ["j1", "j2"]
        # the reason is recorded (for --status) where the unit was neither done nor noted
        units = {r.arm: (r.state, r.note) for r in store_jobs.experiment_jobs(store, "k1")}
        assert units == {
            "b": ("failed", "ModuleNotFoundError: x"),
            "r": ("done", None),
            "x": ("queued", None),
        }
        store_jobs.set_state(store, u["r"], "failed", "RuntimeError: its own")
        assert why(u["r"], {}) == "RuntimeError: its own"
        # a unit given another job meanwhile (the same command again) is left as it is
        store_jobs.set_scheduler(store, [u["x"]], launcher="ray", scheduler_job="j3")
        store_jobs.fail_unexplained(store, u["x"], "j2", "late word of j2")
        assert store_jobs.get(store, u["x"]).note is None
        store_jobs.set_scheduler_state(store, "k1", "j3", "ENDED")
        run.launcher.reasons["j3"] = "SystemExit: 1"
        run.launcher.name = "slurm"  # a job of another launcher than this command's
        assert why(u["x"], {}) == ""
        run.launcher.name = "ray"
        assert why(u["x"], {}) == "SystemExit: 1"
    finally:
        store.close()


def test_slurm_names_the_end_state_and_the_exception_of_the_jobs_log(tmp_path):
    from racli.experiment.slurm import SlurmLauncher

    launcher = object.__new__(SlurmLauncher)  # submitit's job stands in: only its log
    log = tmp_path / "1_0_log.err"
    launcher._job = lambda job_id: types.SimpleNamespace(paths=types.SimpleNamespace(stderr=log))
    assert launcher.why_ended("1_0", "TIMEOUT") == "slurm state TIMEOUT"  # no log yet
    log.write_text("submitit ERROR ...\nTraceback:\n  ...\nOSError: [Errno 28] No space\n")
    assert launcher.why_ended("1_0", "FAILED") == "slurm state FAILED; OSError: [Errno 28] No space"
    assert launcher.why_ended("1_0", "COMPLETED") == "OSError: [Errno 28] No space"
    log.write_text("all went well\n")
    assert launcher.why_ended("1_0", "COMPLETED") is None


@pytest.mark.parametrize("cancel", [True, False])
def test_ctrl_c_cancels_the_jobs_or_leaves_them(tmp_path, cancel):
    from racli.experiment.cluster import ClusterRun
    from racli.experiment.results import Interrupted, Settings

    store = open_store(str(tmp_path / "ra.db"))
    try:
        units = [store_jobs.Unit("k1", store_jobs.TRAIN, a, 1) for a in ("baseline", "ra_v5")]
        store_jobs.set_scheduler(store, units, launcher="slurm", scheduler_job="9_0")
        run = object.__new__(ClusterRun)  # no launcher of a real scheduler behind it
        run.settings = Settings(
            arms=plan.parse_arms("baseline,ra_v5"), seeds=[1], minutes=1.0,
            cancel_on_interrupt=cancel,
        )  # fmt: skip
        run.launcher, run.store, run.key = _FakeLauncher(), store, "k1"
        with pytest.raises(Interrupted) as exc:
            run._interrupt(["9_0"])
        states = {r.state for r in store_jobs.experiment_jobs(store, "k1")}
        if cancel:
            assert run.launcher.cancelled == ["9_0"] and states == {"cancelled"}
            assert "cancelled 1 slurm job(s) (9_0)" in str(exc.value)
        else:
            assert run.launcher.cancelled == [] and states == {"queued"}
            assert "left 1 slurm job(s) running (9_0)" in str(exc.value)
            assert "re-attach" in str(exc.value)
    finally:
        store.close()


def test_a_worker_does_not_retry_a_run_that_refused_its_input(tmp_path):
    from racli.experiment import ownership
    from racli.experiment.jobs import Context
    from racli.experiment.results import Settings
    from racli.experiment.view import PlainView

    store = open_store(str(tmp_path / "ra.db"))
    claims = ownership.Claims(store, launcher="slurm", owner="slurm:ra-k1-seed1:h:1:a")
    try:
        arms = plan.parse_arms("baseline,ra_v5")
        settings = Settings(
            arms=arms, seeds=[1], minutes=1.0, devices=["cpu"], db=str(tmp_path / "ra.db")
        )
        budgets = plan.step_budgets(arms, 1.0, 10.0, {"ra_v5": (0.5, None)})
        ctx = Context(
            settings, None, store, key="k1", tag="t", dataset=None, budgets=budgets, cal=None,
            devices=["cpu"], view=PlainView(), stop=__import__("threading").Event(), claims=claims,
        )  # fmt: skip
        starts = []

        job = worker.seed_jobs(arms, 1, 0, 1)[0]

        def child(resume):
            starts.append(job.arm.label)
            path = worker.log_path(settings.db, "k1", job)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("ra: unknown attention 'x'\n")
            return 2

        result = worker._arm(ctx, job, child)
        assert starts == ["baseline"]  # once: exit code 2 is not retried
        assert result.status == "failed" and result.note == "bad input: ra: unknown attention 'x'"
        row = store_jobs.get(store, ctx.unit(job))
        assert (row.state, row.owner, row.note) == ("failed", None, result.note)
    finally:
        claims.close()
        store.close()


# ---- runs over several nodes ------------------------------------------------------------


def _worker_ctx(tmp_path, store, arms):
    import threading

    from racli.experiment.jobs import Context
    from racli.experiment.results import Settings
    from racli.experiment.view import PlainView

    settings = Settings(
        arms=arms, seeds=[1], minutes=1.0, devices=["cpu"], db=str(tmp_path / "ra.db")
    )
    budgets = plan.step_budgets(arms, 1.0, 10.0, {"ra_v5": (0.5, None)})
    return Context(
        settings, None, store, key="k1", tag="t", dataset=None, budgets=budgets, cal=None,
        devices=["cpu"], view=PlainView(), stop=threading.Event(),
    )  # fmt: skip


def test_a_run_over_nodes_starts_the_train_command_of_one_node_under_torchrun(tmp_path):
    from racli.experiment.local import child_argv
    from racli.experiment.multinode import Launch, Rendezvous, child_command

    store = open_store(str(tmp_path / "ra.db"))
    try:
        arms = plan.parse_arms("baseline,ra_v5")
        ctx = _worker_ctx(tmp_path, store, arms)
        job = worker.seed_jobs(arms, 1, 0, 1)[0]
        argv = child_argv(ctx, job, None)  # what a run on one node starts
    finally:
        store.close()
    assert argv[:4] == [sys.executable, "-m", "racli", "train"] and "--attn" in argv
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    rdzv = Rendezvous(nodes=2, node_rank=1, addr="10.1.2.3", port=29411)
    assert child_command(argv, 4, rdzv) == [
        *torchrun,
        "--nnodes=2",
        "--node-rank=1",
        "--master-addr=10.1.2.3",
        "--master-port=29411",
        "--nproc-per-node=4",
        *argv[1:],
    ]
    # every node starts the same train command; only its rank differs
    launch = Launch(argv, 1, 2, "10.1.2.3", 29411, str(tmp_path / "logs" / "baseline-seed1.log"))
    first, second = launch.command(0), launch.command(1)
    assert first[3:8] == ["--nnodes=2", "--node-rank=0", *first[5:7], "--nproc-per-node=1"]
    assert [a for a in first if a != "--node-rank=0"] == [a for a in second if a != "--node-rank=1"]
    assert first[-len(argv) + 1 :] == argv[1:]
    assert launch.log_of(0).name == "baseline-seed1.log"
    assert launch.log_of(1).name == "baseline-seed1.node1.log"
    # one node: as before (as is on one device, --standalone on several)
    assert child_command(argv, 1) == argv
    assert child_command(argv, 2)[3:5] == ["--standalone", "--nproc-per-node=2"]


def test_the_nodes_of_a_run(monkeypatch):
    from racli.experiment import multinode

    def cfg(**kw):
        return types.SimpleNamespace(**{"gpus_per_node": 8, "nodes_per_run": 1, **kw})

    assert multinode.run_nodes(cfg(), cpu=False, per_run=8) == 1
    assert multinode.run_nodes(cfg(), cpu=False, per_run=16) == 2
    assert multinode.run_nodes(cfg(gpus_per_node=4), cpu=False, per_run=32) == 8
    with pytest.raises(BadInput, match="not a multiple of it.*gpus_per_run=16"):
        multinode.run_nodes(cfg(), cpu=False, per_run=12)
    with pytest.raises(BadInput, match="nodes_per_run 2 is for CPU runs"):
        multinode.run_nodes(cfg(nodes_per_run=2), cpu=False, per_run=8)
    assert multinode.run_nodes(cfg(nodes_per_run=3), cpu=True, per_run=0) == 3
    assert multinode.processes_per_node(16, 2) == 8
    assert multinode.processes_per_node(0, 2) == 1  # CPU: one process a node
    out = "NodeName=n1 Arch=x86_64 CoresPerSocket=1 NodeAddr=127.0.0.1 NodeHostName=localhost"
    assert multinode.node_addr(out, "n1") == "127.0.0.1"
    assert multinode.node_addr("", "gpu-017") == "gpu-017"


def test_node_0_hands_each_launch_to_the_other_nodes(tmp_path, monkeypatch):
    import threading

    from racli.experiment import multinode

    node0 = multinode.Node(rank=0, nodes=2, job_id="41", restart=0, name="n1")
    node1 = dataclasses.replace(node0, rank=1, name="n2")
    log = str(tmp_path / "logs" / "ra_v5-seed3.log")
    started: list[list[str]] = []

    def spawn(argv, out, env, cwd=None):
        started.append(argv)
        return subprocess.Popen([sys.executable, "-c", "pass"], stdout=out)

    monkeypatch.setattr(multinode.guard, "spawn", spawn)
    exchange = multinode.Exchange(tmp_path / "nodes", node0)
    stop = threading.Event()
    got: dict = {}
    follower = threading.Thread(
        target=lambda: got.update(multinode.follow(tmp_path / "nodes", node1, stop, poll_s=0.05))
    )
    follower.start()
    try:
        for port, tail in ((29500, ["--attn", "ra_v5"]), (29501, ["--resume", "7"])):
            n = len(started)
            argv = ["py", "-m", "racli", "train", *tail]
            exchange.publish(multinode.Launch(argv, 1, 2, "10.0.0.9", port, log))
            wait_for(lambda: len(started) > n)  # noqa: B023
        exchange.end()
        follower.join(timeout=10)
    finally:
        stop.set()
        follower.join(timeout=10)
    assert not follower.is_alive() and got == {"node": 1, "launches": 2, "interrupted": False}
    assert [a[3:7] for a in started] == [
        ["--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.9", "--master-port=29500"],
        ["--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.9", "--master-port=29501"],
    ]
    assert started[1][-2:] == ["--resume", "7"]
    text = (tmp_path / "logs" / "ra_v5-seed3.node1.log").read_text()
    assert "node 1, launch 0" in text and "node 1, launch 1" in text
    # a requeued job is a new incarnation: a fresh folder, the old one gone
    again = multinode.Exchange(tmp_path / "nodes", dataclasses.replace(node0, restart=1))
    again.forget_older()
    assert not exchange.folder.exists()
    again.end()
    assert again.wait(0, threading.Event(), poll_s=0.01) is None


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_runs_over_nodes_are_jobs_of_their_own_in_the_balanced_order():
    from racli.experiment.cluster import ClusterRun
    from racli.experiment.results import Settings

    arms = plan.parse_arms("baseline,ra_v5")
    run = object.__new__(ClusterRun)  # no scheduler behind it
    run.settings = run.worker_settings = Settings(arms=arms, seeds=[4, 5], minutes=1.0)
    run.key, run.tag, run.per_run, run.seed_order = "k1", "t", 16, [4, 5]
    run.nodes, run.exchange = 2, "/shared/ra_slurm/nodes"
    run.launcher = types.SimpleNamespace(name="slurm")
    ctx = types.SimpleNamespace(settings=run.settings)
    groups = run._groups(ctx, plan.schedule(arms, [4, 5]))
    assert [(what, [j.arm.label for j in js]) for what, js, _ in groups] == [
        ("baseline seed 4", ["baseline"]),
        ("ra_v5 seed 4", ["ra_v5"]),
        ("ra_v5 seed 5", ["ra_v5"]),  # the second seed B A
        ("baseline seed 5", ["baseline"]),
    ]
    jobs = [w for _, _, w in groups]
    assert [(w.kind, w.arm, w.seed, w.seed_index, w.nodes) for w in jobs] == [
        ("run", "baseline", 4, 0, 2),
        ("run", "ra_v5", 4, 0, 2),
        ("run", "ra_v5", 5, 1, 2),
        ("run", "baseline", 5, 1, 2),
    ]
    assert jobs[0].exchange == "/shared/ra_slurm/nodes" and jobs[0].gpus_per_run == 16
    assert len({worker.owner_prefix(w) for w in jobs}) == 4  # each its own claims
    run.nodes = 1  # runs within a node: one job per seed, its arms side by side
    groups = run._groups(ctx, plan.schedule(arms, [4, 5]))
    assert [(w.kind, w.seed, len(js)) for _, js, w in groups] == [("seed", 4, 2), ("seed", 5, 2)]


def test_under_torchrun_the_agent_passing_on_a_signal_is_not_a_second_one(monkeypatch):
    """A scheduler (or a terminal) signals every process, and the torchrun agent passes
    the signal on to its workers again: that echo must not stop a run at once (without
    its checkpoint). A signal after the window still does."""
    import signal
    import threading

    from racli.training import stopping

    stop = threading.Event()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    with pytest.raises(KeyboardInterrupt, match="not raised by the handler"):
        with stopping.stop_on_signals(stop):
            os.kill(os.getpid(), signal.SIGTERM)  # Slurm's
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun's, the same request
            time.sleep(0.05)
            assert stop.is_set()
            raise KeyboardInterrupt("not raised by the handler")  # reached: no forced stop
    stop.clear()
    with pytest.raises(KeyboardInterrupt, match="^$"):
        with stopping.stop_on_signals(stop, echo_s=0.1):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)  # a second request: at once
            threading.Event().wait(5)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with pytest.raises(KeyboardInterrupt, match="^$"):
        with stopping.stop_on_signals(stop):  # outside torchrun: two signals are two
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(5)


class _Claims:
    """Claims that always succeed, recording what was let go."""

    def __init__(self, on_take=None):
        self.on_take, self.released = on_take, []

    def take(self, unit):
        if self.on_take is not None:
            self.on_take()
        return True

    def done(self, unit, state, run_id=None, note=None):
        self.released.append((state, run_id))


class _Notes:
    def __init__(self):
        self.notes = []

    def note(self, text):
        self.notes.append(text)


def test_a_calibration_finished_between_the_look_and_the_claim_is_reused(monkeypatch):
    """Another process records the calibration and lets go of it just after this one
    looked: the claim succeeds, and the calibration is reused, not measured again."""
    from racli.experiment import calibration_run

    recorded = types.SimpleNamespace(run_id=7)
    looks = iter([None, recorded])
    monkeypatch.setattr(calibration_run, "find_calibration", lambda store, key: next(looks))

    def measure(*a, **kw):
        raise AssertionError("measured a second calibration")

    monkeypatch.setattr(calibration_run, "record_calibration", measure)
    claims, view = _Claims(), _Notes()
    prepared = types.SimpleNamespace(key="k3", specs=[], dataset=None, tag="t")
    got = calibration_run.calibration_for(None, None, None, prepared, view, None, claims)
    assert got is recorded and claims.released == [("done", 7)]
    assert view.notes == ["calibration: reusing run 7"]


def test_a_run_finished_between_the_look_and_the_claim_is_not_trained_again(monkeypatch):
    """The same race for a training unit, in the one-host launcher's planning."""
    from racli.experiment import jobs as exp_jobs

    arms = plan.parse_arms("baseline,ra_v5")
    job = plan.Job(arm=arms[0], seed=1, device=0, order=0)
    finished = _run(11, "baseline", 1, "finished", 30)
    looks = iter([{}, {("baseline", 1): [finished]}])
    monkeypatch.setattr(exp_jobs, "runs_by_job", lambda store, key: next(looks))
    ctx = types.SimpleNamespace(
        store=None,
        key="k4",
        claims=_Claims(),
        view=types.SimpleNamespace(state=types.SimpleNamespace()),
        steps=lambda: {"baseline": 30, "ra_v5": 24},
        unit=lambda j: ("unit", j.arm.label, j.seed),
        eta=lambda *a: 0.0,
    )
    results: list = []
    todo = exp_jobs.Context.pending(ctx, [job], results)
    assert todo == [] and [(r.run_id, r.status) for r in results] == [(11, "finished")]
    assert ctx.claims.released == [("finished", 11)]


def test_a_cluster_experiment_is_planned_for_the_nodes_not_for_the_submitting_host(monkeypatch):
    """A login node without a GPU submits GPU runs: `auto` and `cuda` mean the nodes' GPUs
    (never this host's CUDA, nor its memory), and the node computes the same key."""
    import torch

    from racli.config import load_config
    from racli.experiment.prepare import prepare
    from racli.experiment.results import Settings
    from racli.training import memory

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the login node
    cfg = load_config(None)

    def settings(device, launcher="slurm"):
        return Settings(
            arms=plan.parse_arms("baseline,ra_v5"), seeds=[1, 2], minutes=1.0,
            devices=[device], overrides=list(TINY), launcher=launcher,
        )  # fmt: skip

    submitted = prepare(settings("auto"), cfg)
    assert submitted.devices == ["cuda"] and submitted.specs[0].device == "cuda"
    assert submitted.specs[0].compile and submitted.specs[0].preset == "gpt2"
    assert prepare(settings("cuda", "ray"), cfg).key == submitted.key
    cpu = prepare(settings("cpu"), cfg)
    assert cpu.devices == ["cpu"] and cpu.key != submitted.key
    with pytest.raises(BadInput, match="CUDA is not available"):  # the local launcher looks
        prepare(settings("cuda", "local"), cfg)
    for device, option in (("cuda:1", "--device cuda:1"), ("bogus", "unknown device")):
        with pytest.raises(BadInput, match=option):
            prepare(settings(device), cfg)
    two = dataclasses.replace(settings("auto"), devices=["cuda:0", "cuda:1"])
    with pytest.raises(BadInput, match="--devices 0,1: with --launcher slurm the scheduler"):
        prepare(two, cfg)

    # the node: CUDA there, its memory checked, the same key as the submitting host's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    checked = []
    monkeypatch.setattr(memory, "device_bytes", lambda device: checked.append(device))
    node = prepare(dataclasses.replace(settings("cuda"), devices=["cuda"]), cfg, on_this_host=True)
    assert node.key == submitted.key and checked == ["cuda", "cuda"]
