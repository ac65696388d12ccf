"""The seed's "FINAL COMPARISON (Matched Speed)" and VERDICT blocks, as plain text."""

from __future__ import annotations

from racli.compare.stats import SPREAD_BOUND, format_seeds_needed
from racli.compare.validity import SpeedGap
from racli.compare.verdict import Verdict
from racli.names import display_name, metric_label
from racli.text.numbers import (
    finite,
    integer,
    number,
    signed_pct,
    value,
)
from racli.text.tables import RULE, THIN


def _method_line(v: Verdict) -> str:
    names = {
        "paired": "paired by seed",
        "welch": "Welch, unpaired",
        "prediction": "prediction interval from the history's noise",
        "none": "no interval",
    }
    return f"Method: {names[v.method]} ({v.candidate.n} vs {v.baseline.n} runs): {v.method_why}"


def _matched_lines(v: Verdict, g, cn: str, bn: str) -> list[str]:
    """Matched time: each side's steps, the calibrated ratio, the check at its bounds."""
    c, b = v.candidate.iterations_range, v.baseline.iterations_range

    def steps(r) -> str:
        return "?" if r is None else (f"{r[0]}" if r[0] == r[1] else f"{r[0]}-{r[1]}")

    ci = f", 95% interval [{g.ratio_ci[0]:.4f}, {g.ratio_ci[1]:.4f}]" if g.ratio_ci else ""
    out = [
        f"Matched time: {cn} trained {steps(c)} steps, {bn} {steps(b)} (calibrated speed "
        f"ratio {g.ratio:.4f}{ci})"
    ]
    if g.explained is None:
        out.append(f"⚠️ The step budgets' precision is not checked ({g.basis})")
    elif g.at_bounds == (0.0, 0.0):
        out.append(f"✅ {g.basis}")
    else:
        mark, verdict = ("❌", "more") if g.too_large else ("✅", "no more")
        favours = cn if g.explained > 0 else bn
        out.append(
            f"{mark} At either end of that interval the step budgets alone would explain a "
            f"{abs(g.explained) * 100:.2f}% loss gap in favour of {favours}, {verdict} than "
            f"half the threshold ({g.limit * 100:.2f}%)"
        )
        out.append(f"   ({g.basis})")
    if g.measured_ratio is not None:
        mark = "⚠️ " if g.mismatch else ""
        out.append(f"{mark}Measured during the runs: {measured_speed(g)}")
    return out


def measured_speed(g: SpeedGap) -> str:
    """The runs' own speed ratio and where it lies against the calibrated interval."""
    where = (
        "one budget for both sides, so no calibrated ratio to match"
        if g.same_budget
        else f"{'outside' if g.mismatch else 'inside'} the calibrated interval"
    )
    paired = " (paired by seed)" if g.measured_by_seed else ""
    return f"{g.measured_ratio:.4f}x the baseline's tokens/s{paired}, {where}"


def _speed_lines(v: Verdict, cn: str, bn: str) -> list[str]:
    g = v.speed_gap
    if v.metric == "tokens_per_s":
        return ["Speed check skipped: the metric is throughput itself"]
    if g is None:
        if v.speed_ratio is None:
            return ["Speed check skipped: no throughput recorded on one side"]
        return [
            f"Step budget: {cn} and {bn} trained the steps set for them, whatever their "
            f"speed ({v.speed_ratio:.3f}x tokens/s)"
        ]
    if g.kind == "matched_time":
        return _matched_lines(v, g, cn, bn)
    if g.explained is None:
        return [
            f"⚠️ Speed {g.ratio:.3f}x under a wall-clock budget: its effect on the loss is "
            f"not estimated ({g.basis})"
        ]
    mark, verdict = ("❌", "more") if g.too_large else ("✅", "no more")
    favours = cn if g.explained > 0 else bn
    return [
        f"{mark} Speed gap: {cn} runs at {g.ratio:.3f}x {bn}'s tokens/s; under a wall-clock "
        f"budget that alone explains a {abs(g.explained) * 100:.2f}% loss gap in favour of "
        f"{favours}, {verdict} than half the threshold ({g.limit * 100:.2f}%)",
        f"   ({g.basis})",
    ]


def _seeds_needed_line(v: Verdict, ind: str) -> str:
    span = v.seeds_needed_range
    at = f"the {SPREAD_BOUND:.0%} upper bound of " if span else ""
    rng = (
        f"; {format_seeds_needed(span[0])} to {format_seeds_needed(span[1])} over the "
        "spread's 95% interval"
        if span
        else ""
    )
    return (
        f"{ind}Seeds needed: about {format_seeds_needed(v.seeds_needed)} runs per side "
        f"(80% power at the {v.threshold:.0%} threshold, {v.design} design, at {at}the "
        f"{v.spread_source} spread {v.spread * 100:.2f}% a run{rng})"
    )


