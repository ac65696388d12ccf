"""The runs `ra gates` reads: which (ids, ranges, a tag), their gate values from the
store, analysed (one run or several seeds), plotted and put into words."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from racli.errors import BadInput
from racli.gates.aggregate import RunsReport, aggregate_runs
from racli.gates.analysis import GateReport, analyse_gates, trajectories
from racli.gates.plots import plot_gates, plot_gates_runs
from racli.gates.tables import gate_tables, runs_tables
from racli.names import check_run_id, comma_list
from racli.store.models import Run
from racli.store.queries import gate_rows, gate_rows_by_run, get_run, list_runs

#: the most run ids one --runs list may name (a range is expanded into its ids)
MAX_RUNS = 100_000


def parse_run_ids(text: str) -> list[int]:
    """'12,14,16' or '12-16' (or a mix) -> sorted unique ids; BadInput otherwise."""
    ids: set[int] = set()
    for item in comma_list(text):
        lo, sep, hi = item.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise BadInput(f"--runs: {item!r} is not a run id or a range like 12-16") from None
        if a < 1 or b < a:
            raise BadInput(f"--runs: {item!r} is not a run id or a range like 12-16")
        check_run_id(b, "--runs")
        if b - a + 1 + len(ids) > MAX_RUNS:
            raise BadInput(f"--runs: at most {MAX_RUNS:,} run ids at once, got more from {item!r}")
        ids.update(range(a, b + 1))
    if not ids:
        raise BadInput("--runs: give run ids, e.g. --runs 12,14,16")
    return sorted(ids)


def train_run(store, run_id: int) -> Run:
    r = get_run(store, run_id)
    if r.kind != "train":
        raise BadInput(
            f"run {run_id} is a {r.kind} run: gate values are recorded by train runs "
            "(see `ra runs --kind train`)"
        )
    return r


def tagged_runs(store, tag: str, attn: str | None) -> list[int]:
    """The ids of the finished train runs with `tag` (and attention `attn`)."""
    found = list_runs(store, kind="train", tag=tag, attn=attn, status="finished")
    if not found:
        what = f" of attention {attn}" if attn else ""
        raise BadInput(f"no finished train runs{what} with tag {tag!r}")
    return sorted(r.id for r in found)


def _with_plot(text: str, written: Path | None) -> str:
    return text + (f"\n\nPlot written to {written}" if written else "")


@dataclass
class OneRun:
    """One run's gates: its report and the plot written (if any)."""

    run: Run
    report: GateReport
    written: Path | None

    def to_dict(self) -> dict:
        data = self.report.to_dict(self.run.id, self.run.attn)
        data["plot"] = str(self.written) if self.written else None
        return data

    def text(self) -> str:
        r, rep = self.run, self.report
        title = f"LEARNED GATES: run {r.id} ({r.attn}, {r.status}) at step {rep.step}"
        if len(rep.steps) > 1:
            title += f" ({len(rep.steps)} snapshots, steps {rep.steps[0]}..{rep.steps[-1]})"
        return _with_plot(gate_tables(rep, title=title), self.written)


def one_run(store, gates_cfg, run_id: int, *, step: int | None, plot: Path | None) -> OneRun:
    """Analyse (and with `plot`, draw) the gate values of one train run."""
    r = train_run(store, run_id)
    rows = gate_rows(store, run_id)
    if not rows:
        attn = r.attn or "?"
        why = (
            f"the {attn} attention has no gates"
            if attn == "baseline"
            else f"none recorded (status {r.status}): gated variants record them at step 0"
        )
        raise BadInput(f"run {run_id} ({attn}) has no gate values: {why}")
    try:
        report = analyse_gates(
            rows,
            step=step,
            ratio_threshold=gates_cfg.reciprocity_threshold,
            moved_tolerance=gates_cfg.moved_tolerance,
            use_threshold=gates_cfg.use_threshold,
        )
    except ValueError as exc:
        raise BadInput(f"run {run_id}: {exc}") from exc
    written = None
    if plot is not None:
        try:
            written = plot_gates(
                report,
                plot,
                trajectories=trajectories(rows),
                title=f"run {run_id} ({r.attn}): gates and reciprocity measures",
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from exc
    return OneRun(r, report, written)


@dataclass
class ManyRuns:
    """Several runs of one attention aggregated: the report, its title and the plot."""

    attn: str
    report: RunsReport
    title: str
    written: Path | None

    def to_dict(self) -> dict:
        data = self.report.to_dict(self.attn)
        data["plot"] = str(self.written) if self.written else None
        return data

    def text(self) -> str:
        return _with_plot(runs_tables(self.report, title=self.title), self.written)


def many_runs(
    store, gates_cfg, ids: list[int], *, plot: Path | None, label: str | None
) -> ManyRuns:
    """Aggregate the gate values of several train runs of one attention (seeds)."""
    found = {run_id: train_run(store, run_id) for run_id in ids}
    attns = sorted({r.attn or "?" for r in found.values()})
    if len(attns) > 1:
        by = ", ".join(
            f"{a}: {', '.join(str(i) for i, r in found.items() if r.attn == a)}" for a in attns
        )
        raise BadInput(f"the runs mix attentions ({by}): aggregate one attention at a time")
    attn = attns[0]
    rows = gate_rows_by_run(store, ids)
    try:
        rep = aggregate_runs(
            {run_id: rows.get(run_id, []) for run_id in ids},
            use_threshold=gates_cfg.use_threshold,
            ratio_threshold=gates_cfg.reciprocity_threshold,
            moved_tolerance=gates_cfg.moved_tolerance,
        )
    except ValueError as exc:
        raise BadInput(f"runs {', '.join(map(str, ids))} ({attn}): {exc}") from exc
    title = (
        f"RECIPROCITY ACROSS RUNS: {rep.measure} of {attn} runs "
        f"{', '.join(map(str, rep.runs))}"
        + (f" ({label})" if label else "")
        + ", each at its last step"
    )
    written = None
    if plot is not None:
        try:
            written = plot_gates_runs(rep, plot, title=title)
        except ValueError as exc:
            raise BadInput(str(exc)) from exc
    return ManyRuns(attn, rep, title, written)
