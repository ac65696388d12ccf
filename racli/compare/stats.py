"""The numbers behind a verdict, vectorised: pure numpy and scipy.special, no torch.

Every function takes arrays whose last axis holds the runs of one comparison
(leading axes: independent comparisons), so `ra compare` (one comparison) and
the error-rate simulations (hundreds of thousands) go through the same code.
The effect is a log ratio: ``ln(candidate / baseline)``, per seed when paired,
of the means otherwise. Design notes: docs/verdicts.md.

scipy.special rather than scipy.stats: the latter costs seconds to import, and
`ra compare` answers in under one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: one-sided level of the upper confidence bound of the spread that seeds-needed uses: at
#: that bound, following the figure gives 80% power on average even when the spread was
#: measured with 1 to 2 degrees of freedom (simulated; docs/verdicts.md)
SPREAD_BOUND = 0.70
POWER = 0.80
#: largest runs per side that seeds_needed reports; beyond it, CAP + 1 ("> 1000")
SEEDS_NEEDED_CAP = 1000

OUTCOME_CODES = np.array(["WIN", "LOSE", "PARITY", "INCONCLUSIVE"])


def t_quantile(p: float, df) -> np.ndarray:
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom (array or scalar)."""
    from scipy.special import stdtrit

    return stdtrit(df, p)


@dataclass
class Effect:
    """The log-ratio effect of comparisons (arrays over the leading axes)."""

    d: np.ndarray  # ln(candidate / baseline): per-seed mean when paired, of the means otherwise
    se: np.ndarray  # its standard error
    df: np.ndarray  # degrees of freedom of the t interval
    spread: np.ndarray  # per-run relative spread for the power calculation
    spread_df: np.ndarray  # degrees of freedom of that spread


def paired_effect(c: np.ndarray, b: np.ndarray) -> Effect:
    """Seed pairs (same position = same seed): ``x = ln c - ln b``, mean, t(n - 1)."""
    x = np.log(c) - np.log(b)
    n = x.shape[-1]
    sd = x.std(axis=-1, ddof=1)
    df = np.full(sd.shape, float(n - 1))
    return Effect(x.mean(axis=-1), sd / math.sqrt(n), df, sd, df)


def welch_effect(c: np.ndarray, b: np.ndarray) -> Effect:
    """Independent runs: ``ln(mean c) - ln(mean b)`` with the delta-method error
    ``sqrt(s_c^2 / (n_c m_c^2) + s_b^2 / (n_b m_b^2))`` and Welch-Satterthwaite df."""
    nc, nb = c.shape[-1], b.shape[-1]
    mc, mb = c.mean(axis=-1), b.mean(axis=-1)
    rc = c.var(axis=-1, ddof=1) / (mc * mc)  # squared relative spreads
    rb = b.var(axis=-1, ddof=1) / (mb * mb)
    ac, ab = rc / nc, rb / nb
    se2 = ac + ab
    with np.errstate(invalid="ignore", divide="ignore"):
        df = se2 * se2 / (ac * ac / (nc - 1) + ab * ab / (nb - 1))
    df = np.where(se2 > 0, df, float(nc + nb - 2))
    spread = np.sqrt((rc + rb) / 2)
    return Effect(
        np.log(mc) - np.log(mb), np.sqrt(se2), df, spread, np.full(spread.shape, nc + nb - 2.0)
    )


