"""Statistics of racli.compare.verdict on synthetic histories (fixed seeds): the paired
design decided in advance, log ratios that mirror when the sides swap, the decision rules,
seeds needed, validity, text and JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from racli.bench.ranking import TimingRow, best_vs_best, speed_wording
from racli.bench.text import fair_comparison
from racli.compare.stats import speed_explained_gap
from racli.compare.text import final_comparison, signed_pct
from racli.compare.verdict import (
    SEEDS_NEEDED_CAP,
    Design,
    MatchedTime,
    Noise,
    Sample,
    Unfinished,
    compare_runs,
    decide,
    estimate,
    format_seeds_needed,
    pooled_noise,
    seeds_needed,
)
from racli.compare.wording import recommendation
from racli.names import display_name

BASE = 3.0


def side(values, *, seeds=None, tps=500_000.0, start_id=0, iterations=1000, epochs=None):
    seeds = list(range(len(values))) if seeds is None else seeds
    return [
        Sample(
            run_id=start_id + i,
            seed=s,
            value=float(v),
            tokens_per_s=tps,
            iterations=iterations,
            epochs=epochs,
        )
        for i, (v, s) in enumerate(zip(values, seeds, strict=True))
    ]


def history(rng, n, *, effect=0.0, noise=0.005, seed_effect=0.0, paired=True):
    """Baseline and candidate values; a shared per-seed offset when ``seed_effect``."""
    offset = seed_effect * rng.standard_normal(n)
    b = BASE * (1 + offset + noise * rng.standard_normal(n))
    c = BASE * (1 + effect) * (1 + offset + noise * rng.standard_normal(n))
    b_seeds = list(range(n))
    c_seeds = list(range(n)) if paired else list(range(100, 100 + n))
    return side(c, seeds=c_seeds, start_id=1000), side(b, seeds=b_seeds)


PAIRED = Design(True, "paired by design (test)")


def judge(c, b, **kw):
    """compare_runs without the speed check; paired when both sides hold the same seeds."""
    kw.setdefault("wall_clock", False)
    if "design" not in kw and {s.seed for s in c} == {s.seed for s in b}:
        kw["design"] = PAIRED
    return compare_runs(c, b, **kw)


# ---------------------------------------------------------------- A/A


@pytest.mark.parametrize("paired", [True, False])
def test_aa_false_positive_rate_at_most_5_percent(paired):
    rng = np.random.default_rng(1234 if paired else 4321)
    wrong = 0
    methods = set()
    for _ in range(400):
        c, b = history(rng, 5, noise=0.01, seed_effect=0.01, paired=paired)
        v = judge(c, b)
        methods.add(v.method)
        wrong += v.outcome in ("WIN", "LOSE")
    # the design decides, every time: never a switch on the data
    assert methods == ({"paired"} if paired else {"welch"})
    assert wrong <= 20, f"{wrong}/400 A/A histories gave WIN or LOSE"


@pytest.mark.parametrize("paired", [True, False])
def test_aa_interval_covers_zero_95_percent(paired):
    rng = np.random.default_rng(99 if paired else 98)
    missed = 0
    for _ in range(400):
        c, b = history(rng, 5, noise=0.01, seed_effect=0.01, paired=paired)
        lo, hi = judge(c, b).interval
        missed += not lo <= 0 <= hi
    assert missed <= 32  # 8%: the 5% mean + 3 sd


# ---------------------------------------------------------------- planted effects


def test_planted_improvement_wins():
    rng = np.random.default_rng(7)
    c, b = history(rng, 5, effect=-0.03, noise=0.005)
    v = judge(c, b)
    assert v.outcome == "WIN" and not v.limited_evidence
    assert v.d < 0 and v.improvement > 0.02
    lo, hi = v.interval
    assert 0 < lo < v.improvement < hi
    assert v.seeds_needed is None
    assert v.recommendation == "INTEGRATE RA v5 into the training pipeline"


def test_planted_degradation_loses():
    rng = np.random.default_rng(8)
    c, b = history(rng, 5, effect=+0.03, noise=0.005, paired=False)
    v = judge(c, b)
    assert v.outcome == "LOSE" and v.method == "welch"
    assert v.improvement < -0.02 and v.interval[1] < 0


def test_win_says_at_least_the_threshold_only_when_the_interval_clears_it():
    rng = np.random.default_rng(17)
    c, b = history(rng, 8, effect=-0.03, noise=0.003, paired=False)
    v = judge(c, b)
    assert v.outcome == "WIN" and v.interval[0] > 0.01 and v.clears_threshold
    assert "by at least 1%" in v.headline
    lo, hi = v.interval
    assert f"better by {lo * 100:.2f}% to {hi * 100:.2f}%" in v.headline
    # a real but small gain: WIN, but never "by at least 1%"
    c, b = history(rng, 8, effect=-0.006, noise=0.001, paired=False)
    v = judge(c, b)
    assert v.outcome == "WIN" and 0 < v.interval[0] < 0.01
    assert "by at least" not in v.headline and "not shown to reach the 1%" in v.headline
    assert "INTEGRATE" not in v.recommendation and "1% bar" in v.recommendation


def test_throughput_metric_higher_is_better():
    c = side([520_000, 521_000, 519_000], tps=None)
    b = side([500_000, 501_000, 499_000], tps=None)
    v = judge(c, b, metric="tokens_per_s", lower_is_better=False)
    assert v.outcome == "WIN" and "throughput higher by" in v.headline
    assert v.d > 0 and v.improvement == pytest.approx(v.d)
    assert v.interval[0] > 0


def test_tiny_noise_equal_means_is_parity():
    rng = np.random.default_rng(9)
    c, b = history(rng, 5, effect=0.0, noise=0.0005)
    v = judge(c, b)
    assert v.outcome == "PARITY"
    assert -0.01 < v.interval90[0] and v.interval90[1] < 0.01
    assert "TOST" in v.reason


def test_large_noise_is_inconclusive_with_seeds_needed():
    rng = np.random.default_rng(10)
    for paired in (True, False):
        c, b = history(rng, 3, effect=-0.004, noise=0.03, paired=paired)
        v = judge(c, b)
        assert v.outcome == "INCONCLUSIVE", v.reason
        assert v.seeds_needed is not None and v.seeds_needed > 3
        assert "runs per side give 80% power" in v.reason


# ---------------------------------------------------------------- seeds needed


def test_seeds_needed_is_continuous_in_the_estimate():
    # the same spread, point estimates just either side of the threshold: the same answer
    spread = np.array([0.02, -0.02, 0.0])
    seeds = [10, 11, 12]
    a = judge(side(BASE * (1 - 0.0101 + spread), seeds=seeds, start_id=9), side(BASE + spread))
    b = judge(side(BASE * (1 - 0.0099 + spread), seeds=seeds, start_id=9), side(BASE + spread))
    assert a.outcome == b.outcome == "INCONCLUSIVE"
    assert a.seeds_needed == b.seeds_needed
    # and it grows smoothly with the spread (square law)
    n1, n2 = seeds_needed(0.01, 0.01), seeds_needed(0.02, 0.01)
    assert 3.3 < n2 / n1 < 4.7


def test_seeds_needed_gives_80_percent_power_at_the_threshold():
    noise = 0.01
    n = seeds_needed(noise, 0.01)
    assert 10 < n < 40
    rng = np.random.default_rng(21)
    wins = 0
    for _ in range(300):
        c, b = history(rng, n, effect=-0.01, noise=noise, paired=False)
        wins += judge(c, b).outcome == "WIN"
    assert 0.72 <= wins / 300 <= 0.95


def test_seeds_needed_capped():
    assert seeds_needed(0.5, 0.01) == SEEDS_NEEDED_CAP + 1
    assert format_seeds_needed(SEEDS_NEEDED_CAP + 1) == "> 1000"
    c = side([BASE * (1 + e) for e in (0.5, -0.5, 0.0)], start_id=100)
    v = judge(c, side([BASE] * 3))
    assert v.outcome == "INCONCLUSIVE" and v.to_dict()["seeds_needed_text"] == "> 1000"


# ---------------------------------------------------------------- one run a side


def test_one_run_a_side_without_history_is_inconclusive():
    # the relabelled same-seed pair: 1.3% apart by noise alone
    c = [Sample(2, 1337, 3.3912, 500_000.0, iterations=12480)]
    b = [Sample(1, 1337, 3.4360, 500_000.0, iterations=12500)]
    v = judge(c, b)
    assert v.outcome == "INCONCLUSIVE" and v.limited_evidence and v.method == "none"
    assert v.interval is None and v.spread_source == "assumed"
    assert v.seeds_needed == seeds_needed(0.01, 0.01)


def test_one_run_a_side_with_history_noise_uses_a_prediction_interval():
    noise = pooled_noise({"baseline": [3.0, 3.02, 2.98, 3.01], "ra_v5": [2.9, 2.91, 2.89]})
    assert noise.df == 5 and noise.runs == 7 and 0.003 < noise.sd < 0.01
    c, b = side([2.85], start_id=5), side([3.0])
    v = judge(c, b, noise=noise)
    assert v.method == "prediction" and v.outcome == "WIN"
    half = v.interval[1] - v.improvement
    from scipy.special import stdtrit

    assert half == pytest.approx(stdtrit(5, 0.975) * noise.sd * math.sqrt(2))
    # a small difference: the prediction interval keeps it open
    v = judge(side([2.99], start_id=5), b, noise=noise)
    assert v.outcome == "INCONCLUSIVE" and v.spread_source == "history"


def test_pooled_noise_needs_three_runs_an_arm():
    assert pooled_noise({"a": [3.0, 3.1], "b": [2.9]}) is None


# ---------------------------------------------------------------- validity


def test_past_one_epoch_is_invalid_unless_allowed():
    rng = np.random.default_rng(12)
    c, b = history(rng, 5, effect=-0.03)
    c = [Sample(s.run_id, s.seed, s.value, s.tokens_per_s, s.iterations, 2.5) for s in c]
    v = judge(c, b)
    assert v.outcome == "INVALID" and v.invalid_causes == ["epochs"]
    assert "memorisation" in v.reason and "one epoch" in v.recommendation
    v = judge(c, b, allow_epochs=True)
    assert v.outcome == "WIN" and "allowed by --allow-epochs" in v.labels[0]
    assert "--allow-epochs" in v.headline


def test_speed_gap_on_a_constructed_curve():
    # loss = 4 - ln(step / 100): a 2.5% speed gap moves it by ln(1/0.975) / 1.70 = 1.49%
    curve = [(s, 4.0 - math.log(s / 100)) for s in (100, 200, 400, 800, 1000)]
    final = curve[-1][1]
    # signed: the slower candidate sees fewer tokens of a falling loss, which favours the baseline
    assert speed_explained_gap(curve, 0.975) == pytest.approx(math.log(0.975) / final)
    assert speed_explained_gap(curve[:1], 0.9) is None
    rising = [(s, 3.0 + 0.1 * math.log(s)) for s in (100, 200, 400)]  # loss rising: the sign flips
    assert speed_explained_gap(rising, 1.1) < 0 < speed_explained_gap(curve, 1.1)
    rng = np.random.default_rng(13)
    c, b = history(rng, 5, effect=-0.03)
    c = [Sample(s.run_id, s.seed, s.value, 500_000.0 * 0.975) for s in c]
    v = compare_runs(c, b, wall_clock=True, curves=[curve] * 10)
    assert v.outcome == "INVALID" and v.invalid_causes == ["speed"]
    assert v.speed_gap.explained == pytest.approx(math.log(0.975) / final)
    assert v.speed_gap.too_large and "explains a 1.49% loss gap in favour of Baseline" in v.reason
    assert "10 val-loss curve(s)" in v.speed_gap.basis
    # train-loss curves stand in where no val-loss curve can be fitted, and the basis says so
    v = compare_runs(c, b, wall_clock=True, curves=[curve] * 10, curve_kind="train-loss")
    assert v.outcome == "INVALID" and "10 train-loss curve(s)" in v.speed_gap.basis
    assert "no val-loss curve has two points there" in v.speed_gap.basis
    # both sides' curves count, with their signs: opposite slopes cancel in the median
    assert compare_runs(c, b, wall_clock=True, curves=[curve, rising, rising]).outcome == "WIN"
    # a flat curve explains nothing; a step budget skips the check
    flat = [(s, 3.0) for s in (100, 200, 400)]
    assert compare_runs(c, b, wall_clock=True, curves=[flat]).outcome == "WIN"
    v = compare_runs(c, b, wall_clock=False, curves=[curve])
    assert v.outcome == "WIN" and v.speed_gap is None
    # no curve to estimate from: judged, and labelled
    v = compare_runs(c, b, wall_clock=True)
    assert v.outcome == "WIN" and "not estimated" in v.labels[0]


def test_loss_slopes_match_a_fit_curve_by_curve():
    """All curves fitted at once give what numpy's polyfit gives for each curve's last
    half, and None where a curve cannot be fitted (one point, one step, no finite value,
    a final loss of 0)."""
    from racli.compare.stats import loss_slopes

    rng = np.random.default_rng(7)

    def reference(curve):
        pts = sorted((s, v) for s, v in curve if s > 0 and math.isfinite(v))
        tail = [(s, v) for s, v in pts if pts and s >= pts[-1][0] / 2]
        if len(tail) < 2 or tail[0][0] == tail[-1][0] or tail[-1][1] == 0:
            return None
        x, y = np.log([s for s, _ in tail]), np.array([v for _, v in tail])
        return float(np.polyfit(x, y, 1)[0]) / abs(y[-1])

    curves = []
    for _ in range(400):
        steps = sorted(rng.choice(np.arange(1, 5000), size=rng.integers(1, 25), replace=False))
        curve = [(int(s), float(4 - 0.3 * math.log(s) + rng.normal(0, 0.05))) for s in steps]
        rng.shuffle(curve)
        curves.append(curve)
    curves += [[], [(5, 3.0)], [(5, 3.0), (5, 2.0)], [(0, 3.0), (-1, 2.0)],
               [(1, float("nan")), (2, float("inf"))], [(1, 2.0), (2, 0.0)]]  # fmt: skip
    got = loss_slopes(curves)
    for curve, slope in zip(curves, got, strict=True):
        want = reference(curve)
        assert (slope is None) == (want is None), curve
        if want is not None:
            assert slope == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert sum(s is not None for s in got) > 300


def test_fisher_exact_p_is_scipys():
    from scipy.stats import fisher_exact

    from racli.compare.stats import fisher_exact_p

    rng = np.random.default_rng(1)
    tables = [[[9, 273], [18, 302]], [[1, 2], [0, 3]], [[0, 5], [0, 7]], [[5, 5], [0, 20]]]
    tables += [rng.integers(0, 30, (2, 2)).tolist() for _ in range(200)]
    for t in tables:
        assert fisher_exact_p(t) == pytest.approx(fisher_exact(t).pvalue, rel=1e-9, abs=1e-12)


def test_missing_runs_with_unequal_attempts_need_shares_that_differ_beyond_chance():
    rng = np.random.default_rng(15)
    c, b = history(rng, 5, effect=-0.03, paired=False)
    b = b + side(BASE * (1 + 0.005 * rng.standard_normal(15)), start_id=500)  # 20 baseline runs
    ok = judge(c, b, unfinished=(Unfinished(failed=1), Unfinished(diverged=1)))
    assert ok.outcome == "WIN" and ok.candidate.failed == 1 and ok.baseline.diverged == 1
    ok = judge(c, b, unfinished=(Unfinished(diverged=1), Unfinished()))  # 1 of 6 vs 0 of 20
    assert ok.outcome == "WIN"
    bad = judge(c, b, unfinished=(Unfinished(diverged=5), Unfinished()))  # 5 of 10 vs 0 of 20
    assert bad.outcome == "INVALID" and "Fisher" in bad.reason
    # without counts nothing is claimed
    assert judge(c, b).candidate.diverged is None


def test_tokens_per_s_metric_skips_speed_check():
    c = [Sample(i, i, 600_000.0 + i, 600_000.0 + i) for i in range(3)]
    b = [Sample(10 + i, i, 500_000.0 + i, 500_000.0 + i) for i in range(3)]
    v = compare_runs(c, b, metric="tokens_per_s", lower_is_better=False)
    assert v.outcome == "WIN" and v.speed_gap is None
    assert v.speed_ratio == pytest.approx(1.2, rel=1e-3)


# ---------------------------------------------------------------- method selection


def test_paired_by_design_not_by_the_data():
    offsets = np.array([-0.05, 0.03, 0.0, 0.04, -0.02])
    b = BASE * (1 + offsets)
    c = b * 0.98 * (1 + np.array([0.001, -0.001, 0.0005, -0.0005, 0.0]))
    paired = judge(side(c, start_id=100), side(b), design=PAIRED)
    welch = judge(side(c, start_id=100), side(b), design=Design(False, "independent (test)"))
    assert paired.method == "paired" and paired.outcome == "WIN" and paired.design == "paired"
    assert paired.method_why == PAIRED.why and paired.correlation > 0.99  # shown, not used
    assert welch.method == "welch" and welch.outcome == "INCONCLUSIVE"
    assert welch.method_why == "independent (test)" and welch.design == "independent"
    x = np.log(c) - np.log(b)  # per-seed log ratios
    from scipy.special import stdtrit

    half = stdtrit(4, 0.975) * x.std(ddof=1) / math.sqrt(5)
    assert paired.d == pytest.approx(x.mean())
    assert paired.interval == pytest.approx((-x.mean() - half, -x.mean() + half))
    # the same seeds with uncorrelated values stay paired: no test on the data switches it
    un = judge(side([2.9, 2.95, 2.91, 2.93, 2.92], start_id=9), side([3.0, 2.99, 3.02, 3.0, 3.01]))
    assert un.method == "paired"
    # two pairs are paired too (df 1), decided in advance
    two = judge(side([2.9, 2.95], start_id=9), side([3.0, 3.05]))
    assert two.method == "paired"
    # a paired design whose seeds do not match falls back to Welch and says so
    off = judge(side(c, seeds=[10, 11, 12, 13, 14], start_id=100), side(b), design=PAIRED)
    assert off.method == "welch" and "do not match" in off.method_why


def test_welch_interval_is_the_delta_method_on_the_log_ratio_of_means():
    c = np.array([2.90, 2.95, 2.92, 2.97])
    b = np.array([3.00, 3.02, 2.98])
    v = judge(side(c, seeds=[5, 6, 7, 8], start_id=9), side(b))
    assert v.method == "welch"
    from scipy.special import stdtrit

    a_, b_ = c.var(ddof=1) / (4 * c.mean() ** 2), b.var(ddof=1) / (3 * b.mean() ** 2)
    df = (a_ + b_) ** 2 / (a_**2 / 3 + b_**2 / 2)
    se = math.sqrt(a_ + b_)
    imp = -math.log(c.mean() / b.mean())
    assert v.d == pytest.approx(-imp)
    assert v.interval == pytest.approx(
        (imp - stdtrit(df, 0.975) * se, imp + stdtrit(df, 0.975) * se)
    )
    assert v.interval90 == pytest.approx(
        (imp - stdtrit(df, 0.95) * se, imp + stdtrit(df, 0.95) * se)
    )


MIRROR = {"WIN": "LOSE", "LOSE": "WIN", "PARITY": "PARITY", "INCONCLUSIVE": "INCONCLUSIVE"}


def _random_history(rng):
    """One random comparison: any sizes, paired or not, effects near the rule's edges,
    sometimes one run a side with a history noise estimate."""
    kind = rng.integers(0, 3)
    noise = float(rng.choice([0.001, 0.005, 0.01, 0.03]))
    effect = float(rng.normal(0, 0.015))
    if kind == 0:  # paired
        n = int(rng.integers(2, 9))
        shared = noise * rng.standard_normal(n)
        b = BASE * np.exp(shared + noise * rng.standard_normal(n))
        c = BASE * np.exp(effect + shared + noise * rng.standard_normal(n))
        return side(c, start_id=100), side(b), {"design": PAIRED}
    nc, nb = (int(x) for x in rng.integers(1 if kind == 2 else 2, 9, 2))
    b = BASE * np.exp(noise * rng.standard_normal(nb))
    c = BASE * np.exp(effect + noise * rng.standard_normal(nc))
    kw = {"design": Design(False, "independent")}
    if kind == 2:
        kw["noise"] = Noise(noise, int(rng.integers(2, 20)), 10, "test")
    return side(c, seeds=list(range(50, 50 + nc)), start_id=100), side(b), kw


@pytest.mark.parametrize(
    "histories,seed", [(2000, 2024), pytest.param(8_000, 7, marks=pytest.mark.slow)]
)
def test_swapping_the_sides_mirrors_every_verdict(histories, seed):
    """Over thousands of random histories: every interval negated exactly, every outcome
    mirrored (WIN <-> LOSE), the same seeds needed."""
    rng = np.random.default_rng(seed)
    seen = set()
    for _ in range(histories):
        c, b, kw = _random_history(rng)
        v = compare_runs(c, b, wall_clock=False, **kw)
        w = compare_runs(b, c, wall_clock=False, **kw)
        seen.add((v.method, v.outcome))
        assert w.outcome == MIRROR[v.outcome], (v.outcome, w.outcome, v.interval, w.interval)
        assert w.d == -v.d and w.improvement == -v.improvement
        for a, b_ in ((v.interval, w.interval), (v.interval90, w.interval90)):
            assert (a is None and b_ is None) or (b_[0] == -a[1] and b_[1] == -a[0])
        assert w.seeds_needed == v.seeds_needed and w.spread == v.spread
    # the histories reached every method and every outcome
    assert {m for m, _ in seen} == {"paired", "welch", "prediction"}
    assert {o for _, o in seen} == set(MIRROR)


def test_swapping_mirrors_the_speed_and_budget_checks():
    curve = [(s, 4.0 - math.log(s / 100)) for s in (100, 200, 400, 800, 1000)]
    rng = np.random.default_rng(5)
    c, b = history(rng, 4, effect=-0.02, noise=0.003)
    c = [Sample(s.run_id, s.seed, s.value, 500_000.0 * 0.99, 990) for s in c]
    b = [Sample(s.run_id, s.seed, s.value, 500_000.0, 1000) for s in b]
    for kw in (
        {"wall_clock": True},
        {"matched": MatchedTime(0.99, (0.97, 1.01), True)},
    ):
        v = compare_runs(c, b, curves=[curve] * 8, design=PAIRED, **kw)
        swapped = dict(kw)
        if "matched" in kw:
            swapped["matched"] = kw["matched"].swapped()
        w = compare_runs(b, c, curves=[curve] * 8, design=PAIRED, **swapped)
        assert v.speed_gap.explained == pytest.approx(-w.speed_gap.explained)
        assert w.outcome == MIRROR.get(v.outcome, v.outcome)


@pytest.mark.parametrize("missing", ["iterations", "tokens_per_s"])
def test_a_side_without_step_counts_or_speed_mirrors_when_swapped(missing):
    """A side whose runs recorded no step count (or a zero speed) leaves the budget and
    speed checks unchecked whichever side it is on, so swapping the sides still mirrors."""
    curve = [(s, 4.0 - math.log(s / 100)) for s in (100, 200, 400, 800, 1000)]
    c = [Sample(i, i, v, 90.0, 900) for i, v in enumerate([3.0, 3.01])]
    if missing == "iterations":
        b = [Sample(10 + i, i, v, 100.0, None) for i, v in enumerate([3.02, 3.03])]
    else:
        b = [Sample(10 + i, i, v, 0.0, 1000) for i, v in enumerate([3.02, 3.03])]
    for kw in ({"wall_clock": True}, {"matched": MatchedTime(0.9, (0.85, 0.95), True)}):
        v = compare_runs(c, b, curves=[curve] * 4, design=PAIRED, **kw)
        swapped = {"matched": kw["matched"].swapped()} if "matched" in kw else kw
        w = compare_runs(b, c, curves=[curve] * 4, design=PAIRED, **swapped)
        assert w.outcome == MIRROR.get(v.outcome, v.outcome)
        assert w.invalid_causes == v.invalid_causes and len(w.labels) == len(v.labels)
        unchecked = "matched" in kw if missing == "iterations" else "wall_clock" in kw
        if unchecked:
            for gap in (v.speed_gap, w.speed_gap):
                assert gap is None or gap.explained is None
            assert v.outcome != "INVALID"


def test_the_tost_interval_is_labelled_at_its_own_level():
    """At a 90% confidence the TOST interval is at 80%, and the text says so."""
    c = [Sample(i, i, v, None, None) for i, v in enumerate([3.0, 3.01, 3.02])]
    b = [Sample(10 + i, i, v, None, None) for i, v in enumerate([3.005, 3.012, 3.03])]
    for confidence, level in ((0.95, "90%"), (0.9, "80%")):
        v = compare_runs(c, b, design=PAIRED, confidence=confidence)
        assert v.tost_level == pytest.approx(float(level[:-1]) / 100)
        assert v.to_dict()["tost_level"] == pytest.approx(v.tost_level)
        text = final_comparison(v)
        lo, hi = v.interval90
        assert f"{level} [{signed_pct(lo, 2)}, {signed_pct(hi, 2)}]" in text


def test_the_runs_speed_is_paired_by_seed_in_a_paired_design():
    """The one-H200 experiment of docs/results.md (2026-12-04): seeds 1-2 ran on one GPU,
    3-4 on another, both arms of a seed on the same one. The ratio of the sides' medians
    compares GPUs (1.0018x, outside the calibrated [0.9922, 1.0011]); paired by seed it
    is 1.0007x, inside. Swapping the sides inverts it exactly."""
    losses = {1: (3.1805, 3.1710), 2: (3.1759, 3.2073), 3: (3.1880, 3.1950), 4: (3.1757, 3.2008)}
    tps = {1: (576885, 576232), 2: (576543, 576443), 3: (580786, 579397), 4: (575253, 579066)}
    b = [Sample(i, i, losses[i][0], float(tps[i][0]), 1059) for i in tps]
    c = [Sample(10 + i, i, losses[i][1], float(tps[i][1]), 1055) for i in tps]
    matched = MatchedTime(0.9966, (0.9922, 1.0011), True)
    curve = [(s, 4.0 - 0.1 * math.log(s)) for s in (100, 300, 600, 1000)]
    paired = compare_runs(c, b, curves=[curve] * 8, design=PAIRED, matched=matched)
    assert paired.speed_gap.measured_by_seed
    assert paired.speed_gap.measured_ratio == pytest.approx(1.00073, abs=1e-5)
    assert not paired.speed_gap.mismatch and not any("calibrated" in x for x in paired.labels)
    assert "(paired by seed), inside the calibrated interval" in final_comparison(paired)
    unpaired = compare_runs(c, b, curves=[curve] * 8, matched=matched)
    assert not unpaired.speed_gap.measured_by_seed and unpaired.speed_gap.mismatch
    assert unpaired.speed_gap.measured_ratio == pytest.approx(577754.0 / 576714.0)
    swapped = compare_runs(b, c, curves=[curve] * 8, design=PAIRED, matched=matched.swapped())
    assert swapped.speed_gap.measured_ratio == pytest.approx(
        1 / paired.speed_gap.measured_ratio, rel=1e-12
    )


def test_the_h200_runs_are_judged_paired_and_narrower_than_welch():
    """The six H200 runs of the report (GPT-2 124M, 2 minutes, seeds 1-3)."""
    base = side([2.1531, 2.1841, 2.1881], seeds=[1, 2, 3], iterations=2007)
    cand = side([2.1902, 2.2019, 2.2026], seeds=[1, 2, 3], start_id=10, iterations=1998)
    paired = judge(cand, base, design=PAIRED)
    welch = judge(cand, base, design=Design(False, "independent"))
    assert welch.interval == pytest.approx((-0.0299, 0.0086), abs=2e-4)  # the report's Welch
    assert paired.method == "paired" and paired.outcome == welch.outcome == "INCONCLUSIVE"
    width = paired.interval[1] - paired.interval[0]
    assert width < 0.75 * (welch.interval[1] - welch.interval[0])
    assert paired.interval == pytest.approx((-0.0247, 0.0035), abs=2e-4)


def test_interval_and_decision_steps_compose():
    rng = np.random.default_rng(14)
    c, b = history(rng, 5, effect=-0.03, noise=0.005, paired=False)
    est = estimate(c, b)
    outcome, reason, needed, _ = decide(est, threshold=0.01, confidence=0.95)
    v = judge(c, b)
    assert (outcome, reason, needed) == (v.outcome, v.reason, v.seeds_needed)
    assert decide(est, threshold=0.01, confidence=0.95, invalid=["x"])[0] == "INVALID"


# ---------------------------------------------------------------- errors, JSON, text


def test_empty_side_raises():
    with pytest.raises(ValueError):
        compare_runs([], side([3.0]))
    with pytest.raises(ValueError):
        compare_runs(side([3.0]), [])


def test_non_finite_value_raises():
    with pytest.raises(ValueError, match="non-finite"):
        compare_runs(side([float("nan")]), side([3.0]))


def _outcomes() -> dict[str, dict]:
    rng = np.random.default_rng(3)
    c, b = history(rng, 5, effect=-0.03, noise=0.005)
    out = {"WIN": {"candidate": c, "baseline": b}}
    out["LOSE"] = dict(zip(("candidate", "baseline"), history(rng, 5, effect=0.03, noise=0.005)))
    out["PARITY"] = dict(zip(("candidate", "baseline"), history(rng, 5, noise=0.0005)))
    out["INCONCLUSIVE"] = dict(zip(("candidate", "baseline"), history(rng, 3, noise=0.05)))
    c, b = history(rng, 5, effect=-0.03, noise=0.005)
    out["INVALID"] = {
        "candidate": [Sample(s.run_id, s.seed, s.value, s.tokens_per_s, 10, 3.0) for s in c],
        "baseline": b,
    }
    return out


@pytest.mark.parametrize("attn", ["ra_v5", "ra_beta", "sdpa_gate", "ra_v5_untied"])
def test_text_and_json_agree_for_every_outcome_and_variant(attn):
    for outcome, sides in _outcomes().items():
        v = judge(sides["candidate"], sides["baseline"], candidate_attn=attn)
        assert v.outcome == outcome
        data = json.loads(json.dumps(v.to_dict(), allow_nan=False))
        text = final_comparison(v)
        assert f"Recommendation: {data['recommendation']}" in text
        assert data["headline"] in text
        name = display_name(attn)
        assert data["candidate_name"] == name
        if outcome in ("WIN", "LOSE"):
            assert name in data["recommendation"] and "RA v5" not in data["recommendation"].replace(
                name, ""
            )
        if data["interval"] is not None:  # one sign convention: the improvement's
            lo, hi = data["interval"]
            assert lo <= data["improvement"] <= hi
            assert f"[{lo * 100:+.2f}%, {hi * 100:+.2f}%]" in text


def test_recommendations_cover_all_outcomes():
    assert recommendation("WIN", "ra_beta") == "INTEGRATE ra_beta into the training pipeline"
    assert "8+ hours" in recommendation("PARITY", "ra_v5")
    assert "RA v5" in recommendation("LOSE", "ra_v5")
    assert "seeds" in recommendation("INCONCLUSIVE", "ra_v5")
    both = recommendation("INVALID", "ra_v5", ["epochs", "speed"])
    assert "one epoch" in both and "equal steps" in both
    # gate advice only for variants with gates
    assert "ra gates" in recommendation("PARITY", "ra_v5")
    assert "ra gates" not in recommendation("PARITY", "baseline")
    assert "ra gates" not in recommendation("PARITY", "baseline#2", baseline="baseline#1")
    # a WIN below the bar is no call to integrate
    small = recommendation("WIN", "ra_v5", clears=False)
    assert "INTEGRATE" not in small and "1% bar" in small
    # an A/A comparison gets advice about noise, not about integrating a variant
    for outcome in ("WIN", "LOSE", "PARITY", "INCONCLUSIVE"):
        aa = recommendation(outcome, "baseline#2", baseline="baseline#1")
        assert "INTEGRATE" not in aa and "Tune" not in aa
    assert "unevenly" not in recommendation("INVALID", "ra_v5", ["unfinished"])
    assert "ra runs show" in recommendation("INVALID", "ra_v5", ["unfinished"])


# ---------------------------------------------------------------- best vs best


def test_speed_wording_thresholds():
    assert "parity" in speed_wording(1.0)
    assert "parity" in speed_wording(1.05)
    assert "parity" in speed_wording(0.96)
    assert "acceptable overhead" in speed_wording(1.06)
    assert "acceptable overhead" in speed_wording(1.15)
    w = speed_wording(1.35)
    assert "overhead" in w and "35.0% slower" in w
    assert "faster" in speed_wording(0.8)
    with pytest.raises(ValueError):
        speed_wording(float("nan"))


def test_best_vs_best_picks_lowest_ok_median():
    rows = [
        TimingRow("baseline", "eager", "fwd", 1.33, 1.3, 1.4, "ok"),
        TimingRow("baseline", "compile", "fwd", 1.15, 1.1, 1.2, "ok"),
        TimingRow("baseline", "cuda_graph", "fwd", 0.5, None, None, "failed", reason="boom"),
        TimingRow("ra_v5", "eager", "fwd", 1.40, 1.3, 1.5, "ok"),
        TimingRow("ra_v5", "compile", "fwd", 1.20, 1.1, 1.3, "ok"),
        TimingRow("ra_v5", "cuda_graph", "fwd", None, None, None, "skipped", reason="no CUDA"),
        TimingRow("baseline", "eager", "fwd_bwd", 4.0, 3.9, 4.1, "ok"),
        TimingRow("ra_v5", "eager", "fwd_bwd", 5.0, 4.9, 5.1, "ok"),
        TimingRow("ra_v5", "eager", "fwd", 0.9, 0.8, 1.0, "ok", backend="cpu"),
    ]
    out = best_vs_best(rows)
    key = {(r["phase"], r["backend"], r["attn"]): r for r in out}
    assert key[("fwd", None, "baseline")]["best_mode"] == "compile"
    assert key[("fwd", None, "baseline")]["ratio"] == pytest.approx(1.0)
    ra = key[("fwd", None, "ra_v5")]
    assert ra["best_mode"] == "compile" and ra["best_ms"] == 1.20
    assert ra["ratio"] == pytest.approx(1.20 / 1.15)
    assert "parity" in ra["wording"] and ra["noisy"] is None
    bwd = key[("fwd_bwd", None, "ra_v5")]
    assert bwd["ratio"] == pytest.approx(1.25) and "overhead" in bwd["wording"]
    cpu = key[("fwd", "cpu", "ra_v5")]  # other backend: never compared with the cuda baseline
    assert cpu["ratio"] is None and cpu["wording"] is None
    assert out[0]["attn"] == "baseline"


def test_best_vs_best_noisy_rows_get_no_mark():
    # the busy-machine report: a wide spread on the candidate's side
    rows = [
        TimingRow("baseline", "eager", "fwd", 79.99, 70.0, 90.0, "ok"),
        TimingRow("ra_v5", "eager", "fwd", 1.109, 0.63, 48.9, "ok"),
    ]
    ra = best_vs_best(rows)[1]
    assert ra["noisy"] and "p10-p90" in ra["noisy"] and ra["wording"] == "noisy: no mark"
    text = fair_comparison(best_vs_best(rows))
    assert "noisy" in text and "faster" not in text and "✅" not in text
    # narrow rows whose intervals overlap while the medians differ by 10%
    rows = [
        TimingRow("baseline", "eager", "fwd", 1.0, 0.9, 1.2, "ok"),
        TimingRow("ra_v5", "eager", "fwd", 1.1, 1.0, 1.3, "ok"),
    ]
    assert "overlap" in best_vs_best(rows)[1]["noisy"]
    # the threshold comes from the caller (ra.yaml bench.noise_ratio)
    rows = [
        TimingRow("baseline", "eager", "fwd", 1.0, 0.99, 1.01, "ok"),
        TimingRow("ra_v5", "eager", "fwd", 2.0, 1.5, 2.5, "ok"),
    ]
    assert best_vs_best(rows, noise_ratio=2.0)[1]["noisy"] is None
    assert best_vs_best(rows, noise_ratio=1.2)[1]["noisy"]


def test_best_vs_best_ignores_non_ok_rows_entirely():
    rows = [TimingRow("baseline", "eager", "fwd", None, None, None, "skipped", reason="x")]
    assert best_vs_best(rows) == []


def test_seeds_needed_already_reached_says_so():
    from racli.compare.verdict import Estimate

    est = Estimate(
        "welch",
        "x",
        -0.005,
        0.005,
        (-0.001, 0.011),
        (0.0, 0.0105),
        0.006,
        "observed",
        False,
        None,
        runs=12,
    )
    outcome, reason, needed, span = decide(est, threshold=0.01, confidence=0.95)
    assert outcome == "INCONCLUSIVE" and needed <= 12 and "already reached" in reason
    assert span is None  # the spread's degrees of freedom were not given: no range


def test_one_budget_for_both_sides_has_no_calibrated_ratio_to_miss():
    """The one-H200 A/A experiment of docs/results.md (2026-12-04): both arms baseline, one
    budget of 1050 steps, independent seeds. The runs went at 0.9991x; the interval
    [1, 1] of one variant against itself set no budget, so nothing was missed."""
    losses = {1: (3.1719, 3.1477), 2: (3.1928, 3.1592), 3: (3.2140, 3.1990), 4: (3.2072, 3.1613)}
    tps = {1: (573964, 573047), 2: (573960, 573440), 3: (573662, 573438), 4: (574149, 573802)}
    b = [Sample(i, i, losses[i][0], float(tps[i][0]), 1050) for i in tps]
    c = [Sample(10 + i, 1_000_000 + i, losses[i][1], float(tps[i][1]), 1050) for i in tps]
    curve = [(s, 4.0 - 0.1 * math.log(s)) for s in (100, 300, 600, 1000)]
    v = compare_runs(c, b, curves=[curve] * 8, matched=MatchedTime(1.0, (1.0, 1.0), True))
    g = v.speed_gap
    assert g.same_budget and not g.mismatch and g.measured_ratio == pytest.approx(573439 / 573962)
    assert not any("calibrated" in x for x in v.labels)
    text = final_comparison(v)
    assert "one budget for both sides, so no calibrated ratio to match" in text
    assert "⚠️ Measured" not in text and "outside the calibrated" not in text
    assert v.to_dict()["speed_gap"]["mismatch"] is False
