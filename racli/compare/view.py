"""What `ra compare` prints around the verdict: the header (what was compared, from
which runs, on what data and budget), the whole text and JSON, and the plot of the
compared runs' curves; `compare_train` gathers them for the command."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from racli.compare.grouping import Comparison, load_comparison, metric_curves
from racli.compare.plots import plot_loss_curves
from racli.compare.text import final_comparison
from racli.errors import BadInput
from racli.names import display_name, metric_label
from racli.store.manage import excluded_runs, excluded_text
from racli.text.numbers import ids_text

_SHOW_GROUPS = 10


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
    """What each side trained on: its steps, and at matched time the calibrated ratio."""
    budget, v = cmp.budget, cmp.verdict
    if v.matched is not None:
        m = v.matched
        minutes = f"{m.minutes:g} minutes" if m.minutes is not None else "matched time"
        c, b = v.candidate.iterations_range, v.baseline.iterations_range
        if m.ratio == 1.0 and c is not None and c == b:
            return f"matched time, {minutes} a side: {_steps(c)} each (one variant, one budget)"
        ci = f" [{m.ratio_ci[0]:.4f}, {m.ratio_ci[1]:.4f}]" if m.ratio_ci else " (no interval)"
        return (
            f"matched time, {minutes} a side: {cmp.baseline} {_steps(b)}, "
            f"{cmp.candidate} {_steps(c)} (calibrated speed ratio "
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
        lines.append(f"  {attn}: {len(ids)} run(s) (ids {ids_text(ids)})")
    lines.append(f"Data: {_data_text(cmp.data)}")
    lines.append(f"Budget: {_budget_text(cmp)}")
    devices = cmp.devices
    if cmp.different_devices:
        lines.append("Devices: the two sides ran on different devices")
        for attn in (c, b):
            lines.append(f"  {attn}: {'; '.join(devices[attn][:_SHOW_GROUPS])}")
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


def comparison_text(cmp, excluded, written: Path | None) -> str:
    """`ra compare`'s text: the header, the runs left out by exclusion, the verdict's blocks,
    and the plot written."""
    text = header_text(cmp) + ("\n" + excluded_text(excluded) if excluded else "")
    text += "\n\n" + final_comparison(cmp.verdict)
    if written:
        text += f"\n\nPlot written to {written}"
    return text


def comparison_data(cmp, excluded, written: Path | None) -> dict:
    """`ra compare --json`: the comparison, the plot written, the excluded runs."""
    data = cmp.to_dict()
    data["plot"] = str(written) if written else None
    data["excluded"] = excluded
    return data


def plot_compared(store, cmp, path: Path) -> Path:
    """The compared runs' curves of the metric, written to `path`."""
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


@dataclass
class TrainVerdict:
    """`ra compare` on train runs: the comparison, the excluded runs it leaves out and the
    plot written (None without --plot)."""

    comparison: Comparison
    excluded: list[dict]
    written: Path | None

    def data(self) -> dict:
        return comparison_data(self.comparison, self.excluded, self.written)

    def text(self) -> str:
        return comparison_text(self.comparison, self.excluded, self.written)


def compare_train(
    store,
    *,
    metric: str,
    candidate: str,
    baseline: str,
    tag: str | None,
    since: datetime | None,
    any_env: bool,
    threshold: float,
    confidence: float,
    allow_epochs: bool,
    plot: Path | None,
) -> TrainVerdict:
    """The verdict from the recorded train runs (racli.compare.grouping.load_comparison),
    the excluded runs the filters leave out, and the curves plotted to `plot` if given."""
    cmp = load_comparison(
        store,
        metric=metric,
        candidate=candidate,
        baseline=baseline,
        tag=tag,
        since=since,
        any_env=any_env,
        threshold=threshold,
        confidence=confidence,
        allow_epochs=allow_epochs,
    )
    excluded = excluded_runs(store, kind="train", attns=(candidate, baseline), tag=tag, since=since)
    written = plot_compared(store, cmp, plot) if plot is not None else None
    return TrainVerdict(cmp, excluded, written)
