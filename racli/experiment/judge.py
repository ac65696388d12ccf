"""The verdict over exactly one experiment's runs, by the rules of `ra compare`.

The experiment's finished train runs are read as `ra compare` reads history
(:func:`racli.compare.grouping.load_train_runs`), kept to those whose config carries the
experiment's key, and labelled by **arm** instead of attention (so the two arms
of an A/A experiment are two sides). The experiment's diverged and failed runs
are counted per arm the same way. Each arm after the first is then judged
against the first by :func:`racli.compare.grouping.load_comparison` with those
rows (paired by design: the arms of one seed share its initialisation and
batches; an A/A experiment's further arms train on their own seeds, so its
verdict is unpaired), and printed by the same renderer as `ra compare`. No torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from racli.compare.design import UnfinishedRow
from racli.compare.grouping import load_comparison, load_train_runs
from racli.compare.text import final_comparison
from racli.compare.view import header_text
from racli.errors import BadInput
from racli.experiment.plan import EXPERIMENT_KEY, Arm
from racli.store.experiment_queries import experiment_runs
from racli.store.unfinished import NO_RESULT


def experiment_entry(run) -> dict:
    """What `ra experiment` recorded in a run's config (arm, device, host; {} if none)."""
    return (run.config or {}).get(EXPERIMENT_KEY) or {}


def arm_of(run) -> str | None:
    return experiment_entry(run).get("arm")


def steps_of(run) -> int | None:
    """The step budget a run was given (None when it has none recorded)."""
    budget = (run.config or {}).get("budget") or {}
    steps = budget.get("steps")
    return int(steps) if isinstance(steps, (int, float)) else None


def judged_runs(runs: list, budgets: dict[str, int] | None) -> list:
    """The runs a verdict may count: those at the arm's current step budget (`budgets`:
    arm -> steps; None: any), and of several finished runs of one arm and seed (two
    stores of one experiment merged) only the first. Runs of another budget (another
    calibration) never pool with these."""
    out, seen = [], set()
    for r in runs:
        arm = arm_of(r)
        if arm is None:
            continue
        if budgets is not None and arm in budgets and steps_of(r) != budgets[arm]:
            continue
        if r.status == "finished":
            if (arm, r.seed) in seen:
                continue
            seen.add((arm, r.seed))
        out.append(r)
    return out


def arm_runs(store, key: str, arms: list[Arm], budgets: dict[str, int] | None = None):
    """(finished runs as `ra compare` rows, diverged or failed runs), `attn` set to the arm.
    `budgets` (arm -> steps): only runs at those budgets count (see `judged_runs`)."""
    runs = judged_runs(experiment_runs(store, key), budgets)
    labels = {r.id: arm_of(r) for r in runs}
    rows = load_train_runs(store, attns=sorted({a.attn for a in arms}))
    finished = [
        dataclasses.replace(r, attn=labels[r.id])
        for r in rows
        if r.id in labels and labels[r.id] is not None
    ]
    gone = [
        UnfinishedRow(r.id, labels[r.id], r.seed, r.status, r.config_hash, None)
        for r in runs
        if r.status in NO_RESULT and labels[r.id] is not None and not r.excluded
    ]
    return finished, gone


def device_speeds(runs: list, arms: list[Arm]) -> list:
    """Each arm's tokens/s on each device (`racli.experiment.speeds`) over the finished
    runs among `runs` (as `judged_runs` gives them), by the device each started on."""
    from racli.experiment.speeds import RunSpeed, by_device, device_label

    finished = [r for r in runs if r.status == "finished" and r.tokens_per_s]
    where = [experiment_entry(r) for r in finished]
    several = len({w.get("host") for w in where}) > 1
    speeds = [
        RunSpeed(
            arm_of(r),
            device_label(w.get("device") or "-", w.get("host"), several),
            float(r.tokens_per_s),
        )
        for r, w in zip(finished, where)
        if arm_of(r) is not None
    ]
    return by_device(speeds, [a.label for a in arms])


@dataclass
class ArmVerdict:
    candidate: str
    baseline: str
    comparison: Any | None  # racli.compare.grouping.Comparison
    error: str | None = None  # why there is no verdict yet

    @property
    def outcome(self) -> str:
        return self.comparison.verdict.outcome if self.comparison is not None else "NONE"

    def short(self) -> str:
        if self.comparison is None:
            return f"{self.candidate} vs {self.baseline}: no verdict yet ({self.error})"
        v = self.comparison.verdict
        text = (
            f"{self.candidate} vs {self.baseline}: {v.outcome} "
            f"(improvement {v.improvement * 100:+.2f}%"
        )
        if v.interval is not None:
            lo, hi = v.interval
            text += f", {v.confidence:.1%} interval [{lo * 100:+.2f}%, {hi * 100:+.2f}%]"
        how = v.method if v.interval is not None else "no interval yet"  # method "none"
        text += f", {how}, {v.candidate.n} vs {v.baseline.n} runs"
        gone = [
            f"{name} {s.diverged + s.failed}"
            for name, s in ((self.candidate, v.candidate), (self.baseline, v.baseline))
            if s.diverged is not None and s.diverged + s.failed
        ]
        if gone:
            text += "; diverged or failed: " + ", ".join(gone)
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "baseline": self.baseline,
            "outcome": self.outcome,
            "error": self.error,
            "comparison": self.comparison.to_dict() if self.comparison is not None else None,
        }


def verdicts(
    store,
    key: str,
    arms: list[Arm],
    *,
    threshold: float,
    confidence: float,
    metric: str = "val_loss",
    budgets: dict[str, int] | None = None,
    pairs_only: bool = False,
) -> list[ArmVerdict]:
    """Each arm after the first against the first, over the experiment's finished runs
    (with `budgets`, arm -> steps: only the runs at those budgets). `pairs_only` (the
    interim lines, while runs are still to come): an arm of another variant than the
    first is judged on the seeds both have finished, so that the interim follows the
    paired design the final verdict uses instead of an unpaired one over uneven sides."""
    rows, gone = arm_runs(store, key, arms, budgets)
    out = []
    for arm in arms[1:]:
        mine = rows
        if pairs_only and arm.attn != arms[0].attn:  # an A/A arm is unpaired by design
            sides = (arm.label, arms[0].label)
            both = {r.seed for r in rows if r.attn == sides[0]}
            both &= {r.seed for r in rows if r.attn == sides[1]}
            mine = [r for r in rows if r.attn not in sides or r.seed in both]
            if not both and all(any(r.attn == side for r in rows) for side in sides):
                out.append(ArmVerdict(arm.label, arms[0].label, None, "no seed finished on both"))
                continue
        try:
            cmp = load_comparison(
                store,
                metric=metric,
                candidate=arm.label,
                baseline=arms[0].label,
                threshold=threshold,
                confidence=confidence,
                rows=mine,
                unfinished=gone,
            )
            out.append(ArmVerdict(arm.label, arms[0].label, cmp))
        except BadInput as exc:
            out.append(ArmVerdict(arm.label, arms[0].label, None, str(exc)))
    return out


def verdict_text(av: ArmVerdict) -> str:
    """`ra compare`'s header and FINAL COMPARISON / VERDICT blocks for one pair of arms."""
    if av.comparison is None:
        return f"{av.candidate} vs {av.baseline}: no verdict ({av.error})"
    cmp = av.comparison
    return header_text(cmp) + "\n\n" + final_comparison(cmp.verdict, cmp.candidate, cmp.baseline)
