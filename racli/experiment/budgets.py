"""An experiment's step budgets: what its runs recorded wins over a calibration.

A run records the budget it trained on (``budget_source`` in its config: steps, speed
ratio, its interval, whether the calibration settled, the calibration run). When the same
command runs again, its finished runs are reused, so the budgets it prints, reports and
gives to new runs must be the ones those runs trained on, even when the calibration run
behind them is gone (deleted, or in another store) and a new one was measured:

* an arm with recorded runs keeps the budget most of them trained on (ties: the newest);
  runs on another budget are named in a note and left out of the verdict (a verdict
  never pools runs of different budgets);
* an arm without runs gets the calibration's ratio times the first arm's recorded budget,
  so it trains at the same matched time as the runs it will be compared with;
* when every arm has recorded runs, no calibration is needed at all.

`choose` is the whole rule; the rest are its parts. No torch and no database here: the runs,
and how to find or measure a calibration, are handed in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from racli.experiment import plan, text
from racli.experiment.calibrate import summary_text
from racli.experiment.plan import Arm, Budget


def choose(
    arms: list[Arm],
    minutes: float,
    runs,
    find: Callable[[], object],
    measure: Callable[[], object],
    note: Callable[[str], None],
) -> tuple:
    """(calibration, budgets) of an experiment whose train runs so far are `runs`: `find()`
    returns its recorded calibration or None, `measure()` records a new one (called only
    when needed); every line worth saying goes to `note`. The calibration is None when it
    is gone and every arm's runs recorded their budget."""
    recorded = recorded_budgets(runs)
    cal = find()
    if cal is None and covers(arms, recorded):
        budgets = from_runs(arms, recorded)
        computed = None
        note(text.missing_calibration_text(budgets))
    else:
        cal = cal if cal is not None else measure()
        note(summary_text(cal))
        ratios = cal.variant_ratios()
        computed = {
            k: replace(b, calibration_run=cal.run_id)
            for k, b in plan.step_budgets(
                arms, minutes, cal.arm(arms[0].label).steps_per_s, ratios
            ).items()
        }
        budgets = reconcile(arms, minutes, computed, recorded, ratios)
    for line in notes(arms, budgets, computed, recorded):
        note(line)
    note(text.budgets_text(budgets))
    return cal, budgets


@dataclass
class Recorded:
    """The budgets an arm's runs recorded: steps -> the runs, and one Budget per steps."""

    runs: dict[int, list[int]] = field(default_factory=dict)
    budgets: dict[int, Budget] = field(default_factory=dict)

    def chosen(self) -> Budget:
        """The budget most runs trained on (ties: the newest run's)."""
        counts = Counter({steps: len(ids) for steps, ids in self.runs.items()})
        best = max(counts.values())
        steps = max((s for s, n in counts.items() if n == best), key=lambda s: max(self.runs[s]))
        return self.budgets[steps]

    def others(self) -> dict[int, list[int]]:
        """Runs on another budget than the chosen one: steps -> run ids."""
        chosen = self.chosen().steps
        return {s: ids for s, ids in self.runs.items() if s != chosen}


def recorded_budgets(runs) -> dict[str, Recorded]:
    """Arm label -> its recorded budgets, from the experiment's train runs (objects with
    `id` and `config`)."""
    out: dict[str, Recorded] = {}
    for r in runs:
        config = r.config or {}
        arm = (config.get(plan.EXPERIMENT_KEY) or {}).get("arm")
        source = config.get(plan.BUDGET_SOURCE_KEY) or {}
        if arm is None or source.get("kind") != "matched_time" or "steps" not in source:
            continue
        steps = int(source["steps"])
        rec = out.setdefault(arm, Recorded())
        rec.runs.setdefault(steps, []).append(r.id)
        ci = source.get("ratio_ci")
        rec.budgets[steps] = Budget(
            arm,
            steps,
            float(source.get("ratio", 1.0)),
            (float(ci[0]), float(ci[1])) if ci else None,
            bool(source.get("calibration_settled", True)),
            calibration_run=source.get("calibration_run"),
        )
    return out


def covers(arms: list[Arm], recorded: dict[str, Recorded]) -> bool:
    """Whether every arm has recorded runs (its budget is then known without a calibration)."""
    return all(a.label in recorded for a in arms)


def from_runs(arms: list[Arm], recorded: dict[str, Recorded]) -> dict[str, Budget]:
    """Every arm's budget as its runs recorded it (`covers` must hold)."""
    return {a.label: recorded[a.label].chosen() for a in arms}


def reconcile(
    arms: list[Arm],
    minutes: float,
    computed: dict[str, Budget],
    recorded: dict[str, Recorded],
    ratios: dict[str, tuple],
) -> dict[str, Budget]:
    """The calibration's budgets (`computed`, from `ratios` as given to
    `plan.step_budgets`) with the recorded ones in their place, and the arms without runs
    scaled to the first arm's recorded budget."""
    first = arms[0].label
    budgets = dict(computed)
    if first in recorded:
        s0 = recorded[first].chosen().steps
        if s0 != computed[first].steps:
            calibration_run = computed[first].calibration_run
            scaled = plan.step_budgets(arms, minutes, s0 / (minutes * 60.0), ratios)
            budgets = {k: replace(b, calibration_run=calibration_run) for k, b in scaled.items()}
    for label, rec in recorded.items():
        if label in budgets:
            budgets[label] = rec.chosen()
    return budgets


def notes(
    arms: list[Arm], budgets: dict[str, Budget], computed: dict[str, Budget] | None, recorded
) -> list[str]:
    """What the output says about budgets that are not the calibration's."""
    out = []
    if computed is not None:
        kept = [
            f"{a.label} {budgets[a.label].steps} (the calibration gives {computed[a.label].steps})"
            for a in arms
            if budgets[a.label].steps != computed[a.label].steps
        ]
        if kept:
            out.append(
                "step budgets as the experiment's runs recorded them, not as this "
                "calibration gives them: " + ", ".join(kept)
            )
    for a in arms:
        rec = recorded.get(a.label)
        for steps, ids in sorted(rec.others().items()) if rec else ():
            out.append(
                f"{a.label}: run(s) {', '.join(map(str, ids))} trained {steps} steps, not "
                f"{budgets[a.label].steps}; they are left out of the verdict (one budget a side)"
            )
    return out
