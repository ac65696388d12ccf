"""Best vs best: each attention's fastest mode per phase and backend, its ratio to
the baseline, and the noise rule that withholds a mark (pure; no torch).

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

    def record(self) -> dict:
        """The row as the `timings` columns, in table order (`RunRecorder.timing`, --json)."""
        return {name: getattr(self, name) for name in TIMING_FIELDS}


def timing_noise(row: TimingRow, base: TimingRow | None, noise_ratio: float) -> str | None:
    """Why the comparison of ``row`` with ``base`` is too noisy to mark, or None.

    Noisy when either row's p90/p10 exceeds ``noise_ratio``, or when the two
    p10-p90 intervals overlap while the medians differ by more than the 5%
    parity band (the difference is then within each side's own scatter).
    """
    for r in (row, base):
        if r is None or not (finite(r.p10_ms) and finite(r.p90_ms)) or r.p10_ms <= 0:
            continue
        spread = r.p90_ms / r.p10_ms
        if spread > noise_ratio:
            return (
                f"{r.attn} {r.mode} p10-p90 {r.p10_ms:.3g}-{r.p90_ms:.3g} ms "
                f"({spread:.2f}x > {noise_ratio:g}x)"
            )
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


def best_vs_best(
    rows: list[TimingRow], baseline: str = "baseline", noise_ratio: float = NOISE_RATIO
) -> list[dict]:
    """Per phase and backend, each attention's best (lowest median) ``ok`` row.

    Variants are only compared on the same backend. Returns dicts
    ``{phase, backend, attn, best_mode, best_ms, p10_ms, p90_ms, ratio, wording,
    noisy}``: ``ratio`` is the attention's best over the baseline's best in
    the same phase and backend (None, with wording None, when the baseline has
    no ok row there); ``noisy`` says why the figure is too noisy to mark (see
    :func:`timing_noise`), and then ``wording`` is "noisy" instead of a mark.
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
            noisy = timing_noise(row, base, noise_ratio) if ok and attn != baseline else None
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
                    "ratio": ratio,
                    "wording": wording,
                    "noisy": noisy,
                }
            )
    return out
