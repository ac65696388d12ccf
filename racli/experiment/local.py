"""Running an experiment's jobs on this host: in this process (`run_in_process`, the CPU)
or one child `ra train` process per device (`run_children`, CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from racli import training
from racli.errors import BadInput
from racli.experiment.jobs import Context, log_path, runs_by_job, train_overrides
from racli.experiment.plan import Job
from racli.experiment.results import JobResult
from racli.store.checkpoints import checkpoint_path
from racli.store.experiment_queries import last_step
from racli.training import tensorboard
from racli.training.spec import DATA_PATH_KEY, checkpoint_written
from racli.training.stopping import PARENT_ENV

POLL_S = 0.25  # how often the children are checked for their end
STEPS_S = 2.0  # how often their latest step is read from the store

# ---- in this process (CPU) ---------------------------------------------------------


class _StepReporter:
    """Forwards the trainer's log points to the view."""

    def __init__(self, view, device: str):
        self.view, self.device = view, device

    def start(self, **kw) -> None:
        pass

    def update(self, *, step, **kw) -> None:
        self.view.step(self.device, step)

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _resume_in_process(ctx: Context, job: Job, run, device: str, reporter):
    """The run resumed under its own id, or None when it cannot be (started again then)."""
    how = " resumed" if checkpoint_path(ctx.store.db, run.id).is_file() else " again from step 0"
    ctx.view.started(device, ctx.label(job, run.id) + how, ctx.budgets[job.arm.label].steps)
    try:
        return training.resume(
            ctx.store, run.id, stop=ctx.stop, reporter=reporter, on_step=ctx.on_step
        )
    except BadInput as exc:
        ctx.view.note(f"run {run.id} cannot be resumed ({exc}): starting it again")
        return None


def run_in_process(ctx: Context, jobs: list[Job], confidence: float) -> list[JobResult]:
    """The jobs one after the other on the first device, in their order."""
    results: list[JobResult] = []
    device = ctx.devices[0]
    jobs = sorted(jobs, key=lambda j: j.order)
    todo = ctx.pending(jobs, results)
    for job, action, run in todo:
        if ctx.stop.is_set():
            break
        t0 = time.monotonic()
        reporter = _StepReporter(ctx.view, device)
        result = None
        if action == "resume":
            result = _resume_in_process(ctx, job, run, device, reporter)
        if result is None:
            spec = ctx.job_spec(job, device)
            ctx.view.started(device, ctx.label(job, None), ctx.budgets[job.arm.label].steps)
            try:
                result = training.train(
                    spec,
                    ctx.store,
                    dataset=ctx.dataset,
                    stop=ctx.stop,
                    reporter=reporter,
                    on_step=ctx.on_step,
                )
            except (KeyboardInterrupt, BadInput):
                raise
            except Exception as exc:  # recorded as failed by the trainer
                ctx.release(job, "failed", None, str(exc))
                ctx.view.finished(device, ctx.label(job, None), "failed", str(exc))
                results.append(JobResult(job, None, "failed", str(exc)))
                continue
        ctx.release(job, result.status, result.run_id)
        ctx.view.state.done += result.status in ("finished", "diverged")
        wall = time.monotonic() - t0
        ctx.durations.append(wall)
        ctx.view.state.eta_s = ctx.eta(len(jobs) - ctx.view.state.done, 0)
        extra = ctx.finished_note(result.val_loss, wall, result.train_seconds)
        ctx.view.finished(device, ctx.label(job, result.run_id), result.status, extra)
        results.append(JobResult(job, result.run_id, result.status))
        if result.status == "finished":
            ctx.verdict_so_far(confidence)
    return results


# ---- child processes (CUDA) ---------------------------------------------------------


def child_argv(ctx: Context, job: Job, resume: int | None) -> list[str]:
    """`python -m racli train ...` of a job (`--resume ID` for an interrupted run)."""
    s = ctx.settings
    argv = [sys.executable, "-m", "racli", "train", "--db", s.db]
    if s.config_path:
        argv += ["--config", s.config_path]
    if resume is not None:
        # the run's recorded configuration comes back, the TensorBoard folder is not recorded
        folder = tensorboard.folder_in(train_overrides(s.overrides))
        return argv + ["--resume", str(resume)] + (["--tensorboard", folder] if folder else [])
    budget = ctx.budgets[job.arm.label]
    device = "cpu" if ctx.devices[job.device] == "cpu" else "cuda"  # CUDA_VISIBLE_DEVICES picks
    argv += [
        "--attn",
        job.arm.attn,
        "--steps",
        str(budget.steps),
        "--seed",
        str(job.seed),
        "--tag",
        ctx.tag,
        "--device",
        device,
    ]
    if s.preset:
        argv += ["--model", s.preset]
    if s.data:
        argv += ["--data", s.data]
    if s.compile is not None:
        argv.append("--compile" if s.compile else "--no-compile")
    for item in train_overrides(s.overrides):
        argv += ["--set", item]
    argv += ["--extra-config", json.dumps(ctx.extra(job), sort_keys=True)]
    return argv


def child_env(device: str) -> dict[str, str]:
    """This environment with CUDA_VISIBLE_DEVICES narrowed to `device` (cuda:N)."""
    env = dict(os.environ)
    index = int(device.split(":")[1]) if ":" in device else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = ids[index] if index < len(ids) else str(index)
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(index)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class _Child:
    job: Job
    proc: subprocess.Popen
    log: Any
    started: float
    run_id: int | None
    total: int


