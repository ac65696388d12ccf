"""Verdicts from finished runs: pure statistics (numpy, scipy.special), no torch, no database.

Is the candidate better (WIN), worse (LOSE), the same within the threshold
(PARITY), not yet decidable (INCONCLUSIVE), or not comparable (INVALID)? The
rules are DESIGN.md's "Verdict rules"; why they are what they are, and their
simulated error rates, are in docs/verdicts.md and the README.

1. The effect is ``ln(candidate / baseline)`` (:mod:`racli.compare.stats`): per
   seed and averaged when the runs are **paired by design** (:class:`Design`,
   decided by the caller from how the runs were made, never from their values),
   of the side means with the delta-method error (Welch) otherwise, and from a
   history noise estimate when a side has fewer than two runs. Every interval is
   one of the **improvement** (positive = candidate better), so swapping the
   sides negates every interval exactly and mirrors the outcome.
2. INVALID first (:func:`validity`): past one epoch, a wall-clock speed gap or a
   matched-time budget error that alone explains more than half the threshold,
   diverged or failed runs missing unevenly from the two sides.
3. WIN / LOSE when the 95% interval excludes 0; PARITY when the 90% interval lies
   inside +-threshold (TOST); INCONCLUSIVE otherwise, with the runs per side that
   give 80% power (from an upper confidence bound of the spread, with its range).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from racli.compare import stats
from racli.compare.stats import SEEDS_NEEDED_CAP, format_seeds_needed, seeds_needed  # noqa: F401
from racli.compare.validity import (
    MatchedTime,
    SpeedGap,
    Unfinished,
    budget_check,
    speed_gap,
    speed_labels,
    validity,
)
from racli.compare.wording import headline, recommendation
from racli.names import display_name
from racli.text import jsonout
from racli.text.numbers import finite, pct, signed_pct

OUTCOMES = ("WIN", "LOSE", "PARITY", "INCONCLUSIVE", "INVALID")
#: spread assumed for seeds-needed when nothing was measured (GPT-2-small seed noise)
ASSUMED_NOISE = 0.01
MIN_NOISE_RUNS = 3  # runs an arm needs to count towards a history noise estimate


@dataclass(frozen=True)
class Sample:
    """One finished run: one observation on one side of a comparison."""

    run_id: int
    seed: int | None
    value: float  # the metric (val_loss, or tokens_per_s)
    tokens_per_s: float | None
    iterations: int | None = None
    epochs: float | None = None


@dataclass(frozen=True)
class Design:
    """How the runs were made: paired by seed (same seeds, shared initialisation, same
    batches) or independent. Decided before looking at any value."""

    paired: bool
    why: str


INDEPENDENT = Design(False, "the runs record no pairing: taken as independent")


@dataclass
class SideStats:
    """Summary of one side (candidate or baseline)."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); nan when n < 2
    ci_low: float  # t-interval of the mean; nan when n < 2
    ci_high: float
    median_tokens_per_s: float | None
    tokens_per_s_spread: tuple[float, float] | None  # (min, max)
    iterations_mean: float | None
    epochs_mean: float | None = None
    epochs_max: float | None = None
    run_ids: list[int] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)
    iterations_range: tuple[int, int] | None = None
    diverged: int | None = None  # None: not looked up
    failed: int | None = None


@dataclass(frozen=True)
class Noise:
    """A relative per-run spread measured in the history (see :func:`pooled_noise`)."""

    sd: float
    df: int
    runs: int
    source: str  # what it was pooled from, in words


@dataclass
class Estimate:
    """The interval of the improvement (positive = candidate better)."""

    method: str  # "paired" | "welch" | "prediction" | "none"
    why: str
    d: float  # ln(candidate / baseline)
    improvement: float
    interval: tuple[float, float] | None  # at the confidence level
    interval90: tuple[float, float] | None  # at 1 - 2 alpha (TOST)
    spread: float  # per-run relative spread for the power calculation
    spread_source: str  # "observed" | "history" | "assumed"
    paired: bool  # seeds_needed: paired or two-sample design
    correlation: float | None = None  # paired: of the seeds' values (descriptive only)
    runs: int = 0  # runs per side now (the larger side)
    spread_df: float | None = None


