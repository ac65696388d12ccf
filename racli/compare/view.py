"""What `ra compare` prints around the verdict: the header (what was compared, from
which runs, on what data and budget) and the plot of the compared runs' curves."""

from __future__ import annotations

from pathlib import Path

from racli.compare.grouping import metric_curves
from racli.compare.plots import plot_loss_curves
from racli.errors import BadInput
from racli.names import display_name, metric_label
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


def _budget_text(budget: dict | None) -> str:
    if not isinstance(budget, dict):
        return "not recorded (treated as wall-clock)"
    if budget.get("steps") is not None:
        return f"{budget['steps']} steps a side (compared at equal steps)"
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
    lines.append(f"Budget: {_budget_text(cmp.budget)}")
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
