"""What a Slurm job or Ray actor of `ra experiment` runs on its node.

`run(WorkerJob)` is the whole job: the experiment's calibration (recorded in the shared
store, like the local launcher's), or the arms of one seed side by side, each arm an
`ra train` child process on `gpus_per_run` of the job's GPUs (`torchrun` past one), the
GPU slots rotated by the seed's position in the whole list, so the balanced order of the
local launcher holds. On the CPU the arms run one after the other in the A B / B A order.
A run over several nodes is a job of its own (kind "run", racli/experiment/multinode.py):
under Slurm node 0's task is its worker, the other nodes' tasks only start their
torchrun; under Ray the job's actor is its worker and each start runs on the nodes of a
placement group (racli/experiment/ray_nodes.py).

Each arm is claimed in the store's `jobs` table before it trains (one owner at a time);
the owner's name starts with `<launcher>:<job name>:`, so a requeued Slurm job or a
restarted Ray actor takes its own units back at once, while a unit another process
holds is waited for. A run whose process is still ending (its heartbeat fresh) is waited
for, then resumed from its checkpoint; a run refusing its input (exit code 2) is not
retried. Each run is started through racli/experiment/guard.py, which gives it one
SIGTERM when the worker dies, so a killed worker leaves an interrupted run with its
checkpoint, not an orphan. A stop request to the worker itself (SIGTERM, SIGINT) starts
no further run; the run under way gets the scheduler's signal directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from racli.config import load_config
from racli.experiment import guard, multinode, ownership, plan
from racli.experiment.calibration_run import WAIT_S, calibration_for, find_calibration
from racli.experiment.jobs import Context, experiment_config, job_state, log_path, runs_by_job
from racli.experiment.local import child_argv, last_error
from racli.experiment.multinode import child_command
from racli.experiment.plan import Job
from racli.experiment.prepare import prepare
from racli.experiment.results import JobResult, Settings
from racli.experiment.view import PlainView
from racli.store.checkpoints import checkpoint_path
from racli.store.engine import open_store

Spawn = Callable[[IO[str], dict[str, str]], int]  # (the run's log, its env) -> exit code
MAX_ATTEMPTS = 2  # starts of one arm's run per job incarnation before it counts as failed
BAD_INPUT = "bad input"


@dataclass
class WorkerJob:
    kind: str  # calibration | seed | run (one arm's run over several nodes)
    settings: Settings  # devices: ["cpu"] or ["cuda"]
    key: str
    tag: str
    launcher: str  # slurm | ray
    name: str  # the job's name at its scheduler, e.g. ra-<key>-seed3
    cwd: str  # the folder the command ran in (checkpoints, logs): every node sees it
    seed: int = 0
    seed_index: int = 0  # the seed's position among all the experiment's seeds
    gpus_per_run: int = 0
    arm: str = ""  # kind run: the arm's label
    nodes: int = 1  # kind run: the nodes it spans, one task (one torchrun agent) each
    exchange: str = ""  # kind run: the folder of the launches node 0 hands the others


def owner_prefix(job: WorkerJob) -> str:
    return f"{job.launcher}:{job.name}:"


def run(job: WorkerJob, nodes=None) -> dict:
    """The job, in its folder, with SIGTERM / SIGINT asking for a graceful stop. `nodes`
    (kind run under Ray: racli/experiment/ray_nodes.py) starts each launch of a run over
    several nodes; under Slurm this task is one of the run's nodes, and node 0's
    `multinode.SlurmNodes` starts them."""
    os.chdir(job.cwd)
    stop = threading.Event()
    with _stop_on_signals(stop):
        if job.kind == "run" and nodes is None:
            node = multinode.this_node()
            if node.rank != 0:
                return multinode.follow(Path(job.exchange), node, stop)
            nodes = multinode.SlurmNodes(Path(job.exchange), node)
        store = open_store(job.settings.db)
        prefix = owner_prefix(job)
        claims = ownership.Claims(
            store, launcher=job.launcher, owner=ownership.owner_name(prefix), takeover=prefix
        )
        try:
            if job.kind == "calibration":
                return _calibrate(job, store, claims, stop)
            if job.kind == "run":
                return _run_over_nodes(job, nodes, store, claims, stop)
            return _seed(job, store, claims, stop)
        finally:
            claims.close("interrupted")
            store.close()


def record_failure(job: WorkerJob, error: str) -> None:
    """A job that raised: its units marked failed with the error, for the command to show."""
    from racli.store import jobs as store_jobs

    store = open_store(job.settings.db)
    try:
        if job.kind == "calibration":
            units = [ownership.calibration_unit(job.key)]
        else:
            units = [
                ownership.train_unit(
                    job.key, a.label, plan.arm_seed(a, job.settings.arms, job.seed)
                )
                for a in job.settings.arms
                if job.kind == "seed" or a.label == job.arm
            ]
        for unit in units:
            store_jobs.set_state(store, unit, "failed", error[:2000])
    finally:
        store.close()


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = lambda signum, frame: stop.set()  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _calibrate(job: WorkerJob, store, claims, stop) -> dict:
    cfg = load_config(job.settings.config_path)
    p = prepare(job.settings, cfg, on_this_host=True)  # this node trains: its device, its memory
    if p.key != job.key:
        raise RuntimeError(
            f"this node computes experiment key {p.key}, the command {job.key}: the data or "
            f"ra.yaml differ between the submitting host and this node"
        )
    cal = calibration_for(store, job.settings, p.ecfg, p, PlainView(sys.stdout), stop, claims)
    return {"calibration_run": cal.run_id}


def gpu_slots(visible: str | None, per_run: int, n_arms: int) -> list[str]:
    """The job's GPUs cut into slots of `per_run` (CUDA_VISIBLE_DEVICES lists); ["cpu"]
    without GPUs. At most one slot per arm."""
    ids = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if per_run < 1 or not ids:
        return ["cpu"]
    n = max(1, min(n_arms, len(ids) // per_run))
    return [",".join(ids[k * per_run : (k + 1) * per_run]) for k in range(n)]


def seed_jobs(arms, seed: int, seed_index: int, n_slots: int) -> list[Job]:
    """The arms of one seed with their slots: arm j on slot (seed position + j) mod slots,
    in the local launcher's order for that position (A B, then B A)."""
    base = plan.schedule(arms, [seed], 1, first_index=seed_index)
    return [dataclasses.replace(j, device=(seed_index + j.arm.index) % n_slots) for j in base]


