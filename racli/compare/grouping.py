"""The read side of `ra compare`: finished runs grouped into comparable sets and
turned into the inputs of :mod:`racli.compare.verdict`.

No torch, no SQL: the rows come from :mod:`racli.store.queries` (read by
column name), so the grouping below runs on plain data and tests without a
database. The ``load_*`` functions only fetch and hand over.

Train runs (``--metric val_loss`` / ``tokens_per_s``)
-----------------------------------------------------
* Only ``kind = 'train'`` runs with ``status = 'finished'`` of the candidate
  and the baseline attention are read; ``--tag`` keeps runs with that exact
  tag; ``--since`` keeps runs *started* at or after the given date or time
  (UTC, like every time in the store).
* Runs without a finite value of the metric are left out and counted.
* Comparable runs share ``config_hash`` (every recorded setting but attn, seed
  and tag: model, training, budget, the data's identity and content hash, ra's
  code version) and environment class (GPU name + torch version,
  :func:`racli.environment.env_class`); with ``any_env`` only ``config_hash``.
* The group used is the one with the most runs among those holding both
  sides; ties go to the more balanced group (larger smaller side), then to
  the group with the newest run. Every other group is listed with its sizes
  and what differs from the group used ("code version differs", "data
  differs", ...), from one recorded config per group.
* For the verdict: the group's data and budget, the design and matched-time
  budgets from every run's config (:mod:`racli.compare.design`), the diverged
  or failed runs of each side, a noise estimate pooled from the group's arms
  with 3+ runs (used only when a side has fewer than two runs), and the
  val-loss curves of both sides for the speed checks. Bench timings
  (``--metric ms``): :mod:`racli.bench.history`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

from racli.compare import design as run_design
from racli.compare import stats
from racli.compare.design import UnfinishedRow, config_differences
from racli.compare.verdict import Noise, Sample, Verdict, compare_runs, pooled_noise
from racli.environment import device_label, env_class
from racli.errors import BadInput
from racli.names import split_arm
from racli.store.filters import filters_dict, filters_text

#: --metric choices: the run-row column compared (None: bench timings) and
#: whether lower values are better.
METRICS: dict[str, tuple[str | None, bool]] = {
    "val_loss": ("val_loss", True),
    "tokens_per_s": ("tokens_per_s", False),
    "ms": (None, True),
}

_env_class = lru_cache(maxsize=1024)(env_class)
_device_label = lru_cache(maxsize=4096)(device_label)

# --------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise BadInput(f"unknown metric '{metric}' (valid: {', '.join(METRICS)})")


def check_pair(metric: str, candidate: str, baseline: str) -> None:
    """BadInput for an unknown metric or attention (or arm, ``baseline#2``), an arm with
    bench timings, or the same name on both sides."""
    check_metric(metric)
    for name in (candidate, baseline):
        if split_arm(name)[1] is not None and metric == "ms":
            raise BadInput(
                f"'{name}' is an arm of `ra experiment`: arms have train runs, not bench "
                "timings (--metric ms)"
            )
    if candidate == baseline:
        raise BadInput(f"--candidate and --baseline are both '{candidate}': nothing to compare")


# --------------------------------------------------------------------------
# train runs
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRow:
    """One finished train run, as much as a comparison needs."""

    id: int
    attn: str
    seed: int | None
    config_hash: str
    env_class: str
    val_loss: float | None
    tokens_per_s: float | None
    iterations: int | None
    epochs: float | None
    device: str = "? cpu"

    @classmethod
    def from_record(cls, r) -> RunRow:
        """From a row of :func:`racli.store.queries.finished_train_runs`."""
        return cls(
            id=r["id"],
            attn=r["attn"],
            seed=r["seed"],
            config_hash=r["config_hash"],
            env_class=_env_class(r.get("gpu_name"), r.get("torch")),
            val_loss=r.get("val_loss"),
            tokens_per_s=r.get("tokens_per_s"),
            iterations=r.get("iterations"),
            epochs=r.get("epochs"),
            device=_device_label(r.get("hostname"), r.get("gpu_index"), r.get("gpu_uuid")),
        )

    def value(self, metric: str) -> float | None:
        column = METRICS[metric][0]
        v = getattr(self, column) if column else None
        return float(v) if v is not None and math.isfinite(float(v)) else None

    def sample(self, metric: str) -> Sample:
        return Sample(
            run_id=self.id,
            seed=self.seed,
            value=self.value(metric),
            tokens_per_s=self.tokens_per_s,
            iterations=self.iterations,
            epochs=self.epochs,
        )


@dataclass
class Group:
    """Comparable runs: one config_hash (and environment class unless any_env)."""

    config_hash: str
    env_class: str | None  # None: environments pooled (--any-env)
    runs: list[RunRow]
    candidate: str
    baseline: str
    differs: list[str] = field(default_factory=list)  # from the group compared (others only)

    @property
    def size(self) -> int:
        return len(self.runs)

    def side(self, attn: str) -> list[RunRow]:
        return sorted(
            (r for r in self.runs if r.attn == attn),
            key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, r.id),
        )

    @property
    def n_candidate(self) -> int:
        return sum(1 for r in self.runs if r.attn == self.candidate)

    @property
    def n_baseline(self) -> int:
        return sum(1 for r in self.runs if r.attn == self.baseline)

    @property
    def comparable(self) -> bool:
        return self.n_candidate > 0 and self.n_baseline > 0

    @property
    def env_classes(self) -> list[str]:
        return sorted({r.env_class for r in self.runs})

    @property
    def newest(self) -> int:
        return max(r.id for r in self.runs)

    def devices(self, attn: str) -> list[str]:
        return sorted({r.device for r in self.runs if r.attn == attn})

    def label(self) -> str:
        env = self.env_class if self.env_class is not None else "any environment"
        return f"config {self.config_hash} on {env}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_hash": self.config_hash,
            "env_class": self.env_class,
            "env_classes": self.env_classes,
            "runs": {self.candidate: self.n_candidate, self.baseline: self.n_baseline},
            "run_ids": {
                self.candidate: [r.id for r in self.side(self.candidate)],
                self.baseline: [r.id for r in self.side(self.baseline)],
            },
            "comparable": self.comparable,
            "differs": list(self.differs),
        }


@dataclass
class Comparison:
    """Everything `ra compare` reports for train runs."""

    metric: str
    candidate: str
    baseline: str
    group: Group
    others: list[Group]
    verdict: Verdict
    any_env: bool
    tag: str | None = None
    since: datetime | None = None
    left_out: dict[str, int] = field(default_factory=dict)  # attn -> runs without the metric
    data: dict[str, Any] | None = None  # the group's config["data"]
    budget: dict[str, Any] | None = None  # the group's config["budget"]
    noise: Noise | None = None

    @property
    def devices(self) -> dict[str, list[str]]:
        return {a: self.group.devices(a) for a in (self.candidate, self.baseline)}

    @property
    def different_devices(self) -> bool:
        d = self.devices
        return d[self.candidate] != d[self.baseline]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "filters": filters_dict(self.tag, self.since, self.any_env),
            "group": self.group.to_dict(),
            "other_groups": [g.to_dict() for g in self.others],
            "left_out": dict(self.left_out),
            "data": self.data,
            "budget": self.budget,
            "devices": self.devices,
            "different_devices": self.different_devices,
            "verdict": self.verdict.to_dict(),
        }


def group_runs(
    rows: list[RunRow], *, candidate: str, baseline: str, any_env: bool = False
) -> list[Group]:
    """Groups of comparable runs, the one to use first (see the module docstring)."""
    buckets: dict[tuple[str, str | None], list[RunRow]] = defaultdict(list)
    for r in rows:
        buckets[(r.config_hash, None if any_env else r.env_class)].append(r)
    groups = [
        Group(chash, cls, runs, candidate, baseline) for (chash, cls), runs in buckets.items()
    ]
    groups.sort(
        key=lambda g: (g.comparable, g.size, min(g.n_candidate, g.n_baseline), g.newest),
        reverse=True,
    )
    return groups


def describe_differences(group: Group, others: list[Group], configs: dict[int, dict]) -> None:
    """Fill each other group's ``differs`` (configs: run id -> config, one run per group)."""
    ours = configs.get(group.runs[0].id)
    for g in others:
        words = []
        if g.config_hash != group.config_hash:
            words += config_differences(ours, configs.get(g.runs[0].id))
        if g.env_class != group.env_class:
            words.append("environment class differs")
        g.differs = words


def _no_runs(attn: str, tag, since, metric: str | None = None) -> BadInput:
    from racli.names import ATTENTION_NAMES

    what = f" with a recorded {metric}" if metric else ""
    variant, arm = split_arm(attn)
    if arm is not None:
        hint = f" (an arm of `ra experiment --attn {variant},{variant}`)"
    else:
        hint = f" (use `ra train --attn {attn}`)" if attn in ATTENTION_NAMES else ""
    return BadInput(f"no finished train runs of '{attn}'{what}{filters_text(tag, since)}{hint}")


def select_group(
    rows: list[RunRow],
    *,
    metric: str,
    candidate: str,
    baseline: str,
    any_env: bool = False,
    tag: str | None = None,
    since: datetime | None = None,
) -> tuple[Group, list[Group], dict[str, int]]:
    """(the group to compare, the other groups, runs left out per attention).

    Raises BadInput when a side has no usable run or no group holds both sides.
    """
    for attn in (candidate, baseline):
        if not any(r.attn == attn for r in rows):
            raise _no_runs(attn, tag, since)
    usable = [r for r in rows if r.value(metric) is not None]
    left_out = {
        attn: sum(1 for r in rows if r.attn == attn and r.value(metric) is None)
        for attn in (candidate, baseline)
    }
    for attn in (candidate, baseline):
        if not any(r.attn == attn for r in usable):
            raise _no_runs(attn, tag, since, metric)
    groups = group_runs(usable, candidate=candidate, baseline=baseline, any_env=any_env)
    best = groups[0]
    if not best.comparable:
        shown = "; ".join(
            f"{g.label()}: {g.n_candidate} {candidate}, {g.n_baseline} {baseline}"
            for g in groups[:3]
        )
        more = f"; and {len(groups) - 3} more" if len(groups) > 3 else ""
        what = "config_hash" if any_env else "config_hash and environment class"
        hint = "" if any_env else "; --any-env pools environment classes"
        raise BadInput(
            f"no comparable runs: no group of the same {what} holds both '{candidate}' and "
            f"'{baseline}' ({shown}{more}){hint}"
        )
    return best, groups[1:], left_out


def group_noise(group: Group, metric: str) -> Noise | None:
    """The pooled within-arm spread of the group's arms with 3+ runs (see verdict)."""
    arms: dict[str, list[float]] = defaultdict(list)
    for r in group.runs:
        arms[r.attn].append(r.value(metric))
    return pooled_noise(dict(arms))


def is_wall_clock(config: dict | None) -> bool:
    """True unless the recorded budget is in steps (an unknown budget counts as wall-clock)."""
    budget = (config or {}).get("budget")
    return not (isinstance(budget, dict) and budget.get("steps") is not None)


def judge(
    group: Group,
    *,
    metric: str,
    config: dict | None,
    curves: dict[int, list[tuple[int, float]]] | None = None,
    threshold: float = 0.01,
    confidence: float = 0.95,
    allow_epochs: bool = False,
    configs: dict[int, dict] | None = None,
    unfinished: list[UnfinishedRow] | None = None,
    curve_kind: str = "val-loss",
) -> tuple[Verdict, Noise | None]:
    """The verdict of one group (pure). ``configs``: run id -> config (the design and
    matched-time budgets; none: independent); ``curves``: run id -> loss points of both
    sides (``curve_kind``: val-loss, or train-loss where no val-loss curve can be fitted);
    ``unfinished``: diverged or failed runs (None: not counted)."""
    c, b = group.candidate, group.baseline
    noise = group_noise(group, metric)
    cruns, bruns = group.side(c), group.side(b)
    configs = configs or {}
    try:
        verdict = compare_runs(
            [r.sample(metric) for r in cruns],
            [r.sample(metric) for r in bruns],
            metric=metric,
            lower_is_better=METRICS[metric][1],
            threshold=threshold,
            confidence=confidence,
            candidate_attn=c,
            baseline_attn=b,
            noise=noise,
            allow_epochs=allow_epochs,
            wall_clock=is_wall_clock(config),
            curves=[(curves or {}).get(r.id, []) for r in [*cruns, *bruns]],
            curve_kind=curve_kind,
            design=run_design.pairing(cruns, bruns, configs, (c, b)),
            matched=run_design.matched_time(cruns, bruns, configs),
            unfinished=(
                run_design.count_unfinished(group, unfinished) if unfinished is not None else None
            ),
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    return verdict, noise


def load_unfinished(
    store, *, attns, tag: str | None = None, since: datetime | None = None
) -> list[UnfinishedRow]:
    """Diverged or failed train runs of ``attns`` (one query)."""
    from racli.store.unfinished import unfinished_train_runs

    return [
        UnfinishedRow.from_record(r, _env_class)
        for r in unfinished_train_runs(store, attns=attns, tag=tag, since=since)
    ]


def load_train_runs(
    store,
    *,
    attns: tuple[str, ...] | list[str],
    tag: str | None = None,
    since: datetime | None = None,
) -> list[RunRow]:
    """Finished train runs of ``attns`` with their environment class (one query)."""
    from racli.store import queries

    return [
        RunRow.from_record(r)
        for r in queries.finished_train_runs(store, attns=attns, tag=tag, since=since)
    ]


def _arm_label(config: dict | None) -> str | None:
    """The arm a run was recorded under when it is one of a repeated variant (``baseline#2``)."""
    entry = (config or {}).get(run_design.EXPERIMENT_KEY)
    arm = entry.get("arm") if isinstance(entry, dict) else None
    try:
        return arm if isinstance(arm, str) and split_arm(arm)[1] is not None else None
    except BadInput:  # not an arm's label
        return None


def load_arm_rows(
    store,
    *,
    candidate: str,
    baseline: str,
    tag: str | None = None,
    since: datetime | None = None,
) -> tuple[list[RunRow], list[UnfinishedRow]]:
    """Finished and unfinished train runs of the sides' variants for a comparison that
    names an arm (``baseline#2``): every run `ra experiment` recorded under an arm of a
    repeated variant takes that arm as its name, every other run keeps its variant's, so
    ``baseline#2`` is that arm's runs and ``baseline`` the runs of no such arm."""
    from racli.store import queries

    variants = sorted({split_arm(candidate)[0], split_arm(baseline)[0]})
    rows = load_train_runs(store, attns=variants, tag=tag, since=since)
    gone = load_unfinished(store, attns=variants, tag=tag, since=since)
    configs = queries.run_configs(store, [r.id for r in rows] + [u.id for u in gone])
    arms = {i: _arm_label(c) for i, c in configs.items()}
    return (
        [replace(r, attn=arms.get(r.id) or r.attn) for r in rows],
        [replace(u, attn=arms.get(u.id) or u.attn) for u in gone],
    )


def load_comparison(
    store,
    *,
    metric: str = "val_loss",
    candidate: str = "ra_v5",
    baseline: str = "baseline",
    tag: str | None = None,
    since: datetime | None = None,
    any_env: bool = False,
    threshold: float = 0.01,
    confidence: float = 0.95,
    allow_epochs: bool = False,
    rows: list[RunRow] | None = None,
    unfinished: list[UnfinishedRow] | None = None,
) -> Comparison:
    """History -> groups -> samples -> verdict, for ``metric`` val_loss or tokens_per_s.
    ``rows`` and ``unfinished``: judge these runs instead of the store's (one
    experiment's, by arm)."""
    from racli.store import queries

    check_metric(metric)
    if metric == "ms":
        raise ValueError("bench timings: use load_bench_comparison")
    if rows is None and (split_arm(candidate)[1] or split_arm(baseline)[1]):
        rows, unfinished = load_arm_rows(
            store, candidate=candidate, baseline=baseline, tag=tag, since=since
        )
    elif rows is None:
        rows = load_train_runs(store, attns=(candidate, baseline), tag=tag, since=since)
        unfinished = load_unfinished(store, attns=(candidate, baseline), tag=tag, since=since)
    group, others, left_out = select_group(
        rows,
        metric=metric,
        candidate=candidate,
        baseline=baseline,
        any_env=any_env,
        tag=tag,
        since=since,
    )
    configs = queries.run_configs(
        store, [g.runs[0].id for g in others] + [r.id for r in group.runs]
    )
    describe_differences(group, others, configs)
    config = configs.get(group.runs[0].id)
    curves, curve_kind = None, "val-loss"
    compared = group.side(candidate) + group.side(baseline)
    if metric != "tokens_per_s" and (
        is_wall_clock(config) or run_design.BUDGET_SOURCE_KEY in (config or {})
    ):
        curves, curve_kind = _speed_check_curves(store, [r.id for r in compared])
    verdict, noise = judge(
        group,
        metric=metric,
        config=config,
        curves=curves,
        threshold=threshold,
        confidence=confidence,
        allow_epochs=allow_epochs,
        configs=configs,
        unfinished=unfinished,
        curve_kind=curve_kind,
    )
    return Comparison(
        metric=metric,
        candidate=candidate,
        baseline=baseline,
        group=group,
        others=others,
        verdict=verdict,
        any_env=any_env,
        tag=tag,
        since=since,
        left_out={k: v for k, v in left_out.items() if v},
        data=(config or {}).get("data")
        if isinstance((config or {}).get("data"), dict)
        else ({"name": config["data"]} if config and config.get("data") else None),
        budget=(config or {}).get("budget"),
        noise=noise,
    )


def _speed_check_curves(store, ids: list[int]) -> tuple[dict[int, list], str]:
    """The loss curves the speed checks fit: the runs' val-loss curves, or their train-loss
    curves where no val-loss curve has two points in its last half (a run shorter than
    train.eval_interval records its final evaluation alone; within one epoch the training
    loss falls as the validation loss does)."""
    from racli.store import queries

    curves = queries.metric_points(store, ids, "val_loss", last_half=True)
    if any(b is not None for b in stats.loss_slopes(list(curves.values()))):
        return curves, "val-loss"
    train = queries.metric_points(store, ids, "train_loss", last_half=True)
    if any(b is not None for b in stats.loss_slopes(list(train.values()))):
        return train, "train-loss"
    return curves, "val-loss"


def metric_curves(
    store, runs_by_variant: dict[str, list[int]], name: str = "val_loss"
) -> dict[str, list[tuple[int, list[tuple[int, float]]]]]:
    """``variant -> [(run_id, [(step, value)])]`` of metric ``name``, for the plot."""
    from racli.store import queries

    ids = [i for run_ids in runs_by_variant.values() for i in run_ids]
    points = queries.metric_points(store, ids, name)
    return {
        variant: [(rid, points.get(rid, [])) for rid in run_ids]
        for variant, run_ids in runs_by_variant.items()
    }
