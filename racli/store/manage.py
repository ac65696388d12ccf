"""Run management: tag, exclude / include, delete, and the reads that go with them.

Every function checks all the ids it is given before changing anything (an
unknown id is bad input and nothing changes) and makes its change in one
transaction. No torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, false, func, select, true, update

from racli.errors import BadInput
from racli.names import check_tag
from racli.store import references
from racli.store.checkpoints import checkpoint_path
from racli.store.chunks import in_chunks
from racli.store.connection import Store
from racli.store.engine import RunBrief, unknown_runs
from racli.store.models import GateValue, Metric, Run, Timing
from racli.store.recorder import is_stale


def checkpoint_files(db: str, run_id: int) -> list[Path]:
    """The checkpoint file of a run (and a half-written one), in its store's own folder."""
    path = checkpoint_path(db, run_id)
    return [path, path.with_name(path.name + ".tmp")]


def unique_ids(ids) -> list[int]:
    return list(dict.fromkeys(int(i) for i in ids))


def get_runs(store: Store, ids) -> list[Run]:
    """The runs with these ids, in the order given; BadInput naming the first unknown id."""
    ids = unique_ids(ids)
    if not ids:
        raise BadInput("no run id given")
    found: dict[int, Run] = {}
    with store.session() as s:
        for chunk in in_chunks(ids):
            found.update((r.id, r) for r in s.scalars(select(Run).where(Run.id.in_(chunk))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise unknown_runs(store.db, missing)
    return [found[i] for i in ids]


def check_new_tag(tag: str | None) -> None:
    """BadInput for a tag `ra runs tag` would not set (None: the tag is cleared)."""
    if tag is not None and not tag.strip():
        raise BadInput("the tag is empty (use --clear to remove a run's tag)")
    if tag is not None and len(tag) > 255:
        raise BadInput(f"the tag is {len(tag)} characters long (at most 255)")
    check_tag(tag, "the tag")


def set_tag(store: Store, run_id: int, tag: str | None) -> tuple[str | None, str | None]:
    """Set (or with None clear) a run's tag; returns (old tag, new tag).

    A train run's config holds its tag too (what `--resume` takes up again):
    it follows. The tag is not part of config_hash, so the run stays in its group."""
    check_new_tag(tag)
    run = get_runs(store, [run_id])[0]
    values: dict = {"tag": tag}
    if isinstance(run.config, dict) and "tag" in run.config:
        values["config"] = {**run.config, "tag": tag}
    with store.writing() as conn:
        conn.execute(update(Run).where(Run.id == run.id).values(**values))
    return run.tag, tag


#: the longest --reason of an exclusion (it is shown beside the run in tables)
REASON_MAX = 1000


def check_reason(reason: str | None) -> None:
    """BadInput for a reason of exclusion `ra runs exclude` would not record."""
    if not (reason and reason.strip()):
        raise BadInput("say why the run is excluded: --reason TEXT")
    check_tag(reason, "--reason", max_len=REASON_MAX, edges=False)


def set_excluded(store: Store, ids, *, excluded: bool, reason: str | None = None) -> list[Run]:
    """Exclude runs from verdicts (kept, shown, listed by `ra compare`) or include
    them again. Returns the runs as they were before."""
    if excluded:
        check_reason(reason)
    else:
        check_tag(reason, "--reason", max_len=REASON_MAX, edges=False)
    runs = get_runs(store, ids)
    with store.writing() as conn:
        for chunk in in_chunks([r.id for r in runs]):
            conn.execute(
                update(Run)
                .where(Run.id.in_(chunk))
                .values(excluded=excluded, exclude_reason=reason.strip() if excluded else None)
            )
    return runs


@dataclass
class Deleted:
    runs: list[int]
    metrics: int = 0
    timings: int = 0
    gate_values: int = 0
    checkpoints: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # checkpoint files that could not be removed

    def to_dict(self) -> dict:
        return {
            "runs": self.runs,
            "metrics": self.metrics,
            "timings": self.timings,
            "gate_values": self.gate_values,
            "checkpoints": self.checkpoints,
            "checkpoints_kept": self.kept,
        }

    def summary(self) -> str:
        return (
            f"deleted {len(self.runs)} run(s) ({', '.join(map(str, self.runs))}): "
            f"{self.metrics} metric value(s), {self.timings} timing(s), "
            f"{self.gate_values} gate value(s)"
        )


def check_deletable(store: Store, ids, *, cascade: bool = False) -> list[Run]:
    """The runs to delete: those given and, with `cascade`, every run that depends on
    them (racli/store/references.py), in id order after the given ones. BadInput for an
    unknown id, a run still running, or (without `cascade`) a run that others depend on,
    naming them."""
    runs = get_runs(store, ids)
    with store.engine.connect() as conn:
        if cascade:
            wanted = references.closure(conn, [(r.id, r.uuid) for r in runs])
            extra = [i for i, _ in wanted if i not in {r.id for r in runs}]
            if extra:
                runs = runs + get_runs(store, extra)
        else:
            deps = references.dependants(conn, [(r.id, r.uuid) for r in runs])
            given = {r.id for r in runs}
            for r in runs:
                outside = [(d, what) for d, what in deps.get(r.id, []) if d not in given]
                if outside:
                    raise BadInput(_dependants_text(r.id, outside))
    for r in runs:
        if r.status == "running" and not is_stale(r):
            raise still_running(r.id)
    return runs


def still_running(run_id: int) -> BadInput:
    return BadInput(f"run {run_id} is still running (fresh heartbeat): stop it first")


def refuse_live(runs: dict[int, RunBrief]) -> None:
    """`open_store`'s run check for `runs delete`: a run a process is writing is refused
    before the store is migrated (the migration would change its tables under the writer)."""
    for run_id, brief in runs.items():
        if brief.live:
            raise still_running(run_id)


def _dependants_text(run_id: int, deps: list[tuple[int, str]]) -> str:
    by_what: dict[str, list[int]] = {}
    for d, what in deps:
        by_what.setdefault(what, []).append(d)
    named = "; ".join(
        f"run(s) {', '.join(map(str, ids[:10]))}{', ...' if len(ids) > 10 else ''} {what} it"
        for what, ids in by_what.items()
    )
    return (
        f"run {run_id} is needed by other runs ({named}): delete them too with --cascade, "
        f"or keep it"
    )


def delete_runs(store: Store, ids, *, cascade: bool = False) -> Deleted:
    """Delete runs with their metrics, timings and gate values (one transaction),
    then their checkpoint files. With `cascade`, the runs that depend on them too."""
    runs = check_deletable(store, ids, cascade=cascade)
    run_ids = [r.id for r in runs]
    _check_removable([p for rid in run_ids for p in checkpoint_files(store.db, rid)])
    out = Deleted(runs=run_ids)
    with store.writing() as conn:
        _refuse_started_meanwhile(conn, run_ids)
        for chunk in in_chunks(run_ids):
            out.metrics += conn.execute(delete(Metric).where(Metric.run_id.in_(chunk))).rowcount
            out.timings += conn.execute(delete(Timing).where(Timing.run_id.in_(chunk))).rowcount
            out.gate_values += conn.execute(
                delete(GateValue).where(GateValue.run_id.in_(chunk))
            ).rowcount
            conn.execute(delete(Run).where(Run.id.in_(chunk)))
    for rid in run_ids:
        for path in checkpoint_files(store.db, rid):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:  # the runs are deleted: say what is left behind
                out.kept.append(f"{path} ({exc.strerror or exc})")
                continue
            if path.suffix == ".pt":
                out.checkpoints.append(str(path))
    return out


def _check_removable(paths: list[Path]) -> None:
    """BadInput, before anything is deleted, when an existing checkpoint file could not be
    removed (its folder is not writable): the runs' records would go and the file stay."""
    for path in paths:
        if os.path.lexists(path) and not os.access(path.parent, os.W_OK | os.X_OK):
            raise BadInput(
                f"cannot remove checkpoint {path}: its folder {path.parent} is not writable "
                "(nothing deleted)"
            )


def _refuse_started_meanwhile(conn, run_ids: list[int]) -> None:
    """Inside the deleting transaction: BadInput when one of the runs was taken up again
    (resumed, fresh heartbeat) since it was checked."""
    for chunk in in_chunks(run_ids):
        q = select(Run.id, Run.status, Run.heartbeat_at, Run.started_at).where(
            Run.id.in_(chunk), Run.status == "running"
        )
        for rid, status, heartbeat_at, started_at in conn.execute(q):
            view = Run(status=status, heartbeat_at=heartbeat_at, started_at=started_at)
            if not is_stale(view):
                raise still_running(rid)


def row_counts(store: Store, ids) -> dict[str, int]:
    """How many metrics, timings and gate values these runs hold (what delete would remove)."""
    ids = unique_ids(ids)
    counts = {"metrics": 0, "timings": 0, "gate_values": 0}
    with store.engine.connect() as conn:
        for chunk in in_chunks(ids):
            for key, model in (
                ("metrics", Metric),
                ("timings", Timing),
                ("gate_values", GateValue),
            ):
                counts[key] += conn.execute(
                    select(func.count()).select_from(model).where(model.run_id.in_(chunk))
                ).scalar()
    return counts


def excluded_runs(
    store: Store, *, kind: str, attns=None, tag: str | None = None, since: datetime | None = None
) -> list[dict]:
    """The finished, excluded runs a comparison with these filters leaves out:
    [{"id", "attn", "reason"}], oldest first."""
    q = (
        select(Run.id, Run.attn, Run.exclude_reason)
        .where(Run.kind == kind, Run.status == "finished", Run.excluded == true())
        .order_by(Run.id)
    )
    if attns:
        q = q.where(Run.attn.in_(list(attns)))
    if tag is not None:
        q = q.where(Run.tag == tag)
    if since is not None:
        q = q.where(Run.started_at >= since)
    with store.engine.connect() as conn:
        return [{"id": i, "attn": a, "reason": reason} for i, a, reason in conn.execute(q)]


def excluded_text(excluded: list[dict]) -> str:
    """'excluded: run 12 (bad data), run 14 (crashed machine)' (empty without any)."""
    if not excluded:
        return ""
    return "excluded: " + ", ".join(
        f"run {e['id']} ({e['reason'] or 'no reason given'})" for e in excluded
    )


def included_filter():
    """The WHERE clause that keeps runs not excluded (for verdict queries)."""
    return Run.excluded == false()


METRIC_EXPORT_COLUMNS = ("run_id", "step", "name", "value", "elapsed_s")


def metric_rows(
    store: Store, run_ids, names: list[str] | None = None, batch: int = 10_000
) -> Iterator[dict]:
    """Long-format curves of these runs: {run_id, step, name, value, elapsed_s}, by run id,
    name and step; streamed, so a store of any size exports in constant memory."""
    ids = sorted(unique_ids(run_ids))
    with store.engine.connect() as conn:
        for chunk in in_chunks(ids):
            q = (
                select(Metric.run_id, Metric.step, Metric.name, Metric.value, Metric.elapsed_s)
                .where(Metric.run_id.in_(chunk))
                .order_by(Metric.run_id, Metric.name, Metric.step, Metric.id)
            )
            if names:
                q = q.where(Metric.name.in_(names))
            for row in conn.execution_options(yield_per=batch).execute(q):
                yield dict(zip(METRIC_EXPORT_COLUMNS, row))
