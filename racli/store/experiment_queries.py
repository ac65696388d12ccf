"""Queries of `ra experiment` and of the recorded GPU clocks."""

from __future__ import annotations

from sqlalchemy import func, select

from racli.store.connection import Store
from racli.store.models import Metric, Run

#: the config entry that ties a run to its experiment: {"experiment": {"key": ..., "arm": ...}}
EXPERIMENT_ENTRY = "experiment"


def experiment_runs(store: Store, key: str, kind: str = "train") -> list[Run]:
    """Every run of `kind` (any status) of experiment `key`, oldest first, as ORM rows."""
    q = (
        select(Run)
        .where(Run.kind == kind, Run.config[EXPERIMENT_ENTRY]["key"].as_string() == key)
        .order_by(Run.id)
    )
    with store.session() as s:
        return list(s.scalars(q))


def last_step(store: Store, run_id: int, name: str = "train_loss") -> int | None:
    """The highest step at which run `run_id` recorded metric `name` (None: none yet)."""
    with store.engine.connect() as conn:
        return conn.execute(
            select(func.max(Metric.step)).where(Metric.run_id == run_id, Metric.name == name)
        ).scalar()


def metric_values(
    store: Store, run_ids: list[int], names: tuple[str, ...] | list[str]
) -> dict[int, dict[str, list[float]]]:
    """{run id: {metric name: its values}} of the runs' metrics called one of `names`."""
    values: dict[int, dict[str, list[float]]] = {}
    if not run_ids:
        return values
    with store.engine.connect() as conn:
        q = select(Metric.run_id, Metric.name, Metric.value).where(
            Metric.run_id.in_(run_ids), Metric.name.in_(list(names))
        )
        for rid, name, value in conn.execute(q):
            values.setdefault(rid, {}).setdefault(name, []).append(float(value))
    return values
