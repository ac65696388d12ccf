"""The text of `ra bench`: progress lines, the six-configuration RESULTS table and
the seed's "FAIR COMPARISON (Best vs Best)"."""

from __future__ import annotations

from racli.bench.ranking import TEST_MWU, TimingRow
from racli.names import display_name
from racli.text.numbers import finite, ids_text, ms
from racli.text.tables import RULE, Column, plain_table


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
    if status == "ok" and finite(median_ms):
        figure = f"{ms(median_ms)} ms/iter"
        if finite(ratio):
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
        if r.attn == baseline and r.mode == "eager" and r.status == "ok" and finite(r.median_ms):
            base_eager[(r.phase, r.backend)] = r.median_ms
    show_backend = any(r.backend for r in rows)
    left = ["attn", "mode", "phase"] + (["backend"] if show_backend else [])
    right = ["ms/iter", "p10-p90", "TFLOP/s", "vs base eager"]
    columns = [Column("#", "right"), *map(Column, left), *(Column(h, "right") for h in right)]
    table_rows = []
    notes = []
    for i, r in enumerate(rows, 1):
        cells = [str(i), r.attn, r.mode, r.phase] + ([r.backend or "-"] if show_backend else [])
        if r.status == "ok" and finite(r.median_ms):
            ref = base_eager.get((r.phase, r.backend))
            spread = (
                f"{ms(r.p10_ms)}-{ms(r.p90_ms)}" if finite(r.p10_ms) and finite(r.p90_ms) else "-"
            )
            tfl = f"{r.tflops:.1f}" if finite(r.tflops) else "-"
            ratio = f"{r.median_ms / ref:.2f}x" if ref else "-"
            cells += [ms(r.median_ms), spread, tfl, ratio]
        else:
            word = "skipped" if r.status == "skipped" else "FAILED"
            cells += [word, "-", "-", "-"]
            notes.append(
                f"  #{i} {r.attn} {r.mode} {r.phase} {word}: {r.reason or 'no reason given'}"
            )
        table_rows.append(cells)
    out = ["RESULTS", RULE]
    sl = _shape_line(shape)
    if sl:
        out.append(f"Shape: {sl}")
    out += plain_table(columns, table_rows)
    if notes:
        out.append("")
        out += notes
    return "\n".join(out)


def judged_by(b: dict) -> str:
    """How a best-vs-best line was judged: the test's p-value, or the fallback rule."""
    if b.get("test") == TEST_MWU and b.get("p_value") is not None:
        return f"Mann-Whitney U p = {b['p_value']:.2g}"
    if b.get("test"):
        return "p10-p90 rule: recorded without per-repeat samples"
    return ""


def fair_comparison(best: list[dict], *, baseline: str = "baseline") -> str:
    """The seed's "FAIR COMPARISON (Best vs Best)" block, one section per phase.

    ``best`` is the output of :func:`racli.bench.ranking.best_vs_best`.
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
        labels = {b["attn"]: f"Best {display_name(b['attn'])}:" for b in items}
        width = max(len(v) for v in labels.values()) + 2
        for b in items:
            out.append(f"{labels[b['attn']]:<{width}}{ms(b['best_ms'])}ms ({b['best_mode']})")
        for b in items:
            if b["attn"] == baseline:
                continue
            name = f"{display_name(b['attn'])} / {display_name(baseline)}:"
            if b.get("ratio") is None:
                out.append(
                    f"{name} no {display_name(baseline)} timing in this phase to compare with"
                )
            elif b.get("noisy"):
                out.append(
                    f"{name} {b['ratio']:.2f}x  ⚠️ noisy: {b['noisy']}; re-run on an "
                    "idle machine or with more --repeats (no parity or speed-up mark)"
                )
            else:
                how = judged_by(b)
                out.append(
                    f"{name} {b['ratio']:.2f}x  {b['wording']}" + (f" ({how})" if how else "")
                )
    return "\n".join(out)


def shape_text(shape: dict) -> str:
    return (
        f"B={shape['batch']} T={shape['seq']} H={shape['heads']} D={shape['head_dim']} "
        f"{shape['dtype']} {shape['device']}"
    )


def bench_text(bc) -> str:
    n_runs = len({i for g in bc.groups for i in g.run_ids})
    lines = [
        f"Comparing {bc.candidate} with {bc.baseline} on bench timings (ms): best mode of each "
        f"attention over {n_runs} finished bench run(s)"
        + (", any environment class" if bc.any_env else ""),
        f"{len(bc.groups)} group(s) of shape, dtype, device"
        + ("" if bc.any_env else " and environment class")
        + ", newest first",
    ]
    for g in bc.groups:
        env = g.env_class if g.env_class is not None else "any environment"
        lines += [
            "",
            f"Shape {shape_text(g.shape)} on {env} (bench runs {ids_text(g.run_ids)})",
            fair_comparison(g.best, baseline=bc.baseline),
        ]
    return "\n".join(lines)
