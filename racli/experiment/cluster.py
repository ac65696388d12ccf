"""`ra experiment --launcher slurm|ray` on the submitting host: submit the calibration
job, then one job per seed (racli/experiment/worker.py runs them), watch them, judge. A
run larger than one node is a job of its own over its nodes, one torchrun agent per node
(racli/experiment/multinode.py; under Ray in a placement group, ray_nodes.py); those jobs
go in the balanced order.

The store decides what is done, and its `jobs` table remembers each unit's scheduler
job: the same command run again re-attaches to the jobs still queued or running and
submits only the seeds that have neither a finished run nor a live job. Ctrl-C asks
whether to cancel the jobs (scancel / ray.kill) or leave them running; without a
terminal `--cancel-on-interrupt` decides (default: leave them).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from racli.errors import BadInput
from racli.experiment import multinode, ownership
from racli.experiment.calibration_run import find_calibration
from racli.experiment.jobs import Context, job_state, runs_by_job
from racli.experiment.plan import Job
from racli.experiment.results import Interrupted, JobResult, Settings
from racli.experiment.worker import BAD_INPUT, WorkerJob
from racli.store import jobs as store_jobs
from racli.store.experiment_queries import last_step
from racli.store.urls import shown, sqlite_path

LAUNCHERS = ("local", "slurm", "ray")


def check_store(db: str, launcher: str) -> None:
    """The cluster launchers need a store every node reaches at once: PostgreSQL."""
    if sqlite_path(db) is not None:
        raise BadInput(
            f"--launcher {launcher} needs a PostgreSQL store that every node reaches "
            f"(--db postgresql://user@host/db, or RA_DB); a SQLite file ({shown(db)}) is "
            f"refused: its locking is not reliable over a network filesystem"
        )


def make_launcher(name: str, ecfg):
    if name == "slurm":
        from racli.experiment.slurm import SlurmLauncher

        return SlurmLauncher(ecfg.slurm, Path(ecfg.slurm.folder).resolve())
    if name == "ray":
        from racli.experiment.ray_launcher import RayLauncher

        return RayLauncher(ecfg.ray)
    raise BadInput(f"unknown launcher '{name}' (valid: {', '.join(LAUNCHERS)})")


def job_name(key: str, what: str) -> str:
    return f"ra-{key}-{what}"


class ClusterRun:
    """The calibration and the seed jobs of one invocation on a cluster."""

    def __init__(self, settings: Settings, ecfg, store, prepared, *, view, stop):
        check_store(settings.db, settings.launcher)
        lcfg = getattr(ecfg, settings.launcher)
        self.cpu = prepared.devices[0] == "cpu"
        self.per_run = 0 if self.cpu else int(lcfg.gpus_per_run)
        if not self.cpu and self.per_run < 1:
            raise BadInput(f"{settings.launcher}.gpus_per_run is 0: give --device cpu for CPU runs")
        self.nodes = multinode.run_nodes(lcfg, self.cpu, self.per_run, settings.launcher)
        self.exchange = ""
        if settings.launcher == "slurm":
            self.exchange = str(Path(ecfg.slurm.folder).resolve() / "nodes")
        self.settings, self.store, self.view, self.stop = settings, store, view, stop
        self.key, self.tag = prepared.key, prepared.tag
        config = settings.config_path and str(Path(settings.config_path).resolve())
        self.worker_settings = dataclasses.replace(
            settings, devices=["cpu"] if self.cpu else ["cuda"], processes=None, config_path=config
        )
        self.launcher = make_launcher(settings.launcher, ecfg)
        if settings.launcher == "ray":
            try:
                self.launcher.check_fits(self.per_run, self.nodes, len(settings.arms))
            except BadInput:
                self.launcher.close()
                raise
        self.seed_order: list[int] = list(settings.seeds)

    def close(self) -> None:
        self.launcher.close()

    def _job(self, kind: str, seed: int = 0, arm: str = "") -> WorkerJob:
        if seed not in self.seed_order:
            self.seed_order.append(seed)
        what = {"calibration": "calibration", "seed": f"seed{seed}"}.get(kind)
        return WorkerJob(
            kind=kind,
            settings=self.worker_settings,
            key=self.key,
            tag=self.tag,
            launcher=self.launcher.name,
            name=job_name(self.key, what or f"{arm}-seed{seed}"),
            cwd=os.getcwd(),
            seed=seed,
            seed_index=self.seed_order.index(seed),
            gpus_per_run=self.per_run,
            arm=arm,
            nodes=self.nodes if kind == "run" else 1,
            exchange=self.exchange if kind == "run" else "",
        )

    def _live_job(self, unit) -> str | None:
        """The scheduler job recorded for `unit` when it is still queued or running."""
        row = store_jobs.get(self.store, unit)
        if row is None or not row.scheduler_job or row.launcher != self.launcher.name:
            return None
        state = self.launcher.states([row.scheduler_job])[row.scheduler_job]
        return None if self.launcher.ended(state) else row.scheduler_job

    # ---- the calibration ------------------------------------------------------------
    def calibration(self):
        """The recorded calibration, else the one of the calibration job (submitted now,
        or the one submitted before, re-attached), waited for."""
        cal = find_calibration(self.store, self.key)
        if cal is not None:
            self.view.note(f"calibration: reusing run {cal.run_id}")
            return cal
        unit = ownership.calibration_unit(self.key)
        sid = self._live_job(unit)
        if sid is not None:
            self.view.note(f"calibration: re-attached to {self.launcher.name} job {sid}")
        else:
            (sid,) = self.launcher.submit(
                [self._job("calibration")], 0 if self.cpu else 1, job_name(self.key, "cal")
            )
            store_jobs.set_scheduler(
                self.store, [unit], launcher=self.launcher.name, scheduler_job=sid
            )
            self.view.note(f"calibration: submitted {self.launcher.name} job {sid}")
        self.view.phase(f"calibrating in {self.launcher.name} job {sid}")
        self._watch({sid: [unit]}, None)
        cal = find_calibration(self.store, self.key)
        if cal is None:
            why = self._why(store_jobs.get(self.store, unit), {})
            why = f": {why}" if why else ""
            raise RuntimeError(
                f"{self.launcher.name} job {sid} ended without a calibration{why} "
                f"(its log: {self.launcher.log_of(sid)})"
            )
        return cal

    # ---- the seed jobs --------------------------------------------------------------
    def run(self, ctx: Context, jobs: list[Job], confidence: float) -> list[JobResult]:
        """Submit (or re-attach to) one job per seed not yet done (per run, for runs over
        several nodes), watch them, and return every job's result as the store has it."""
        groups = self._groups(ctx, jobs)
        pending: dict[str, list] = {}
        submit: list[tuple[str, list[Job], WorkerJob]] = []
        known = runs_by_job(ctx.store, ctx.key)
        for what, members, wjob in groups:
            units = [ctx.unit(j) for j in members]
            if all(self._done(ctx, j, known) for j in members):
                continue
            sid = self._live_job(units[0])
            if sid is not None:
                self.view.note(f"{what}: re-attached to {self.launcher.name} job {sid}")
                pending[sid] = units
            else:
                submit.append((what, members, wjob))
        if submit:
            gpus, nodes = self.per_run * len(ctx.settings.arms), 1
            if self.nodes > 1:
                gpus, nodes = self.per_run // self.nodes, self.nodes
            name = job_name(self.key, "runs" if nodes > 1 else "seeds")
            ids = self.launcher.submit([w for _, _, w in submit], gpus, name, nodes=nodes)
            for (_, members, _), sid in zip(submit, ids):
                units = [ctx.unit(j) for j in members]
                store_jobs.set_scheduler(
                    self.store, units, launcher=self.launcher.name, scheduler_job=sid
                )
                pending[sid] = units
            self.view.note(
                f"submitted {len(ids)} {self.launcher.name} job(s): "
                + ", ".join(f"{what} -> {i}" for (what, _, _), i in zip(submit, ids))
            )
        n_seeds = len({j.seed for j in jobs if j.arm.index == 0})
        ctx.view.phase(f"{len(pending)} {self.launcher.name} job(s) of {n_seeds} seeds")
        self._watch(pending, ctx, jobs)
        return self._results(ctx, jobs)

    def _groups(self, ctx: Context, jobs: list[Job]) -> list[tuple[str, list[Job], WorkerJob]]:
        """(what, its jobs, the worker's job) of each scheduler job: one per seed holding
        its arms, or, for runs over several nodes, one per run in the balanced order."""
        n_arms = len(ctx.settings.arms)
        seeds = [j.seed for j in jobs if j.arm.index == 0]
        if self.nodes > 1:
            return [
                (
                    f"{j.arm.label} seed {j.seed}",
                    [j],
                    self._job("run", seeds[j.order // n_arms], j.arm.label),
                )
                for j in jobs
            ]
        arms_of = {s: [j for j in jobs if j.order // n_arms == k] for k, s in enumerate(seeds)}
        return [(f"seed {s}", arms_of[s], self._job("seed", s)) for s in seeds]

    def _done(self, ctx: Context, job: Job, known) -> bool:
        steps = ctx.budgets[job.arm.label].steps
        return job_state(known.get((job.arm.label, job.seed), []), steps)[0] == "done"

    def _why(self, row, seen: dict[str, str]) -> str:
        """Why a unit is not done: the note its job left, else (its job ended without
        one) the reason the launcher gives, asked once a job (`seen`) and recorded as the
        unit's note (`--status` shows it later)."""
        if row is None:
            return ""
        if row.note:
            return row.note
        sid, state = row.scheduler_job, row.scheduler_state or ""
        if not sid or row.launcher != self.launcher.name or not self.launcher.ended(state):
            return ""
        if sid not in seen:
            seen[sid] = self.launcher.why_ended(sid, state) or ""
        if seen[sid]:
            store_jobs.fail_unexplained(self.store, _unit(row), sid, seen[sid])
        return seen[sid]

    def _results(self, ctx: Context, jobs: list[Job]) -> list[JobResult]:
        known = runs_by_job(ctx.store, ctx.key)
        rows = {(r.arm, r.seed): r for r in store_jobs.experiment_jobs(ctx.store, ctx.key)}
        out, bad, seen = [], [], {}
        for j in jobs:
            action, run = job_state(
                known.get((j.arm.label, j.seed), []), ctx.budgets[j.arm.label].steps
            )
            if action == "done":
                out.append(JobResult(j, run.id, run.status))
                continue
            note = self._why(rows.get((j.arm.label, j.seed)), seen)
            status = "interrupted" if self.stop.is_set() else "failed"
            out.append(JobResult(j, run.id if run else None, status, note))
            if note.startswith(BAD_INPUT):
                bad.append(note)
        if bad:
            raise BadInput(f"a training run refused its input: {bad[0]}")
        return out

    # ---- watching -------------------------------------------------------------------
    def _watch(self, pending: dict[str, list], ctx: Context | None, jobs=None) -> None:
        """Until every job in `pending` (scheduler id -> its units) ended: their states in
        the view and the store; a stop request asks to cancel them or leave them."""
        seen: dict[str, str] = {}
        while pending:
            states = self.launcher.states(list(pending))
            for sid, state in states.items():
                units = pending[sid]
                kind = "run" if self.nodes > 1 else "seed"
                what = "calibration" if units[0].kind == "calibration" else f"{kind} job {sid}"
                if seen.get(sid) != state:
                    seen[sid] = state
                    store_jobs.set_scheduler_state(self.store, self.key, sid, state)
                    self.view.note(f"{self.launcher.name} job {sid} ({what}): {state}")
                if self.launcher.ended(state):
                    del pending[sid]
            if ctx is not None and jobs is not None:
                self._progress(ctx, jobs, pending, seen)
            if not pending:
                break
            if self.stop.wait(self.launcher.poll_s):
                self._interrupt(list(pending))

    def _progress(self, ctx: Context, jobs: list[Job], pending, seen) -> None:
        """Runs done / running / left, and each live job's runs with their steps."""
        known = runs_by_job(ctx.store, ctx.key)
        ctx.view.state.total = len(jobs)
        ctx.view.state.done = sum(self._done(ctx, j, known) for j in jobs)
        for sid, units in pending.items():
            for u in units:
                runs = known.get((u.arm, u.seed), [])
                run = runs[-1] if runs else None
                label = f"{u.arm} seed {u.seed} [{self.launcher.name} {sid} {seen.get(sid)}]"
                slot = f"{sid}/{u.arm}"
                if run is None or run.status != "running":
                    ctx.view.state.slots.pop(slot, None)
                    continue
                if slot not in ctx.view.state.slots:
                    ctx.view.started(slot, f"{label} run {run.id}", ctx.budgets[u.arm].steps)
                step = last_step(ctx.store, run.id)
                if step is not None:
                    ctx.view.step(slot, int(step))
        ctx.view.refresh()

    def _interrupt(self, ids: list[str]) -> None:
        """Cancel the jobs or leave them running (asked on a terminal), then stop."""
        cancel = self.settings.cancel_on_interrupt
        if cancel is None:
            cancel = _ask(len(ids), self.launcher.name) if sys.stdin.isatty() else False
        name = self.launcher.name
        if cancel:
            self.launcher.cancel(ids)
            for row in store_jobs.experiment_jobs(self.store, self.key):
                if row.scheduler_job in ids and row.state not in ("done", "failed"):
                    store_jobs.set_state(self.store, _unit(row), "cancelled")
            raise Interrupted(
                f"cancelled {len(ids)} {name} job(s) ({', '.join(ids)}); run the same command "
                f"again to submit what is left (finished runs are kept)"
            )
        raise Interrupted(
            f"left {len(ids)} {name} job(s) running ({', '.join(ids)}); run the same command "
            f"again to re-attach to them and judge (or `ra experiment ... --status`)"
        )


def _unit(row):
    return store_jobs.Unit(row.experiment, row.kind, row.arm, row.seed)


def _ask(n: int, launcher: str) -> bool:
    try:
        answer = input(f"\ncancel the {n} {launcher} job(s) of this experiment? [y/N] ")
    except (EOFError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")
