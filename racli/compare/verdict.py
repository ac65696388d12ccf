"""Verdicts from run history: pure statistics (numpy, scipy.special), no torch, no database.

The question answered here is the one in DESIGN.md ("Verdict rules"): given
the finished runs of a candidate attention and of the baseline, is the
candidate better (WIN), worse (LOSE), the same within a threshold (PARITY),
not yet decidable (INCONCLUSIVE), or not comparable at all (INVALID)?

Sign convention
---------------
``d = (mean_candidate - mean_baseline) / mean_baseline`` is the raw relative
difference. Every *interval* (text and JSON) is an interval of the
**improvement**: ``-d`` when lower is better (losses), ``+d`` otherwise
(throughput), so a positive improvement always means "candidate better".

Step 1: the interval (:func:`estimate`)
---------------------------------------
* **welch** (default, two or more runs a side): the interval of
  ``mean_c - mean_b`` with the Welch standard error
  ``sqrt(s_c^2/n_c + s_b^2/n_b)`` and Welch-Satterthwaite degrees of freedom,
  divided by ``mean_b`` (taken as a constant: its own ~1% relative
  uncertainty moves a 2% bound by 0.02 points).
* **paired** (by seed): only when both sides hold one run per seed, the same
  seeds, at least 3 pairs, and the pairs are *measurably correlated*: the
  Pearson correlation ``r`` of the paired values is positive with a one-sided
  test at 0.5% (``t = r sqrt((n-2)/(1-r^2))``, df ``n-2``; at 5% the
  data-driven switch itself lifted false WIN/LOSE to 5.6%). Then ``r_s = (c_s -
  b_s)/b_s``, ``d = mean(r)``, half-width ``t(n-1) sd(r)/sqrt(n)``. Without a
  measured correlation pairing only costs degrees of freedom (at 3 seeds the
  paired interval had less power than Welch's), so Welch is kept.
* **prediction** (fewer than two runs on a side): allowed only when the
  history holds a noise estimate for this config (:func:`pooled_noise`: the
  pooled within-arm spread ``s`` of arms with at least 3 runs, with its
  degrees of freedom). The interval is ``d +- t(df) s sqrt(1/n_c + 1/n_b)``,
  the prediction interval of a new run's difference when every run has
  spread ``s``. Without such an estimate there is no interval.

Each interval comes at the confidence level (95%: WIN/LOSE) and at
``1 - 2 alpha`` (90%: the TOST of PARITY).

Step 2: the decision (:func:`decide`)
-------------------------------------
* INVALID first, with its causes (see :func:`validity`): a side went past one
  epoch of its data (unless allowed; then the verdict is labelled), or for
  wall-clock budgets the speed gap alone explains more than half the
  threshold (:func:`speed_explained_gap`).
* WIN / LOSE: the 95% interval of the improvement excludes 0. The headline
  prints the interval and says "by at least 1%" only when the whole interval
  clears the threshold.
* PARITY: the 90% interval lies inside +-threshold (TOST at 5% a side).
* INCONCLUSIVE otherwise, with :func:`seeds_needed`: runs per side for 80%
  power at the threshold at the observed spread (a function of the spread
  only, so it does not jump when the point estimate crosses the threshold).

The simulated error rates of these rules are in the README (``python
tools/simulate_verdicts.py``).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from racli.compare.wording import headline, recommendation
from racli.names import display_name
from racli.text.numbers import finite, pct, signed_pct

OUTCOMES = ("WIN", "LOSE", "PARITY", "INCONCLUSIVE", "INVALID")

#: Spread assumed for the seeds-needed figure when nothing was measured yet
#: (about the seed noise of GPT-2-small validation loss).
ASSUMED_NOISE = 0.01
POWER = 0.80
MIN_PAIRS = 3  # pairs needed to test their correlation
#: one-sided level of the correlation test that switches to the paired interval. The switch
#: is data-driven, so it adds to Welch's false WIN/LOSE rate: at 5% the total reached 5.6% at 8
#: seeds, at 0.5% it stays at or below 5.0% up to 12 seeds (simulated, no true correlation)
PAIRING_LEVEL = 0.005
MIN_NOISE_RUNS = 3  # runs an arm needs to count towards a history noise estimate

# --------------------------------------------------------------------------
# the recommendation: one home, with the candidate's name
# --------------------------------------------------------------------------

# --------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One finished run: one observation on one side of a comparison."""

    run_id: int
    seed: int | None
    value: float  # the metric (val_loss, or tokens_per_s)
    tokens_per_s: float | None
    iterations: int | None = None
    epochs: float | None = None


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


