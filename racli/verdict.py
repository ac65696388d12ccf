"""Verdicts from run history: pure statistics, no torch, no database, no rich.

The question answered here is the one in DESIGN.md ("Verdict rules"): given
the finished runs of a candidate attention and of the baseline, is the
candidate better (WIN), worse (LOSE), the same within a threshold (PARITY),
not yet decidable (INCONCLUSIVE) or not comparable because the two sides ran
at different speeds (INVALID)?

Conventions
-----------
``d`` is the relative difference with its raw sign::

    d = (mean_candidate - mean_baseline) / mean_baseline

so for a loss "better" is negative and for a throughput "better" is positive.
``improvement`` carries the sign that makes positive mean "candidate better":
``-d`` when lower is better, ``+d`` otherwise.

Confidence intervals of ``d`` (two or more runs on each side)
--------------------------------------------------------------
* **paired** -- used when both sides have exactly one run per seed and the same
  set of seeds. For each seed ``s`` the relative difference
  ``r_s = (c_s - b_s) / b_s`` is formed; ``d`` is the mean of the ``r_s`` and
  its interval is the Student-t interval ``mean(r) +- t(n-1) * sd(r)/sqrt(n)``.
* **welch** -- otherwise. The interval of the absolute difference
  ``mean_c - mean_b`` uses the Welch standard error
  ``sqrt(s_c^2/n_c + s_b^2/n_b)`` and Welch-Satterthwaite degrees of freedom;
  both ends are then divided by ``mean_b``. This treats the baseline mean in
  the denominator as a constant: its own relative uncertainty (about the size
  of the seed noise, ~1%) changes the bounds only at second order
  (a 1% error on a 2% bound moves it by 0.02 percentage points).

Decision (``threshold`` is relative, default 1%)
------------------------------------------------
* WIN: ``improvement > threshold`` and the interval excludes 0 on the better
  side.
* LOSE: the mirror image.
* PARITY: the whole interval lies within ``+-threshold``.
* INCONCLUSIVE: anything else. ``seeds_needed`` estimates how many runs per
  side would settle it; see :func:`_seeds_needed` for the formula.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OUTCOMES = ("WIN", "LOSE", "PARITY", "INCONCLUSIVE", "INVALID")

#: Largest number of runs per side that ``seeds_needed`` will report; beyond it
#: the verdict carries ``SEEDS_NEEDED_CAP + 1`` and renders as "> 1000".
SEEDS_NEEDED_CAP = 1000

RECOMMENDATIONS: dict[str, str] = {
    "WIN": "INTEGRATE RA v5 into the training pipeline",
    "PARITY": ("Try longer training (8+ hours) or analyse the learned w_rec values (ra gates)"),
    "LOSE": "Tune initialisation, learning rates or gates, or redesign",
    "INCONCLUSIVE": ("Run more seeds: the confidence interval is still too wide to decide"),
    "INVALID": (
        "Fix the speed mismatch first (compare best modes with ra bench, match the "
        "training setup), then re-run: quality at unequal speed is not a fair comparison"
    ),
}


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
    run_ids: list[int] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)


@dataclass
class Verdict:
    outcome: str  # "WIN" | "LOSE" | "PARITY" | "INCONCLUSIVE" | "INVALID"
    metric: str
    lower_is_better: bool
    method: str  # "single-run" | "paired" | "welch" | "speed"
    limited_evidence: bool  # True when a side has a single run
    d: float  # relative difference, raw sign
    improvement: float  # positive = candidate better
    ci: tuple[float, float] | None  # 95% CI of d (raw sign); None for single-run/INVALID
    speed_ratio: float | None  # median tokens/s candidate / baseline
    speed_ok: bool | None  # None when the speed check was not made
    candidate: SideStats
    baseline: SideStats
    threshold: float
    speed_tolerance: float
    confidence: float
    seeds_needed: int | None  # INCONCLUSIVE only; SEEDS_NEEDED_CAP + 1 means "more than the cap"
    reason: str

    @property
    def improvement_ci(self) -> tuple[float, float] | None:
        """The interval of ``improvement`` (positive = candidate better)."""
        if self.ci is None:
            return None
        lo, hi = self.ci
        return (-hi, -lo) if self.lower_is_better else (lo, hi)

    @property
    def recommendation(self) -> str:
        return RECOMMENDATIONS[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        out = _jsonable(asdict(self))
        out["improvement_ci"] = _jsonable(self.improvement_ci)
        out["seeds_needed_text"] = format_seeds_needed(self.seeds_needed)
        out["recommendation"] = self.recommendation
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


def format_seeds_needed(n: int | None) -> str | None:
    """``12`` -> "12"; above the cap -> "> 1000"; None -> None."""
    if n is None:
        return None
    if n > SEEDS_NEEDED_CAP:
        return f"> {SEEDS_NEEDED_CAP}"
    return str(n)


# --------------------------------------------------------------------------
# statistics helpers
# --------------------------------------------------------------------------


def _t_quantile(confidence: float, df: float | np.ndarray) -> Any:
    # The inverse of Student's t CDF (what scipy.stats.t.ppf computes), from
    # scipy.special: importing scipy.stats would cost half a second per command.
    from scipy.special import stdtrit

    return stdtrit(df, 0.5 + confidence / 2.0)


def _side_stats(samples: list[Sample], confidence: float) -> SideStats:
    values = np.array([s.value for s in samples], dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n >= 2:
        std = float(values.std(ddof=1))
        half = float(_t_quantile(confidence, n - 1)) * std / math.sqrt(n)
        ci_low, ci_high = mean - half, mean + half
    else:
        std = ci_low = ci_high = math.nan
    tps = [float(s.tokens_per_s) for s in samples if _finite(s.tokens_per_s)]
    its = [float(s.iterations) for s in samples if s.iterations is not None]
    eps = [float(s.epochs) for s in samples if _finite(s.epochs)]
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
        run_ids=[s.run_id for s in samples],
        seeds=[s.seed for s in samples],
    )


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(float(x))


def _pairing(candidate: list[Sample], baseline: list[Sample]) -> list[tuple[Sample, Sample]] | None:
    """Pairs by seed when both sides hold exactly one run per seed and the same seeds."""
    cs = [s.seed for s in candidate]
    bs = [s.seed for s in baseline]
    if None in cs or None in bs:
        return None
    if max(Counter(cs).values()) > 1 or max(Counter(bs).values()) > 1:
        return None
    if set(cs) != set(bs):
        return None
    by_seed = {s.seed: s for s in baseline}
    return [(c, by_seed[c.seed]) for c in sorted(candidate, key=lambda s: s.seed)]


def _welch_df(var_c: float, n_c: int, var_b: float, n_b: float) -> float:
    a, b = var_c / n_c, var_b / n_b
    den = (a * a) / (n_c - 1) + (b * b) / (n_b - 1)
    if den == 0:
        return math.inf
    return (a + b) ** 2 / den


def _seeds_needed(
    *,
    method: str,
    margin: float,
    confidence: float,
    current_n: int,
    sd_diff: float = math.nan,
    var_c: float = math.nan,
    var_b: float = math.nan,
    mean_b: float = math.nan,
) -> int:
    """Runs per side at which the interval's half-width falls below ``margin``.

    The observed spread is assumed to stay what it is. ``margin`` is the
    distance the interval must clear to settle the verdict at the current
    point estimate ``a = |improvement|``: ``a`` itself when ``a > threshold``
    (the interval must exclude 0 to give WIN/LOSE) and ``threshold - a``
    otherwise (the interval must fit inside +-threshold to give PARITY).

    Half-width with ``n`` runs per side:

    * paired: ``t(0.975, n-1) * sd(r) / sqrt(n)``
    * welch:  ``t(0.975, df_n) * sqrt((s_c^2 + s_b^2) / n) / |mean_b|`` with
      ``df_n = (s_c^2 + s_b^2)^2 (n-1) / (s_c^4 + s_b^4)``

    The smallest ``n`` above the current runs per side with half-width <
    ``margin`` is returned; ``SEEDS_NEEDED_CAP + 1`` when none up to the cap.
    """
    start = current_n + 1
    if margin <= 0 or start > SEEDS_NEEDED_CAP:
        return SEEDS_NEEDED_CAP + 1
    n = np.arange(start, SEEDS_NEEDED_CAP + 1, dtype=float)
    if method == "paired":
        half = _t_quantile(confidence, n - 1) * sd_diff / np.sqrt(n)
    else:
        s2 = var_c + var_b
        s4 = var_c * var_c + var_b * var_b
        df = np.full_like(n, math.inf) if s4 == 0 else s2 * s2 * (n - 1) / s4
        half = _t_quantile(confidence, df) * np.sqrt(s2 / n) / abs(mean_b)
    ok = np.nonzero(half < margin)[0]
    if len(ok) == 0:
        return SEEDS_NEEDED_CAP + 1
    return int(n[ok[0]])


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


# --------------------------------------------------------------------------
# the verdict
# --------------------------------------------------------------------------


def compare_runs(
    candidate: list[Sample],
    baseline: list[Sample],
    *,
    metric: str = "val_loss",
    lower_is_better: bool = True,
    threshold: float = 0.01,
    speed_tolerance: float = 0.10,
    confidence: float = 0.95,
) -> Verdict:
    """The verdict between two sides of finished runs (rules in the module docstring).

    Raises ValueError for an empty side, a non-finite metric value, a baseline
    mean of zero, or out-of-range parameters.
    """
    if not candidate:
        raise ValueError("no finished candidate runs to compare")
    if not baseline:
        raise ValueError("no finished baseline runs to compare")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
    if threshold < 0 or speed_tolerance < 0:
        raise ValueError("threshold and speed tolerance must not be negative")
    for s in [*candidate, *baseline]:
        if not _finite(s.value):
            raise ValueError(f"run {s.run_id} has a non-finite {metric}: {s.value}")

    cstats = _side_stats(candidate, confidence)
    bstats = _side_stats(baseline, confidence)
    if bstats.mean == 0:
        raise ValueError(f"the baseline's mean {metric} is 0: relative difference undefined")

    sign = -1.0 if lower_is_better else 1.0
    limited = cstats.n < 2 or bstats.n < 2
    d = (cstats.mean - bstats.mean) / bstats.mean

    # 1) speed first
    speed_ratio: float | None = None
    speed_ok: bool | None = None
    if cstats.median_tokens_per_s is not None and bstats.median_tokens_per_s:
        speed_ratio = cstats.median_tokens_per_s / bstats.median_tokens_per_s
        if metric != "tokens_per_s":
            speed_ok = abs(speed_ratio - 1.0) <= speed_tolerance

    def make(outcome, method, d_, ci, seeds_needed, reason) -> Verdict:
        return Verdict(
            outcome=outcome,
            metric=metric,
            lower_is_better=lower_is_better,
            method=method,
            limited_evidence=limited,
            d=d_,
            improvement=sign * d_,
            ci=ci,
            speed_ratio=speed_ratio,
            speed_ok=speed_ok,
            candidate=cstats,
            baseline=bstats,
            threshold=threshold,
            speed_tolerance=speed_tolerance,
            confidence=confidence,
            seeds_needed=seeds_needed,
            reason=reason,
        )

    if speed_ok is False:
        return make(
            "INVALID",
            "speed",
            d,
            None,
            None,
            f"the candidate runs at {speed_ratio:.2f}x the baseline's tokens/s, outside "
            f"the {speed_tolerance:.0%} speed tolerance, so quality is not compared at "
            "matched speed",
        )

    # 2) a single run on a side: the seed's rule, flagged as limited evidence
    if limited:
        imp = sign * d
        if imp > threshold:
            outcome, word = "WIN", "better"
        elif imp < -threshold:
            outcome, word = "LOSE", "worse"
        else:
            outcome, word = "PARITY", None
        runs = f"{cstats.n} candidate run(s) and {bstats.n} baseline run(s)"
        if word:
            reason = (
                f"{_pct(abs(imp))} {word} than the baseline, beyond the "
                f"{threshold:.0%} threshold, from {runs}: limited evidence, no interval"
            )
        else:
            reason = (
                f"{_pct(abs(imp))} apart, within the {threshold:.0%} threshold, from "
                f"{runs}: limited evidence, no interval"
            )
        return make(outcome, "single-run", d, None, None, reason)

    # 3) two or more a side: confidence interval of d
    pairs = _pairing(candidate, baseline)
    if pairs is not None:
        method = "paired"
        r = np.array([(c.value - b.value) / b.value for c, b in pairs], dtype=float)
        n = len(r)
        d = float(r.mean())
        sd_diff = float(r.std(ddof=1))
        spread = {"sd_diff": sd_diff}
        half = float(_t_quantile(confidence, n - 1)) * sd_diff / math.sqrt(n)
        ci = (d - half, d + half)
        current_n = n
    else:
        method = "welch"
        var_c = cstats.std**2
        var_b = bstats.std**2
        spread = {"var_c": var_c, "var_b": var_b, "mean_b": bstats.mean}
        se = math.sqrt(var_c / cstats.n + var_b / bstats.n)
        if se == 0:
            half_abs = 0.0
        else:
            df = _welch_df(var_c, cstats.n, var_b, bstats.n)
            half_abs = float(_t_quantile(confidence, df)) * se
        half = half_abs / abs(bstats.mean)
        ci = (d - half, d + half)
        current_n = max(cstats.n, bstats.n)

    imp = sign * d
    imp_lo, imp_hi = (-ci[1], -ci[0]) if lower_is_better else ci
    conf = f"{confidence:.0%}"
    ci_text = f"[{_pct(imp_lo)}, {_pct(imp_hi)}]"
    if imp > threshold and imp_lo > 0:
        return make(
            "WIN",
            method,
            d,
            ci,
            None,
            f"{_pct(imp)} better, beyond the {threshold:.0%} threshold, and the {conf} "
            f"interval of the improvement {ci_text} excludes 0",
        )
    if imp < -threshold and imp_hi < 0:
        return make(
            "LOSE",
            method,
            d,
            ci,
            None,
            f"{_pct(-imp)} worse, beyond the {threshold:.0%} threshold, and the {conf} "
            f"interval of the improvement {ci_text} excludes 0",
        )
    if -threshold <= ci[0] and ci[1] <= threshold:
        return make(
            "PARITY",
            method,
            d,
            ci,
            None,
            f"the whole {conf} interval of the improvement {ci_text} lies within +-{threshold:.0%}",
        )

    a = abs(imp)
    margin = a if a > threshold else threshold - a
    needed = _seeds_needed(
        method=method, margin=margin, confidence=confidence, current_n=current_n, **spread
    )
    if a > threshold:
        why = f"the point estimate ({_pct(imp)}) passes the threshold but the {conf} interval "
        why += f"{ci_text} includes 0"
    else:
        why = f"the {conf} interval of the improvement {ci_text} is neither clear of 0 nor "
        why += f"inside +-{threshold:.0%}"
    return make(
        "INCONCLUSIVE",
        method,
        d,
        ci,
        needed,
        f"{why}; about {format_seeds_needed(needed)} runs per side would settle it at the "
        "observed spread",
    )


# --------------------------------------------------------------------------
# speed: best vs best
# --------------------------------------------------------------------------


def speed_wording(ratio: float) -> str:
    """Wording for ``ratio = candidate_ms / baseline_ms`` (the seed's best vs best).

    Within 5% -> parity; 5-15% slower -> acceptable overhead; beyond -> overhead;
    more than 5% faster -> faster.
    """
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"speed ratio must be a positive number, got {ratio}")
    eps = 1e-9  # 1.05 and 1.15 themselves count as inside their band
    pct = abs(ratio - 1.0) * 100
    if abs(ratio - 1.0) <= 0.05 + eps:
        return "✅ parity: within 5%"
    if ratio < 1.0:
        return f"✅ faster: {pct:.1f}% faster"
    if ratio <= 1.15 + eps:
        return f"within 15%: acceptable overhead ({pct:.1f}% slower)"
    return f"❌ overhead: {pct:.1f}% slower"


@dataclass
class TimingRow:
    attn: str
    mode: str
    phase: str
    median_ms: float | None
    p10_ms: float | None
    p90_ms: float | None
    status: str  # "ok" | "skipped" | "failed"
    backend: str | None = None
    reason: str | None = None
    tflops: float | None = None


def best_vs_best(rows: list[TimingRow], baseline: str = "baseline") -> list[dict]:
    """Per phase and backend, each attention's best (lowest median) ``ok`` row.

    Variants are only compared on the same backend. Returns dicts
    ``{phase, backend, attn, best_mode, best_ms, ratio, wording}`` where
    ``ratio`` is the attention's best over the baseline's best in the same
    phase and backend (None, with wording None, when the baseline has no ok row
    there). Order: phases, backends and attentions as first seen, with the
    baseline first in each group.
    """
    groups: dict[tuple[str, str | None], dict[str, TimingRow]] = {}
    for row in rows:
        if row.status != "ok" or not _finite(row.median_ms):
            continue
        group = groups.setdefault((row.phase, row.backend), {})
        best = group.get(row.attn)
        if best is None or row.median_ms < best.median_ms:
            group[row.attn] = row
    out: list[dict] = []
    for (phase, backend), best in groups.items():
        base = best.get(baseline)
        attns = sorted(best, key=lambda a: a != baseline)  # stable: baseline first
        for attn in attns:
            row = best[attn]
            ratio = (
                row.median_ms / base.median_ms if base is not None and base.median_ms > 0 else None
            )
            out.append(
                {
                    "phase": phase,
                    "backend": backend,
                    "attn": attn,
                    "best_mode": row.mode,
                    "best_ms": row.median_ms,
                    "ratio": ratio,
                    "wording": speed_wording(ratio) if ratio is not None else None,
                }
            )
    return out
