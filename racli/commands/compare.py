"""`ra compare`: a verdict from the recorded history (DESIGN.md, "Verdict rules").

Thin: options are checked here, the history is read by :mod:`racli.compare.grouping`,
judged by :mod:`racli.compare.verdict` and printed by :mod:`racli.compare.text`. Only reads
the store; no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from racli.commands import common
from racli.errors import BadInput
from racli.names import check_attention, check_plot_path
from racli.text.terminal import visible

_SHOW_IDS = 10  # run ids shown per side in the human header (--json has them all)
_SHOW_GROUPS = 10


def _fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise BadInput(f"{name} is a fraction between 0 and 1 (0.01 = 1%), got {value:g}")


def _ids(ids: list[int]) -> str:
    if len(ids) <= _SHOW_IDS:
        return ", ".join(map(str, ids))
    return ", ".join(map(str, ids[:_SHOW_IDS])) + f", ... ({len(ids) - _SHOW_IDS} more)"


def _data_text(data: dict | None) -> str:
    if not data:
        return "not recorded"
    parts = [str(data.get("name", "?"))]
    if data.get("train_tokens") is not None:
        parts.append(f"{data['train_tokens']:,} train tokens")
    if data.get("val_tokens") is not None:
        parts.append(f"{data['val_tokens']:,} validation tokens")
    content = data.get("content_hash")
    if content:
        parts.append(f"content {str(content)[:12]}")
    return ", ".join(parts)


def _steps(r: tuple[int, int] | None) -> str:
    if r is None:
        return "? steps"
    return f"{r[0]} steps" if r[0] == r[1] else f"{r[0]}-{r[1]} steps"


def _budget_text(cmp) -> str:
    budget, v = cmp.budget, cmp.verdict
    if v.matched is not None:
        m = v.matched
        minutes = f"{m.minutes:g} minutes" if m.minutes is not None else "matched time"
        c, b = v.candidate.iterations_range, v.baseline.iterations_range
        if m.ratio == 1.0 and c is not None and c == b:
            return f"matched time, {minutes} a side: {_steps(c)} each (one variant, one budget)"
        ci = f" [{m.ratio_ci[0]:.4f}, {m.ratio_ci[1]:.4f}]" if m.ratio_ci else " (no interval)"
        return (
            f"matched time, {minutes} a side: {cmp.baseline} {_steps(v.baseline.iterations_range)}, "
            f"{cmp.candidate} {_steps(v.candidate.iterations_range)} (calibrated speed ratio "
            f"{m.ratio:.4f}{ci}{'' if m.settled else ', UNSETTLED'})"
        )
    if not isinstance(budget, dict):
        return "not recorded (treated as wall-clock)"
    if budget.get("steps") is not None:
        c, b = v.candidate.iterations_range, v.baseline.iterations_range
        if c is not None and c == b and c[0] == c[1]:
            return f"{c[0]} steps a side (compared at equal steps)"
        return f"step budgets: {cmp.baseline} {_steps(b)}, {cmp.candidate} {_steps(c)}"
    if budget.get("minutes") is not None:
        return f"{budget['minutes']:g} minutes wall-clock a side (speed check applies)"
    return "not recorded (treated as wall-clock)"


def header_text(cmp) -> str:
    """The lines above FINAL COMPARISON: what was compared, from which runs, on what."""
    c, b = cmp.candidate, cmp.baseline
    g = cmp.group
    lines = [f"Comparing {c} (candidate) with {b} (baseline) on {cmp.metric}"]
    filters = []
    if cmp.tag is not None:
        filters.append(f"tag '{cmp.tag}'")
    if cmp.since is not None:
        filters.append(f"started since {cmp.since.isoformat(sep=' ', timespec='minutes')}")
    lines.append(
        "Runs: finished train runs"
        + (f" with {' and '.join(filters)}" if filters else "")
        + (", any environment class" if cmp.any_env else "")
    )
    lines.append(f"Group: {g.label()}")
    if cmp.any_env and len(g.env_classes) > 1:
        lines.append(f"  environment classes pooled: {'; '.join(g.env_classes)}")
    for attn in (c, b):
        ids = [r.id for r in g.side(attn)]
        lines.append(f"  {attn}: {len(ids)} run(s) (ids {_ids(ids)})")
    lines.append(f"Data: {_data_text(cmp.data)}")
    lines.append(f"Budget: {_budget_text(cmp)}")
    devices = cmp.devices
    if cmp.different_devices:
        lines.append("Devices: the two sides ran on different devices")
        for attn in (c, b):
            lines.append(f"  {attn}: {'; '.join(devices[attn][:_SHOW_IDS])}")
    if cmp.others:
        lines.append(f"Other groups, not compared ({len(cmp.others)}):")
        for o in cmp.others[:_SHOW_GROUPS]:
            note = "" if o.comparable else " (one side only)"
            why = f" [{'; '.join(o.differs)}]" if o.differs else ""
            lines.append(f"  {o.label()}: {o.n_candidate} {c}, {o.n_baseline} {b}{note}{why}")
        if len(cmp.others) > _SHOW_GROUPS:
            lines.append(f"  ... and {len(cmp.others) - _SHOW_GROUPS} more (see --json)")
    for attn, n in cmp.left_out.items():
        lines.append(f"Left out: {n} finished {attn} run(s) without a recorded {cmp.metric}")
    return "\n".join(lines)


def _shape_text(shape: dict) -> str:
    return (
        f"B={shape['batch']} T={shape['seq']} H={shape['heads']} D={shape['head_dim']} "
        f"{shape['dtype']} {shape['device']}"
    )


def bench_text(bc) -> str:
    from racli.bench.text import fair_comparison

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
            f"Shape {_shape_text(g.shape)} on {env} (bench runs {_ids(g.run_ids)})",
            fair_comparison(g.best, baseline=bc.baseline),
        ]
    return "\n".join(lines)


def _echo(text: str) -> None:
    from racli.text.terminal import for_stream

    sys.stdout.write(for_stream(visible(text), sys.stdout.encoding) + "\n")


def compare(
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="val_loss (train runs), tokens_per_s (train runs) or ms (bench timings).",
        ),
    ] = "val_loss",
    candidate: Annotated[
        str, typer.Option("--candidate", help="Attention variant judged.")
    ] = "ra_v5",
    baseline: Annotated[
        str, typer.Option("--baseline", help="Attention variant compared against.")
    ] = "baseline",
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Quality threshold as a fraction (default: ra.yaml verdict.threshold, 0.01).",
            show_default=False,
        ),
    ] = None,
    allow_epochs: Annotated[
        bool,
        typer.Option(
            "--allow-epochs",
            help="Judge runs that went past one epoch of their data (labelled; otherwise INVALID).",
        ),
    ] = False,
    tag: Annotated[
        str | None, typer.Option("--tag", help="Only runs with this tag.", show_default=False)
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only runs started at or after this date (YYYY-MM-DD or ISO datetime, UTC).",
            show_default=False,
        ),
    ] = None,
    any_env: Annotated[
        bool,
        typer.Option("--any-env", help="Pool environment classes (GPU name + torch version)."),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Write the compared runs' curves of the metric (.png, .pdf or .svg).",
            show_default=False,
        ),
    ] = None,
    db: common.DbOpt = None,
    config: common.ConfigOpt = None,
    json: common.JsonOpt = False,
) -> None:
    """Verdict for CANDIDATE vs BASELINE from every comparable finished run."""
    from racli.bench.history import load_bench_comparison
    from racli.compare.grouping import check_metric, load_comparison
    from racli.store.filters import parse_since
    from racli.store.manage import excluded_runs, excluded_text

    # ---- validate everything before any work
    check_metric(metric)
    check_attention(candidate)
    check_attention(baseline)
    if candidate == baseline:
        raise BadInput(f"--candidate and --baseline are both '{candidate}': nothing to compare")
    cfg = common.config(config)
    threshold = cfg.verdict.threshold if threshold is None else threshold
    _fraction("--threshold", threshold)
    since_at = parse_since(since)
    if plot is not None and metric == "ms":
        raise BadInput("--plot draws training curves: it does not apply to --metric ms")
    check_plot_path(plot)
    store = common.open_db(db, cfg, readonly=True)

    if metric == "ms":
        bc = load_bench_comparison(
            store,
            candidate=candidate,
            baseline=baseline,
            tag=tag,
            since=since_at,
            any_env=any_env,
            noise_ratio=cfg.bench.noise_ratio,
        )
        excluded = excluded_runs(store, kind="bench", tag=tag, since=since_at)
        if json:
            common.print_json({**bc.to_dict(), "excluded": excluded})
        else:
            _echo(bench_text(bc) + ("\n" + excluded_text(excluded) if excluded else ""))
        return

    cmp = load_comparison(
        store,
        metric=metric,
        candidate=candidate,
        baseline=baseline,
        tag=tag,
        since=since_at,
        any_env=any_env,
        threshold=threshold,
        confidence=cfg.verdict.confidence,
        allow_epochs=allow_epochs,
    )
    excluded = excluded_runs(
        store, kind="train", attns=(candidate, baseline), tag=tag, since=since_at
    )
    written = None
    if plot is not None:
        written = _plot(store, cmp, plot)

    if json:
        data = cmp.to_dict()
        data["plot"] = str(written) if written else None
        data["excluded"] = excluded
        common.print_json(data)
        return
    from racli.compare.text import final_comparison

    text = header_text(cmp) + ("\n" + excluded_text(excluded) if excluded else "")
    text += "\n\n" + final_comparison(cmp.verdict)
    if written:
        text += f"\n\nPlot written to {written}"
    _echo(text)


def _plot(store, cmp, path: Path) -> Path:
    from racli.compare.grouping import metric_curves
    from racli.compare.plots import plot_loss_curves
    from racli.names import display_name, metric_label

    runs = {attn: [r.id for r in cmp.group.side(attn)] for attn in (cmp.baseline, cmp.candidate)}
    curves = metric_curves(store, runs, name=cmp.metric)
    if not any(points for per_run in curves.values() for _, points in per_run):
        raise BadInput(f"no {cmp.metric} curves recorded for the compared runs: no plot written")
    title = (
        f"{metric_label(cmp.metric)}: {display_name(cmp.candidate)} vs "
        f"{display_name(cmp.baseline)} ({cmp.group.label()})"
    )
    try:
        return plot_loss_curves(curves, path, title, ylabel=cmp.metric)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