def final_comparison(
    verdict: Verdict,
    candidate_name: str | None = None,
    baseline_name: str | None = None,
) -> str:
    """The seed's FINAL COMPARISON (Matched Speed) table, per-side statistics
    and the VERDICT block with its headline and recommendation (both from
    :mod:`racli.compare.verdict`, so the text and --json say the same)."""
    v = verdict
    cn = display_name(candidate_name) if candidate_name else v.candidate_name
    bn = display_name(baseline_name) if baseline_name else v.baseline_name
    out = _table_lines(v, cn, bn)
    out.append("")
    out += _side_lines(v, cn, bn)
    out += ["", "VERDICT", RULE]
    out += _speed_lines(v, cn, bn)
    out.append("")
    out += _verdict_lines(v, cn)
    return "\n".join(out)


def _rel(x: float | None, y: float | None) -> float | None:
    return (x - y) / y if finite(x) and finite(y) and y != 0 else None


def _table_lines(v: Verdict, cn: str, bn: str) -> list[str]:
    """The FINAL COMPARISON table: iterations, the metric, throughput, epochs."""
    c, b = v.candidate, v.baseline
    out = ["FINAL COMPARISON (Matched Speed)", RULE]
    head = f"{'Metric':<26}{bn:>14}{cn:>14}{'Difference':>15}"
    out += [head, THIN]
    out.append(
        f"{'Iterations completed':<26}{integer(b.iterations_mean):>14}{integer(c.iterations_mean):>14}"
        f"{signed_pct(_rel(c.iterations_mean, b.iterations_mean)):>15}"
    )
    if v.metric != "tokens_per_s":
        out.append(
            f"{metric_label(v.metric):<26}{value(b.mean):>14}{value(c.mean):>14}"
            f"{signed_pct(_rel(c.mean, b.mean)):>15}"
        )
        bt, ct = b.median_tokens_per_s, c.median_tokens_per_s
    else:
        bt, ct = b.mean, c.mean
    out.append(
        f"{'Throughput (tok/s)':<26}{integer(bt):>14}{integer(ct):>14}{signed_pct(_rel(ct, bt)):>15}"
    )
    out.append(f"{'Epochs (max)':<26}{number(b.epochs_max):>14}{number(c.epochs_max):>14}")
    return out


def _tps(s) -> str:
    if s.median_tokens_per_s is None:
        return "-"
    lo, hi = s.tokens_per_s_spread
    return f"{integer(s.median_tokens_per_s)} ({integer(lo)}-{integer(hi)})"


def _side_lines(v: Verdict, cn: str, bn: str) -> list[str]:
    """Per-side statistics: runs, mean and spread, the interval of the mean, speed."""
    c, b = v.candidate, v.baseline
    col = 28
    out = [f"{'Per side':<26}{bn:<{col}}{cn:<{col}}".rstrip(), THIN]

    def side(label: str, fn) -> None:
        out.append(f"{label:<26}{fn(b):<{col}}{fn(c):<{col}}".rstrip())

    side("  runs (n)", lambda s: str(s.n))
    side(
        "  mean ± std",
        lambda s: f"{value(s.mean)} ± {value(s.std)}" if finite(s.std) else value(s.mean),
    )
    side(
        f"  {v.confidence:.0%} CI of mean",
        lambda s: f"[{value(s.ci_low)}, {value(s.ci_high)}]" if finite(s.ci_low) else "- (n < 2)",
    )
    side("  tok/s median (min-max)", _tps)
    if c.diverged is not None and b.diverged is not None:
        side("  diverged / failed", lambda s: f"{s.diverged} / {s.failed}")
    return out


def _verdict_lines(v: Verdict, cn: str) -> list[str]:
    """The headline, method, improvement, why, labels and recommendation."""
    mark = {"WIN": "🎉 ", "LOSE": "❌ ", "INCONCLUSIVE": "❓ ", "INVALID": "❌ "}.get(v.outcome, "")
    out = [mark + v.headline]
    ind = "   "
    out.append(ind + _method_line(v))
    if v.interval is not None:
        lo, hi = v.interval
        line = (
            f"{ind}Improvement ({cn} better when positive, log ratio): "
            f"{signed_pct(v.improvement, 2)}, "
            f"{v.confidence:.0%} interval [{signed_pct(lo, 2)}, {signed_pct(hi, 2)}]"
        )
        if v.interval90 is not None:
            lo90, hi90 = v.interval90
            line += f", {v.tost_level:.0%} [{signed_pct(lo90, 2)}, {signed_pct(hi90, 2)}]"
        out.append(line + f"; threshold ±{v.threshold:.0%}")
    if v.outcome == "INCONCLUSIVE" and v.seeds_needed is not None:
        out.append(_seeds_needed_line(v, ind))
    out.append(f"{ind}Why: {v.reason}")
    for label in v.labels:
        out.append(f"{ind}⚠️ Labelled: {label}")
    out.append("")
    out.append(f"{ind}Recommendation: {v.recommendation}")
    return out
