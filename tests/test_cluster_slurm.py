"""`ra experiment --launcher slurm` against a real Slurm (tests/cluster.py: one host, two
logical nodes, fake GPUs, accounting through slurmdbd) and a throwaway PostgreSQL store.

One experiment (2 variants x 2 seeds, tiny CPU model): the calibration runs as a Slurm
job, then one array task per seed; one seed's job is requeued mid-run (`scontrol
requeue`, as a preemption does) and must resume its run from the checkpoint; the command
is stopped with Ctrl-C (leaving the jobs running) and run again, re-attaching to them.
Then: every run finished once; the same command again submits and records nothing; and
`--launcher local` over the same calibration gives the same runs and the same verdict."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from cluster_experiment import (
    assert_same_as_local,
    config_of,
    experiment_argv,
    held_training_run,
    ra_cli,
    sql,
    train_runs,
    wait_signalled,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

ROOT = Path(__file__).resolve().parent.parent
SLURM_SETTINGS = [
    "--set",
    "slurm.poll_s=0.5",
    "--set",
    "slurm.cpus_per_task=1",
    "--set",
    "slurm.time_limit_min=15",
    "--set",
    "slurm.gpus_per_run=0",
]


def _squeue_state(cluster, sid: str) -> str:
    return cluster.run("squeue", "-h", "-j", sid, "-o", "%T").strip()


def _requeue(cluster, sid: str) -> None:
    """After `scontrol requeue` (Slurm sends SIGTERM and holds the job ~2 minutes): the
    job leaves RUNNING, then its hold is skipped with StartTime=now."""
    wait_until(lambda: _squeue_state(cluster, sid) != "RUNNING", "the requeue", 60)

    def restarted() -> bool:
        state = _squeue_state(cluster, sid)
        if state == "PENDING":
            subprocess.run(
                ["scontrol", "update", f"JobId={sid}", "StartTime=now"],
                env=cluster.env(),
                capture_output=True,
            )
        return state in ("RUNNING", "")

    wait_until(restarted, "the requeued job to run again", 120)


def _sacct_jobs(cluster) -> set[str]:
    out = cluster.run("sacct", "-a", "-X", "-n", "-P", "-o", "JobID")
    return {line.strip() for line in out.splitlines() if line.strip()}


def _requeued_then_reattached(
    cluster, url: str, work: Path, argv, env, what: str, *, may_have_ended: bool = False
):
    """Start the experiment; once a run trains (held still until the stop reaches it:
    tests/cluster_experiment.py), requeue its job and Ctrl-C the command
    (--leave-on-interrupt: the jobs go on); then the same command again re-attaches to
    the jobs it submitted and submits none. (run_id, attn, seed, job, stderr of the
    first command, the second command). `may_have_ended`: runs of a few seconds can all
    end before the second command looks; then it finds no job to re-attach to, and
    still submits none."""
    proc = subprocess.Popen(
        argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with held_training_run(url, work, what, proc) as (found, held):
            run_id, attn, seed, sid, _ = found
            cluster.run("scontrol", "requeue", sid)
            wait_signalled(held)
        _requeue(cluster, sid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "slurm job(s) running" in err, err[-3000:]
    jobs_before = _sacct_jobs(cluster)
    attached = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=500)
    assert attached.returncode == 0, (attached.stderr[-4000:], cluster.logs())
    reattached = "re-attached to slurm job" in attached.stderr
    none_left = may_have_ended and "\n0 slurm job(s) of " in attached.stderr
    assert (reattached or none_left) and "submitted" not in attached.stderr, attached.stderr
    assert _sacct_jobs(cluster) == jobs_before
    return run_id, attn, seed, sid, err, attached


def test_slurm_experiment_survives_a_requeue_and_matches_local(slurm_cluster, pg_server, tmp_path):
    url = pg_server.new_database()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(slurm_cluster.env(), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    argv = experiment_argv(url, "slurm", *SLURM_SETTINGS, "--json")
    run_id, attn, seed, sid, err, attached = _requeued_then_reattached(
        slurm_cluster, url, work, argv, env, "a seed job's run to be training"
    )
    assert "_" in sid  # the seed jobs are one array
    data = json.loads(attached.stdout)
    key = data["key"]
    runs = train_runs(url)
    # every arm and seed trained once and finished; the requeued run under its own id
    assert [r[:3] for r in runs] == [
        ("baseline", 1, "finished"),
        ("baseline", 2, "finished"),
        ("ra_v5", 1, "finished"),
        ("ra_v5", 2, "finished"),
    ]
    assert run_id in [r[5] for r in runs]
    log = (work / "ra_experiment_logs" / key / f"{attn}-seed{seed}.log").read_text()
    assert f"resume {run_id} ===" in log, log[-2000:]
    assert sql(url, "SELECT count(*) FROM runs WHERE kind = 'calibration'") == [(1,)]
    # the host is recorded with the device; the jobs table holds the Slurm job ids
    hosts = sql(url, "SELECT config FROM runs WHERE kind = 'train'")
    assert all(json.loads(c)["experiment"]["host"] if isinstance(c, str) else c for (c,) in hosts)
    units = sql(url, "SELECT kind, arm, seed, launcher, scheduler_job, state FROM jobs")
    assert {(u[0], u[3], u[5]) for u in units} == {
        ("calibration", "slurm", "done"),
        ("train", "slurm", "done"),
    }
    assert len(units) == 5 and all(u[4] for u in units)
    assert "INTERRUPTED" not in err and data["verdicts"][0]["outcome"] != "NONE"

    # the same command again: re-attaches to nothing, submits nothing, records nothing
    jobs_before = _sacct_jobs(slurm_cluster)
    again = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "submitted" not in again.stderr and "reusing run" in again.stderr
    assert train_runs(url) == runs
    assert _sacct_jobs(slurm_cluster) == jobs_before
    assert json.loads(again.stdout)["verdicts"] == data["verdicts"]

    # --status shows every unit from the store
    status = ra_cli(*argv[3:-1], "--status", "--json", cwd=work, env=env)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["units"]
    assert [r["run_status"] for r in rows] == ["finished"] * 5
    assert all(r["launcher"] == "slurm" and r["job"] for r in rows)

    # --launcher local over the same calibration: the same runs, the same verdict
    assert_same_as_local(pg_server, url, runs, data, work, env)


def test_slurm_runs_over_two_nodes_and_survive_a_requeue(slurm_cluster, pg_server, tmp_path):
    """`slurm.nodes_per_run=2` (CPU runs, gloo; 2 variants x 1 seed): each run is a Slurm
    job of its own over n1 and n2, one torchrun agent per node, node 0 alone keeping the
    store's books. One run's job is requeued mid-run and resumes from its checkpoint; the
    command is stopped with Ctrl-C and run again, re-attaching."""
    url = pg_server.new_database()
    work = tmp_path / "work"
    work.mkdir()
    # one thread a process: two runs of two processes each share the host's cores
    env = dict(slurm_cluster.env(), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    argv = experiment_argv(
        url,
        "slurm",
        *SLURM_SETTINGS,
        "--set",
        "slurm.nodes_per_run=2",
        "--json",
        seeds="1",
        minutes="0.05",
    )
    run_id, attn, seed, _, _, attached = _requeued_then_reattached(
        slurm_cluster, url, work, argv, env, "a run to be training", may_have_ended=True
    )
    data = json.loads(attached.stdout)
    key = data["key"]
    runs = train_runs(url)
    assert [r[:3] for r in runs] == [("baseline", 1, "finished"), ("ra_v5", 1, "finished")]
    assert run_id in [r[5] for r in runs]  # the requeued run under its own id
    logs = work / "ra_experiment_logs" / key
    assert f"resume {run_id} ===" in (logs / f"{attn}-seed{seed}.log").read_text()
    # both nodes trained every run: two processes, one a node
    sizes = sql(url, "SELECT config FROM runs WHERE kind = 'train' ORDER BY id")
    assert [config_of(c)["world_size"] for (c,) in sizes] == [2, 2]
    for arm in ("baseline", "ra_v5"):
        text = (logs / f"{arm}-seed1.node1.log").read_text()
        # node 1 followed the requeued job's second incarnation too (a fresh exchange)
        assert text.count("node 1, launch 0 ===") == (2 if arm == attn else 1), text[-3000:]
    folders = sorted(p.name for p in (work / "ra_slurm" / "nodes").iterdir())
    assert len(folders) == 2 and sorted(f[-2:] for f in folders) == [".0", ".1"], folders
    # one job per run over both nodes, submitted in the balanced order (seed 1: A then B)
    units = sql(url, "SELECT arm, scheduler_job, state FROM jobs WHERE kind = 'train'")
    jobs = {arm: sid for arm, sid, _ in units}
    assert {s for _, _, s in units} == {"done"} and len(set(jobs.values())) == 2
    assert _job_number(jobs["baseline"]) < _job_number(jobs["ra_v5"])
    nodes = _sacct_nodes(slurm_cluster)
    assert [nodes[jobs[a]] for a in ("baseline", "ra_v5")] == [("2", "n[1-2]")] * 2
    assert data["verdicts"][0]["outcome"] != "NONE"

    # the same command again: submits nothing, records nothing
    again = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "submitted" not in again.stderr and "reusing run" in again.stderr
    assert train_runs(url) == runs


def _job_number(sid: str) -> tuple[int, int]:
    head, _, task = sid.partition("_")
    return int(head), int(task or 0)


def _sacct_nodes(cluster) -> dict[str, tuple[str, str]]:
    out = cluster.run("sacct", "-a", "-X", "-n", "-P", "-o", "JobID,NNodes,NodeList")
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0]: (r[1], r[2]) for r in rows}