@dataclass
class Verdict:
    outcome: str
    metric: str
    lower_is_better: bool
    candidate_attn: str
    baseline_attn: str
    method: str
    method_why: str
    design: str  # "paired" | "independent"
    limited_evidence: bool  # a side has fewer than two runs
    d: float  # ln(candidate / baseline): the only raw-signed figure
    improvement: float  # positive = candidate better
    interval: tuple[float, float] | None
    interval90: tuple[float, float] | None  # at 1 - 2 alpha (TOST): see `tost_level`
    speed_ratio: float | None  # median tokens/s, candidate / baseline
    speed_gap: SpeedGap | None
    candidate: SideStats
    baseline: SideStats
    threshold: float
    confidence: float
    seeds_needed: int | None  # INCONCLUSIVE only; SEEDS_NEEDED_CAP + 1 = more than the cap
    seeds_needed_range: tuple[int, int] | None
    spread: float
    spread_source: str
    correlation: float | None
    invalid_causes: list[str]  # "epochs", "speed", "budget", "unfinished"
    labels: list[str]  # conditions let through and named
    reason: str
    matched: MatchedTime | None = None

    @property
    def candidate_name(self) -> str:
        return display_name(self.candidate_attn)

    @property
    def baseline_name(self) -> str:
        return display_name(self.baseline_attn)

    @property
    def tost_level(self) -> float:
        """The level of `interval90`: 1 - 2 alpha (90% at the default 95% confidence)."""
        return 1 - 2 * (1 - self.confidence)

    @property
    def clears_threshold(self) -> bool:
        """The whole interval lies beyond the threshold on the side of the outcome."""
        if self.interval is None or self.outcome not in ("WIN", "LOSE"):
            return False
        lo, hi = self.interval
        return lo >= self.threshold if self.outcome == "WIN" else hi <= -self.threshold

    @property
    def recommendation(self) -> str:
        return recommendation(
            self.outcome,
            self.candidate_attn,
            self.invalid_causes,
            clears=self.clears_threshold,
            baseline=self.baseline_attn,
            threshold=self.threshold,
        )

    @property
    def headline(self) -> str:
        return headline(self)

    def to_dict(self) -> dict[str, Any]:
        out = jsonout.ready(asdict(self))
        out["candidate_name"] = self.candidate_name
        out["baseline_name"] = self.baseline_name
        out["sign"] = (
            "improvement = -ln(candidate / baseline) for losses: positive = candidate better"
        )
        out["clears_threshold"] = self.clears_threshold
        out["tost_level"] = round(self.tost_level, 6)
        out["seeds_needed_text"] = format_seeds_needed(self.seeds_needed)
        out["headline"] = self.headline
        out["recommendation"] = self.recommendation
        if self.speed_gap is not None:
            out["speed_gap"]["too_large"] = self.speed_gap.too_large
            out["speed_gap"]["mismatch"] = self.speed_gap.mismatch
        return out


# --------------------------------------------------------------------------
# sides, pairs, history noise
# --------------------------------------------------------------------------