def _context(job: WorkerJob, store, claims, stop, per_slot: int, n_slots: int):
    """The job's Context and its GPU slots (CUDA_VISIBLE_DEVICES lists, or ["cpu"])."""
    s = job.settings
    cfg = experiment_config(load_config(s.config_path), s.overrides)
    cal = find_calibration(store, job.key)
    if cal is None:
        raise RuntimeError(f"experiment {job.key} has no finished calibration in the store")
    budgets = plan.step_budgets(
        s.arms, s.minutes, cal.arm(s.arms[0].label).steps_per_s, cal.variant_ratios()
    )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if s.devices[0] != "cpu" else None
    slots = gpu_slots(visible, per_slot, n_slots)
    devices = ["cpu"] if slots == ["cpu"] else [f"cuda:{ids}" for ids in slots]
    ctx = Context(
        s,
        cfg,
        store,
        key=job.key,
        tag=job.tag,
        dataset=None,
        budgets=budgets,
        cal=cal,
        devices=devices,
        view=PlainView(sys.stdout),
        stop=stop,
        claims=claims,
    )
    return ctx, slots


def _seed(job: WorkerJob, store, claims, stop) -> dict:
    s = job.settings
    ctx, slots = _context(job, store, claims, stop, job.gpus_per_run, len(s.arms))
    queues: dict[int, list[Job]] = {}
    per_run = job.gpus_per_run
    for j in seed_jobs(s.arms, job.seed, job.seed_index, len(slots)):
        queues.setdefault(j.device, []).append(j)

    def start(j: Job) -> Callable[[int | None], int]:
        slot = slots[j.device]
        return lambda resume: _child(
            ctx, j, resume, slot, _guarded(child_command(child_argv(ctx, j, resume), per_run))
        )

    def work(queue: list[Job]) -> list[JobResult]:
        return [_arm(ctx, j, start(j)) for j in queue]

    with ThreadPoolExecutor(max_workers=len(queues)) as pool:
        results = [r for rs in pool.map(work, queues.values()) for r in rs]
    return {
        "results": [(r.job.arm.label, r.job.seed, r.run_id, r.status, r.note) for r in results],
        "interrupted": stop.is_set(),
    }