@dataclass(frozen=True)
class Noise:
    """A relative per-run spread measured in the history (see :func:`pooled_noise`)."""

    sd: float  # relative standard deviation of one run
    df: int
    runs: int
    source: str  # what it was pooled from, in words


@dataclass
class SpeedGap:
    """What a throughput gap alone does to the loss under a wall-clock budget."""

    ratio: float  # median tokens/s, candidate / baseline
    explained: float | None  # relative loss gap it explains (None: no curve to tell)
    limit: float  # half the threshold
    basis: str  # how it was estimated, in words

    @property
    def too_large(self) -> bool:
        return bool(self.explained is not None and self.explained > self.limit)


@dataclass
class Estimate:
    """Step 1: the interval of the improvement (positive = candidate better)."""

    method: str  # "paired" | "welch" | "prediction" | "none"
    why: str
    d: float  # raw relative difference of the means
    improvement: float
    interval: tuple[float, float] | None  # at the confidence level
    interval90: tuple[float, float] | None  # at 1 - 2 alpha (TOST)
    spread: float  # relative spread used for the power calculation
    spread_source: str  # "observed" | "history" | "assumed"
    paired: bool  # seeds_needed: paired or two-sample design
    correlation: float | None = None
    runs: int = 0  # runs per side now (the larger side)


@dataclass
class Verdict:
    outcome: str  # "WIN" | "LOSE" | "PARITY" | "INCONCLUSIVE" | "INVALID"
    metric: str
    lower_is_better: bool
    candidate_attn: str
    baseline_attn: str
    method: str  # "paired" | "welch" | "prediction" | "none"
    method_why: str
    limited_evidence: bool  # a side has fewer than two runs
    d: float  # raw relative difference of the means (the only raw-signed figure)
    improvement: float  # positive = candidate better
    interval: tuple[float, float] | None  # improvement, at `confidence`
    interval90: tuple[float, float] | None  # improvement, at 1 - 2 alpha
    speed_ratio: float | None
    speed_gap: SpeedGap | None
    candidate: SideStats
    baseline: SideStats
    threshold: float
    confidence: float
    seeds_needed: int | None  # INCONCLUSIVE only; SEEDS_NEEDED_CAP + 1 = more than the cap
    spread: float
    spread_source: str
    correlation: float | None
    invalid_causes: list[str]  # "epochs", "speed"
    labels: list[str]  # conditions let through and named (e.g. --allow-epochs)
    reason: str

    @property
    def candidate_name(self) -> str:
        return display_name(self.candidate_attn)

    @property
    def baseline_name(self) -> str:
        return display_name(self.baseline_attn)

    @property
    def clears_threshold(self) -> bool:
        """The whole interval lies beyond the threshold on the side of the outcome."""
        if self.interval is None or self.outcome not in ("WIN", "LOSE"):
            return False
        lo, hi = self.interval
        return lo >= self.threshold if self.outcome == "WIN" else hi <= -self.threshold

    @property
    def recommendation(self) -> str:
        return recommendation(self.outcome, self.candidate_attn, self.invalid_causes)

    @property
    def headline(self) -> str:
        return headline(self)

    def to_dict(self) -> dict[str, Any]:
        out = _jsonable(asdict(self))
        out["candidate_name"] = self.candidate_name
        out["baseline_name"] = self.baseline_name
        out["sign"] = "improvement: positive = candidate better"
        out["clears_threshold"] = self.clears_threshold
        out["seeds_needed_text"] = format_seeds_needed(self.seeds_needed)
        out["headline"] = self.headline
        out["recommendation"] = self.recommendation
        if self.speed_gap is not None:
            out["speed_gap"]["too_large"] = self.speed_gap.too_large
        return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


# --------------------------------------------------------------------------
# statistics helpers
# --------------------------------------------------------------------------


