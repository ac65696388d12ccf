"""`run_experiment`: calibration -> step budgets -> jobs -> verdict (docs/experiment.md);
`run_live`: the same with the live view that `ra experiment` shows."""

from __future__ import annotations

import contextlib
import threading
from typing import TextIO

from racli.experiment import budgets as kept
from racli.experiment import cluster, judge, ownership, plan, text
from racli.experiment.calibration_run import (
    WAIT_S,
    budgets_of,
    calibration_for,
    find_calibration,
)
from racli.experiment.jobs import HELD_NOTE, Context
from racli.experiment.local import run_children, run_in_process
from racli.experiment.prepare import Prepared, prepare
from racli.experiment.results import Interrupted, JobResult, Outcome, Settings
from racli.experiment.sequential import Design
from racli.experiment.view import make_view
from racli.store.experiment_queries import experiment_runs
from racli.training.stopping import stop_on_signals


def run_held(ctx: Context, jobs, run, confidence: float) -> list[JobResult]:
    """`run` over `jobs`, then again over those another process held, once they are free
    or their runs ended (a run whose heartbeat is not yet stale is waited for, not skipped)."""
    results: dict[tuple, JobResult] = {}
    left = jobs
    while True:
        for r in run(ctx, left, confidence):
            results[(r.job.arm.label, r.job.seed)] = r
        if ctx.stop.is_set() or not ctx.held:
            break
        left = list(ctx.held)
        ctx.view.phase(f"waiting for {len(left)} run(s) {HELD_NOTE}")
        if ctx.stop.wait(WAIT_S):
            break
    return [results[k] for k in sorted(results, key=lambda k: _order(jobs, k))]


def _order(jobs, k) -> int:
    return next((j.order for j in jobs if (j.arm.label, j.seed) == k), 0)


def _design(settings: Settings, ecfg) -> Design | None:
    """The group-sequential design of --until-settled (None without it)."""
    if not settings.until_settled:
        return None
    return Design.plan(
        len(settings.seeds),
        settings.max_seeds,
        alpha=ecfg.experiment.false_decision_rate,
        kind=ecfg.experiment.spending,
    )


def _looks(ctx: Context, design: Design | None, run) -> tuple:
    """Train and judge the seeds, adding seed pairs while --until-settled says so.
    Returns (seeds, looks, results, verdicts, confidence)."""
    settings, v = ctx.settings, ctx.cfg.verdict
    seeds = list(settings.seeds)
    looks: list[dict] = []
    while True:
        confidence = design.confidence(len(seeds)) if design else v.confidence
        ctx.view.phase(
            text.training_text(len(settings.arms), len(seeds), design, len(looks), confidence)
        )
        jobs = plan.schedule(settings.arms, seeds, len(ctx.devices))
        results: list[JobResult] = run_held(ctx, jobs, run, confidence)
        if ctx.stop.is_set():
            raise Interrupted(text.interrupted_text(results, len(jobs)))
        verdicts = judge.verdicts(
            ctx.store,
            ctx.key,
            settings.arms,
            threshold=v.threshold,
            confidence=confidence,
            budgets=ctx.steps(),
        )
        looks.append(
            {
                "seeds": len(seeds),
                "confidence": confidence,
                "outcomes": {x.candidate: x.outcome for x in verdicts},
            }
        )
        if design is None or not any(x.outcome == "INCONCLUSIVE" for x in verdicts):
            break
        nxt = design.next_look(len(seeds))
        if nxt is None:
            break
        added = plan.next_seeds(seeds, nxt - len(seeds))
        ctx.view.note(text.next_look_text(len(seeds), added))
        seeds += added
    return seeds, looks, results, verdicts, confidence


def _local_budgets(store, settings: Settings, ecfg, p, view, stop, claims) -> tuple:
    """(calibration, budgets) by racli/experiment/budgets.py: what the runs recorded wins;
    the calibration is found, else measured by whoever claims it first (None when it is
    gone and every arm's runs recorded their budget)."""

    def find():
        cal = find_calibration(store, p.key)
        if cal is not None:
            view.note(f"calibration: reusing run {cal.run_id}")
        return cal

    def measure():
        return calibration_for(store, settings, ecfg, p, view, stop, claims)

    runs = experiment_runs(store, p.key)
    return kept.choose(settings.arms, settings.minutes, runs, find, measure, view.note)


def run_experiment(
    settings: Settings,
    cfg,
    store,
    *,
    view,
    stop: threading.Event | None = None,
    on_step=None,
    prepared: Prepared | None = None,
) -> Outcome:
    """Calibrate (or reuse the calibration), run every job not yet finished, judge.
    `prepared`: the settings already validated (`prepare`), e.g. before the store opened.

    Raises BadInput before anything is recorded when the settings cannot work, and
    `Interrupted` after a stop request (runs stopped cleanly, to be continued by the
    same command)."""
    stop = stop or threading.Event()
    p = prepared if prepared is not None else prepare(settings, cfg)
    ecfg, devices, key, tag = p.ecfg, p.devices, p.key, p.tag
    view.note(text.start_text(key, settings, devices, tag))
    remote = None
    if settings.launcher != "local":
        remote = cluster.ClusterRun(settings, ecfg, store, p, view=view, stop=stop)

    children: list = []  # the running child processes, for the signal handler
    claims = ownership.Claims(store, launcher=settings.launcher)
    with contextlib.ExitStack() as stack:
        stack.enter_context(stop_on_signals(stop, children))
        stack.enter_context(contextlib.closing(claims))
        if remote is not None:
            # the seed jobs read their budgets from the calibration run: it must exist
            stack.enter_context(contextlib.closing(remote))
            cal = remote.calibration()
            budgets = budgets_of(settings, cal, view)
        else:
            cal, budgets = _local_budgets(store, settings, ecfg, p, view, stop, claims)
        ctx = Context(
            settings,
            ecfg,
            store,
            key=key,
            tag=tag,
            dataset=p.dataset,
            budgets=budgets,
            cal=cal,
            devices=devices,
            view=view,
            stop=stop,
            on_step=on_step,
            children=children,
            claims=claims,
        )
        processes = settings.processes if settings.processes is not None else devices[0] != "cpu"
        design = _design(settings, ecfg)
        if remote is not None:
            run = remote.run
        else:
            run = run_children if processes else run_in_process
        seeds, looks, results, verdicts, confidence = _looks(ctx, design, run)
        runs = judge.judged_runs(experiment_runs(store, key), ctx.steps())
        speeds = judge.device_speeds(runs, settings.arms)
    view.close()
    return Outcome(
        key=key,
        tag=tag,
        arms=settings.arms,
        seeds=seeds,
        devices=devices,
        calibration=cal,
        budgets=budgets,
        verdicts=verdicts,
        confidence=confidence,
        design=design.to_dict() if design else None,
        looks=looks,
        results=results,
        device_speeds=speeds,
    )


def run_live(
    settings: Settings, cfg, store, stream: TextIO, prepared: Prepared | None = None
) -> Outcome:
    """`run_experiment` with its live view on `stream` (stderr), closed however it ends.

    stdout carries the result alone: what libraries print meanwhile (Ray's notes of a
    retried task, say) goes to `stream` with the live view."""
    view = make_view(stream)
    try:
        with contextlib.redirect_stdout(stream):
            return run_experiment(settings, cfg, store, view=view, prepared=prepared)
    finally:
        view.close()
