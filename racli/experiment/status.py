"""`ra experiment ... --status`: each unit of the experiment as the store has it (its
scheduler job and state, its run and how far it got), read without writing."""

from __future__ import annotations

from typing import Any

from racli.experiment import judge, plan
from racli.experiment.calibration_run import find_calibration
from racli.experiment.jobs import runs_by_job
from racli.store import jobs as store_jobs
from racli.store.experiment_queries import last_step
from racli.store.recorder import display_status
from racli.text.tables import Column, plain_table

COLUMNS = [
    Column("unit"),
    Column("seed", "right"),
    Column("launcher"),
    Column("job"),
    Column("scheduler"),
    Column("state"),
    Column("run", "right"),
    Column("run status"),
    Column("steps", "right"),
]


def status_rows(store, key: str, arms: list[plan.Arm], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per unit: the calibration, then every arm of every seed in the experiment's
    order (those the store knows nothing of shown as `not started`)."""
    rows = {(r.kind, r.arm, r.seed): r for r in store_jobs.experiment_jobs(store, key)}
    cal = find_calibration(store, key)
    out = [_row("calibration", 0, rows.get((store_jobs.CALIBRATION, "", 0)), None, None)]
    if cal is not None:
        out[0].update(run=cal.run_id, run_status="finished")
    known = runs_by_job(store, key)
    for job in plan.schedule(arms, seeds, 1):
        runs = known.get((job.arm.label, job.seed), [])
        finished = [r for r in runs if r.status == "finished"]
        run = finished[0] if finished else (runs[-1] if runs else None)
        row = rows.get((store_jobs.TRAIN, job.arm.label, job.seed))
        step = last_step(store, run.id) if run is not None and run.status != "finished" else None
        out.append(_row(job.arm.label, job.seed, row, run, step))
    return out


def _row(unit: str, seed: int, job, run, step) -> dict[str, Any]:
    return {
        "unit": unit,
        "seed": seed,
        "launcher": job.launcher if job is not None else None,
        "job": job.scheduler_job if job is not None else None,
        "scheduler": job.scheduler_state if job is not None else None,
        "state": job.state if job is not None else "not started",
        "held": bool(job is not None and store_jobs.is_fresh(job)),
        "note": job.note if job is not None else None,
        "run": run.id if run is not None else None,
        "run_status": display_status(run) if run is not None else None,
        "steps": (
            run.iterations
            if run is not None and run.status == "finished"
            else step
            if step is not None
            else None
        ),
        "budget": judge.steps_of(run) if run is not None else None,
    }


def status_text(key: str, rows: list[dict[str, Any]]) -> str:
    def cell(v) -> str:
        return "-" if v is None else str(v)

    table = []
    for r in rows:
        steps = cell(r["steps"]) + (f"/{r['budget']}" if r["budget"] else "")
        table.append(
            [
                r["unit"],
                cell(r["seed"]),
                cell(r["launcher"]),
                cell(r["job"]),
                cell(r["scheduler"]),
                r["state"] + (" (held)" if r["held"] else ""),
                cell(r["run"]),
                cell(r["run_status"]),
                steps,
            ]
        )
    done = sum(1 for r in rows[1:] if r["run_status"] == "finished")
    lines = [f"experiment {key}: {done}/{len(rows) - 1} runs finished", ""]
    lines += plain_table(COLUMNS, table)
    notes = [f"{r['unit']} seed {r['seed']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
