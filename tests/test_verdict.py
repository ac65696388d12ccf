"""Statistics of racli.verdict on synthetic histories (fixed seeds)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from racli.verdict import (
    RECOMMENDATIONS,
    SEEDS_NEEDED_CAP,
    Sample,
    TimingRow,
    best_vs_best,
    compare_runs,
    format_seeds_needed,
    speed_wording,
)

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


# ---------------------------------------------------------------- A/A


@pytest.mark.parametrize("paired", [True, False])
def test_aa_false_positive_rate_at_most_5_percent(paired):
    rng = np.random.default_rng(1234 if paired else 4321)
    wrong = 0
    methods = set()
    for _ in range(400):
        c, b = history(rng, 5, noise=0.01, seed_effect=0.01, paired=paired)
        v = compare_runs(c, b)
        methods.add(v.method)
        wrong += v.outcome in ("WIN", "LOSE")
    assert methods == {"paired" if paired else "welch"}
    assert wrong <= 20, f"{wrong}/400 A/A histories gave WIN or LOSE"


@pytest.mark.parametrize("paired", [True, False])
def test_aa_interval_calibrated_without_threshold(paired):
    # with threshold 0 the rule reduces to "interval excludes 0": ~5% expected
    rng = np.random.default_rng(99 if paired else 98)
    wrong = 0
    for _ in range(400):
        c, b = history(rng, 5, noise=0.01, paired=paired)
        wrong += compare_runs(c, b, threshold=0.0).outcome in ("WIN", "LOSE")
    assert wrong <= 36  # 9%: well above the 5% mean + 3 sd


# ---------------------------------------------------------------- planted effects


def test_planted_improvement_wins():
    rng = np.random.default_rng(7)
    c, b = history(rng, 5, effect=-0.03, noise=0.005)
    v = compare_runs(c, b)
    assert v.outcome == "WIN"
    assert v.method == "paired"
    assert not v.limited_evidence
    assert v.d < 0 and v.improvement > 0.02
    lo, hi = v.ci
    assert lo < v.d < hi < 0
    assert v.improvement_ci[0] > 0
    assert v.seeds_needed is None
    assert v.recommendation == RECOMMENDATIONS["WIN"]


def test_planted_degradation_loses():
    rng = np.random.default_rng(8)
    c, b = history(rng, 5, effect=+0.03, noise=0.005, paired=False)
    v = compare_runs(c, b)
    assert v.outcome == "LOSE"
    assert v.method == "welch"
    assert v.improvement < -0.02
    assert v.ci[0] > 0


def test_throughput_metric_higher_is_better():
    c = side([520_000, 521_000, 519_000], tps=None)
    b = side([500_000, 501_000, 499_000], tps=None)
    v = compare_runs(c, b, metric="tokens_per_s", lower_is_better=False)
    assert v.outcome == "WIN"
    assert v.d > 0 and v.improvement == pytest.approx(v.d)


def test_tokens_per_s_metric_skips_speed_check():
    c = [Sample(i, i, 600_000.0 + i, 600_000.0 + i) for i in range(3)]
    b = [Sample(10 + i, i, 500_000.0 + i, 500_000.0 + i) for i in range(3)]
    v = compare_runs(c, b, metric="tokens_per_s", lower_is_better=False)
    assert v.outcome == "WIN"
    assert v.speed_ok is None
    assert v.speed_ratio == pytest.approx(1.2, rel=1e-3)


def test_tiny_noise_equal_means_is_parity():
    rng = np.random.default_rng(9)
    c, b = history(rng, 5, effect=0.0, noise=0.0005)
    v = compare_runs(c, b)
    assert v.outcome == "PARITY"
    assert v.ci[0] >= -0.01 and v.ci[1] <= 0.01


def test_large_noise_is_inconclusive_with_seeds_needed():
    rng = np.random.default_rng(10)
    for paired in (True, False):
        c, b = history(rng, 3, effect=-0.004, noise=0.03, paired=paired)
        v = compare_runs(c, b)
        assert v.outcome == "INCONCLUSIVE", v.reason
        assert v.seeds_needed is not None and v.seeds_needed > 3
        assert "runs per side" in v.reason


def test_seeds_needed_settles_when_spread_holds():
    # paired differences: mean -2%, sd ~2.3% -> undecided with 5 seeds
    r = np.array([-0.02, 0.01, -0.05, -0.01, -0.03])
    v = compare_runs(side(BASE * (1 + r), start_id=100), side([BASE] * 5), threshold=0.01)
    assert v.outcome == "INCONCLUSIVE"
    n = v.seeds_needed
    assert 5 < n <= SEEDS_NEEDED_CAP
    # the same mean and spread with n seeds must decide; with n - 1 it must not
    for k, expected in ((n, "WIN"), (n - 1, "INCONCLUSIVE")):
        reps = np.resize(r - r.mean(), k)
        reps = reps / reps.std(ddof=1) * r.std(ddof=1) + r.mean()
        v2 = compare_runs(side(BASE * (1 + reps), start_id=100), side([BASE] * k))
        assert v2.outcome == expected, (k, v2.reason)


def test_seeds_needed_capped():
    # the point estimate sits just inside the threshold (0.999%): settling it as
    # PARITY needs a half-width below 0.001 percentage points
    c = side([BASE * (1 - 0.00999 + e) for e in (0.02, -0.02, 0.0)], start_id=100)
    b = side([BASE] * 3)
    v = compare_runs(c, b)
    assert v.outcome == "INCONCLUSIVE"
    assert v.seeds_needed > SEEDS_NEEDED_CAP
    assert format_seeds_needed(v.seeds_needed) == "> 1000"
    assert v.to_dict()["seeds_needed_text"] == "> 1000"


# ---------------------------------------------------------------- speed


def test_speed_mismatch_is_invalid():
    rng = np.random.default_rng(11)
    c, b = history(rng, 5, effect=-0.03)
    c = [Sample(s.run_id, s.seed, s.value, 400_000.0) for s in c]  # 20% slower
    v = compare_runs(c, b)
    assert v.outcome == "INVALID"
    assert v.method == "speed"
    assert v.speed_ok is False
    assert v.speed_ratio == pytest.approx(0.8)
    assert v.ci is None
    assert "speed" in v.reason


def test_speed_within_tolerance_is_ok():
    c = side([3.3912], tps=460_000.0, start_id=5)
    b = side([3.4521], tps=500_000.0)
    v = compare_runs(c, b)
    assert v.speed_ok is True and v.outcome == "WIN"


def test_missing_throughput_skips_speed_check():
    c = side([3.3912], tps=None, start_id=5)
    b = side([3.4521])
    v = compare_runs(c, b)
    assert v.speed_ok is None and v.speed_ratio is None


# ---------------------------------------------------------------- single run


def test_single_run_rule_matches_the_seed_example():
    c = [Sample(2, 1337, 3.3912, 3.47, iterations=12480)]
    b = [Sample(1, 1337, 3.4521, 3.47, iterations=12500)]
    v = compare_runs(c, b)
    assert v.outcome == "WIN"
    assert v.limited_evidence is True
    assert v.method == "single-run"
    assert v.ci is None
    assert round(v.improvement * 100, 1) == 1.8
    assert v.d == pytest.approx((3.3912 - 3.4521) / 3.4521)
    assert v.speed_ok is True and v.speed_ratio == pytest.approx(1.0)


@pytest.mark.parametrize(
    "cand, outcome", [(3.0 * 1.02, "LOSE"), (3.0 * 1.005, "PARITY"), (3.0 * 0.98, "WIN")]
)
def test_single_run_thresholds(cand, outcome):
    v = compare_runs(side([cand], start_id=1), side([3.0]))
    assert v.outcome == outcome and v.limited_evidence


def test_one_side_single_run_uses_single_run_rule():
    v = compare_runs(side([2.9], start_id=9), side([3.0, 3.01, 2.99]))
    assert v.method == "single-run" and v.limited_evidence and v.outcome == "WIN"


# ---------------------------------------------------------------- method selection


def test_paired_only_when_seed_sets_match_exactly():
    b = side([3.0, 3.01, 2.99], seeds=[1, 2, 3])
    assert compare_runs(side([2.9, 2.91, 2.89], seeds=[3, 1, 2], start_id=9), b).method == "paired"
    assert compare_runs(side([2.9, 2.91, 2.89], seeds=[1, 2, 4], start_id=9), b).method == "welch"
    assert compare_runs(side([2.9, 2.91], seeds=[1, 2], start_id=9), b).method == "welch"
    dup = side([2.9, 2.91, 2.89, 2.9], seeds=[1, 2, 3, 3], start_id=9)
    assert compare_runs(dup, b).method == "welch"
    none = side([2.9, 2.91, 2.89], seeds=[None, 2, 3], start_id=9)
    assert compare_runs(none, b).method == "welch"


def test_paired_uses_per_seed_differences():
    # a large shared seed effect: pairing removes it, Welch cannot
    offsets = np.array([-0.05, 0.03, 0.0, 0.04, -0.02])
    b = BASE * (1 + offsets)
    c = b * 0.98 * (1 + np.array([0.001, -0.001, 0.0005, -0.0005, 0.0]))
    paired = compare_runs(side(c, start_id=100), side(b))
    welch = compare_runs(side(c, seeds=[10, 11, 12, 13, 14], start_id=100), side(b))
    assert paired.method == "paired" and paired.outcome == "WIN"
    assert welch.method == "welch" and welch.outcome == "INCONCLUSIVE"
    r = (c - b) / b
    from scipy import stats

    half = stats.t.ppf(0.975, 4) * r.std(ddof=1) / math.sqrt(5)
    assert paired.d == pytest.approx(r.mean())
    assert paired.ci == pytest.approx((r.mean() - half, r.mean() + half))


def test_welch_interval_matches_formula():
    c = np.array([2.90, 2.95, 2.92, 2.97])
    b = np.array([3.00, 3.02, 2.98])
    v = compare_runs(side(c, seeds=[5, 6, 7, 8], start_id=9), side(b))
    from scipy import stats

    va, vb = c.var(ddof=1) / 4, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb) / b.mean()
    d = (c.mean() - b.mean()) / b.mean()
    assert v.d == pytest.approx(d)
    assert v.ci == pytest.approx((d - half, d + half))


# ---------------------------------------------------------------- errors, JSON


def test_empty_side_raises():
    with pytest.raises(ValueError):
        compare_runs([], side([3.0]))
    with pytest.raises(ValueError):
        compare_runs(side([3.0]), [])


def test_non_finite_value_raises():
    with pytest.raises(ValueError, match="non-finite"):
        compare_runs(side([float("nan")]), side([3.0]))


def test_to_dict_is_json_ready():
    v = compare_runs(side([3.3912], start_id=2), side([3.4521]))
    d = v.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert '"outcome": "WIN"' in text
    assert d["candidate"]["std"] is None and d["ci"] is None
    assert d["recommendation"] == RECOMMENDATIONS["WIN"]


def test_recommendations_cover_all_outcomes():
    assert set(RECOMMENDATIONS) == {"WIN", "LOSE", "PARITY", "INCONCLUSIVE", "INVALID"}
    assert "INTEGRATE RA v5" in RECOMMENDATIONS["WIN"]
    assert "8+ hours" in RECOMMENDATIONS["PARITY"]


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
    assert "parity" in ra["wording"]
    bwd = key[("fwd_bwd", None, "ra_v5")]
    assert bwd["ratio"] == pytest.approx(1.25) and "overhead" in bwd["wording"]
    cpu = key[("fwd", "cpu", "ra_v5")]  # other backend: never compared with the cuda baseline
    assert cpu["ratio"] is None and cpu["wording"] is None
    assert out[0]["attn"] == "baseline"
    assert set(out[0]) == {"phase", "backend", "attn", "best_mode", "best_ms", "ratio", "wording"}


def test_best_vs_best_ignores_non_ok_rows_entirely():
    rows = [TimingRow("baseline", "eager", "fwd", None, None, None, "skipped", reason="x")]
    assert best_vs_best(rows) == []
