"""`run_experiment`: calibration -> step budgets -> jobs -> verdict (docs/experiment.md)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from racli import training
from racli.errors import BadInput
from racli.experiment import judge, ownership, plan, text
from racli.experiment.calibrate import summary_text
from racli.experiment.calibration_run import find_calibration, record_calibration
from racli.experiment.jobs import HELD_NOTE, Context, arm_spec, experiment_config
from racli.experiment.local import run_children, run_in_process
from racli.experiment.results import Interrupted, JobResult, Outcome, Settings, check_settings
from racli.experiment.sequential import Design
from racli.names import resolve_device
from racli.training.stopping import stop_on_signals

WAIT_S = 5.0  # how often a run or calibration held by another process is looked at again


def resolve_devices(devices: list[str], processes: bool | None = None) -> list[str]:
    out = [resolve_device(d) for d in devices]
    if len(out) > 1 and any(d == "cpu" for d in out) and not processes:
        raise BadInput("several devices are GPUs: --devices takes CUDA indices")
    return out


def comparable_config(spec, dataset) -> dict[str, Any]:
    """The run config of an arm without what differs between the experiment's runs."""
    config = training.run_config(spec, dataset)
    return {
        k: v
        for k, v in config.items()
        if k not in ("attn", "seed", "tag", "budget", plan.EXPERIMENT_KEY, plan.BUDGET_SOURCE_KEY)
    }


def _calibration(store, settings: Settings, ecfg, specs, dataset, key, tag, view, stop, claims):
    """The recorded calibration, else measured here by whoever claims it first; the
    others wait for it (one calibration per experiment, however many commands)."""
    unit = ownership.calibration_unit(key)
    waiting = False
    while True:
        cal = find_calibration(store, key)
        if cal is not None:
            view.note(f"calibration: reusing run {cal.run_id}")
            return cal
        if claims.take(unit):
            try:
                cal = record_calibration(
                    store, settings, ecfg, specs, dataset, key, tag, view=view, stop=stop
                )
            except BaseException:
                claims.done(unit, "interrupted" if stop.is_set() else "failed")
                raise
            claims.done(unit, "done", cal.run_id)
            return cal
        if not waiting:
            view.note("calibration: another process is measuring it; waiting for its result")
            waiting = True
        if stop.wait(WAIT_S):
            raise Interrupted("interrupted while waiting for the calibration (nothing trained)")


def budgets_of(settings: Settings, cal, view) -> dict:
    """The step budgets from a calibration (printed)."""
    view.note(summary_text(cal))
    budgets = plan.step_budgets(
        settings.arms,
        settings.minutes,
        cal.arm(settings.arms[0].label).steps_per_s,
        cal.variant_ratios(),
    )
    view.note(text.budgets_text(budgets))
    return budgets


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


def run_experiment(
    settings: Settings, cfg, store, *, view, stop: threading.Event | None = None, on_step=None
) -> Outcome:
    """Calibrate (or reuse the calibration), run every job not yet finished, judge.

    Raises BadInput before anything is recorded when the settings cannot work, and
    `Interrupted` after a stop request (runs stopped cleanly, to be continued by the
    same command)."""
    stop = stop or threading.Event()
    ecfg = experiment_config(cfg, settings.overrides)
    check_settings(settings)
    devices = resolve_devices(settings.devices, settings.processes)
    specs = [
        arm_spec(settings, ecfg, a.attn, device=devices[0], steps=1, seed=0, tag=settings.tag)
        for a in settings.arms
    ]
    dataset = training.load_data(specs[0])
    for spec in specs:
        training.run_config(spec, dataset)  # validates every arm's model config
    key = plan.experiment_key(
        arms=settings.arms,
        comparable=comparable_config(specs[0], dataset),
        minutes=settings.minutes,
        tag=settings.tag,
    )
    tag = plan.run_tag(settings.tag, key)
    view.note(text.start_text(key, settings, devices, tag))

    children: list = []  # the running child processes, for the signal handler
    claims = ownership.Claims(store, launcher="local")
    with stop_on_signals(stop, children), contextlib.closing(claims):
        cal = _calibration(store, settings, ecfg, specs, dataset, key, tag, view, stop, claims)
        budgets = budgets_of(settings, cal, view)
        ctx = Context(
            settings,
            ecfg,
            store,
            key=key,
            tag=tag,
            dataset=dataset,
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
        seeds, looks, results, verdicts, confidence = _looks(
            ctx, design, run_children if processes else run_in_process
        )
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
    )
