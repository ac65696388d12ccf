"""The jobs of one invocation: what they share, their state in the store, specs and logs."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

from racli.config import apply_overrides
from racli.experiment import judge, ownership, plan
from racli.experiment.plan import Budget, Job
from racli.experiment.results import JobResult, Settings
from racli.store.experiment_queries import experiment_runs
from racli.store.recorder import is_stale
from racli.store.urls import sqlite_path
from racli.training import spec_from_config
from racli.training.progress import fmt_seconds

STALE_NOTE = "its heartbeat is fresh: another process is running it"
HELD_NOTE = "held by another process (running, or its heartbeat not yet stale)"


def experiment_config(cfg, overrides: list[str]):
    """ra.yaml with every --set applied (model., train., experiment., slurm. and ray. keys)."""
    return apply_overrides(
        cfg, overrides, sections=("model", "train", "experiment", "slurm", "ray")
    )


#: --set sections of `ra experiment` that a training run does not take
EXPERIMENT_SECTIONS = ("experiment.", "slurm.", "ray.")


def train_overrides(overrides: list[str]) -> list[str]:
    """The --set items a training run takes (all but the experiment., slurm. and ray. ones)."""
    return [o for o in overrides if not o.strip().startswith(EXPERIMENT_SECTIONS)]


def arm_spec(
    settings: Settings,
    cfg,
    attn: str,
    *,
    device: str,
    steps: int,
    seed: int,
    tag,
    on_this_host: bool = True,
):
    """The TrainSpec of one arm's run (validated like `ra train`'s; `on_this_host=False`:
    for a cluster's node, the device not looked for here)."""
    return spec_from_config(
        cfg,
        attn=attn,
        preset=settings.preset,
        data=settings.data,
        steps=steps,
        seed=seed,
        tag=tag,
        device=device,
        compile=settings.compile,
        overrides=train_overrides(settings.overrides),
        on_this_host=on_this_host,
    )


def job_state(runs: list, steps: int | None = None) -> tuple[str, Any]:
    """What to do with a job given its recorded runs (oldest first):
    ("done", run) / ("resume", run) / ("busy", run) / ("new", None).
    With `steps`, runs given another step budget (another calibration's) are left out."""
    if steps is not None:
        runs = [r for r in runs if judge.steps_of(r) in (None, steps)]
    for r in runs:
        if r.status == "finished":
            return "done", r
    if not runs:
        return "new", None
    last = runs[-1]
    if last.status == "diverged":
        return "done", last
    if last.status == "running" and not is_stale(last):
        return "busy", last
    return "resume", last


def runs_by_job(store, key: str) -> dict[tuple[str, int], list]:
    out: dict[tuple[str, int], list] = {}
    for r in experiment_runs(store, key):
        out.setdefault((judge.arm_of(r), r.seed), []).append(r)
    return out


def log_path(db: str, key: str, job: Job) -> Path:
    """Where a child process's output goes: beside a SQLite store, else in this folder."""
    path = sqlite_path(db)
    base = path.parent if path is not None else Path.cwd()
    safe = job.arm.label.replace("#", "-")
    return base / "ra_experiment_logs" / key / f"{safe}-seed{job.seed}.log"