def last_error(path: Path) -> str:
    """The last `ra: ...` line of a child's log (else its last line)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errs = [ln for ln in lines if ln.startswith("ra: ")]
    return (errs or lines or [""])[-1]


def _start_child(ctx: Context, d: int, job: Job, action: str, run) -> _Child:
    """Start a job's child process on device `d`, its output appended to its log."""
    resume = run.id if action == "resume" else None
    if resume is not None and not checkpoint_path(ctx.store.db, resume).is_file():
        written = checkpoint_written(ctx.store, resume)
        if written is not None:  # its file is gone (another machine): a new run, this one kept
            ctx.view.note(
                f"run {resume}'s checkpoint (step {written}) is not here: starting "
                f"{job.arm.label} seed {job.seed} again as a new run; run {resume} is kept"
            )
            resume = None
        elif DATA_PATH_KEY in (run.config or {}):  # `ra train --resume` starts it from step 0
            ctx.view.note(f"run {resume} has no checkpoint: training it again from step 0")
        else:  # recorded by an older ra: a new run
            ctx.view.note(
                f"run {resume} has no checkpoint: starting {job.arm.label} seed {job.seed} again"
            )
            resume = None
    path = log_path(ctx.settings.db, ctx.key, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a")
    log.write(
        f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} "
        f"{'resume ' + str(resume) if resume else 'start'} ===\n"
    )
    log.flush()
    env = child_env(ctx.devices[d]) if ctx.devices[d] != "cpu" else dict(os.environ)
    env[PARENT_ENV] = str(os.getpid())  # the child stops cleanly if this process is killed
    proc = subprocess.Popen(
        child_argv(ctx, job, resume),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    ctx.children.append(proc)
    total = ctx.budgets[job.arm.label].steps
    ctx.view.started(ctx.devices[d], ctx.label(job, resume) + (" resumed" if resume else ""), total)
    return _Child(job, proc, log, time.monotonic(), resume, total)


def _end_child(
    ctx: Context, d: int, child: _Child, rc: int, *, now: float, left: int, running: int
) -> JobResult:
    """The result of a child that exited with `rc` (its run read back from the store).
    Exit code 2 (bad input) gives status failed with the child's error line as note."""
    child.log.close()
    ctx.children.remove(child.proc)
    run = _run_of(ctx, child)
    status = run.status if run is not None else "failed"
    run_id = run.id if run is not None else None
    note = ""
    if rc == 2:
        status, note = "failed", last_error(log_path(ctx.settings.db, ctx.key, child.job))
    elif status != "finished" and rc not in (0, 130):
        note = last_error(log_path(ctx.settings.db, ctx.key, child.job))
    ctx.release(child.job, status, run_id, note)
    if status in ("finished", "diverged"):
        ctx.view.state.done += 1
        ctx.durations.append(now - child.started)
    ctx.view.state.eta_s = ctx.eta(left, running)
    extra = (
        ctx.finished_note(run.val_loss, now - child.started, run.train_seconds)
        if run is not None and status == "finished"
        else note
    )
    ctx.view.finished(ctx.devices[d], ctx.label(child.job, run_id), status, extra)
    return JobResult(child.job, run_id, status, note)


def run_children(ctx: Context, jobs: list[Job], confidence: float) -> list[JobResult]:
    """One child process per device at a time, each device working through its queue.
    A child refusing its input (exit code 2) stops new starts; BadInput once all ended."""
    results: list[JobResult] = []
    todo = ctx.pending(jobs, results)
    per_device: list[list[tuple]] = [[] for _ in ctx.devices]
    for item in todo:
        per_device[item[0].device].append(item)
    running: dict[int, _Child] = {}
    bad_input: str | None = None
    last_poll = 0.0
    while True:
        if not ctx.stop.is_set() and bad_input is None:
            for d, queue in enumerate(per_device):
                if d not in running and queue:
                    running[d] = _start_child(ctx, d, *queue.pop(0))
        if not running:
            break
        time.sleep(POLL_S)
        now = time.monotonic()
        if now - last_poll >= STEPS_S:
            last_poll = now
            _poll_steps(ctx, running)
        for d, child in list(running.items()):
            rc = child.proc.poll()
            if rc is None:
                continue
            del running[d]
            left = sum(len(q) for q in per_device)
            result = _end_child(ctx, d, child, rc, now=now, left=left, running=len(running))
            if rc == 2:
                bad_input = result.note
            results.append(result)
            if result.status == "finished":
                ctx.verdict_so_far(confidence)
    if bad_input is not None:
        raise BadInput(f"a training run refused its input: {bad_input}")
    return results


def _run_of(ctx: Context, child: _Child):
    """The newest recorded run of a child's job."""
    runs = runs_by_job(ctx.store, ctx.key).get((child.job.arm.label, child.job.seed), [])
    if child.run_id is not None:
        return next((r for r in runs if r.id == child.run_id), None)
    return runs[-1] if runs else None


def _poll_steps(ctx: Context, running: dict[int, _Child]) -> None:
    """The latest logged step of every running child's run (from the store)."""
    for d, child in running.items():
        if child.run_id is None:
            run = _run_of(ctx, child)
            if run is None or run.status != "running":
                continue
            child.run_id = run.id
            ctx.view.named(ctx.devices[d], ctx.label(child.job, run.id))
        step = last_step(ctx.store, child.run_id)
        if step is not None:
            ctx.view.step(ctx.devices[d], int(step))
