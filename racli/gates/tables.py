"""Text tables of `ra gates`: one run (gates and reciprocity measures) or several.

Pure formatting of :mod:`racli.gates.analysis` results; no torch, no database.
"""

from __future__ import annotations

import math

from racli.gates.aggregate import RunsReport
from racli.gates.analysis import USE_MEASURES, GateReport
from racli.text.numbers import share_pct
from racli.text.tables import RULE, Column, plain_table

_PCT = USE_MEASURES  # shown as percentages
_SCI = ("rec_effect",)  # shown with 3 significant digits


def _cell(x: float) -> str:
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if abs(x) < 10:
        return f"{x:+.3f}"
    return f"{x:+.3g}"


def _fmt(name: str, x: float, *, delta: bool = False) -> str:
    if not math.isfinite(x):
        return _cell(x)
    if name in _PCT:
        return ("+" if delta and x >= 0 else "") + share_pct(x)
    if name in _SCI:
        return f"{x:+.2e}" if delta else f"{x:.2e}"
    return _cell(x)


def _legend_for_use(report: GateReport) -> str:
    what = {
        "rec_share": "the share of the attention logits' variance from the reciprocal term",
        "rec_norm_ratio": "the gated reciprocal branch's norm over the standard branch's",
    }[report.classified_by]
    return (
        f"* uses reciprocity: {report.classified_by} > {share_pct(report.use_threshold)} ({what})"
    )


def gate_tables(report: GateReport, *, title: str | None = None) -> str:
    """One layer x head table per name: values at the report's step (``*`` on
    heads whose state is on, ``!`` on gates that never moved), their movement
    from init (Δ) and, where it varies by head, the init; then the legend,
    the summary lines and the warnings (dead gates first, loudly)."""
    out: list[str] = [title or f"LEARNED GATES at step {report.step}", RULE]
    dead_lines = [w for w in report.warnings if w.startswith("DEAD GATES")]
    out += [f"⚠️ {w}" for w in dead_lines]
    if dead_lines:
        out.append("")
    if report.note:
        out += [f"Note: {report.note}", ""]

    names = report.names or sorted({e.name for e in report.entries})
    layers, heads = report.layers, report.heads
    dead = set(report.dead)
    hdr = [Column("layer")] + [Column(f"h{h}", "right") for h in heads]
    for name in names:
        grid = {(e.layer, e.head): e for e in report.entries if e.name == name}
        inits = {round(e.init, 9) for e in grid.values()}
        init_text = (
            f"init {_fmt(name, next(iter(grid.values())).init)} for every head"
            if len(inits) == 1
            else "init varies by head"
        )
        on = sum(1 for e in grid.values() if e.state == "on")
        stated = sum(1 for e in grid.values() if e.state in ("on", "off"))
        state_text = f"; {on}/{stated} heads on" if stated else ""
        out.append(f"{name} ({init_text}{state_text})")
        rows_v, rows_d, rows_i = [], [], []
        for la in layers:
            rv, rd, ri = [str(la)], [str(la)], [str(la)]
            for h in heads:
                e = grid.get((la, h))
                if e is None:
                    rv.append("")
                    rd.append("")
                    ri.append("")
                    continue
                mark = "!" if (la, h, name) in dead else ("*" if e.state == "on" else " ")
                rv.append(_fmt(name, e.value) + mark)
                rd.append(_fmt(name, e.moved, delta=True) + " ")
                ri.append(_fmt(name, e.init) + " ")
            rows_v.append(rv)
            rows_d.append(rd)
            rows_i.append(ri)
        out.append("  value")
        out += ["  " + line for line in plain_table(hdr, rows_v)]
        out.append("  Δ from init")
        out += ["  " + line for line in plain_table(hdr, rows_d)]
        if len(inits) > 1:
            out.append("  init")
            out += ["  " + line for line in plain_table(hdr, rows_i)]
        out.append("")
    legend = []
    if report.by_measure:
        legend.append(_legend_for_use(report))
    else:
        if any(e.name in ("w_std", "w_rec") for e in report.entries):
            legend.append(f"* on: |w_rec/w_std| > {report.ratio_threshold:g}")
        if any(e.name == "beta" for e in report.entries):
            legend.append(f"* on: |tanh(beta)| > {report.ratio_threshold:g}")
    if dead:
        legend.append("! never moved from init")
    if legend:
        out.append("Legend: " + "; ".join(legend))
    out.append("Summary:")
    out += [f"  {s}" for s in report.summary]
    other = [w for w in report.warnings if not w.startswith("DEAD GATES")]
    if other:
        out.append("Warnings:")
        out += [f"  ⚠️ {w}" for w in other]
    return "\n".join(out)


def runs_tables(rep: RunsReport, *, title: str) -> str:
    """Several runs: the mean and spread of the measure per layer and head, and in
    how many runs each head is above the threshold."""
    fmt = share_pct if rep.by_measure else (lambda x: f"{x:.3g}")
    n = len(rep.runs)
    out: list[str] = [title, RULE]
    if rep.note:
        out += [f"Note: {rep.note}", ""]
    layers, heads = rep.layers, rep.head_ids
    cells = {(h.layer, h.head): h for h in rep.heads}
    hdr = [Column("layer")] + [Column(f"h{h}", "right") for h in heads]

    def grid(cell) -> list[list[str]]:
        return [
            [str(la)] + [cell(cells[(la, h)]) if (la, h) in cells else "" for h in heads]
            for la in layers
        ]

    def mark(h) -> str:
        return "*" if h.above == n else ("+" if h.above else " ")

    out.append(f"{rep.measure}: mean over runs")
    out += ["  " + line for line in plain_table(hdr, grid(lambda h: fmt(h.mean) + mark(h)))]
    out.append(f"{rep.measure}: standard deviation over runs")
    out += ["  " + line for line in plain_table(hdr, grid(lambda h: fmt(h.std) + " "))]
    out.append(f"runs above {fmt(rep.threshold)} (of {n})")
    out += ["  " + line for line in plain_table(hdr, grid(lambda h: f"{h.above}/{h.n} "))]
    out.append(f"{rep.measure}: mean at init")
    out += ["  " + line for line in plain_table(hdr, grid(lambda h: fmt(h.init_mean) + " "))]
    out.append("")
    out.append(f"Legend: * above {fmt(rep.threshold)} in every run; + in some runs")
    out.append("Summary:")
    out += [f"  {s}" for s in rep.summary]
    if rep.warnings:
        out.append("Warnings:")
        out += [f"  ⚠️ {w}" for w in rep.warnings]
    return "\n".join(out)