def _run_over_nodes(job: WorkerJob, nodes, store, claims, stop) -> dict:
    """The books of a run over several nodes: claim, resume or start it, record its end.
    Each start goes through `nodes` (`run(argv, per_node, log, out, env)`: that start on
    every node, node 0's exit code; `hosts()`; `end()`; `here`: node 0's torchrun runs in
    this process's environment): multinode.SlurmNodes on node 0 of a Slurm job,
    ray_nodes.RayNodes in a Ray job's actor."""
    per_node = multinode.processes_per_node(job.gpus_per_run, job.nodes)
    ctx, slots = _context(job, store, claims, stop, per_node, 1)
    if job.gpus_per_run and not nodes.here:  # node 0's GPUs are those of its Ray bundle
        ctx.devices, slots = ["cuda"], ["cpu"]  # (no CUDA_VISIBLE_DEVICES set from here)
    arms = seed_jobs(job.settings.arms, job.seed, job.seed_index, 1)
    j = next(x for x in arms if x.arm.label == job.arm)
    log = str(log_path(ctx.settings.db, ctx.key, j))

    def start(resume: int | None) -> int:
        ctx.hosts = nodes.hosts()
        argv = child_argv(ctx, j, resume)
        return _child(
            ctx, j, resume, slots[0], lambda out, env: nodes.run(argv, per_node, log, out, env)
        )

    try:
        r = _arm(ctx, j, start)
    finally:
        nodes.end()
    return {
        "results": [(r.job.arm.label, r.job.seed, r.run_id, r.status, r.note)],
        "interrupted": stop.is_set(),
    }


def _arm(ctx: Context, job: Job, start: Callable[[int | None], int]) -> JobResult:
    """Train one arm's run to its end: claim, resume or start (`start(resume)`: the run's
    exit code), wait for a holder."""
    unit, steps = ctx.unit(job), ctx.budgets[job.arm.label].steps
    attempts, said = 0, False

    def look():
        return job_state(runs_by_job(ctx.store, ctx.key).get((job.arm.label, job.seed), []), steps)

    while not ctx.stop.is_set():
        action, run = look()
        held = action == "busy" or (action != "done" and not ctx.claims.take(unit))
        if not held and action != "done":
            action, run = look()  # its holder may have finished it between look and claim
        if action == "done":
            ctx.release(job, run.status, run.id)
            return JobResult(job, run.id, run.status, "recorded before")
        if held or action == "busy":  # another process holds it, or its process is ending
            if not said:
                ctx.view.note(f"{ctx.label(job, run.id if run else None)}: waiting (held)")
                said = True
            ctx.stop.wait(WAIT_S)
            continue
        resume = run.id if action == "resume" else None
        if resume is not None and not checkpoint_path(ctx.store.db, resume).is_file():
            resume = None
        rc = start(resume)
        runs = runs_by_job(ctx.store, ctx.key).get((job.arm.label, job.seed), [])
        last = runs[-1] if runs else None
        run_id = last.id if last is not None else None
        if rc == 2:
            note = f"{BAD_INPUT}: {last_error(log_path(ctx.settings.db, ctx.key, job))}"
            ctx.release(job, "failed", run_id, note)
            return JobResult(job, run_id, "failed", note)
        if last is not None and last.status in ("finished", "diverged"):
            ctx.release(job, last.status, last.id)
            return JobResult(job, last.id, last.status)
        attempts += 1
        if not ctx.stop.is_set() and attempts >= MAX_ATTEMPTS:
            note = f"run ended {last.status if last else 'unrecorded'} (exit code {rc})"
            ctx.release(job, "failed", run_id, note)
            return JobResult(job, run_id, "failed", note)
    return JobResult(job, None, "interrupted")


def _child(ctx: Context, job: Job, resume: int | None, slot: str, spawn: Spawn) -> int:
    """Run one start of a job's run to its end: `spawn(log, env)` (its exit code) with the
    run's log open and the environment of its GPU slot."""
    path = log_path(ctx.settings.db, ctx.key, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if slot != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = slot
    what = f"resume {resume}" if resume else "start"
    ctx.view.note(f"{ctx.label(job, resume)}: {what} on {ctx.devices[job.device]}")
    with open(path, "a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {what} ===\n")
        log.flush()
        return spawn(log, env)


def _guarded(command: list[str]) -> Spawn:
    """`command` through the guard: one SIGTERM to the run when this worker dies."""
    return lambda log, env: guard.spawn(command, log, env).wait()
