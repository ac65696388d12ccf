"""The verdict over exactly one experiment's runs, by the rules of `ra compare`.

The experiment's finished train runs are read as `ra compare` reads history
(:func:`racli.compare.grouping.load_train_runs`), kept to those whose config carries the
experiment's key, and labelled by **arm** instead of attention (so the two arms
of an A/A experiment are two sides). Each arm after the first is then judged
against the first by :func:`racli.compare.grouping.load_comparison` with those rows, and
printed by the same renderer as `ra compare`. No torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from racli.compare.grouping import load_comparison, load_train_runs
from racli.compare.text import final_comparison
from racli.compare.view import header_text
from racli.errors import BadInput
from racli.experiment.plan import EXPERIMENT_KEY, Arm
from racli.store.experiment_queries import experiment_runs


def arm_of(run) -> str | None:
    exp = (run.config or {}).get(EXPERIMENT_KEY) or {}
    return exp.get("arm")


def arm_rows(store, key: str, arms: list[Arm]):
    """The experiment's finished train runs as `ra compare` rows, `attn` set to the arm."""
    labels = {r.id: arm_of(r) for r in experiment_runs(store, key)}
    rows = load_train_runs(store, attns=sorted({a.attn for a in arms}))
    return [
        dataclasses.replace(r, attn=labels[r.id])
        for r in rows
        if r.id in labels and labels[r.id] is not None
    ]


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
        n = f"{v.candidate.n} vs {v.baseline.n} runs"
        return text + f", {n})"

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
) -> list[ArmVerdict]:
    """Each arm after the first against the first, over the experiment's finished runs."""
    rows = arm_rows(store, key, arms)
    out = []
    for arm in arms[1:]:
        try:
            cmp = load_comparison(
                store,
                metric=metric,
                candidate=arm.label,
                baseline=arms[0].label,
                threshold=threshold,
                confidence=confidence,
                rows=rows,
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
