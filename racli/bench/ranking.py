"""Best vs best: each attention's fastest mode per phase and backend, its ratio to
the baseline, and the rule that decides whether the ratio earns a mark (pure; no torch).

A speed difference is marked (faster, slower) only when the repeats tell the two
apart, as benchstat does: a two-sided Mann-Whitney U test on the per-repeat times
(`TimingRow.samples`) must give p < ALPHA (0.05) and the medians must differ by
more than the 5% parity band; a ratio within the band is parity. A row whose
p90/p10 exceeds `bench.noise_ratio` is too noisy to rank whatever the test says.
Rows recorded without their samples (before revision 0008) fall back to the
p10-p90 rule: intervals that overlap while the medians differ by more than 5%
give no mark. Every comparison says which rule judged it (`test`, `p_value`).

`TimingRow` is the one row type of a timing: the harness fills it, the
recorder stores it (`record()`: the `timings` columns), ranking and text read
it, and `ra compare --metric ms` rebuilds it from the store."""

from __future__ import annotations

import math
from dataclasses import dataclass

from racli.store.columns import TIMING_FIELDS
from racli.text.numbers import finite

#: p90/p10 of a timing row above which it is too noisy to rank (ra.yaml bench.noise_ratio)
NOISE_RATIO = 1.5
#: significance level of the two-sided Mann-Whitney U test on the repeats
ALPHA = 0.05
PARITY_BAND = 0.05  # medians within 5%: parity (speed_wording)
MIN_SAMPLES = 2  # repeats a side for the test (fewer: the p10-p90 rule)
TEST_MWU = "mann-whitney-u"
TEST_P10_P90 = "p10-p90 overlap (no samples recorded)"


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
    """One timing: a configuration (attn, mode, phase, shape, dtype, device) and its figures.

    The fields ranking reads come first (tests and history build rows with them alone)."""

    attn: str
    mode: str
    phase: str
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    status: str = "ok"  # ok | skipped | failed
    backend: str | None = None  # the SDPA backend that ran
    reason: str | None = None  # why skipped or failed
    tflops: float | None = None
    batch: int | None = None
    seq: int | None = None
    heads: int | None = None
    head_dim: int | None = None
    dtype: str | None = None
    device: str | None = None
    iters: int | None = None
    compile_s: float | None = None  # compile or CUDA-graph capture time
    samples: list[float] | None = None  # every repeat's time (ms), in timing order

    def record(self) -> dict:
        """The row as the `timings` columns, in table order (`RunRecorder.timing`, --json)."""
        return {name: getattr(self, name) for name in TIMING_FIELDS}


def _spread_noise(row: TimingRow, base: TimingRow | None, noise_ratio: float) -> str | None:
    """Why either row is too noisy to rank (p90/p10 above ``noise_ratio``), or None."""
    for r in (row, base):
        if r is None or not (finite(r.p10_ms) and finite(r.p90_ms)) or r.p10_ms <= 0:
            continue
        spread = r.p90_ms / r.p10_ms
        if spread > noise_ratio:
            return (
                f"{r.attn} {r.mode} p10-p90 {r.p10_ms:.3g}-{r.p90_ms:.3g} ms "
                f"({spread:.2f}x > {noise_ratio:g}x)"
            )
    return None


def timing_noise(row: TimingRow, base: TimingRow | None, noise_ratio: float) -> str | None:
    """Why the comparison of ``row`` with ``base`` is too noisy to mark by the p10-p90
    rule (rows without samples), or None.

    Noisy when either row's p90/p10 exceeds ``noise_ratio``, or when the two
    p10-p90 intervals overlap while the medians differ by more than the 5%
    parity band (the difference is then within each side's own scatter).
    """
    spread = _spread_noise(row, base, noise_ratio)
    if spread:
        return spread
    if base is None or not all(
        finite(x) for x in (row.p10_ms, row.p90_ms, base.p10_ms, base.p90_ms)
    ):
        return None
    ratio = row.median_ms / base.median_ms
    overlap = row.p10_ms <= base.p90_ms and base.p10_ms <= row.p90_ms
    if overlap and abs(ratio - 1) > 0.05:
        return (
            f"medians differ by {abs(ratio - 1):.0%} but the p10-p90 intervals overlap "
            f"({row.p10_ms:.3g}-{row.p90_ms:.3g} vs {base.p10_ms:.3g}-{base.p90_ms:.3g} ms)"
        )
    return None


