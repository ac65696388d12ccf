"""The `jobs` table of `ra experiment`: which process holds each unit of work (the
calibration, one arm and seed), and which scheduler job (Slurm job, Ray actor) runs it.

A unit is held by one owner at a time: `claim` is one conditional UPDATE that succeeds
only while the row is free, already the caller's, or its holder stopped refreshing it
(`STALE_AFTER`, the heartbeat rule of runs). Holders refresh their claims while they
work (`refresh`) and let go with an end state (`release`). This works alike for the
local launcher, Slurm jobs and Ray actors, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from racli.store.connection import Store
from racli.store.models import ExperimentJob, utcnow
from racli.store.recorder import STALE_AFTER

CALIBRATION = "calibration"
TRAIN = "train"


@dataclass(frozen=True)
class Unit:
    """One unit of an experiment's work: its calibration, or one arm and seed."""

    experiment: str
    kind: str
    arm: str = ""
    seed: int = 0

    def where(self):
        return and_(
            ExperimentJob.experiment == self.experiment,
            ExperimentJob.kind == self.kind,
            ExperimentJob.arm == self.arm,
            ExperimentJob.seed == self.seed,
        )


def ensure(store: Store, unit: Unit, launcher: str) -> None:
    """The unit's row, created when missing (a concurrent creator wins silently)."""
    with store.session() as s:
        if s.scalar(select(ExperimentJob.id).where(unit.where())) is not None:
            return
    now = utcnow()
    try:
        with store.writing() as conn:
            conn.execute(
                insert(ExperimentJob).values(
                    experiment=unit.experiment,
                    kind=unit.kind,
                    arm=unit.arm,
                    seed=unit.seed,
                    launcher=launcher,
                    state="queued",
                    created_at=now,
                    updated_at=now,
                )
            )
    except IntegrityError:
        pass  # another process made it meanwhile


def is_fresh(job: ExperimentJob, now: datetime | None = None) -> bool:
    """Whether the job's holder refreshed its claim recently."""
    if job.owner is None or job.claimed_at is None:
        return False
    return (now or utcnow()) - job.claimed_at <= STALE_AFTER


def claim(
    store: Store,
    unit: Unit,
    *,
    owner: str,
    launcher: str,
    takeover: str | None = None,
    dead: str | None = None,
) -> bool:
    """Make `owner` the unit's holder; False when another holds it (a fresh claim).

    `takeover`: a prefix of owner names that may be replaced even when fresh (the
    earlier incarnation of the same scheduler job, which its scheduler ended: a
    requeued Slurm job, a restarted Ray actor). `dead`: the exact name of a holder known
    to have died (a process of this host that no longer exists)."""
    ensure(store, unit, launcher)
    now = utcnow()
    free = [
        ExperimentJob.owner.is_(None),
        ExperimentJob.owner == owner,
        ExperimentJob.claimed_at.is_(None),
        ExperimentJob.claimed_at < now - STALE_AFTER,
    ]
    if takeover:
        free.append(ExperimentJob.owner.startswith(takeover, autoescape=True))
    if dead:
        free.append(ExperimentJob.owner == dead)
    with store.writing() as conn:
        got = conn.execute(
            update(ExperimentJob)
            .where(unit.where(), or_(*free))
            .values(owner=owner, claimed_at=now, state="running", updated_at=now, note=None)
        ).rowcount
    return got == 1


def refresh(store: Store, owner: str) -> None:
    """Keep every claim of `owner` fresh."""
    now = utcnow()
    with store.writing() as conn:
        conn.execute(
            update(ExperimentJob)
            .where(ExperimentJob.owner == owner)
            .values(claimed_at=now, updated_at=now)
        )


def set_run(store: Store, unit: Unit, owner: str, run_id: int) -> None:
    with store.writing() as conn:
        conn.execute(
            update(ExperimentJob)
            .where(unit.where(), ExperimentJob.owner == owner)
            .values(run_id=run_id, updated_at=utcnow())
        )


def release(
    store: Store,
    unit: Unit,
    owner: str,
    *,
    state: str,
    run_id: int | None = None,
    note: str | None = None,
) -> None:
    """Let go of a unit held by `owner`, leaving its end state (done, failed, ...)."""
    values = {"owner": None, "claimed_at": None, "state": state, "updated_at": utcnow()}
    if run_id is not None:
        values["run_id"] = run_id
    if note is not None:
        values["note"] = note
    with store.writing() as conn:
        conn.execute(
            update(ExperimentJob).where(unit.where(), ExperimentJob.owner == owner).values(**values)
        )


def release_all(store: Store, owner: str, state: str = "interrupted") -> None:
    """Let go of every unit `owner` still holds (its process is ending)."""
    with store.writing() as conn:
        conn.execute(
            update(ExperimentJob)
            .where(ExperimentJob.owner == owner)
            .values(owner=None, claimed_at=None, state=state, updated_at=utcnow())
        )


def set_scheduler(
    store: Store, units: list[Unit], *, launcher: str, scheduler_job: str, state: str = "queued"
) -> None:
    """Record the scheduler job that will run `units` (one Slurm job or Ray actor)."""
    for unit in units:
        ensure(store, unit, launcher)
    now = utcnow()
    with store.writing() as conn:
        for unit in units:
            conn.execute(
                update(ExperimentJob)
                .where(unit.where())
                .values(
                    launcher=launcher,
                    scheduler_job=scheduler_job,
                    scheduler_state=state,
                    updated_at=now,
                )
            )


def set_scheduler_state(store: Store, experiment: str, scheduler_job: str, state: str) -> None:
    with store.writing() as conn:
        conn.execute(
            update(ExperimentJob)
            .where(
                ExperimentJob.experiment == experiment,
                ExperimentJob.scheduler_job == scheduler_job,
                or_(
                    ExperimentJob.scheduler_state.is_(None),
                    ExperimentJob.scheduler_state != state,
                ),
            )
            .values(scheduler_state=state, updated_at=utcnow())
        )


def set_state(store: Store, unit: Unit, state: str, note: str | None = None) -> None:
    """The unit's state, whoever holds it (the driver marks cancelled or failed jobs)."""
    with store.writing() as conn:
        conn.execute(
            update(ExperimentJob)
            .where(unit.where())
            .values(state=state, note=note, updated_at=utcnow())
        )


def fail_unexplained(store: Store, unit: Unit, scheduler_job: str, note: str) -> None:
    """Mark the unit failed with `note` (its scheduler's reason) where its job
    `scheduler_job` ended leaving it neither done nor a note; a unit since given another
    job, or done, or explained by its own job, is left as it is."""
    with store.writing() as conn:
        conn.execute(
            update(ExperimentJob)
            .where(
                unit.where(),
                ExperimentJob.scheduler_job == scheduler_job,
                ExperimentJob.state != "done",
                or_(ExperimentJob.note.is_(None), ExperimentJob.note == ""),
            )
            .values(state="failed", note=note, updated_at=utcnow())
        )


def experiment_jobs(store: Store, experiment: str) -> list[ExperimentJob]:
    """Every unit of experiment `experiment`, in the order they were made."""
    with store.session() as s:
        return list(
            s.scalars(
                select(ExperimentJob)
                .where(ExperimentJob.experiment == experiment)
                .order_by(ExperimentJob.id)
            )
        )


def get(store: Store, unit: Unit) -> ExperimentJob | None:
    with store.session() as s:
        return s.scalar(select(ExperimentJob).where(unit.where()))
