"""`ra experiment --launcher ray` against a real local Ray cluster on 127.0.0.1
(tests/cluster.py) and a throwaway PostgreSQL store.

One experiment (2 variants x 2 seeds, tiny CPU model): the calibration runs as a Ray
actor, then one actor per seed; one seed's worker process is killed (SIGKILL) mid-run:
Ray restarts the actor, whose run resumes from the checkpoint the `ra train` child left
when it got SIGTERM on its parent's death; the command is stopped with Ctrl-C (leaving
the actors running) and run again, re-attaching to them by name. Then: every run finished
once; the same command again submits and records nothing; and `--launcher local` over the
same calibration gives the same runs and the same verdict."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

ROOT = Path(__file__).resolve().parent.parent
RAY_SETTINGS = ["--set", "ray.poll_s=0.5", "--set", "ray.gpus_per_run=0"]


def _killed_then_interrupted(url: str, work: Path, argv, env, what: str):
    """Start the experiment; once a run trains (held still until the stop reaches it:
    tests/cluster_experiment.py), SIGKILL its job actor's worker process and Ctrl-C the
    command (--leave-on-interrupt: the actors go on). (run_id, attn, seed, job
    name, stderr of the command)."""
    proc = subprocess.Popen(
        argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        with held_training_run(url, work, what, proc) as (found, held):
            run_id, attn, seed, sid, owner = found
            assert owner.startswith(f"ray:{sid}:")
            os.kill(int(owner.split(":")[-2]), signal.SIGKILL)  # the actor's worker process
            wait_signalled(held)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130 and "ray job(s) running" in err, err[-3000:]
    return run_id, attn, seed, sid, err


def test_ray_experiment_survives_a_killed_worker_and_matches_local(
    ray_cluster, pg_server, tmp_path
):
    url = pg_server.new_database()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(ray_cluster.env(), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    argv = experiment_argv(url, "ray", *RAY_SETTINGS, "--json")
    run_id, attn, seed, sid, err = _killed_then_interrupted(
        url, work, argv, env, "a seed job's run to be training"
    )
    assert sid.endswith(f"-seed{seed}")
    # the same command again re-attaches to the actors it made (by name), makes none
    attached = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=500)
    assert attached.returncode == 0, attached.stderr[-4000:]
    assert "re-attached to ray job" in attached.stderr and "submitted" not in attached.stderr
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
        ("calibration", "ray", "done"),
        ("train", "ray", "done"),
    }
    assert len(units) == 5 and all(u[4] for u in units)
    assert "INTERRUPTED" not in err and data["verdicts"][0]["outcome"] != "NONE"

    # the same command again: re-attaches to nothing, submits nothing, records nothing
    again = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "submitted" not in again.stderr and "reusing run" in again.stderr
    assert train_runs(url) == runs
    assert json.loads(again.stdout)["verdicts"] == data["verdicts"]

    # --status shows every unit from the store
    status = ra_cli(*argv[3:-1], "--status", "--json", cwd=work, env=env)
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["units"]
    assert [r["run_status"] for r in rows] == ["finished"] * 5
    assert all(r["launcher"] == "ray" and r["job"] for r in rows)

    # --launcher local over the same calibration: the same runs, the same verdict
    assert_same_as_local(pg_server, url, runs, data, work, env)


def test_ray_runs_over_two_nodes_and_survive_a_killed_worker(
    ray_nodes_cluster, pg_server, tmp_path
):
    """`ray.nodes_per_run=2` (CPU runs, gloo; 2 variants x 1 seed) on a Ray cluster of two
    logical nodes: each run is a job actor of its own whose starts take a placement group
    of one bundle per node (STRICT_SPREAD), one torchrun agent per bundle. One run's job
    actor is killed (SIGKILL) mid-run: its node actors and group go with it, Ray restarts
    it, and it resumes the run from its checkpoint on a fresh group. The command is
    stopped with Ctrl-C and run again, re-attaching; then the same runs and verdict as
    `--launcher local`."""
    url = pg_server.new_database()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(ray_nodes_cluster.env(), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    shape = {"seeds": "1", "minutes": "0.05"}
    # a global batch of 8 sequences: 2 processes x 4 here, 2 accumulation steps x 4 locally
    batch = ["--set", "train.batch_tokens=256"]
    argv = experiment_argv(
        url, "ray", *RAY_SETTINGS, *batch, "--set", "ray.nodes_per_run=2", "--json", **shape
    )
    run_id, attn, seed, sid, _ = _killed_then_interrupted(
        url, work, argv, env, "a run to be training"
    )
    assert sid.endswith(f"-{attn}-seed{seed}")
    # the same command again re-attaches to the actors still running (the runs are short:
    # they may all have finished meanwhile), submits none
    attached = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert attached.returncode == 0, attached.stderr[-4000:]
    assert "submitted" not in attached.stderr, attached.stderr[-3000:]
    data = json.loads(attached.stdout)
    runs = train_runs(url)
    assert [r[:3] for r in runs] == [("baseline", 1, "finished"), ("ra_v5", 1, "finished")]
    assert run_id in [r[5] for r in runs]  # the killed run resumed under its own id
    logs = work / "ra_experiment_logs" / data["key"]
    assert f"resume {run_id} ===" in (logs / f"{attn}-seed{seed}.log").read_text()
    # both nodes trained every run: two processes, one a node, on two nodes of the group
    configs = [config_of(c) for (c,) in sql(url, "SELECT config FROM runs WHERE kind = 'train'")]
    assert [c["world_size"] for c in configs] == [2, 2]
    assert all(len(c["experiment"]["hosts"]) == 2 for c in configs)
    for arm in ("baseline", "ra_v5"):
        text = (logs / f"{arm}-seed1.node1.log").read_text()
        # the resumed run's node 1 in the restarted actor's fresh group: launch 0 again
        assert text.count("node 1, launch 0 ===") == (2 if arm == attn else 1), text[-3000:]
    units = sql(url, "SELECT arm, scheduler_job, state FROM jobs WHERE kind = 'train'")
    assert {s for _, _, s in units} == {"done"} and len({j for _, j, _ in units}) == 2
    assert data["verdicts"][0]["outcome"] != "NONE"

    # the same command again: submits nothing, records nothing
    again = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "submitted" not in again.stderr and "reusing run" in again.stderr
    assert train_runs(url) == runs
    assert_same_as_local(pg_server, url, runs, data, work, env, *batch, **shape)


UNIMPORTABLE = """
import sys, time, types
sys.path.insert(1, sys.argv[1])  # the driver's path only: Ray's workers do not get it
import ra_driver_only
from racli.experiment.ray_launcher import RayLauncher

cfg = types.SimpleNamespace(poll_s=0.2, address="auto", cpus_per_job=1, max_restarts=1)
launcher = RayLauncher(cfg)
(sid,) = launcher.submit([ra_driver_only.Job("ra-test-unimportable")], 0, "x")
deadline = time.monotonic() + 60
while launcher.states([sid])[sid] != "ENDED" and time.monotonic() < deadline:
    time.sleep(0.2)
print(launcher.states([sid])[sid], launcher.why_ended(sid, "ENDED"), sep="|")
launcher.close()
"""


def test_an_actor_whose_job_ray_cannot_load_is_gone_with_its_reason(ray_cluster, tmp_path):
    """An actor whose argument names a module its node lacks (as when ra is not installed
    there) dies in its constructor, leaving nothing in the store: the launcher reports
    Ray's reason, which `ra experiment` prints instead of a bare "ended"."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "ra_driver_only.py").write_text(
        "class Job:\n    def __init__(self, name):\n        self.name = name\n"
    )
    env = dict(ray_cluster.env(), PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-c", UNIMPORTABLE, str(mods)]
    res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == (
        "ENDED|ModuleNotFoundError: No module named 'ra_driver_only'"
    ), res.stdout