def intervals(
    effect: Effect, *, lower_is_better: bool, confidence: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(improvement, lo, hi, lo90, hi90): the improvement (positive = candidate better) and
    its intervals at ``confidence`` and at ``1 - 2 alpha`` (the TOST of PARITY)."""
    alpha = 1 - confidence
    imp = -effect.d if lower_is_better else effect.d
    half = t_quantile(1 - alpha / 2, effect.df) * effect.se
    half90 = t_quantile(1 - alpha, effect.df) * effect.se
    return imp, imp - half, imp + half, imp - half90, imp + half90


def classify(lo, hi, lo90, hi90, threshold: float) -> np.ndarray:
    """The decision rules: WIN when the interval lies above 0, LOSE below 0, PARITY when
    the 1 - 2 alpha interval lies inside +-threshold, INCONCLUSIVE otherwise."""
    code = np.where(
        lo > 0,
        0,
        np.where(hi < 0, 1, np.where((-threshold < lo90) & (hi90 < threshold), 2, 3)),
    )
    return OUTCOME_CODES[code]


def outcomes(
    c: np.ndarray,
    b: np.ndarray,
    *,
    paired: bool,
    threshold: float = 0.01,
    confidence: float = 0.95,
    lower_is_better: bool = True,
) -> np.ndarray:
    """The outcome of every comparison ``c[i], b[i]`` (two or more runs a side) by the
    rules of `ra compare` (the simulations of the README go through this)."""
    c, b = np.asarray(c, dtype=float), np.asarray(b, dtype=float)
    effect = paired_effect(c, b) if paired else welch_effect(c, b)
    _, lo, hi, lo90, hi90 = intervals(
        effect, lower_is_better=lower_is_better, confidence=confidence
    )
    return classify(lo, hi, lo90, hi90, threshold)


# ---------------------------------------------------------------------------- seeds needed


def seeds_needed(
    spread: float, threshold: float, *, paired: bool = False, confidence: float = 0.95
) -> int:
    """Runs per side for 80% power at the threshold at per-run spread ``spread``.

    The smallest ``n`` meeting both ``(t(1 - alpha/2) + t(0.80)) se(n) <= threshold`` (a
    true effect of the threshold gives WIN/LOSE with 80% power) and ``(t(1 - alpha) +
    t(0.90)) se(n) <= threshold`` (no effect gives PARITY with 80% power); ``se(n) =
    spread / sqrt(n)``, df ``n - 1`` for pairs, ``spread sqrt(2 / n)``, df ``2n - 2``
    otherwise. ``SEEDS_NEEDED_CAP + 1`` when no ``n`` up to the cap suffices.
    """
    if not (spread > 0 and threshold > 0):
        return 2
    alpha = 1 - confidence

    def first_ok(n: np.ndarray) -> int | None:
        df = n - 1 if paired else 2 * n - 2
        se = spread / np.sqrt(n) if paired else spread * np.sqrt(2 / n)
        win = (t_quantile(1 - alpha / 2, df) + t_quantile(POWER, df)) * se
        parity = (t_quantile(1 - alpha, df) + t_quantile(0.5 + POWER / 2, df)) * se
        ok = np.nonzero(np.maximum(win, parity) <= threshold)[0]
        return int(n[ok[0]]) if len(ok) else None

    # the normal approximation is a lower bound (t quantiles exceed z): start just below it
    z = max(
        t_quantile(1 - alpha / 2, np.inf) + t_quantile(POWER, np.inf),
        t_quantile(1 - alpha, np.inf) + t_quantile(0.5 + POWER / 2, np.inf),
    )
    ratio = min(float(z) * spread / threshold, 1e9)  # capped: a tiny threshold overflows
    n0 = ratio**2 * (1 if paired else 2)
    start = int(max(2, min(math.floor(n0) - 1, SEEDS_NEEDED_CAP)))
    found = first_ok(np.arange(start, min(start + 16, SEEDS_NEEDED_CAP + 1), dtype=float))
    if found is None and start + 16 <= SEEDS_NEEDED_CAP:
        found = first_ok(np.arange(start + 16, SEEDS_NEEDED_CAP + 1, dtype=float))
    return SEEDS_NEEDED_CAP + 1 if found is None else found


def spread_bound(spread: float, df: float, level: float) -> float:
    """The one-sided upper ``level`` confidence bound of a standard deviation ``spread``
    measured with ``df`` degrees of freedom: ``spread sqrt(df / chi2_{1 - level}(df))``."""
    from scipy.special import chdtri

    if not (df > 0 and spread > 0):
        return spread
    return float(spread * math.sqrt(df / chdtri(df, level)))


def seeds_needed_range(
    spread: float, df: float | None, threshold: float, *, paired: bool, confidence: float
) -> tuple[int, tuple[int, int] | None]:
    """(runs per side at the spread's SPREAD_BOUND upper bound, (low, high) over the spread's
    95% interval); no range when the spread's degrees of freedom are unknown."""
    if df is None or not df > 0:
        return seeds_needed(spread, threshold, paired=paired, confidence=confidence), None
    kw = {"paired": paired, "confidence": confidence}
    n = seeds_needed(spread_bound(spread, df, SPREAD_BOUND), threshold, **kw)
    lo = seeds_needed(spread_bound(spread, df, 0.025), threshold, **kw)
    hi = seeds_needed(spread_bound(spread, df, 0.975), threshold, **kw)
    return n, (lo, hi)


def format_seeds_needed(n: int | None) -> str | None:
    """``12`` -> "12"; above the cap -> "> 1000"; None -> None."""
    if n is None:
        return None
    return f"> {SEEDS_NEEDED_CAP}" if n > SEEDS_NEEDED_CAP else str(n)


def fisher_exact_p(table: list[list[int]]) -> float:
    """Two-sided p-value of Fisher's exact test of a 2x2 table of counts: the total
    hypergeometric probability of the tables with the same margins that are no more likely
    than this one (scipy.stats.fisher_exact's definition, which the tests compare it with;
    scipy.stats itself costs more to import than a whole `ra compare`)."""
    from scipy.special import gammaln

    (a, b), (c, d) = table
    n1, n2, k = a + b, c + d, a + c

    def log_choose(n, r):
        return gammaln(n + 1) - gammaln(r + 1) - gammaln(n - r + 1)

    x = np.arange(max(0, k - n2), min(k, n1) + 1)
    logp = log_choose(n1, x) + log_choose(n2, k - x) - log_choose(n1 + n2, k)
    p = np.exp(logp)
    observed = p[a - x[0]]
    return float(min(1.0, p[p <= observed * (1 + 1e-7)].sum()))


# ---------------------------------------------------------------------------- speed and loss


def loss_slopes(curves: list[list[tuple[float, float]]]) -> list[float | None]:
    """``b / loss_final`` of ``loss ~ a + b ln(step)`` fitted by least squares over each
    curve's last half (its points at or after half its last step, steps > 0, finite
    values); None for a curve that cannot be fitted (fewer than two such points, one step
    only, a final loss of 0). All curves at once (a compare over 10,000 runs fits 10,000)."""
    sizes = [len(c) for c in curves]
    total = sum(sizes)
    out: list[float | None] = [None] * len(curves)
    if total == 0:
        return out
    ids = np.repeat(np.arange(len(curves)), sizes)
    steps = np.fromiter((s for c in curves for s, _ in c), float, total)
    values = np.fromiter((v for c in curves for _, v in c), float, total)
    ok = (steps > 0) & np.isfinite(values)
    n = len(curves)
    last = np.full(n, -np.inf)
    np.maximum.at(last, ids[ok], steps[ok])
    tail = ok & (steps >= last[ids] / 2)
    i, x, y = ids[tail], np.log(steps[tail]), values[tail]
    count = np.bincount(i, minlength=n)
    first = np.full(n, np.inf)
    np.minimum.at(first, i, steps[tail])
    final = np.full(n, -np.inf)  # the loss at the last step (the largest, if several)
    at_last = steps[tail] == last[i]
    np.maximum.at(final, i[at_last], y[at_last])
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = np.bincount(i, x, n) / count
        my = np.bincount(i, y, n) / count
        dx = x - mx[i]
        sxx = np.bincount(i, dx * dx, n)
        sxy = np.bincount(i, dx * (y - my[i]), n)
        slope = sxy / sxx / np.abs(final)
    fitted = (count >= 2) & (first < last) & (final != 0) & np.isfinite(slope)
    for k in np.flatnonzero(fitted):
        out[k] = float(slope[k])
    return out


def speed_explained_gaps(
    curves: list[list[tuple[float, float]]], ratio: float
) -> list[float | None]:
    """The improvement (positive = candidate better) that a speed ratio ``ratio``
    (candidate / baseline tokens) alone explains, from each loss curve: the candidate
    sees ``ratio`` times the tokens, so its loss moves by ``b ln(ratio)``; relative to the
    final loss, with its sign (a loss still falling favours the faster side). None for a
    curve that cannot be fitted, or every curve when ``ratio`` is not positive."""
    if not ratio > 0:
        return [None] * len(curves)
    return [None if b is None else -b * math.log(ratio) for b in loss_slopes(curves)]


def speed_explained_gap(curve: list[tuple[float, float]], ratio: float) -> float | None:
    """:func:`speed_explained_gaps` of one curve."""
    return speed_explained_gaps([curve], ratio)[0]
