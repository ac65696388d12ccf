"""Text rendering of the blocks users read: bench progress and results, the
seed's "FAIR COMPARISON (Best vs Best)", "FINAL COMPARISON (Matched Speed)" and
VERDICT blocks, and the gate tables.

Every function returns a plain string (no torch, no rich, no database).
Symbols are real unicode (✅ ❌ 🎉); :func:`for_stream` swaps them for ASCII
when the output stream cannot encode them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from racli.verdict import (
    PRETTY_NAMES,  # noqa: F401 - re-exported
    TimingRow,
    Verdict,
    display_name,
    format_seeds_needed,
)

if TYPE_CHECKING:
    from racli.gate_report import GateReport

RULE = "=" * 70
THIN = "-" * 70

METRIC_NAMES = {
    "val_loss": "Validation loss",
    "train_loss": "Training loss",
    "tokens_per_s": "Throughput (tok/s)",
}

_ASCII = {
    "✅": "[OK]",
    "❌": "[X]",
    "🎉": "***",
    "⚠️": "!!",
    "⚠": "!!",
    "❓": "[?]",
    "—": "-",
    "\u2013": "-",
    "±": "+/-",
    "Δ": "d",
    "…": "...",
    "·": ".",
    "●": "*",
    "≈": "~",
}


def pretty(attn: str) -> str:
    """``baseline`` -> "Baseline", ``ra_v5`` -> "RA v5", others unchanged (see PRETTY_NAMES)."""
    return display_name(attn)


def metric_label(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def to_ascii(text: str) -> str:
    """Replace the symbols this module uses by ASCII equivalents."""
    for k in sorted(_ASCII, key=len, reverse=True):
        text = text.replace(k, _ASCII[k])
    text = text.replace("\ufe0f", "")
    return text.encode("ascii", "replace").decode("ascii")


def for_stream(text: str, encoding: str | None) -> str:
    """``text`` unchanged when ``encoding`` can encode it, else :func:`to_ascii`."""
    try:
        text.encode(encoding or "ascii")
        return text
    except (UnicodeEncodeError, LookupError):
        return to_ascii(text)


# --------------------------------------------------------------------------
# small formatting helpers
# --------------------------------------------------------------------------


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(float(x))


def _ms(x: float | None) -> str:
    if not _finite(x):
        return "-"
    if x >= 100:
        return f"{x:.1f}"
    if x >= 10:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _pct_signed(x: float | None, digits: int = 1) -> str:
    if not _finite(x):
        return "-"
    return f"{x * 100:+.{digits}f}%"


def _int(x: float | None) -> str:
    if not _finite(x):
        return "-"
    return f"{x:,.0f}"


def _value(x: float | None) -> str:
    if not _finite(x):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """A fixed-width text table; ``align`` has one of '<' or '>' per column."""
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=False)
        ).rstrip()

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return out


# --------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------


def bench_progress_line(
    i: int,
    attn: str,
    mode: str,
    phase: str,
    median_ms: float | None,
    status: str,
    reason: str | None = None,
    *,
    ratio: float | None = None,
    width: int = 36,
) -> str:
    """``"1. baseline eager fwd ...... 0.219 ms/iter"`` (dots align the figures).

    ``ratio`` (to the baseline's eager time) adds the seed's ``(0.87x)``;
    skipped and failed rows show their reason instead of a time.
    """
    label = f"{i}. {attn} {mode} {phase} "
    dots = "." * max(3, width - len(label))
    if status == "ok" and _finite(median_ms):
        figure = f"{_ms(median_ms)} ms/iter"
        if _finite(ratio):
            figure += f" ({ratio:.2f}x)"
    elif status == "skipped":
        figure = f"skipped ({reason})" if reason else "skipped"
    else:
        figure = f"FAILED ({reason})" if reason else "FAILED"
    return f"{label}{dots} {figure}"


def _shape_line(shape: dict | None) -> str | None:
    if not shape:
        return None
    parts = []
    for key, label in (("batch", "B"), ("seq", "T"), ("heads", "H"), ("head_dim", "D")):
        if shape.get(key) is not None:
            parts.append(f"{label}={shape[key]}")
    for key in ("dtype", "device"):
        if shape.get(key):
            parts.append(str(shape[key]))
    return " ".join(parts) if parts else None


def bench_results(
    rows: list[TimingRow],
    shape: dict | None = None,
    *,
    baseline: str = "baseline",
) -> str:
    """The RESULTS table: one line per (attn, mode, phase, backend).

    ``vs base eager`` is the ratio to the baseline's eager time in the same
    phase and backend (the seed's "(0.87x)"). ``shape`` may hold batch, seq,
    heads, head_dim, dtype, device.
    """
    base_eager: dict[tuple[str, str | None], float] = {}
    for r in rows:
        if r.attn == baseline and r.mode == "eager" and r.status == "ok" and _finite(r.median_ms):
            base_eager[(r.phase, r.backend)] = r.median_ms
    show_backend = any(r.backend for r in rows)
    headers = ["#", "attn", "mode", "phase"] + (["backend"] if show_backend else [])
    headers += ["ms/iter", "p10-p90", "TFLOP/s", "vs base eager"]
    table_rows = []
    notes = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), r.attn, r.mode, r.phase] + ([r.backend or "-"] if show_backend else [])
        if r.status == "ok" and _finite(r.median_ms):
            ref = base_eager.get((r.phase, r.backend))
            spread = (
                f"{_ms(r.p10_ms)}-{_ms(r.p90_ms)}"
                if _finite(r.p10_ms) and _finite(r.p90_ms)
                else "-"
            )
            tfl = f"{r.tflops:.1f}" if _finite(r.tflops) else "-"
            ratio = f"{r.median_ms / ref:.2f}x" if ref else "-"
            cells += [_ms(r.median_ms), spread, tfl, ratio]
        else:
            word = "skipped" if r.status == "skipped" else "FAILED"
            cells += [word, "-", "-", "-"]
            notes.append(
                f"  #{i} {r.attn} {r.mode} {r.phase} {word}: {r.reason or 'no reason given'}"
            )
        table_rows.append(cells)
    align = "><<<" + ("<" if show_backend else "") + ">>>>"
    out = ["RESULTS", RULE]
    sl = _shape_line(shape)
    if sl:
        out.append(f"Shape: {sl}")
    out += _table(headers, table_rows, align)
    if notes:
        out.append("")
        out += notes
    return "\n".join(out)


def fair_comparison(best: list[dict], *, baseline: str = "baseline") -> str:
    """The seed's "FAIR COMPARISON (Best vs Best)" block, one section per phase.

    ``best`` is the output of :func:`racli.verdict.best_vs_best`.
    """
    out = ["FAIR COMPARISON (Best vs Best)", RULE]
    if not best:
        out.append("No successful timings to compare.")
        return "\n".join(out)
    groups: dict[tuple[str, str | None], list[dict]] = {}
    for b in best:
        groups.setdefault((b["phase"], b.get("backend")), []).append(b)
    first = True
    for (phase, backend), items in groups.items():
        if not first:
            out.append("")
        first = False
        out.append(f"[{phase}]" + (f" backend {backend}" if backend else ""))
        labels = {b["attn"]: f"Best {pretty(b['attn'])}:" for b in items}
        width = max(len(v) for v in labels.values()) + 2
        for b in items:
            out.append(f"{labels[b['attn']]:<{width}}{_ms(b['best_ms'])}ms ({b['best_mode']})")
        for b in items:
            if b["attn"] == baseline:
                continue
            name = f"{pretty(b['attn'])} / {pretty(baseline)}:"
            if b.get("ratio") is None:
                out.append(f"{name} no {pretty(baseline)} timing in this phase to compare with")
            elif b.get("noisy"):
                out.append(
                    f"{name} {b['ratio']:.2f}x  ⚠️ noisy: {b['noisy']}; re-run on an "
                    "idle machine (no parity or speed-up mark)"
                )
            else:
                out.append(f"{name} {b['ratio']:.2f}x  {b['wording']}")
    return "\n".join(out)


# --------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------


def _method_line(v: Verdict) -> str:
    names = {
        "paired": "paired by seed",
        "welch": "Welch, unpaired",
        "prediction": "prediction interval from the history's noise",
        "none": "no interval",
    }
    return f"Method: {names[v.method]} ({v.candidate.n} vs {v.baseline.n} runs): {v.method_why}"


def _speed_lines(v: Verdict, cn: str, bn: str) -> list[str]:
    g = v.speed_gap
    if v.metric == "tokens_per_s":
        return ["Speed check skipped: the metric is throughput itself"]
    if g is None:
        if v.speed_ratio is None:
            return ["Speed check skipped: no throughput recorded on one side"]
        return [
            f"Step budget: compared at equal steps (speed {v.speed_ratio:.3f}x does not "
            "change what either side trained on)"
        ]
    if g.explained is None:
        return [
            f"⚠️ Speed {g.ratio:.3f}x under a wall-clock budget: its effect on the loss is "
            f"not estimated ({g.basis})"
        ]
    mark = "❌" if g.too_large else "✅"
    verdict = "more" if g.too_large else "no more"
    return [
        f"{mark} Speed gap: {cn} runs at {g.ratio:.3f}x {bn}'s tokens/s; under a wall-clock "
        f"budget that alone explains a {g.explained * 100:.2f}% loss gap, {verdict} than half "
        f"the threshold ({g.limit * 100:.2f}%)",
        f"   ({g.basis})",
    ]


def final_comparison(
    verdict: Verdict,
    candidate_name: str | None = None,
    baseline_name: str | None = None,
) -> str:
    """The seed's FINAL COMPARISON (Matched Speed) table, per-side statistics
    and the VERDICT block with its headline and recommendation (both from
    :mod:`racli.verdict`, so the text and --json say the same)."""
    v = verdict
    cn = pretty(candidate_name) if candidate_name else v.candidate_name
    bn = pretty(baseline_name) if baseline_name else v.baseline_name
    c, b = v.candidate, v.baseline
    out = ["FINAL COMPARISON (Matched Speed)", RULE]
    head = f"{'Metric':<26}{bn:>14}{cn:>14}{'Difference':>15}"
    out += [head, THIN]

    def rel(x: float | None, y: float | None) -> float | None:
        return (x - y) / y if _finite(x) and _finite(y) and y != 0 else None

    out.append(
        f"{'Iterations completed':<26}{_int(b.iterations_mean):>14}{_int(c.iterations_mean):>14}"
        f"{_pct_signed(rel(c.iterations_mean, b.iterations_mean)):>15}"
    )
    if v.metric != "tokens_per_s":
        out.append(
            f"{metric_label(v.metric):<26}{_value(b.mean):>14}{_value(c.mean):>14}"
            f"{_pct_signed(rel(c.mean, b.mean)):>15}"
        )
        bt, ct = b.median_tokens_per_s, c.median_tokens_per_s
    else:
        bt, ct = b.mean, c.mean
    out.append(
        f"{'Throughput (tok/s)':<26}{_int(bt):>14}{_int(ct):>14}{_pct_signed(rel(ct, bt)):>15}"
    )
    out.append(f"{'Epochs (max)':<26}{_num(b.epochs_max):>14}{_num(c.epochs_max):>14}")

    # per-side statistics
    out.append("")
    col = 28
    out.append(f"{'Per side':<26}{bn:<{col}}{cn:<{col}}".rstrip())
    out.append(THIN)

    def side(label: str, fn) -> None:
        out.append(f"{label:<26}{fn(b):<{col}}{fn(c):<{col}}".rstrip())

    side("  runs (n)", lambda s: str(s.n))
    side(
        "  mean ± std",
        lambda s: f"{_value(s.mean)} ± {_value(s.std)}" if _finite(s.std) else _value(s.mean),
    )
    side(
        f"  {v.confidence:.0%} CI of mean",
        lambda s: (
            f"[{_value(s.ci_low)}, {_value(s.ci_high)}]" if _finite(s.ci_low) else "- (n < 2)"
        ),
    )

    def tps(s) -> str:
        if s.median_tokens_per_s is None:
            return "-"
        lo, hi = s.tokens_per_s_spread
        return f"{_int(s.median_tokens_per_s)} ({_int(lo)}-{_int(hi)})"

    side("  tok/s median (min-max)", tps)

    # the verdict
    out += ["", "VERDICT", RULE]
    out += _speed_lines(v, cn, bn)
    out.append("")
    mark = {"WIN": "🎉 ", "LOSE": "❌ ", "INCONCLUSIVE": "❓ ", "INVALID": "❌ "}.get(v.outcome, "")
    out.append(mark + v.headline)
    ind = "   "
    out.append(ind + _method_line(v))
    if v.interval is not None:
        lo, hi = v.interval
        line = (
            f"{ind}Improvement ({cn} better when positive): {_pct_signed(v.improvement, 2)}, "
            f"{v.confidence:.0%} interval [{_pct_signed(lo, 2)}, {_pct_signed(hi, 2)}]"
        )
        if v.interval90 is not None:
            lo90, hi90 = v.interval90
            line += f", 90% [{_pct_signed(lo90, 2)}, {_pct_signed(hi90, 2)}]"
        out.append(line + f"; threshold ±{v.threshold:.0%}")
    if v.outcome == "INCONCLUSIVE" and v.seeds_needed is not None:
        out.append(
            f"{ind}Seeds needed: about {format_seeds_needed(v.seeds_needed)} runs per side "
            f"(80% power at the {v.threshold:.0%} threshold, spread {v.spread * 100:.2f}%, "
            f"{v.spread_source})"
        )
    out.append(f"{ind}Why: {v.reason}")
    for label in v.labels:
        out.append(f"{ind}⚠️ Labelled: {label}")
    out.append("")
    out.append(f"{ind}Recommendation: {v.recommendation}")
    return "\n".join(out)


def _num(x: float | None) -> str:
    return f"{x:.3g}" if _finite(x) else "-"


# --------------------------------------------------------------------------
# gates
# --------------------------------------------------------------------------


def gate_tables(report: GateReport, *, title: str | None = None) -> str:
    """The gate and reciprocity tables of one run: see :func:`racli.gate_render.gate_tables`."""
    from racli.gate_render import gate_tables as tables

    return tables(report, title=title)
