"""The read side of `ra compare`: finished runs out of the store, grouped into
comparable sets, turned into the inputs of :mod:`racli.verdict`.

No torch. Queries are SQLAlchemy Core selects of only the columns needed
(one query for runs joined with their environment), so that a comparison
over tens of thousands of stored runs stays well under a second.

Train runs (``--metric val_loss`` / ``tokens_per_s``)
-----------------------------------------------------
* Only ``kind = 'train'`` runs with ``status = 'finished'`` of the candidate
  and the baseline attention are read; ``--tag`` keeps runs with that exact
  tag; ``--since`` keeps runs *started* at or after the given date or time
  (UTC, like every time in the store).
* Runs without a finite value of the metric (column ``val_loss`` or
  ``tokens_per_s`` of the run row) are left out and counted.
* Comparable runs share ``config_hash`` and environment class (GPU name +
  torch version, :func:`racli.environment.env_class`); with ``any_env`` only
  ``config_hash``.
* The group used is the one with the most runs among those holding both
  sides; ties go to the more balanced group (larger smaller side), then to
  the group with the newest run. Every other group is listed with its sizes.

Bench timings (``--metric ms``)
-------------------------------
* ``ok`` timings of finished bench runs (same ``--tag`` / ``--since``
  filters) of the candidate and the baseline.
* Grouped by shape (batch, seq, heads, head_dim), dtype, device and
  environment class (not the class with ``any_env``). Within a group each
  attention's best row over modes *and over every bench run of the group*
  is compared per phase (and SDPA backend), as in the seed's "FAIR
  COMPARISON (Best vs Best)".
* Every group is reported, newest first (by its latest bench run): a new
  shape or a new machine does not hide the older measurements.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from racli.environment import env_class
from racli.errors import BadInput
from racli.verdict import Sample, TimingRow, Verdict, best_vs_best, compare_runs

#: --metric choices: the run-row column compared (None: bench timings) and
#: whether lower values are better.
METRICS: dict[str, tuple[str | None, bool]] = {
    "val_loss": ("val_loss", True),
    "tokens_per_s": ("tokens_per_s", False),
    "ms": (None, True),
}

_IN_CHUNK = 900  # bound parameters per IN (...) clause (SQLite's limit is larger)


# --------------------------------------------------------------------------
# filters
# --------------------------------------------------------------------------


def parse_since(text: str | None) -> datetime | None:
    """``YYYY-MM-DD`` or an ISO datetime -> naive UTC datetime (None stays None)."""
    if text is None:
        return None
    raw = text.strip()
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise BadInput(
            f"bad --since '{text}': expected a date YYYY-MM-DD or an ISO datetime "
            "such as 2025-06-01T14:30 (UTC)"
        ) from None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return when


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise BadInput(f"unknown metric '{metric}' (valid: {', '.join(METRICS)})")


def _filters_text(tag: str | None, since: datetime | None) -> str:
    parts = []
    if tag is not None:
        parts.append(f"tag '{tag}'")
    if since is not None:
        parts.append(f"started since {since.isoformat(sep=' ', timespec='minutes')}")
    return (" with " + " and ".join(parts)) if parts else ""


# --------------------------------------------------------------------------
# train runs
# --------------------------------------------------------------------------



def _filters(tag: str | None, since: datetime | None, any_env: bool) -> dict[str, Any]:
    """The history filters of a comparison, as JSON-ready data."""
    return {"tag": tag, "since": since.isoformat(sep=" ") if since else None, "any_env": any_env}

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "filters": _filters(self.tag, self.since, self.any_env),
            "group": self.group.to_dict(),
            "other_groups": [g.to_dict() for g in self.others],
            "left_out": dict(self.left_out),
            "verdict": self.verdict.to_dict(),
        }


def load_train_runs(
    store,
    *,
    attns: tuple[str, ...] | list[str],
    tag: str | None = None,
    since: datetime | None = None,
) -> list[RunRow]:
    """Finished train runs of ``attns`` with their environment class (one query)."""
    from sqlalchemy import select

    from racli.store.models import Environment, Run

    q = (
        select(
            Run.id,
            Run.attn,
            Run.seed,
            Run.config_hash,
            Environment.gpu_name,
            Environment.torch,
            Run.val_loss,
            Run.tokens_per_s,
            Run.iterations,
            Run.epochs,
        )
        .outerjoin(Environment, Run.env_id == Environment.id)
        .where(Run.kind == "train", Run.status == "finished", Run.attn.in_(list(attns)))
        .where(Run.excluded.is_(False))  # `ra runs exclude`: kept, left out of verdicts
        .order_by(Run.id)
    )
    if tag is not None:
        q = q.where(Run.tag == tag)
    if since is not None:
        q = q.where(Run.started_at >= since)
    classes: dict[tuple[str | None, str | None], str] = {}
    out: list[RunRow] = []
    with store.engine.connect() as conn:
        for rid, attn, seed, chash, gpu, torch_v, vl, tps, its, eps in conn.execute(q):
            cls = classes.get((gpu, torch_v))
            if cls is None:
                cls = classes[(gpu, torch_v)] = env_class(gpu, torch_v)
            out.append(RunRow(rid, attn, seed, chash, cls, vl, tps, its, eps))
    return out


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


def _no_runs(attn: str, tag, since, metric: str | None = None) -> BadInput:
    what = f" with a recorded {metric}" if metric else ""
    return BadInput(
        f"no finished train runs of '{attn}'{what}{_filters_text(tag, since)} "
        f"(use `ra train --attn {attn}`)"
    )


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
    speed_tolerance: float = 0.10,
    confidence: float = 0.95,
    rows: list[RunRow] | None = None,
) -> Comparison:
    """History -> groups -> samples -> verdict, for ``metric`` val_loss or tokens_per_s.
    ``rows``: judge these runs instead of the store's (one experiment's, by arm)."""
    check_metric(metric)
    if metric == "ms":
        raise ValueError("bench timings: use load_bench_comparison")
    if rows is None:
        rows = load_train_runs(store, attns=(candidate, baseline), tag=tag, since=since)
    group, others, left_out = select_group(
        rows,
        metric=metric,
        candidate=candidate,
        baseline=baseline,
        any_env=any_env,
        tag=tag,
        since=since,
    )
    lower_is_better = METRICS[metric][1]
    try:
        verdict = compare_runs(
            [r.sample(metric) for r in group.side(candidate)],
            [r.sample(metric) for r in group.side(baseline)],
            metric=metric,
            lower_is_better=lower_is_better,
            threshold=threshold,
            speed_tolerance=speed_tolerance,
            confidence=confidence,
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
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
    )


def metric_curves(
    store, runs_by_variant: dict[str, list[int]], name: str = "val_loss"
) -> dict[str, list[tuple[int, list[tuple[int, float]]]]]:
    """``variant -> [(run_id, [(step, value)])]`` of metric ``name``, for the plot."""
    from sqlalchemy import select

    from racli.store.models import Metric

    ids = [i for run_ids in runs_by_variant.values() for i in run_ids]
    points: dict[int, list[tuple[int, float]]] = defaultdict(list)
    with store.engine.connect() as conn:
        for k in range(0, len(ids), _IN_CHUNK):
            chunk = ids[k : k + _IN_CHUNK]
            q = (
                select(Metric.run_id, Metric.step, Metric.value)
                .where(Metric.name == name, Metric.run_id.in_(chunk))
                .order_by(Metric.run_id, Metric.step, Metric.id)
            )
            for rid, step, value in conn.execute(q):
                points[rid].append((int(step), float(value)))
    return {
        variant: [(rid, points.get(rid, [])) for rid in run_ids]
        for variant, run_ids in runs_by_variant.items()
    }


# --------------------------------------------------------------------------
# bench timings
# --------------------------------------------------------------------------


@dataclass
class BenchGroup:
    """ok timings of one shape, dtype, device (and environment class)."""

    shape: dict[str, Any]  # batch, seq, heads, head_dim, dtype, device
    env_class: str | None  # None: environments pooled (--any-env)
    run_ids: list[int]
    rows: list[TimingRow]
    best: list[dict]

    @property
    def newest(self) -> int:
        return max(self.run_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": dict(self.shape),
            "env_class": self.env_class,
            "run_ids": list(self.run_ids),
            "timings": len(self.rows),
            "best": [dict(b) for b in self.best],
        }


@dataclass
class BenchComparison:
    candidate: str
    baseline: str
    groups: list[BenchGroup]  # newest first
    any_env: bool
    tag: str | None = None
    since: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": "ms",
            "candidate": self.candidate,
            "baseline": self.baseline,
            "filters": _filters(self.tag, self.since, self.any_env),
            "groups": [g.to_dict() for g in self.groups],
        }


def load_bench_comparison(
    store,
    *,
    candidate: str = "ra_v5",
    baseline: str = "baseline",
    tag: str | None = None,
    since: datetime | None = None,
    any_env: bool = False,
) -> BenchComparison:
    """Best vs best per shape group from every finished bench run (newest group first)."""
    from sqlalchemy import select

    from racli.store.models import Environment, Run, Timing

    q = (
        select(
            Timing.run_id,
            Timing.attn,
            Timing.mode,
            Timing.phase,
            Timing.batch,
            Timing.seq,
            Timing.heads,
            Timing.head_dim,
            Timing.dtype,
            Timing.device,
            Timing.backend,
            Timing.median_ms,
            Timing.p10_ms,
            Timing.p90_ms,
            Timing.tflops,
            Environment.gpu_name,
            Environment.torch,
        )
        .join(Run, Timing.run_id == Run.id)
        .outerjoin(Environment, Run.env_id == Environment.id)
        .where(
            Run.kind == "bench",
            Run.status == "finished",
            Run.excluded.is_(False),
            Timing.status == "ok",
            Timing.attn.in_([candidate, baseline]),
        )
        .order_by(Timing.run_id, Timing.id)
    )
    if tag is not None:
        q = q.where(Run.tag == tag)
    if since is not None:
        q = q.where(Run.started_at >= since)

    buckets: dict[tuple, tuple[set[int], list[TimingRow]]] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(q):
            rid, attn, mode, phase, b, t, h, d, dtype, device, backend = row[:11]
            med, p10, p90, tfl, gpu, torch_v = row[11:]
            if med is None or not math.isfinite(med):
                continue
            cls = None if any_env else env_class(gpu, torch_v)
            key = (b, t, h, d, dtype, device, cls)
            ids, rows = buckets.setdefault(key, (set(), []))
            ids.add(rid)
            rows.append(TimingRow(attn, mode, phase, med, p10, p90, "ok", backend, None, tfl))

    for attn in (candidate, baseline):
        if not any(r.attn == attn for _, rows in buckets.values() for r in rows):
            raise BadInput(
                f"no ok bench timings of '{attn}' in finished bench runs"
                f"{_filters_text(tag, since)} (use `ra bench --attn {baseline},{candidate}`)"
            )
    groups = []
    for (b, t, h, d, dtype, device, cls), (ids, rows) in buckets.items():
        shape = {"batch": b, "seq": t, "heads": h, "head_dim": d, "dtype": dtype, "device": device}
        groups.append(
            BenchGroup(shape, cls, sorted(ids), rows, best_vs_best(rows, baseline=baseline))
        )
    groups.sort(key=lambda g: g.newest, reverse=True)
    return BenchComparison(candidate, baseline, groups, any_env, tag, since)
