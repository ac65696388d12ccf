"""How the runs of a comparison were made, read from their recorded configs (pure).

* **Pairing** (:func:`pairing`): decided from the design, never from the values.
  Paired when both sides hold one run per seed, the same seeds, and the runs
  share the initialisation rule and the batch stream by construction: every run
  recording ``pairing`` (weights drawn from (seed, parameter name), batches from
  the seed), or, for runs recorded before that key, every run of the comparison
  coming from ``ra experiment``. Otherwise independent (Welch), with the reason.
* **Matched time** (:func:`matched_time`): step budgets set by ``ra experiment``
  from a calibrated speed ratio; the verdict checks the budgets at the ends of
  the ratio's interval and against the speed the runs then measured.
* **Missing runs** (:func:`count_unfinished`): diverged or failed runs of each
  side, for seeds that have no finished run on that side.
* **What differs** (:func:`config_differences`) between two groups' configs, in words.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from racli.compare.verdict import Design, MatchedTime, Unfinished
from racli.names import PAIRING_RULE

EXPERIMENT_KEY = "experiment"  # racli.experiment.plan.EXPERIMENT_KEY
BUDGET_SOURCE_KEY = "budget_source"
#: config keys that are not part of the comparison key
PER_RUN_KEYS = ("attn", "seed", "tag")
#: what a difference in a config key means, in words
_DIFF_WORDS = {
    "code": "code version differs",
    "data": "data differs",
    "model": "model differs",
    "train": "training settings differ",
    "budget": "budget differs",
}


def config_differences(ours: dict | None, theirs: dict | None) -> list[str]:
    """What differs between two recorded configs, in words ("code version differs", ...)."""
    if ours is None or theirs is None:
        return ["config not recorded"]
    keys = sorted((set(ours) | set(theirs)) - set(PER_RUN_KEYS))
    out = []
    for k in keys:
        if ours.get(k) == theirs.get(k):
            continue
        word = _DIFF_WORDS.get(k, f"{k} differs")
        a, b = ours.get(k), theirs.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and k != "code":
            sub = sorted(j for j in set(a) | set(b) if a.get(j) != b.get(j))
            if sub:
                word += f" ({', '.join(sub)})"
        out.append(word)
    return out or ["config differs"]


def _variant(label: str) -> str:
    return label.split("#", 1)[0]


def pairing(
    candidate: list, baseline: list, configs: dict[int, dict], names: tuple[str, str]
) -> Design:
    """The design of a comparison of runs (objects with ``id`` and ``seed``)."""
    cs, bs = [r.seed for r in candidate], [r.seed for r in baseline]
    cfgs = [configs.get(r.id) or {} for r in [*candidate, *baseline]]
    from_experiment = all(isinstance(c.get(EXPERIMENT_KEY), dict) for c in cfgs)
    if None in cs or None in bs:
        return Design(False, "independent: some runs record no seed")
    if len(set(cs)) != len(cs) or len(set(bs)) != len(bs):
        return Design(False, "independent: a seed repeats on one side, so runs do not pair")
    if set(cs) != set(bs):
        if from_experiment and _variant(names[0]) == _variant(names[1]):
            return Design(
                False,
                "independent by design: the arms of an A/A experiment train on separate "
                "seed streams",
            )
        return Design(False, "independent: the two sides' seeds differ")
    n = len(cs)
    if cfgs and all(c.get("pairing") == PAIRING_RULE for c in cfgs):
        return Design(
            True,
            f"paired by design: both sides ran the same {n} seeds, and a seed fixes the "
            "initial value of every weight the variants share and the batches",
        )
    if from_experiment:
        return Design(
            True,
            f"paired by design: runs of `ra experiment`, whose arms share seeds ({n}), "
            "initialisation and batches",
        )
    return Design(
        False,
        "independent: the same seeds on both sides, but the runs do not record a shared "
        "initialisation (recorded before it)",
    )


def _side_ratio(sources: list[dict]) -> tuple[float, tuple[float, float] | None]:
    """(median ratio, widest interval) of one side's budget sources; the reference variant
    (ratio 1 without an interval) is exact by definition."""
    ratios = [float(s["ratio"]) for s in sources]
    lows, highs = [], []
    for s, r in zip(sources, ratios):
        ci = s.get("ratio_ci")
        if ci is None:
            if r != 1.0:
                return statistics.median(ratios), None
            ci = (1.0, 1.0)
        lows.append(float(ci[0]))
        highs.append(float(ci[1]))
    return statistics.median(ratios), (min(lows), max(highs))


def matched_time(candidate: list, baseline: list, configs: dict[int, dict]) -> MatchedTime | None:
    """The calibrated speed behind matched-time step budgets; None unless every run has one."""
    sides = []
    for runs in (candidate, baseline):
        sources = [(configs.get(r.id) or {}).get(BUDGET_SOURCE_KEY) for r in runs]
        if not runs or not all(
            isinstance(s, dict) and s.get("kind") == "matched_time" and s.get("ratio")
            for s in sources
        ):
            return None
        sides.append(sources)
    (rc, cc), (rb, cb) = (_side_ratio(s) for s in sides)
    ci = None
    if cc is not None and cb is not None and cb[0] > 0:
        ci = (cc[0] / cb[1], cc[1] / cb[0])
    settled = all(s.get("calibration_settled", True) is not False for s in sides[0] + sides[1])
    minutes = sides[0][0].get("minutes")
    ratio = rc / rb
    if ci is not None and not all(math.isfinite(x) for x in ci):
        ci = None
    return MatchedTime(ratio, ci, settled, float(minutes) if minutes is not None else None)


@dataclass(frozen=True)
class UnfinishedRow:
    """A train run that diverged or failed."""

    id: int
    attn: str
    seed: int | None
    status: str
    config_hash: str
    env_class: str | None  # None: matches any environment class

    @classmethod
    def from_record(cls, r: Any, env_class) -> UnfinishedRow:
        """From a row of :func:`racli.store.unfinished.unfinished_train_runs`."""
        return cls(
            r["id"], r["attn"], r["seed"], r["status"], r["config_hash"],
            env_class(r.get("gpu_name"), r.get("torch")),
        )  # fmt: skip


def count_unfinished(group, rows: list[UnfinishedRow]) -> tuple[Unfinished, Unfinished]:
    """(candidate, baseline) runs of the group's config (and environment class unless
    pooled) that diverged or failed, for seeds without a finished run on that side."""
    out = []
    for attn in (group.candidate, group.baseline):
        done = {r.seed for r in group.side(attn)}
        mine = [
            r
            for r in rows
            if r.attn == attn
            and r.config_hash == group.config_hash
            and (group.env_class is None or r.env_class in (None, group.env_class))
            and (r.seed is None or r.seed not in done)
        ]
        out.append(
            Unfinished(
                diverged=sum(r.status == "diverged" for r in mine),
                failed=sum(r.status == "failed" for r in mine),
                run_ids=tuple(r.id for r in mine),
            )
        )
    return out[0], out[1]