class Context:
    """What every job of one invocation shares."""

    def __init__(
        self,
        settings: Settings,
        cfg,
        store,
        *,
        key: str,
        tag: str,
        dataset,
        budgets: dict[str, Budget],
        cal,
        devices: list[str],
        view,
        stop: threading.Event,
        on_step=None,
        children: list[subprocess.Popen] | None = None,
        claims=None,
    ):
        self.settings, self.cfg, self.store = settings, cfg, store
        self.key, self.tag, self.dataset = key, tag, dataset
        self.budgets, self.cal, self.devices = budgets, cal, devices
        self.view, self.stop, self.on_step = view, stop, on_step
        self.children: list[subprocess.Popen] = [] if children is None else children
        self.durations: list[float] = []
        self.claims = claims  # ownership.Claims: the units this process holds
        self.held: list[Job] = []  # jobs another process holds (waited for, then retried)
        self.hosts: list[str] = []  # a run over several nodes: its nodes' hosts, node 0 first

    def extra(self, job: Job) -> dict[str, Any]:
        arms = self.settings.arms
        extra = plan.extra_config(
            key=self.key,
            arm=job.arm,
            arms=arms,
            budget=self.budgets[job.arm.label],
            minutes=self.settings.minutes,
            calibration_run=self.budgets[job.arm.label].calibration_run
            or (self.cal.run_id if self.cal is not None else None),
            reference_steps=self.budgets[arms[0].label].steps,
        )
        extra[plan.EXPERIMENT_KEY]["device"] = self.devices[job.device]  # where it started
        extra[plan.EXPERIMENT_KEY]["host"] = self.hosts[0] if self.hosts else socket.gethostname()
        if len(self.hosts) > 1:
            extra[plan.EXPERIMENT_KEY]["hosts"] = list(self.hosts)
        return extra

    def steps(self) -> dict[str, int]:
        return {label: b.steps for label, b in self.budgets.items()}

    def unit(self, job: Job):
        return ownership.train_unit(self.key, job.arm.label, job.seed)

    def release(self, job: Job, status: str, run_id: int | None = None, note: str = "") -> None:
        """Let go of a job's claim once its run ended (state done / failed / interrupted)."""
        if self.claims is None:
            return
        state = {"finished": "done", "diverged": "done"}.get(status, status)
        self.claims.done(self.unit(job), state, run_id, note or None)

    def job_spec(self, job: Job, device: str):
        """The TrainSpec of a job's run, its experiment entries included."""
        spec = arm_spec(
            self.settings,
            self.cfg,
            job.arm.attn,
            device=device,
            steps=self.budgets[job.arm.label].steps,
            seed=job.seed,
            tag=self.tag,
        )
        spec.extra = self.extra(job)
        return spec

    def label(self, job: Job, run_id: int | None) -> str:
        run = f" (run {run_id})" if run_id is not None else ""
        return f"{job.arm.label} seed {job.seed}{run}"

    @staticmethod
    def finished_note(val_loss: float | None, wall_s: float, train_s: float | None) -> str:
        """What a finished run's line adds: its val_loss, and its wall time beside the
        training time it was charged (the rest: start-up, compile, evaluation, checkpoint).
        A resumed run's training time counts its earlier sessions too: then it is left out."""
        loss = f"val_loss {val_loss:.4f}" if val_loss is not None else ""
        took = f"{fmt_seconds(wall_s)} in all"
        if train_s is not None and 0 < train_s <= wall_s:
            took += f", {fmt_seconds(train_s)} of training"
        return f"{loss} ({took})" if loss else took

    def eta(self, left: int, running: int) -> float | None:
        """Seconds left: runs to go x the mean duration of the runs done so far (before the
        first, the matched minutes plus a fifth for start-up and evaluation)."""
        per = (
            sum(self.durations) / len(self.durations)
            if self.durations
            else self.settings.minutes * 60.0 * 1.2
        )
        return per * (left + running) / max(1, len(self.devices))

    def verdict_so_far(self, confidence: float) -> None:
        v = self.cfg.verdict
        found = judge.verdicts(
            self.store,
            self.key,
            self.settings.arms,
            threshold=v.threshold,
            confidence=confidence,
            budgets=self.steps(),
            pairs_only=True,
        )
        self.view.verdict([x.short() for x in found])

    def pending(self, jobs: list[Job], results: list[JobResult]) -> list[tuple]:
        """(job, action, run) of the jobs still to do; finished ones go to `results`. The
        view's counts start from them."""
        known = runs_by_job(self.store, self.key)
        steps = self.steps()

        def state(job: Job):
            return job_state(known.get((job.arm.label, job.seed), []), steps[job.arm.label])

        undone = []
        for job in jobs:
            action, run = state(job)
            if action == "done":
                results.append(JobResult(job, run.id, run.status, "recorded before"))
            else:
                undone.append(job)
        taken = {id(j) for j in undone if self.claims is None or self.claims.take(self.unit(j))}
        if self.claims is not None and taken:
            # read once more: a holder may have finished a unit between the look and the claim
            known = runs_by_job(self.store, self.key)
        todo, self.held = [], []
        for job in undone:
            action, run = state(job)
            if action == "done":
                if self.claims is not None:
                    self.claims.done(self.unit(job), run.status, run.id)
                results.append(JobResult(job, run.id, run.status, "recorded before"))
                continue
            if id(job) not in taken:
                action = "held"
            if action in ("busy", "held"):
                if action == "busy" and self.claims is not None:
                    self.claims.done(self.unit(job), "running")
                self.view.note(f"{self.label(job, run.id if run else None)}: waiting, {HELD_NOTE}")
                self.held.append(job)
            else:
                todo.append((job, action, run))
        self.view.state.total = len(jobs)
        self.view.state.done = len(jobs) - len(todo) - len(self.held)
        self.view.state.eta_s = self.eta(len(todo) + len(self.held), 0)
        return todo