def _t(p: float, df: float | np.ndarray) -> Any:
    """Quantile ``p`` of Student's t (scipy.special: scipy.stats costs half a second)."""
    from scipy.special import stdtrit

    return stdtrit(df, p)


def _side_stats(samples: list[Sample], confidence: float) -> SideStats:
    values = np.array([s.value for s in samples], dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n >= 2:
        std = float(values.std(ddof=1))
        half = float(_t(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        ci_low, ci_high = mean - half, mean + half
    else:
        std = ci_low = ci_high = math.nan
    tps = [float(s.tokens_per_s) for s in samples if finite(s.tokens_per_s)]
    its = [float(s.iterations) for s in samples if s.iterations is not None]
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
    )


def _pairs(candidate: list[Sample], baseline: list[Sample]) -> list[tuple[Sample, Sample]] | None:
    """Pairs by seed when both sides hold exactly one run per seed and the same seeds."""
    cs = [s.seed for s in candidate]
    bs = [s.seed for s in baseline]
    if None in cs or None in bs or set(cs) != set(bs):
        return None
    if max(Counter(cs).values()) > 1 or max(Counter(bs).values()) > 1:
        return None
    by_seed = {s.seed: s for s in baseline}
    return [(c, by_seed[c.seed]) for c in sorted(candidate, key=lambda s: s.seed)]


def pair_correlation(c: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """(Pearson r, one-sided p-value of r > 0); None when either side has no spread."""
    n = len(c)
    if n < MIN_PAIRS or np.ptp(c) == 0 or np.ptp(b) == 0:
        return None
    from scipy.special import stdtr

    r = float(np.clip(np.corrcoef(c, b)[0, 1], -1.0, 1.0))
    if r >= 1.0:
        return r, 0.0
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return r, float(1.0 - stdtr(n - 2, t))


def pooled_noise(arms: dict[str, list[float]], min_runs: int = MIN_NOISE_RUNS) -> Noise | None:
    """The pooled within-arm relative spread of the arms with at least ``min_runs`` runs.

    ``arms`` maps a label (an attention, a seed set, ...) to the metric values of
    runs that differ only by seed or repetition. Each arm's deviations are taken
    relative to its own mean; ``sd^2 = sum((v - mean)^2 / mean^2) / sum(n - 1)``.
    None when no arm has enough runs.
    """
    ss, df, runs, used = 0.0, 0, 0, []
    for label, values in arms.items():
        v = np.asarray([x for x in values if finite(x)], dtype=float)
        if len(v) < min_runs or v.mean() == 0:
            continue
        ss += float((((v - v.mean()) / v.mean()) ** 2).sum())
        df += len(v) - 1
        runs += len(v)
        used.append(f"{label} ({len(v)})")
    if df == 0:
        return None
    return Noise(math.sqrt(ss / df), df, runs, "pooled within-arm spread of " + ", ".join(used))


def seeds_needed(
    spread: float, threshold: float, *, paired: bool = False, confidence: float = 0.95
) -> int:
    """Runs per side for 80% power at the threshold, at relative spread ``spread``.

    The smallest ``n`` meeting both
    ``(t(1 - alpha/2, df) + t(0.80, df)) se(n) <= threshold`` (a true difference of
    the threshold gives WIN/LOSE with 80% power) and
    ``(t(1 - alpha, df) + t(0.90, df)) se(n) <= threshold`` (no difference gives
    PARITY with 80% power), where ``se(n) = spread sqrt(2/n)`` and ``df = 2n - 2``
    for two samples, ``se(n) = spread / sqrt(n)`` and ``df = n - 1`` for pairs
    (``spread`` then being the sd of the paired relative differences).
    ``SEEDS_NEEDED_CAP + 1`` when no ``n`` up to the cap suffices.
    """
    if not (spread > 0 and threshold > 0):
        return 2
    alpha = 1 - confidence

    def first_ok(n: np.ndarray) -> int | None:
        df = n - 1 if paired else 2 * n - 2
        se = spread / np.sqrt(n) if paired else spread * np.sqrt(2 / n)
        win = (_t(1 - alpha / 2, df) + _t(POWER, df)) * se
        parity = (_t(1 - alpha, df) + _t(0.5 + POWER / 2, df)) * se
        ok = np.nonzero(np.maximum(win, parity) <= threshold)[0]
        return int(n[ok[0]]) if len(ok) else None

    # the normal approximation is a lower bound (t quantiles exceed z): start just below it
    z = float(
        max(
            _t(1 - alpha / 2, np.inf) + _t(POWER, np.inf),
            _t(1 - alpha, np.inf) + _t(0.5 + POWER / 2, np.inf),
        )
    )
    n0 = (z * spread / threshold) ** 2 * (1 if paired else 2)
    start = int(max(2, min(math.floor(n0) - 1, SEEDS_NEEDED_CAP)))
    window = np.arange(start, min(start + 16, SEEDS_NEEDED_CAP + 1), dtype=float)
    found = first_ok(window)
    if found is None and window[-1] < SEEDS_NEEDED_CAP:
        found = first_ok(np.arange(window[-1] + 1, SEEDS_NEEDED_CAP + 1, dtype=float))
    return SEEDS_NEEDED_CAP + 1 if found is None else found


# --------------------------------------------------------------------------
# validity: epochs and speed
# --------------------------------------------------------------------------


def speed_explained_gap(curve: list[tuple[float, float]], ratio: float) -> float | None:
    """The relative loss gap a speed ratio alone explains, from one val-loss curve.

    Under a wall-clock budget a side running at ``ratio`` times the baseline's
    tokens/s sees ``ratio`` times its tokens. Over the last half of the curve
    (points at or after half the final step) the loss is fitted as
    ``a + b ln(step)`` (least squares); the gap is ``|b ln(ratio)| / loss_final``.
    Steps stand for tokens (a constant tokens per step drops out of the slope).
    None when fewer than two points lie in that half or the steps do not vary.
    """
    pts = sorted((float(s), float(v)) for s, v in curve if s > 0 and finite(v))
    if len(pts) < 2 or not (ratio > 0):
        return None
    last = pts[-1][0]
    tail = [(s, v) for s, v in pts if s >= last / 2]
    if len(tail) < 2:
        return None
    x = np.log([s for s, _ in tail])
    y = np.array([v for _, v in tail])
    if np.ptp(x) == 0 or y[-1] == 0:
        return None
    slope = float(np.polyfit(x, y, 1)[0])
    return abs(slope * math.log(ratio)) / abs(y[-1])


def speed_gap(
    cstats: SideStats, bstats: SideStats, curves: list[list[tuple[float, float]]], threshold: float
) -> SpeedGap | None:
    """The speed check of a wall-clock comparison (None when a side has no throughput)."""
    if cstats.median_tokens_per_s is None or not bstats.median_tokens_per_s:
        return None
    ratio = cstats.median_tokens_per_s / bstats.median_tokens_per_s
    gaps = [g for g in (speed_explained_gap(c, ratio) for c in curves) if g is not None]
    if ratio == 1.0:
        gaps = gaps or [0.0]
    explained = float(statistics.median(gaps)) if gaps else None
    basis = (
        f"median over {len(gaps)} baseline val-loss curve(s), loss ~ a + b ln(step) "
        "over each curve's last half"
        if gaps
        else "no baseline val-loss curve to estimate it from"
    )
    return SpeedGap(ratio, explained, threshold / 2, basis)


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
) -> Estimate:
    """The interval of the improvement (rules in the module docstring)."""
    cs = np.array([s.value for s in candidate], dtype=float)
    bs = np.array([s.value for s in baseline], dtype=float)
    nc, nb = len(cs), len(bs)
    mb = float(bs.mean())
    d = (float(cs.mean()) - mb) / mb
    sign = -1.0 if lower_is_better else 1.0
    alpha = 1 - confidence

    def make(method, why, d_, half, half90, spread, source, paired=False, r=None) -> Estimate:
        imp = sign * d_
        iv = None if half is None else (imp - half, imp + half)
        iv90 = None if half90 is None else (imp - half90, imp + half90)
        return Estimate(method, why, d_, imp, iv, iv90, spread, source, paired, r, max(nc, nb))

    if nc < 2 or nb < 2:
        runs = f"{nc} candidate and {nb} baseline run(s)"
        if noise is None:
            observed = [x for x in (cs, bs) if len(x) >= 2]
            if observed:
                spread = float(np.sqrt(np.mean([np.var(x / x.mean(), ddof=1) for x in observed])))
                source = "observed"
            else:
                spread, source = ASSUMED_NOISE, "assumed"
            why = f"{runs} and no noise estimate for this config in the history"
            return make("none", why, d, None, None, spread, source)
        se = noise.sd * math.sqrt(1 / nc + 1 / nb)
        why = f"{runs}; history noise sd {pct(noise.sd)}, df {noise.df} ({noise.source})"
        return make(
            "prediction",
            why,
            d,
            float(_t(1 - alpha / 2, noise.df)) * se,
            float(_t(1 - alpha, noise.df)) * se,
            noise.sd,
            "history",
        )

    pairs = _pairs(candidate, baseline)
    corr = None
    if pairs is None:
        why = "the runs are not paired by seed (the two sides' seeds differ or repeat)"
    elif len(pairs) < MIN_PAIRS:
        why = f"{len(pairs)} seed pairs are too few to measure their correlation (needs 3)"
    else:
        pc = np.array([c.value for c, _ in pairs])
        pb = np.array([b.value for _, b in pairs])
        corr = pair_correlation(pc, pb)
        if corr is not None and corr[1] < PAIRING_LEVEL:
            r = (pc - pb) / pb
            n = len(r)
            sd = float(r.std(ddof=1))
            why = (
                f"the {n} seed pairs are correlated (r = {corr[0]:.2f}, one-sided "
                f"p = {corr[1]:.3f} < {PAIRING_LEVEL})"
            )
            se = sd / math.sqrt(n)
            return make(
                "paired",
                why,
                float(r.mean()),
                float(_t(1 - alpha / 2, n - 1)) * se,
                float(_t(1 - alpha, n - 1)) * se,
                sd,
                "observed",
                True,
                corr[0],
            )
        what = (
            "have no spread"
            if corr is None
            else (f"are not measurably correlated (r = {corr[0]:.2f}, one-sided p = {corr[1]:.2f})")
        )
        why = f"paired by seed, but the pairs {what}"
    vc, vb = float(cs.var(ddof=1)), float(bs.var(ddof=1))
    se_abs = math.sqrt(vc / nc + vb / nb)
    if se_abs == 0:
        h95 = h90 = 0.0
    else:
        a, b = vc / nc, vb / nb
        df = (a + b) ** 2 / (a * a / (nc - 1) + b * b / (nb - 1))
        h95 = float(_t(1 - alpha / 2, df)) * se_abs / abs(mb)
        h90 = float(_t(1 - alpha, df)) * se_abs / abs(mb)
    spread = math.sqrt((vc + vb) / 2) / abs(mb)
    return make("welch", why, d, h95, h90, spread, "observed", False, corr and corr[0])


# --------------------------------------------------------------------------
# step 2: the decision
# --------------------------------------------------------------------------


def validity(
    cstats: SideStats,
    bstats: SideStats,
    *,
    gap: SpeedGap | None,
    allow_epochs: bool,
) -> tuple[list[str], list[str], list[str]]:
    """(invalid causes, their reasons, labels) of a comparison."""
    causes, reasons, labels = [], [], []
    epochs = [e for e in (cstats.epochs_max, bstats.epochs_max) if e is not None]
    if epochs and max(epochs) > 1.0:
        what = (
            f"a side went past one epoch of its data (up to {max(epochs):.2f} passes): "
            "validation loss then measures memorisation as much as modelling"
        )
        if allow_epochs:
            labels.append(f"past one epoch ({max(epochs):.2f} passes), allowed by --allow-epochs")
        else:
            causes.append("epochs")
            reasons.append(what)
    if gap is not None and gap.too_large:
        causes.append("speed")
        reasons.append(
            f"the candidate runs at {gap.ratio:.3f}x the baseline's tokens/s under a wall-clock "
            f"budget: that speed gap alone explains a {pct(gap.explained)} loss gap, more than "
            f"half the threshold ({pct(gap.limit)})"
        )
    return causes, reasons, labels


def decide(
    est: Estimate,
    *,
    threshold: float,
    confidence: float,
    invalid: list[str] = (),
) -> tuple[str, str, int | None]:
    """(outcome, reason, seeds needed) from an estimate (rules in the module docstring)."""
    if invalid:
        return "INVALID", "; ".join(invalid), None
    conf = f"{confidence:.0%}"
    c90 = f"{1 - 2 * (1 - confidence):.0%}"
    if est.interval is not None:
        lo, hi = est.interval
        text = f"the {conf} interval of the improvement [{signed_pct(lo, 2)}, {signed_pct(hi, 2)}]"
        if lo > 0:
            return "WIN", f"{text} excludes 0", None
        if hi < 0:
            return "LOSE", f"{text} excludes 0", None
        lo90, hi90 = est.interval90
        if -threshold < lo90 and hi90 < threshold:
            return (
                "PARITY",
                f"the {c90} interval [{signed_pct(lo90, 2)}, {signed_pct(hi90, 2)}] lies inside "
                f"+-{threshold:.0%} (TOST at {(1 - confidence):.0%} a side)",
                None,
            )
        why = f"{text} includes 0 and its {c90} interval is not inside +-{threshold:.0%}"
    else:
        why = f"no interval: {est.why}"
    needed = seeds_needed(est.spread, threshold, paired=est.paired, confidence=confidence)
    spread = {
        "observed": "the observed spread",
        "history": "the history's spread",
        "assumed": "an assumed spread (none measured yet)",
    }[est.spread_source]
    note = ""
    if needed <= est.runs:
        note = (
            " (already reached: the true difference likely lies near the threshold or between "
            "0 and it; more runs narrow the interval further)"
        )
    return (
        "INCONCLUSIVE",
        f"{why}; about {format_seeds_needed(needed)} runs per side give 80% power at the "
        f"{threshold:.0%} threshold at {spread} ({pct(est.spread)}){note}",
        needed,
    )


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
    baseline_curves: list[list[tuple[float, float]]] | None = None,
) -> Verdict:
    """The verdict between two sides of finished runs: :func:`estimate`, then :func:`decide`.

    ``wall_clock``: the runs had a time budget (or an unknown one), so the
    speed check applies (from ``baseline_curves``, each ``[(step, val_loss)]``);
    step-budgeted runs compare at equal steps and skip it. Raises ValueError for
    an empty side, a non-finite value, a baseline mean of 0 or bad parameters.
    """
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
    cstats = _side_stats(candidate, confidence)
    bstats = _side_stats(baseline, confidence)
    if bstats.mean == 0:
        raise ValueError(f"the baseline's mean {metric} is 0: relative difference undefined")

    gap = None
    ratio = None
    if cstats.median_tokens_per_s is not None and bstats.median_tokens_per_s:
        ratio = cstats.median_tokens_per_s / bstats.median_tokens_per_s
    if wall_clock and metric != "tokens_per_s":
        gap = speed_gap(cstats, bstats, baseline_curves or [], threshold)
    causes, reasons, labels = validity(cstats, bstats, gap=gap, allow_epochs=allow_epochs)
    if gap is not None and gap.explained is None and abs(gap.ratio - 1) > 1e-9:
        labels.append(
            f"speed gap {gap.ratio:.3f}x under a wall-clock budget: its effect on the loss "
            "was not estimated (no baseline val-loss curve)"
        )
    est = estimate(
        candidate, baseline, lower_is_better=lower_is_better, confidence=confidence, noise=noise
    )
    outcome, reason, needed = decide(
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
        spread=est.spread,
        spread_source=est.spread_source,
        correlation=est.correlation,
        invalid_causes=causes,
        labels=labels,
        reason=reason,
    )


# --------------------------------------------------------------------------
# speed: best vs best
# --------------------------------------------------------------------------


#: Largest number of runs per side that ``seeds_needed`` reports; beyond it
#: the verdict carries ``SEEDS_NEEDED_CAP + 1`` and renders as "> 1000".
SEEDS_NEEDED_CAP = 1000


def format_seeds_needed(n: int | None) -> str | None:
    """``12`` -> "12"; above the cap -> "> 1000"; None -> None."""
    if n is None:
        return None
    if n > SEEDS_NEEDED_CAP:
        return f"> {SEEDS_NEEDED_CAP}"
    return str(n)
