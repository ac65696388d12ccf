"""`ra runs export --tensorboard DIR [RUNS]`: recorded train runs as TensorBoard event files,
with the tags and folders `ra train --tensorboard` writes (racli/text/tensorboard.py; the
live writer is racli/training/tensorboard.py).

A run whose folder already holds event files (written while it trained, or by an earlier
export) is left as it is and reported as skipped: remove the folder to write it again.
No torch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path

from racli.errors import BadInput
from racli.names import check_run_id
from racli.store import queries
from racli.store.manage import get_runs, metric_rows
from racli.text.tensorboard import EventLog, check_available, check_folder, run_folder


def check_request(folder, run_ids, kind, other_output: bool) -> None:
    """BadInput for a --tensorboard export asked for with what does not go with it."""
    if folder is None:
        raise BadInput("run ids go with --tensorboard DIR (the other exports take filters)")
    if not str(folder).strip():
        raise BadInput("--tensorboard: give a folder (got an empty name)")
    if other_output:
        raise BadInput("--tensorboard writes event files: leave out --metrics and --output")
    if kind not in (None, "train"):
        raise BadInput(f"--tensorboard exports train runs, not --kind {kind}")
    for run_id in run_ids or []:
        check_run_id(run_id)
    check_available()


@dataclass
class Exported:
    run_id: int
    folder: Path
    points: int  # scalar events written (0 when skipped)
    skipped: bool = False

    def line(self) -> str:
        if self.skipped:
            return f"run {self.run_id}: skipped, {self.folder} already holds events"
        return f"run {self.run_id}: {self.points} step(s) written to {self.folder}"


def _runs(store, run_ids: list[int] | None, filters: dict) -> list:
    if run_ids:
        runs = get_runs(store, run_ids)
        for r in runs:
            if r.kind != "train":
                raise BadInput(f"run {r.id} is a {r.kind} run: TensorBoard export takes train runs")
        return runs
    return list(reversed(queries.list_runs(store, **{**filters, "kind": "train"})))


def _started(run) -> float | None:
    if run.started_at is None:
        return None
    start = run.started_at
    return (start if start.tzinfo else start.replace(tzinfo=timezone.utc)).timestamp()


def _write_run(store, run, log: EventLog) -> int:
    """Every metric and gate snapshot of `run` into `log`; returns the events written."""
    start = _started(run)
    steps: dict[int, dict[str, float]] = defaultdict(dict)
    elapsed: dict[int, float] = {}
    for row in metric_rows(store, [run.id]):
        steps[row["step"]][row["name"]] = row["value"]
        if row["elapsed_s"] is not None:
            elapsed[row["step"]] = max(elapsed.get(row["step"], 0.0), row["elapsed_s"])
    gates: dict[int, dict[int, dict[str, dict[int, float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(dict))
    )
    for step, layer, head, name, value in queries.gate_rows(store, run.id):
        gates[step][layer][name][head] = value

    def wall(step: int) -> float | None:  # the start plus the training clock at that step
        if start is None:
            return None
        before = [s for s in elapsed if s <= step]
        return start + (elapsed[max(before)] if before else 0.0)

    for step in sorted(steps):
        log.metrics(step, steps[step], wall(step))
    for step in sorted(gates):
        snapshot = {
            layer: {name: [heads[h] for h in sorted(heads)] for name, heads in named.items()}
            for layer, named in gates[step].items()
        }
        log.gates(step, snapshot, wall(step))
    return len(set(steps) | set(gates))


def export_runs(
    store, root: str | Path, run_ids: list[int] | None = None, **filters
) -> list[Exported]:
    """Write the train runs `run_ids` (else those matching `filters`, oldest first) under
    `root`, one folder per run."""
    check_available()
    runs = _runs(store, run_ids, filters)  # unknown ids refused before the folder is made
    if not runs:
        return []  # nothing to write: no folder made
    for run in runs:
        folder = run_folder(Path(root).expanduser(), run.id, run.attn)
        if folder.exists() and not folder.is_dir():
            raise BadInput(f"cannot write run {run.id}'s events: {folder} is a file, not a folder")
    root = check_folder(root)
    out = []
    for run in runs:
        folder = run_folder(root, run.id, run.attn)
        if folder.is_dir() and any(folder.glob("events.out.tfevents.*")):
            out.append(Exported(run.id, folder, 0, skipped=True))
            continue
        log = EventLog(folder)
        try:
            points = _write_run(store, run, log)
        finally:
            log.close()
        out.append(Exported(run.id, folder, points))
    return out
