"""What `ra compare` prints around the verdict: the header (what was compared, from
which runs, on what data and budget), the bench history text of `--metric ms`, and
the plot of the compared runs' curves."""

from __future__ import annotations

from pathlib import Path

from racli.bench.text import fair_comparison
from racli.compare.grouping import metric_curves
from racli.compare.plots import plot_loss_curves
from racli.errors import BadInput
from racli.names import display_name, metric_label

_SHOW_IDS = 10  # run ids shown per side in the human header (--json has them all)
_SHOW_GROUPS = 10


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
        lines.append(f"  {attn}: {len(ids)} run(s) (ids {_ids(ids)})")
    lines.append(f"Data: {_data_text(cmp.data)}")
    lines.append(f"Budget: {_budget_text(cmp.budget)}")
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