def _side_stats(samples: list[Sample], confidence: float, gone: Unfinished | None) -> SideStats:
    values = np.array([s.value for s in samples], dtype=float)
    n = len(values)
    mean = float(values.mean())
    std = ci_low = ci_high = math.nan
    if n >= 2:
        std = float(values.std(ddof=1))
        half = float(stats.t_quantile(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        ci_low, ci_high = mean - half, mean + half
    tps = [float(s.tokens_per_s) for s in samples if finite(s.tokens_per_s)]
    its = [int(s.iterations) for s in samples if s.iterations is not None]
    eps = [float(s.epochs) for s in samples if finite(s.epochs)]
    return SideStats(
        n=n,
        mean=mean,
        std=std,
        ci_low=ci_low,
        ci_high=ci_high,
        median_tokens_per_s=statistics.median(tps) if tps else None,
        tokens_per_s_spread=(min(tps), max(tps)) if tps else None,
        iterations_mean=sum(its) / len(its) if its else None,
        epochs_mean=sum(eps) / len(eps) if eps else None,
        epochs_max=max(eps) if eps else None,
        run_ids=[s.run_id for s in samples],
        seeds=[s.seed for s in samples],
        iterations_range=(min(its), max(its)) if its else None,
        diverged=gone.diverged if gone is not None else None,
        failed=gone.failed if gone is not None else None,
    )


def pair_up(candidate: list[Sample], baseline: list[Sample]) -> list[tuple[Sample, Sample]] | None:
    """Pairs by seed when both sides hold exactly one run per seed and the same seeds."""
    cs, bs = [s.seed for s in candidate], [s.seed for s in baseline]
    if None in cs or None in bs or len(set(cs)) != len(cs) or len(set(bs)) != len(bs):
        return None
    if set(cs) != set(bs):
        return None
    by_seed = {s.seed: s for s in baseline}
    return [(c, by_seed[c.seed]) for c in sorted(candidate, key=lambda s: s.seed)]


def pooled_noise(arms: dict[str, list[float]], min_runs: int = MIN_NOISE_RUNS) -> Noise | None:
    """The pooled within-arm spread of the log values of arms with at least ``min_runs``
    runs (``arms``: label -> values of runs that differ only by seed); None when none has."""
    ss, df, runs, used = 0.0, 0, 0, []
    for label, values in arms.items():
        v = np.asarray([x for x in values if finite(x) and x > 0], dtype=float)
        if len(v) < min_runs:
            continue
        logs = np.log(v)
        ss += float(((logs - logs.mean()) ** 2).sum())
        df += len(v) - 1
        runs += len(v)
        used.append(f"{label} ({len(v)})")
    if df == 0:
        return None
    return Noise(math.sqrt(ss / df), df, runs, "pooled within-arm spread of " + ", ".join(used))


# --------------------------------------------------------------------------
# step 1: the interval
# --------------------------------------------------------------------------


def estimate(
    candidate: list[Sample],
    baseline: list[Sample],
    *,
    lower_is_better: bool = True,
    confidence: float = 0.95,
    noise: Noise | None = None,
    design: Design = INDEPENDENT,
) -> Estimate:
    """The interval of the improvement (rules in the module docstring)."""
    cs = np.array([s.value for s in candidate], dtype=float)
    bs = np.array([s.value for s in baseline], dtype=float)
    nc, nb = len(cs), len(bs)
    d = float(np.log(cs.mean()) - np.log(bs.mean()))
    sign = -1.0 if lower_is_better else 1.0
    alpha = 1 - confidence
    runs = max(nc, nb)

    if nc < 2 or nb < 2:
        what = f"{nc} candidate and {nb} baseline run(s)"
        if noise is None:
            observed = [x for x in (cs, bs) if len(x) >= 2]
            spread, source = ASSUMED_NOISE, "assumed"
            if observed:
                spread = float(np.sqrt(np.mean([np.var(np.log(x), ddof=1) for x in observed])))
                source = "observed"
            why = f"{what} and no noise estimate for this config in the history"
            return Estimate("none", why, d, sign * d, None, None, spread, source, False, runs=runs)
        se = noise.sd * math.sqrt(1 / nc + 1 / nb)
        h95 = float(stats.t_quantile(1 - alpha / 2, noise.df)) * se
        h90 = float(stats.t_quantile(1 - alpha, noise.df)) * se
        imp = sign * d
        why = f"{what}; history noise sd {pct(noise.sd)}, df {noise.df} ({noise.source})"
        return Estimate(
            "prediction", why, d, imp, (imp - h95, imp + h95), (imp - h90, imp + h90),
            noise.sd, "history", False, runs=runs, spread_df=noise.df,
        )  # fmt: skip

    pairs = pair_up(candidate, baseline) if design.paired else None
    corr = None
    if pairs is not None:
        c = np.array([[p[0].value for p in pairs]])
        b = np.array([[p[1].value for p in pairs]])
        eff = stats.paired_effect(c, b)
        method, why = "paired", design.why
        if np.ptp(c) > 0 and np.ptp(b) > 0:
            corr = float(np.corrcoef(c[0], b[0])[0, 1])
    else:
        eff = stats.welch_effect(cs[None, :], bs[None, :])
        method = "welch"
        why = (
            design.why
            if not design.paired
            else f"{design.why}, but the sides' seeds do not match one to one"
        )
    imp, lo, hi, lo90, hi90 = (
        float(x[0])
        for x in stats.intervals(eff, lower_is_better=lower_is_better, confidence=confidence)
    )
    return Estimate(
        method, why, float(eff.d[0]), imp, (lo, hi), (lo90, hi90), float(eff.spread[0]),
        "observed", method == "paired", corr, runs, float(eff.spread_df[0]),
    )  # fmt: skip


# --------------------------------------------------------------------------
# step 2: the decision
# --------------------------------------------------------------------------


def decide(
    est: Estimate, *, threshold: float, confidence: float, invalid: list[str] = ()
) -> tuple[str, str, int | None, tuple[int, int] | None]:
    """(outcome, reason, seeds needed, its range) from an estimate."""
    if invalid:
        return "INVALID", "; ".join(invalid), None, None
    conf, c90 = f"{confidence:.0%}", f"{1 - 2 * (1 - confidence):.0%}"
    if est.interval is not None:
        lo, hi = est.interval
        lo90, hi90 = est.interval90
        outcome = str(stats.classify(lo, hi, lo90, hi90, threshold))
        text = f"the {conf} interval of the improvement [{signed_pct(lo, 2)}, {signed_pct(hi, 2)}]"
        if outcome in ("WIN", "LOSE"):
            return outcome, f"{text} excludes 0", None, None
        if outcome == "PARITY":
            why = (
                f"the {c90} interval [{signed_pct(lo90, 2)}, {signed_pct(hi90, 2)}] lies inside "
                f"+-{threshold:.0%} (TOST at {(1 - confidence):.0%} a side)"
            )
            return "PARITY", why, None, None
        why = f"{text} includes 0 and its {c90} interval is not inside +-{threshold:.0%}"
    else:
        why = f"no interval: {est.why}"
    needed, span = stats.seeds_needed_range(
        est.spread, est.spread_df, threshold, paired=est.paired, confidence=confidence
    )
    spread = {
        "observed": "the observed spread",
        "history": "the history's spread",
        "assumed": "an assumed spread (none measured yet)",
    }[est.spread_source]
    bound = "" if span is None else f"'s {stats.SPREAD_BOUND:.0%} upper bound"
    note = ""
    if needed <= est.runs:
        note = " (already reached: the true difference likely lies near the threshold)"
    reason = (
        f"{why}; about {format_seeds_needed(needed)} runs per side give 80% power at the "
        f"{threshold:.0%} threshold at {spread}{bound} ({pct(est.spread)} a run){note}"
    )
    return "INCONCLUSIVE", reason, needed, span


def _check_inputs(candidate, baseline, metric: str, threshold: float, confidence: float) -> None:
    """ValueError for an empty side, a non-finite or non-positive value, or bad parameters."""
    if not candidate:
        raise ValueError("no finished candidate runs to compare")
    if not baseline:
        raise ValueError("no finished baseline runs to compare")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must lie between 0.5 and 1, got {confidence}")
    if threshold <= 0:
        raise ValueError("the threshold must be positive")
    for s in [*candidate, *baseline]:
        if not finite(s.value):
            raise ValueError(f"run {s.run_id} has a non-finite {metric}: {s.value}")
        if s.value <= 0:
            raise ValueError(f"run {s.run_id} has a {metric} of {s.value}: ratios need values > 0")


def paired_speed_ratio(candidate: list[Sample], baseline: list[Sample]) -> float | None:
    """The geometric mean over the seeds both sides ran of the candidate's tokens/s over
    the baseline's (None without such a seed): swapping the sides inverts it exactly."""

    def speed(s: Sample) -> float | None:
        ok = s.seed is not None and finite(s.tokens_per_s) and s.tokens_per_s > 0
        return float(s.tokens_per_s) if ok else None

    base = {s.seed: speed(s) for s in baseline if speed(s) is not None}
    logs = [math.log(speed(c) / base[c.seed]) for c in candidate if speed(c) and c.seed in base]
    return math.exp(math.fsum(logs) / len(logs)) if logs else None


def _speed(
    cstats,
    bstats,
    metric: str,
    curves,
    threshold: float,
    matched,
    wall_clock: bool,
    by_seed,
    curve_kind: str = "val-loss",
):
    """(the candidate's median tokens/s over the baseline's or None, the speed check): the
    step budgets' check (matched time; `by_seed`: the paired speed ratio, or None), the
    speed gap (a wall-clock budget), or None."""
    ratio = None
    if cstats.median_tokens_per_s and bstats.median_tokens_per_s:
        ratio = cstats.median_tokens_per_s / bstats.median_tokens_per_s
    gap = None
    if metric != "tokens_per_s":
        if matched is not None:
            gap = budget_check(matched, cstats, bstats, curves, threshold, by_seed, curve_kind)
        elif wall_clock:
            gap = speed_gap(cstats, bstats, curves, threshold, curve_kind)
    return ratio, gap


def compare_runs(
    candidate: list[Sample],
    baseline: list[Sample],
    *,
    metric: str = "val_loss",
    lower_is_better: bool = True,
    threshold: float = 0.01,
    confidence: float = 0.95,
    candidate_attn: str = "ra_v5",
    baseline_attn: str = "baseline",
    noise: Noise | None = None,
    allow_epochs: bool = False,
    wall_clock: bool = True,
    curves: list[list[tuple[float, float]]] | None = None,
    curve_kind: str = "val-loss",
    design: Design = INDEPENDENT,
    matched: MatchedTime | None = None,
    unfinished: tuple[Unfinished, Unfinished] | None = None,
) -> Verdict:
    """The verdict between two sides of finished runs: :func:`estimate`, then :func:`decide`.

    ``wall_clock``: a time budget (or an unknown one): the speed check applies, from the
    loss ``curves`` of both sides (each ``[(step, loss)]``; ``curve_kind`` says which loss,
    "val-loss" or "train-loss"). ``matched``: step
    budgets from a calibrated speed ratio, checked at the ends of its interval. ``design``:
    paired or independent, from how the runs were made. ``unfinished``: (candidate,
    baseline) runs that diverged or failed. Raises ValueError for an empty side, a
    non-finite or non-positive value, or bad parameters.
    """
    _check_inputs(candidate, baseline, metric, threshold, confidence)
    gone = unfinished or (None, None)
    cstats = _side_stats(candidate, confidence, gone[0])
    bstats = _side_stats(baseline, confidence, gone[1])
    by_seed = paired_speed_ratio(candidate, baseline) if design.paired else None
    ratio, gap = _speed(
        cstats, bstats, metric, curves or [], threshold, matched, wall_clock, by_seed, curve_kind
    )
    names = (display_name(candidate_attn), display_name(baseline_attn))
    causes, reasons, labels = validity(
        cstats, bstats, gap=gap, allow_epochs=allow_epochs, names=names
    )
    labels += speed_labels(gap, matched)
    est = estimate(
        candidate,
        baseline,
        lower_is_better=lower_is_better,
        confidence=confidence,
        noise=noise,
        design=design,
    )
    outcome, reason, needed, span = decide(
        est, threshold=threshold, confidence=confidence, invalid=reasons
    )
    return Verdict(
        outcome=outcome,
        metric=metric,
        lower_is_better=lower_is_better,
        candidate_attn=candidate_attn,
        baseline_attn=baseline_attn,
        method=est.method,
        method_why=est.why,
        design="paired" if design.paired else "independent",
        limited_evidence=cstats.n < 2 or bstats.n < 2,
        d=est.d,
        improvement=est.improvement,
        interval=est.interval,
        interval90=est.interval90,
        speed_ratio=ratio,
        speed_gap=gap,
        candidate=cstats,
        baseline=bstats,
        threshold=threshold,
        confidence=confidence,
        seeds_needed=needed,
        seeds_needed_range=span,
        spread=est.spread,
        spread_source=est.spread_source,
        correlation=est.correlation,
        invalid_causes=causes,
        labels=labels,
        reason=reason,
        matched=matched,
    )