def _has_samples(r: TimingRow | None) -> bool:
    return r is not None and r.samples is not None and len(r.samples) >= MIN_SAMPLES


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test of samples ``a`` against ``b``."""
    from scipy.stats import mannwhitneyu  # only when two sampled rows are compared

    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def speed_test(row: TimingRow, base: TimingRow, noise_ratio: float) -> dict:
    """Whether ``row`` and ``base`` may be marked against each other.

    ``{"noisy": reason or None, "test": TEST_MWU or TEST_P10_P90, "p_value": p or
    None}``. With samples on both sides: noisy when a row's p90/p10 exceeds
    ``noise_ratio``, or when the medians differ by more than the parity band while
    the Mann-Whitney U test gives p >= ALPHA. Without: :func:`timing_noise`.
    """
    if not (_has_samples(row) and _has_samples(base)):
        return {
            "noisy": timing_noise(row, base, noise_ratio),
            "test": TEST_P10_P90,
            "p_value": None,
        }
    p = mann_whitney_p(row.samples, base.samples)
    out = {"noisy": _spread_noise(row, base, noise_ratio), "test": TEST_MWU, "p_value": p}
    ratio = row.median_ms / base.median_ms
    if out["noisy"] is None and abs(ratio - 1) > PARITY_BAND + 1e-9 and not p < ALPHA:
        out["noisy"] = (
            f"medians differ by {abs(ratio - 1):.0%} but the repeats do not tell them apart "
            f"(Mann-Whitney U p = {p:.2g} >= {ALPHA:g}; {len(row.samples)} and "
            f"{len(base.samples)} repeats)"
        )
    return out


def best_vs_best(
    rows: list[TimingRow], baseline: str = "baseline", noise_ratio: float = NOISE_RATIO
) -> list[dict]:
    """Per phase and backend, each attention's best (lowest median) ``ok`` row.

    Variants are only compared on the same backend. Returns dicts
    ``{phase, backend, attn, best_mode, best_ms, p10_ms, p90_ms, repeats, ratio,
    wording, noisy, test, p_value}``: ``ratio`` is the attention's best over the
    baseline's best in the same phase and backend (None, with wording None, when
    the baseline has no ok row there); ``noisy`` says why the figure is too noisy
    to mark (see :func:`speed_test`), and then ``wording`` is "noisy" instead of a
    mark; ``test`` names the rule that judged it and ``p_value`` is the Mann-Whitney
    U test's (None for the baseline's own row and for rows without samples).
    Order: phases, backends and attentions as first seen, baseline first.
    """
    groups: dict[tuple[str, str | None], dict[str, TimingRow]] = {}
    for row in rows:
        if row.status != "ok" or not finite(row.median_ms):
            continue
        group = groups.setdefault((row.phase, row.backend), {})
        best = group.get(row.attn)
        if best is None or row.median_ms < best.median_ms:
            group[row.attn] = row
    out: list[dict] = []
    for (phase, backend), best in groups.items():
        base = best.get(baseline)
        for attn in sorted(best, key=lambda a: a != baseline):  # stable: baseline first
            row = best[attn]
            ok = base is not None and base.median_ms > 0
            ratio = row.median_ms / base.median_ms if ok else None
            judged = (
                speed_test(row, base, noise_ratio)
                if ok and attn != baseline
                else {"noisy": None, "test": None, "p_value": None}
            )
            noisy = judged["noisy"]
            wording = None
            if ratio is not None:
                wording = "noisy: no mark" if noisy else speed_wording(ratio)
            out.append(
                {
                    "phase": phase,
                    "backend": backend,
                    "attn": attn,
                    "best_mode": row.mode,
                    "best_ms": row.median_ms,
                    "p10_ms": row.p10_ms,
                    "p90_ms": row.p90_ms,
                    "repeats": len(row.samples) if row.samples is not None else row.iters,
                    "ratio": ratio,
                    "wording": wording,
                    "noisy": noisy,
                    "test": judged["test"],
                    "p_value": judged["p_value"],
                }
            )
    return out
