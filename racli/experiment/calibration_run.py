"""The calibration as a recorded run (kind ``calibration``): found again, or measured here."""

from __future__ import annotations

import math
import threading

from racli.experiment import calibrate, ownership, plan, text
from racli.experiment.calibrate import summary_text
from racli.experiment.results import Interrupted, Settings
from racli.store.experiment_queries import experiment_runs
from racli.store.recorder import RunRecorder
from racli.training.spec import train_section

WAIT_S = 2.0  # how often a unit held by another process is looked at again


def find_calibration(store, key: str):
    """The first finished calibration of experiment `key`, or None. The first, so that a
    second one (two stores of one experiment merged) never moves the budgets of runs
    already made."""
    runs = [
        r
        for r in experiment_runs(store, key, kind="calibration")
        if r.status == "finished" and "calibration" in (r.config or {})
    ]
    if not runs:
        return None
    run = runs[0]
    cal = calibrate.Calibration.from_dict(run.config["calibration"])
    cal.run_id = run.id
    return cal


def _cap_s(settings: Settings, e) -> float:
    """The time cap of the timed rounds: calibration_max_s, and calibration_max_share of the
    planned training time."""
    return calibrate.time_cap(
        e.calibration_max_s,
        e.calibration_max_share,
        settings.minutes,
        len(settings.arms),
        len(settings.seeds),
    )


def _config(settings: Settings, e, specs, key: str) -> dict:
    """The recorded config of a calibration run (`e`: ra.yaml's `experiment` section)."""
    return {
        plan.EXPERIMENT_KEY: {"key": key, "arms": [a.label for a in settings.arms]},
        "attn": [a.attn for a in settings.arms],
        "device": specs[0].device_type,
        "compile": specs[0].compile,
        "model": specs[0].model,
        "train": train_section(specs[0].train),
        "preset": specs[0].preset,
        "settings": {
            "precision": e.calibration_precision,
            "max_s": e.calibration_max_s,
            "max_share": e.calibration_max_share,
            "cap_s": _cap_s(settings, e),
            "min_rounds": e.calibration_min_rounds,
            "block_steps": e.calibration_block_steps,
            "warmup_steps": e.calibration_warmup_steps,
            "minutes": settings.minutes,
        },
    }


def _record_speeds(rec: RunRecorder, cal) -> None:
    for a in cal.arms:
        values = {
            f"steps_per_s:{a.label}": a.steps_per_s,
            f"speed_ratio:{a.label}": a.ratio,
            f"speed_ratio_lo:{a.label}": a.ratio_lo,
            f"speed_ratio_hi:{a.label}": a.ratio_hi,
        }
        rec.metrics(
            cal.rounds, {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
        )


def record_calibration(
    store,
    settings: Settings,
    ecfg,
    specs,
    dataset,
    key: str,
    tag: str,
    *,
    view,
    stop: threading.Event,
):
    """Time the arms, record a `calibration` run, return the Calibration (`Interrupted`
    when `stop` is set meanwhile: the run is then recorded interrupted)."""
    e = ecfg.experiment
    labels = [a.label for a in settings.arms]
    config = _config(settings, e, specs, key)
    rec = RunRecorder.start(store, kind="calibration", config=config, tag=tag)
    cap_s = _cap_s(settings, e)
    view.phase(text.calibrating_text(labels, specs[0].device, rec.run_id, e, cap_s))

    def on_round(cal) -> None:
        for a in cal.arms:
            rec.metric(cal.rounds, f"s_per_step:{a.label}", cal.per_round[a.label][-1])
        view.note(text.round_text(cal))

    try:
        cal = calibrate.measure(
            specs,
            labels,
            dataset,
            precision=e.calibration_precision,
            max_s=cap_s,
            min_rounds=e.calibration_min_rounds,
            block_steps=e.calibration_block_steps,
            warmup_steps=e.calibration_warmup_steps,
            stop=stop,
            on_round=on_round,
        )
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            rec.end("interrupted", error="interrupted during calibration")
        else:
            rec.fail(exc)
        raise
    cal.run_id = rec.run_id
    _record_speeds(rec, cal)
    rec.update(config={**config, "calibration": cal.to_dict()})
    if stop.is_set():
        rec.end("interrupted", error="stopped on request during calibration")
        raise Interrupted("interrupted during calibration (nothing trained yet)")
    rec.finish(iterations=cal.rounds, train_seconds=cal.timed_s)
    return cal


def calibration_for(store, settings: Settings, ecfg, prepared, view, stop, claims):
    """The recorded calibration, else measured here by whoever claims it first; the
    others wait for it (one calibration per experiment, however many commands)."""
    key, specs, dataset, tag = prepared.key, prepared.specs, prepared.dataset, prepared.tag
    unit = ownership.calibration_unit(key)
    waiting = False
    while True:
        cal = find_calibration(store, key)
        if cal is not None:
            view.note(f"calibration: reusing run {cal.run_id}")
            return cal
        if claims.take(unit):
            cal = find_calibration(store, key)  # recorded between the look and the claim
            if cal is not None:
                claims.done(unit, "done", cal.run_id)
                view.note(f"calibration: reusing run {cal.run_id}")
                return cal
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
